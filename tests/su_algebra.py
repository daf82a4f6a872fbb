"""Shared by the SU(N) flow tests: an orthonormal basis of su(N)."""

import math

import torch


def su_basis(n):
    """Orthonormal basis of su(N) for <X, Y> = Re tr(X^dagger Y), ``[N^2 - 1, N, N]``."""
    basis = []
    for i in range(n):
        for j in range(i + 1, n):
            a = torch.zeros(n, n, dtype=torch.complex128)
            a[i, j], a[j, i] = 1, -1
            basis.append(a / math.sqrt(2))
            s = torch.zeros(n, n, dtype=torch.complex128)
            s[i, j], s[j, i] = 1j, 1j
            basis.append(s / math.sqrt(2))
    for k in range(1, n):
        d = torch.zeros(n, dtype=torch.complex128)
        d[:k] = 1
        d[k] = -k
        basis.append(torch.diag(1j * d) / math.sqrt(k * (k + 1)))
    return torch.stack(basis)
