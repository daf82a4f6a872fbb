"""Lie-group helpers for U(1) and SU(N) link variables.

SU(N) matrices are complex tensors ``[..., N, N]``; the Lie algebra su(N) is represented by
traceless anti-Hermitian matrices ``X`` (so ``exp(X)`` is in SU(N)), with the real inner
product ``<X, Y> = Re tr(X^dagger Y)``.  A standard Gaussian on su(N) under this inner
product has density ``exp(-|X|^2 / 2)``, ``|X|^2 = -tr(X X)``.
"""

from __future__ import annotations

import math

import torch


def dagger(matrices: torch.Tensor) -> torch.Tensor:
    """Hermitian conjugate of the last two axes."""
    return matrices.transpose(-1, -2).conj()


def real_trace(matrices: torch.Tensor) -> torch.Tensor:
    """``Re tr M`` over the last two axes."""
    return torch.diagonal(matrices, dim1=-2, dim2=-1).real.sum(-1)


def traceless_antihermitian(matrices: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection onto su(N): ``(M - M^dagger)/2 - tr(M - M^dagger)/(2N) * 1``."""
    n = matrices.shape[-1]
    antihermitian = 0.5 * (matrices - dagger(matrices))
    trace = torch.diagonal(antihermitian, dim1=-2, dim2=-1).sum(-1)
    eye = torch.eye(n, dtype=matrices.dtype, device=matrices.device)
    return antihermitian - (trace / n)[..., None, None] * eye


def complex_dtype(real_dtype: torch.dtype) -> torch.dtype:
    return {torch.float32: torch.complex64, torch.float64: torch.complex128}[real_dtype]


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def random_algebra(shape, n: int, *, generator=None, dtype=torch.complex128, device=None) -> torch.Tensor:
    """Standard Gaussian su(N) elements of shape ``[*shape, N, N]``.

    Projecting an ambient complex Gaussian (real and imaginary parts N(0, 1)) orthogonally
    onto su(N) gives exactly the standard Gaussian on the subspace.
    """
    rdt = real_dtype(dtype)
    re = torch.randn(*shape, n, n, generator=generator, dtype=rdt, device=device)
    im = torch.randn(*shape, n, n, generator=generator, dtype=rdt, device=device)
    return traceless_antihermitian(torch.complex(re, im))


def _remove_determinant_phase(matrices: torch.Tensor) -> torch.Tensor:
    n = matrices.shape[-1]
    phase = torch.angle(torch.linalg.det(matrices))
    return matrices * torch.polar(torch.ones_like(phase), -phase / n)[..., None, None]


def haar_random_sun(shape, n: int, *, generator=None, dtype=torch.complex128, device=None) -> torch.Tensor:
    """Haar-distributed SU(N) matrices ``[*shape, N, N]``.

    QR of a complex Ginibre matrix with the phases of ``diag(R)`` absorbed is Haar on U(N)
    (Mezzadri, math-ph/0609050); dividing by a root of the determinant keeps left
    invariance, hence gives Haar measure on SU(N).
    """
    rdt = real_dtype(dtype)
    re = torch.randn(*shape, n, n, generator=generator, dtype=rdt, device=device)
    im = torch.randn(*shape, n, n, generator=generator, dtype=rdt, device=device)
    q, r = torch.linalg.qr(torch.complex(re, im))
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    q = q * (d / d.abs())[..., None, :]
    return _remove_determinant_phase(q)


def project_to_sun(matrices: torch.Tensor) -> torch.Tensor:
    """Nearest SU(N) matrix (unitary polar factor, then unit determinant).

    Used to remove the rounding drift that accumulates over long molecular-dynamics runs.
    """
    u, _, vh = torch.linalg.svd(matrices)
    return _remove_determinant_phase(u @ vh)


def identity_sun(shape, n: int, *, dtype=torch.complex128, device=None) -> torch.Tensor:
    eye = torch.eye(n, dtype=dtype, device=device)
    return eye.expand(*shape, n, n).clone()


def wrap_angle(angles: torch.Tensor) -> torch.Tensor:
    """Map angles to the interval ``(-pi, pi]`` -- the one angle convention of gaugeflow.

    Angles already inside are returned bit for bit (``pi - (pi - x)`` would round small
    angles), and the rounding case where ``remainder`` gives exactly ``2 pi`` (hence ``-pi``)
    goes to ``+pi``.  In float32 the ends are float32's pi, consistently with comparisons
    against the Python float ``math.pi``.
    """
    wrapped = math.pi - torch.remainder(math.pi - angles, 2 * math.pi)
    wrapped = torch.where(wrapped <= -math.pi, wrapped + 2 * math.pi, wrapped)
    inside = (angles > -math.pi) & (angles <= math.pi)
    return torch.where(inside, angles, wrapped)
