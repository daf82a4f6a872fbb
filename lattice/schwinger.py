"""The Schwinger model: 2D U(1) gauge theory with N_f = 2 degenerate Wilson fermions.

Integrating out the fermions leaves the effective action

    S(theta) = S_gauge(theta) - log det(D^dagger D),     S_gauge = -beta sum_x cos theta_01(x),

with the Wilson operator ``D`` of :mod:`gaugeflow.lattice.fermions` (hopping parameter
``kappa``, antiperiodic in time).  The theory is the U(1) gauge action plus a fermion action
object, chosen by the option ``fermions`` (registry :data:`FERMION_ACTIONS`):

* ``exact`` (theory name ``schwinger``) -- the determinant exactly: dense ``D`` and a batched
  log-determinant, force by automatic differentiation (small lattices; Albergo et al.,
  arXiv:2106.05934);
* ``pseudofermion`` (theory name ``schwinger-pseudofermion``) -- even-odd preconditioned:
  ``det(D^dagger D) = det(D_hat^dagger D_hat) = pi^-n int dphi exp(-phi^dagger (D_hat^dagger
  D_hat)^{-1} phi)`` with the Schur complement ``D_hat = 1 - kappa^2 H_oe H_eo`` on the odd
  sites (:mod:`gaugeflow.lattice.fermions`; even extents).  At the start of every HMC
  trajectory a heat bath draws ``phi = D_hat^dagger eta`` on the odd sites
  (:meth:`Schwinger.refresh_auxiliary_fields`), and the trajectory runs on ``S_gauge +
  phi^dagger (D_hat^dagger D_hat)^{-1} phi`` through a conjugate-gradient solver, with the
  force ``-d/dtheta |D_hat(theta) X|^2`` at fixed ``X = (D_hat^dagger D_hat)^{-1} phi``.
  Without pseudofermions drawn its action is the exact one.

Ensembles and models store a theory by name and couplings, so the name carries the option.

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
from .fermions import EvenOddWilson, checkerboard, conjugate_gradient, wilson_matrix
from .fields import AngleField
from .geometry import sum_per_config
from .theory import ActionPart, Coupling, Option, Theory
from .u1 import U1


def pion_correlator(inverse: torch.Tensor, lattice_shape) -> torch.Tensor:
    """``C(t)`` ``[B, L_1]`` from the dense ``D^{-1}`` ``[B, 2V, 2V]`` (all source points)."""
    l0, l1 = lattice_shape
    squares = inverse.reshape(-1, 2, l0, l1, 2, l0, l1).abs().pow(2).sum(dim=(1, 2, 4, 5))  # [B, x_1, y_1]
    times = torch.arange(l1, device=inverse.device)
    separation = (times[None, :] + times[:, None]) % l1  # [t, y_1] -> x_1 = y_1 + t
    return squares[:, separation, times[None, :]].sum(-1) / (l0 * l1)


class ExactDeterminant:
    """The fermion action ``-log det(D^dagger D) = -2 log |det D|`` from the dense ``D``."""

    def __init__(self, kappa: float, lattice_shape):
        self.kappa = kappa

    def action(self, theta) -> torch.Tensor:
        return -2 * torch.linalg.slogdet(wilson_matrix(theta, self.kappa)).logabsdet

    def gradient(self, theta) -> torch.Tensor:
        """``dS_f/dtheta`` by automatic differentiation through the determinant."""
        with torch.enable_grad():
            leaf = theta.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.action(leaf).sum(), leaf)
        return gradient

    def refresh(self, theta, generator=None) -> ExactDeterminant:
        return self


class Pseudofermions(ExactDeterminant):
    """Even-odd preconditioned pseudofermions on the odd sites,
    ``phi^dagger (D_hat^dagger D_hat)^{-1} phi`` with the Schur complement
    ``D_hat = 1 - kappa^2 H_oe H_eo`` (:class:`gaugeflow.lattice.fermions.EvenOddWilson`;
    ``det D_hat = det D``), at fixed ``phi`` ``[B, 2, V/2]``; the exact determinant while none
    are drawn.  ``cg_iterations`` collects the iterations of every solve, shared by all
    refreshed copies.  Needs even extents."""

    cg_tolerance = 1e-13

    def __init__(self, kappa: float, lattice_shape):
        super().__init__(kappa, lattice_shape)
        checkerboard(tuple(lattice_shape))  # refuses odd extents now rather than in the first trajectory
        self.pseudofermions = None
        self.cg_iterations: list[int] = []

    def _solve(self, theta):
        """``X = (D_hat^dagger D_hat)^{-1} phi`` by conjugate gradient."""
        operator = EvenOddWilson(theta.detach(), self.kappa)
        x, report = conjugate_gradient(operator.apply_normal, self.pseudofermions, self.cg_tolerance)
        self.cg_iterations.append(report.iterations)
        return x

    def refresh(self, theta, generator=None) -> Pseudofermions:
        """Heat bath: ``phi = D_hat^dagger eta``, ``eta`` complex Gaussian on the odd sites with
        density ``exp(-|eta|^2)``."""
        shape = (2, theta.shape[0], 2, theta[0, 0].numel() // 2)
        parts = torch.randn(shape, generator=generator, dtype=torch.float64, device=theta.device) / 2**0.5
        refreshed = copy.copy(self)
        refreshed.pseudofermions = EvenOddWilson(theta, self.kappa).apply_dagger(torch.complex(parts[0], parts[1]))
        return refreshed

    def action(self, theta):
        if self.pseudofermions is None:
            return super().action(theta)
        return sum_per_config((self.pseudofermions.conj() * self._solve(theta)).real)

    def gradient(self, theta):
        """``dS/dtheta = -d/dtheta |D_hat(theta) X|^2`` at fixed ``X``: from ``S = phi^dagger
        (D_hat^dagger D_hat)^{-1} phi``, ``dS = -X^dagger d(D_hat^dagger D_hat) X``."""
        if self.pseudofermions is None:
            return super().gradient(theta)
        x = self._solve(theta)
        with torch.enable_grad():
            leaf = theta.detach().requires_grad_(True)
            surrogate = -sum_per_config(EvenOddWilson(leaf, self.kappa).apply(x).abs() ** 2)
            (gradient,) = torch.autograd.grad(surrogate.sum(), leaf)
        return gradient


FERMION_ACTIONS = {"exact": ExactDeterminant, "pseudofermion": Pseudofermions}
FERMIONS = Option("fermions", "treatment of the fermion determinant", tuple(FERMION_ACTIONS))


class Schwinger(U1):
    """``S = S_gauge + S_f`` with the fermion action ``S_f`` chosen by the option ``fermions``
    (:data:`FERMION_ACTIONS`); instances are named ``schwinger`` (exact determinant) and
    ``schwinger-<fermions>`` otherwise."""

    name = "schwinger"
    couplings_declared = (Coupling("beta", "gauge coupling"),
                          Coupling("kappa", "hopping parameter of the Wilson fermions", affine=False))
    options_declared = (FERMIONS,)

    def __init__(self, lattice_shape, *, beta, kappa, fermions=FERMIONS.default):
        Theory.__init__(self, lattice_shape, beta=beta, kappa=kappa)
        if self.dimension != 2:
            raise InputError(f"the Schwinger model is two-dimensional; got lattice {self.lattice_shape}")
        if not 0 < self.couplings["kappa"] < 0.5:
            raise InputError(f"kappa must lie in (0, 0.5) for Wilson fermions here, got {self.couplings['kappa']}")
        self.options = {FERMIONS.name: FERMIONS.check(fermions)}
        self.name = type(self).name if fermions == FERMIONS.default else f"{type(self).name}-{fermions}"
        self.field = AngleField()
        self.fermions = FERMION_ACTIONS[fermions](self.kappa, self.lattice_shape)

    @classmethod
    def parse_name(cls, name):
        if name == cls.name:
            return {}
        treatment = name.removeprefix(cls.name + "-")
        return {"fermions": treatment} if treatment != name and treatment in FERMION_ACTIONS else None

    @property
    def kappa(self) -> float:
        return self.couplings["kappa"]

    @property
    def cg_iterations(self) -> list[int]:
        """Conjugate-gradient iterations of every solve so far (empty for exact determinants)."""
        return getattr(self.fermions, "cg_iterations", [])

    def gauge_action(self, theta):
        return U1.action(self, theta)

    def fermion_action(self, theta):
        return self.fermions.action(theta)

    def fermion_log_det(self, theta) -> torch.Tensor:
        """``log det(D^dagger D) = 2 log |det D|`` per configuration (float64)."""
        return -ExactDeterminant.action(self.fermions, theta)

    def action(self, theta):
        return self.gauge_action(theta) + self.fermion_action(theta)

    def gauge_force(self, theta):
        return U1.force(self, theta)

    def fermion_force(self, theta):
        return self.field.tangent_force(theta, self.fermions.gradient(theta))

    def force(self, theta):
        return self.gauge_force(theta) + self.fermion_force(theta)

    def action_parts(self):
        """Gauge action (cheap, stiff: the finer time scale) and fermion action."""
        return (ActionPart("gauge", self.gauge_action, self.gauge_force),
                ActionPart("fermions", self.fermion_action, self.fermion_force))

    def refresh_auxiliary_fields(self, theta, generator=None):
        """Draws the fermion action's auxiliary fields (pseudofermions), if it has any."""
        fermions = self.fermions.refresh(theta, generator)
        if fermions is self.fermions:
            return self
        refreshed = copy.copy(self)
        refreshed.fermions = fermions
        return refreshed

    def exact_log_partition_function(self):
        return None

    def observables(self, theta):
        result = super().observables(theta)
        inverse = torch.linalg.inv(wilson_matrix(theta, self.kappa))
        result["chiral_condensate"] = inverse.diagonal(dim1=-2, dim2=-1).sum(-1).real / self.volume
        for t, value in enumerate(pion_correlator(inverse, self.lattice_shape).unbind(1)):
            result[f"pion_correlator_t{t}"] = value
        return result
