"""The Schwinger model: 2D U(1) gauge theory with N_f = 2 degenerate Wilson fermions.

Integrating out the fermions leaves the effective action

    S(theta) = S_gauge(theta) - log det(D^dagger D),     S_gauge = -beta sum_x cos theta_01(x),

with the Wilson operator ``D`` of :mod:`gaugeflow.lattice.fermions` (hopping parameter
``kappa``, antiperiodic in time).  Two ways to sample it:

* ``schwinger`` -- the determinant exactly: dense ``D`` and a batched log-determinant, force
  by automatic differentiation (small lattices; Albergo et al., arXiv:2106.05934);
* ``schwinger-pseudofermion`` -- ``det(D^dagger D) = pi^-n int dphi exp(-phi^dagger (D^dagger
  D)^{-1} phi)``: at the start of every HMC trajectory a heat bath draws ``phi = D^dagger eta``
  (:meth:`SchwingerPseudofermion.refresh_auxiliary_fields`), and the trajectory runs on
  ``S_gauge + phi^dagger (D^dagger D)^{-1} phi`` through a conjugate-gradient solver, with the
  force ``-d/dtheta |D(theta) X|^2`` at fixed ``X = (D^dagger D)^{-1} phi``.

Observables: those of U(1) (plaquette, Wilson loops, Polyakov loop, topological charge), the
chiral condensate ``(1/V) Re tr D^{-1}`` and the pion correlator

    C(t) = (1/V) sum_{x, y} tr[ S(x, y) S(x, y)^dagger ],  x_1 - y_1 = t,   S = D^{-1},

(the pseudoscalar correlator of two degenerate flavours, by gamma5-hermiticity; averaged over
all source points) as ``pion_correlator_t{t}``, from the dense inverse (small lattices);
``gaugeflow analyze`` adds the effective masses ``log(C(t)/C(t+1))``.  For free fields they
tend to ``2 log(1 + m0)``, ``m0 = 1/(2 kappa) - 2`` (tested).  ``kappa`` enters the
action non-linearly, so flows cannot be conditioned on it.
"""

from __future__ import annotations

import copy

import torch

from .errors import InputError
from .fermions import apply_wilson, apply_wilson_dagger, conjugate_gradient, wilson_matrix
from .fields import AngleField
from .geometry import sum_per_config
from .theory import Coupling, Theory
from .u1 import U1


def pion_correlator(inverse: torch.Tensor, lattice_shape) -> torch.Tensor:
    """``C(t)`` ``[B, L_1]`` from the dense ``D^{-1}`` ``[B, 2V, 2V]`` (all source points)."""
    l0, l1 = lattice_shape
    squares = inverse.reshape(-1, 2, l0, l1, 2, l0, l1).abs().pow(2).sum(dim=(1, 2, 4, 5))  # [B, x_1, y_1]
    times = torch.arange(l1, device=inverse.device)
    separation = (times[None, :] + times[:, None]) % l1  # [t, y_1] -> x_1 = y_1 + t
    return squares[:, separation, times[None, :]].sum(-1) / (l0 * l1)


class Schwinger(U1):
    """``S = S_gauge - log det(D^dagger D)`` with the determinant computed exactly."""

    name = "schwinger"
    couplings_declared = (Coupling("beta", "gauge coupling"),
                          Coupling("kappa", "hopping parameter of the Wilson fermions", affine=False))

    def __init__(self, lattice_shape, *, beta, kappa):
        Theory.__init__(self, lattice_shape, beta=beta, kappa=kappa)
        if self.dimension != 2:
            raise InputError(f"the Schwinger model is two-dimensional; got lattice {self.lattice_shape}")
        if not 0 < self.couplings["kappa"] < 0.5:
            raise InputError(f"kappa must lie in (0, 0.5) for Wilson fermions here, got {self.couplings['kappa']}")
        self.field = AngleField()

    @property
    def kappa(self) -> float:
        return self.couplings["kappa"]

    def gauge_action(self, theta):
        return U1.action(self, theta)

    def fermion_log_det(self, theta) -> torch.Tensor:
        """``log det(D^dagger D) = 2 log |det D|`` per configuration (float64)."""
        return 2 * torch.linalg.slogdet(wilson_matrix(theta, self.kappa)).logabsdet

    def action(self, theta):
        return self.gauge_action(theta) - self.fermion_log_det(theta)

    def force(self, theta):
        return Theory.force(self, theta)  # automatic differentiation through the determinant

    def exact_log_partition_function(self):
        return None

    def observables(self, theta):
        result = super().observables(theta)
        inverse = torch.linalg.inv(wilson_matrix(theta, self.kappa))
        result["chiral_condensate"] = inverse.diagonal(dim1=-2, dim2=-1).sum(-1).real / self.volume
        for t, value in enumerate(pion_correlator(inverse, self.lattice_shape).unbind(1)):
            result[f"pion_correlator_t{t}"] = value
        return result


class SchwingerPseudofermion(Schwinger):
    """The same theory sampled with pseudofermions; without them drawn, ``action`` is the exact
    effective action (small lattices only)."""

    name = "schwinger-pseudofermion"
    cg_tolerance = 1e-13

    def __init__(self, lattice_shape, *, beta, kappa):
        super().__init__(lattice_shape, beta=beta, kappa=kappa)
        self.pseudofermions = None
        self.cg_iterations: list[int] = []

    def _normal(self, theta):
        return lambda v: apply_wilson_dagger(theta, apply_wilson(theta, v, self.kappa), self.kappa)

    def _solve(self, theta):
        x, report = conjugate_gradient(self._normal(theta.detach()), self.pseudofermions, self.cg_tolerance)
        self.cg_iterations.append(report.iterations)
        return x

    def refresh_auxiliary_fields(self, theta, generator=None):
        """Heat bath: ``phi = D^dagger eta``, ``eta`` complex Gaussian with density ``exp(-|eta|^2)``."""
        shape = (theta.shape[0], 2, *self.lattice_shape)
        parts = torch.randn((2, *shape), generator=generator, dtype=torch.float64, device=theta.device) / 2**0.5
        refreshed = copy.copy(self)
        refreshed.pseudofermions = apply_wilson_dagger(theta, torch.complex(parts[0], parts[1]), self.kappa)
        return refreshed

    def action(self, theta):
        if self.pseudofermions is None:
            return super().action(theta)
        x = self._solve(theta)
        return self.gauge_action(theta) + sum_per_config((self.pseudofermions.conj() * x).real)

    def force(self, theta):
        if self.pseudofermions is None:
            return super().force(theta)
        x = self._solve(theta)
        with torch.enable_grad():
            leaf = theta.detach().requires_grad_(True)
            surrogate = self.gauge_action(leaf) - sum_per_config(apply_wilson(leaf, x, self.kappa).abs() ** 2)
            (gradient,) = torch.autograd.grad(surrogate.sum(), leaf)
        return self.field.tangent_force(theta, gradient)
