"""Real scalar phi^4 theory.

Action (Albergo, Kanwar, Shanahan, arXiv:1904.12072, eq. 4), on a periodic lattice in D
dimensions:

    S[phi] = sum_x [ -2 sum_mu phi(x) phi(x + mu) + (2D + m2) phi(x)^2 + lam phi(x)^4 ]

i.e. ``phi (-Laplacian + m2) phi + lam phi^4`` with no factor 1/2 in front of the kinetic
term.  Field layout ``[batch, x_0, ..., x_{D-1}]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .fields import RealField
from .geometry import shift
from .theory import Coupling, Theory, sum_per_config

SITE_AXIS = 1


def two_point_function(phi: torch.Tensor) -> torch.Tensor:
    """Per-configuration ``G(x) = (1/V) sum_y phi(y) phi(y + x)`` via FFT; ``[B, x...]``."""
    dims = tuple(range(1, phi.dim()))
    phi_k = torch.fft.fftn(phi.to(torch.float64), dim=dims)
    volume = phi[0].numel()
    return torch.fft.ifftn(phi_k * phi_k.conj(), dim=dims).real / volume


class Phi4(Theory):
    name = "phi4"
    couplings_declared = (Coupling("m2", "bare mass squared"), Coupling("lam", "quartic coupling"))
    sign_flip_symmetric = True  # the action is even in phi

    def __init__(self, lattice_shape, *, m2, lam):
        super().__init__(lattice_shape, m2=m2, lam=lam)
        self.field = RealField()

    @property
    def config_shape(self):
        return self.lattice_shape

    def action(self, phi):
        self.check_field(phi)
        m2, lam, d = self.couplings["m2"], self.couplings["lam"], self.dimension
        hopping = sum(phi * shift(phi, mu, 1, SITE_AXIS) for mu in range(d))
        phi2 = phi * phi
        return sum_per_config(-2 * hopping + (2 * d + m2) * phi2 + lam * phi2 * phi2)

    def force(self, phi):
        """Analytic ``dS/dphi(x) = -2 sum_mu [phi(x+mu) + phi(x-mu)] + 2 (2D + m2) phi + 4 lam phi^3``."""
        m2, lam, d = self.couplings["m2"], self.couplings["lam"], self.dimension
        neighbours = sum(shift(phi, mu, 1, SITE_AXIS) + shift(phi, mu, -1, SITE_AXIS) for mu in range(d))
        return -2 * neighbours + 2 * (2 * d + m2) * phi + 4 * lam * phi * phi * phi

    def exact_log_partition_function(self):
        """The free field (``lam = 0``, ``m2 > 0``): ``S = phi^T M phi`` with ``M = -Laplacian + m2``,
        so ``Z = pi^{V/2} det(M)^{-1/2}`` (eigenvalues of ``M`` from the lattice momenta)."""
        m2, lam = self.couplings["m2"], self.couplings["lam"]
        if lam != 0 or m2 <= 0:
            return None
        momenta = np.meshgrid(*[2 * np.pi * np.arange(n) / n for n in self.lattice_shape], indexing="ij")
        eigenvalues = m2 + sum(4 * np.sin(p / 2) ** 2 for p in momenta)
        return 0.5 * self.volume * math.log(math.pi) - 0.5 * float(np.log(eigenvalues).sum())

    def hot_start(self, batch, *, generator=None, device=None, precision=torch.float64):
        return torch.randn(batch, *self.config_shape, generator=generator, device=device, dtype=precision)

    def cold_start(self, batch, *, device=None, precision=torch.float64):
        return torch.zeros(batch, *self.config_shape, device=device, dtype=precision)

    def observables(self, phi):
        d, volume = self.dimension, self.volume
        phi64 = phi.to(torch.float64)
        magnetization = sum_per_config(phi64) / volume
        hopping = sum(phi64 * shift(phi64, mu, 1, SITE_AXIS) for mu in range(d))
        return {
            "action_density": self.action(phi) / volume,
            "magnetization": magnetization,
            "abs_magnetization": magnetization.abs(),
            "ising_energy": sum_per_config(hopping) / (volume * d),
        }
