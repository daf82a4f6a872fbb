"""Pseudofermion flows: a joint model of the gauge field and the pseudofermions of the Schwinger model.

Abbott et al., "Gauge-equivariant flow models for sampling in lattice field theories with
pseudofermions", Phys. Rev. D 106, 074506 (2022), arXiv:2207.08945.

The pseudofermion form of the N_f = 2 Schwinger model (:mod:`gaugeflow.lattice.schwinger`,
even-odd preconditioned) is a joint density of the link angles ``U`` and complex
pseudofermions ``phi`` on the odd sites (``n = V`` complex components: two spins on V/2 sites),

    p(U, phi) = exp(-S_gauge(U)) pi^-n exp(-phi^dagger (D_hat^dagger D_hat)^{-1} phi),
    D_hat(U; kappa) = 1 - kappa^2 H_oe H_eo,

whose ``phi``-marginal is ``exp(-S_gauge) det(D_hat^dagger D_hat) = exp(-S_gauge) det(D^dagger D)``:
the exact-determinant target, with the same normalisation.  The model is

    q(U, phi) = q(U) q(phi | U),    phi = M(U) chi,    chi ~ pi^-n exp(-|chi|^2),
    M(U) = a D_hat(U; kappa_q)^dagger,
    log q(phi | U) = -n log pi - |M^{-1} phi|^2 - log |det M|^2,
    log |det M|^2 = 2 n log a + 2 log |det D_hat(U; kappa_q)|,

with ``q(U)`` a U(1) gauge-equivariant flow (:func:`gaugeflow.flows.model.build_flow`) and the
learned scalars ``log a`` and ``kappa_q``: a gauge-covariant preconditioner of
``D_hat^dagger D_hat``.  Under a gauge transformation ``Omega``, ``D_hat[U^Omega] = Omega
D_hat[U] Omega^dagger``, so ``(U, phi) -> (U^Omega, Omega phi)`` leaves ``q(U)``,
``q(phi | U)`` and ``p(U, phi)`` unchanged.  At ``a = 1, kappa_q = kappa`` the conditional is the
exact one (the HMC heat bath ``phi = D_hat^dagger chi``) and ``p/q`` reduces to the
exact-determinant weight ``p(U)/q(U)``; the joint reverse KL is ``KL(q(U) || p(U)) +
E_U KL(q(phi | U) || p(phi | U))`` and is minimised there, so the conditional's parameters
start there unless ``pseudofermion_kappa`` (architecture) says otherwise.  Trained by reverse KL
on the joint action (:func:`gaugeflow.flows.train.train_flow` takes this model as it is); an
independence Metropolis chain on the joint density
(:class:`gaugeflow.hmc.pseudofermion_metropolis.PseudofermionFlowMetropolisSampler`) is exact.

Cost and limitation: ``D_hat`` is built densely (``[B, n, n]``) and ``det D_hat(U; kappa_q)``
and ``(D_hat^dagger)^{-1} phi`` come from batched LU (``slogdet``, ``solve``): ``O(B V^3)``
per evaluation, exact to rounding; building the dense matrix (``D_hat`` applied to ``n`` unit
vectors) dominates (timings in benchmarks/README.md).  Larger lattices need a conditional
with a determinant that is tractable without a dense matrix (the paper's pseudofermion coupling
layers), which this module does not provide.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.fermions import checkerboard, schur_matrix
from gaugeflow.lattice.geometry import sum_per_config

from .contract import MODEL_KIND_KEY, FlowModel, build_model, model_architecture, register_model_kind  # noqa: F401
from .model import build_flow, transfer_weights

__all__ = ["JointField", "PseudofermionFlow", "build_model", "build_pseudofermion_flow", "hopping_matrix",
           "load_pseudofermion_flow", "model_architecture", "pseudofermion_architecture"]

ARCHITECTURE_KEY = "pseudofermion_kappa"


class JointField(NamedTuple):
    """A batch of gauge fields ``[B, 2, L0, L1]`` (angles) with pseudofermions ``[B, 2, V/2]``
    (complex128, odd sites in :class:`gaugeflow.lattice.fermions.Checkerboard` order)."""

    gauge: torch.Tensor
    pseudofermions: torch.Tensor


def hopping_matrix(theta: torch.Tensor) -> torch.Tensor:
    """Dense ``K = H_oe H_eo`` ``[B, n, n]`` (complex128, differentiable), so that
    ``D_hat(U; k) = 1 - k^2 K`` for every ``k``."""
    eye = torch.eye(theta[0, 0].numel(), dtype=torch.complex128, device=theta.device)
    return eye - schur_matrix(theta.to(torch.float64), 1.0)


def _flat(phi: torch.Tensor) -> torch.Tensor:
    return phi.reshape(phi.shape[0], -1, 1)


def complex_gaussian(shape, generator=None, device=None) -> torch.Tensor:
    """Standard complex Gaussian with density ``pi^-n exp(-|chi|^2)``."""
    parts = torch.randn((2, *shape), generator=generator, dtype=torch.float64, device=device) / 2**0.5
    return torch.complex(parts[0], parts[1])


def pseudofermion_architecture(gauge_architecture: dict, kappa_q: float | None = None) -> dict:
    """The architecture of a joint model: the gauge flow's, plus the initial ``kappa_q``
    (``None``: the theory's ``kappa``, i.e. the exact conditional).  The theory must be
    ``schwinger-pseudofermion``."""
    if not gauge_architecture["theory"].startswith("schwinger-pseudofermion"):
        raise InputError(f"pseudofermion flows model schwinger-pseudofermion, not {gauge_architecture['theory']}")
    kappa = gauge_architecture["couplings"]["kappa"]
    return {**gauge_architecture, MODEL_KIND_KEY: "pseudofermion",
            ARCHITECTURE_KEY: float(kappa if kappa_q is None else kappa_q)}


class PseudofermionFlow(torch.nn.Module, FlowModel):
    """``q(U, phi) = q(U) q(phi | U)`` (module docstring).  Samples and densities are
    :class:`JointField` s; the interface is that of :class:`gaugeflow.flows.model.LatticeFlow`
    (``sample``, ``log_prob``, ``target_log_prob``, ``theory``, ``architecture``), so training
    and checkpoints treat it like any flow.  Densities are float64."""

    def __init__(self, gauge_flow, architecture: dict):
        super().__init__()
        self.gauge = gauge_flow
        self.architecture = architecture
        theory = gauge_flow.theory
        checkerboard(tuple(theory.lattice_shape))  # even extents
        self.kappa = float(theory.couplings["kappa"])
        self.n = theory.volume  # complex components of phi: 2 spins x V/2 odd sites
        self.log_scale = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.kappa_q = torch.nn.Parameter(torch.tensor(float(architecture[ARCHITECTURE_KEY]), dtype=torch.float64))

    @property
    def theory(self):
        return self.gauge.theory

    # the model contract (gaugeflow.flows.contract)
    @classmethod
    def build(cls, arch: dict) -> PseudofermionFlow:
        return build_pseudofermion_flow(arch)

    @classmethod
    def from_weights(cls, state_dict: dict, arch: dict) -> PseudofermionFlow:
        return load_pseudofermion_flow(state_dict, arch)

    def transfer_weights(self, state_dict: dict) -> None:
        """Grow the gauge flow (``gauge.flows.*``); the conditional starts as the exact one at
        the new couplings."""
        transfer_weights(self.gauge, {k.removeprefix("gauge."): v for k, v in state_dict.items()})

    def physical_field(self, x: JointField):
        return x.gauge

    def metropolis_sampler(self, source: str = ""):
        from gaugeflow.hmc.pseudofermion_metropolis import PseudofermionFlowMetropolisSampler

        return PseudofermionFlowMetropolisSampler(self, source)

    def random_coupling_values(self, n: int, device=None):
        return None  # kappa cannot be conditioned on

    def compile_layers(self, mode=None, **options):
        self.gauge.compile_layers(mode, **options)
        return self

    def recompute_in_backward(self, enabled: bool = True):
        self.gauge.recompute_in_backward(enabled)
        return self

    # the conditional q(phi | U) and the pseudofermion action, from the dense K = H_oe H_eo
    def _model_operator(self, hopping):
        """``D_hat(U; kappa_q)`` ``[B, n, n]``."""
        eye = torch.eye(self.n, dtype=torch.complex128, device=hopping.device)
        return eye - self.kappa_q.to(torch.complex128) ** 2 * hopping

    def _log_abs_det_m2(self, operator):
        """``log |det M|^2 = 2 n log a + 2 log |det D_hat(U; kappa_q)|``."""
        return 2 * self.n * self.log_scale.to(torch.float64) + 2 * torch.linalg.slogdet(operator).logabsdet

    def conditional_log_prob(self, hopping, phi):
        """``log q(phi | U)`` from ``K`` of ``U``."""
        operator = self._model_operator(hopping)
        chi = torch.linalg.solve(operator.conj().transpose(-1, -2), _flat(phi)) * torch.exp(-self.log_scale)
        return -self.n * math.log(math.pi) - sum_per_config(chi.abs() ** 2) - self._log_abs_det_m2(operator)

    def conditional_sample(self, hopping, generator=None):
        """``(phi, log q(phi | U))`` with ``phi = M chi``."""
        chi = complex_gaussian((hopping.shape[0], self.n, 1), generator, hopping.device)
        operator = self._model_operator(hopping)
        phi = torch.exp(self.log_scale) * (operator.conj().transpose(-1, -2) @ chi)
        log_q = -self.n * math.log(math.pi) - sum_per_config(chi.abs() ** 2) - self._log_abs_det_m2(operator)
        return phi.reshape(hopping.shape[0], 2, self.n // 2), log_q

    def pseudofermion_action(self, hopping, phi):
        """``phi^dagger (D_hat^dagger D_hat)^{-1} phi = |(D_hat^dagger)^{-1} phi|^2`` at the theory's kappa."""
        eye = torch.eye(self.n, dtype=torch.complex128, device=hopping.device)
        operator = eye - self.kappa**2 * hopping
        return sum_per_config(torch.linalg.solve(operator.conj().transpose(-1, -2), _flat(phi)).abs() ** 2)

    def heat_bath(self, gauge, generator=None):
        """``phi ~ p(phi | U)``: ``D_hat^dagger chi`` at the theory's kappa (Gibbs step of the joint chain)."""
        eye = torch.eye(self.n, dtype=torch.complex128, device=gauge.device)
        operator = eye - self.kappa**2 * hopping_matrix(gauge)
        chi = complex_gaussian((gauge.shape[0], self.n, 1), generator, gauge.device)
        return (operator.conj().transpose(-1, -2) @ chi).reshape(gauge.shape[0], 2, self.n // 2)

    def gauge_action(self, gauge):
        return self.theory.gauge_action(gauge).to(torch.float64)

    # joint densities
    def sample_parts(self, num_samples=1):
        """``(JointField, log q(U), log q(phi | U))``."""
        gauge, log_q_gauge = self.gauge.sample(num_samples)
        phi, log_q_phi = self.conditional_sample(hopping_matrix(gauge))
        return JointField(gauge, phi), log_q_gauge, log_q_phi

    def sample(self, num_samples=1, context=None):
        """``(JointField, log q(U, phi))``."""
        x, log_q_gauge, log_q_phi = self.sample_parts(num_samples)
        return x, log_q_gauge + log_q_phi

    def log_prob(self, x: JointField, context=None):
        """``log q(U, phi)``: the gauge flow's exact inverse plus the conditional."""
        return self.gauge.log_prob(x.gauge) + self.conditional_log_prob(hopping_matrix(x.gauge), x.pseudofermions)

    def target_log_prob(self, x: JointField, context=None, hopping=None):
        """``log p(U, phi) = -S_gauge(U) - phi^dagger (D_hat^dagger D_hat)^{-1} phi - n log pi``."""
        hopping = hopping_matrix(x.gauge) if hopping is None else hopping
        return (-self.gauge_action(x.gauge) - self.pseudofermion_action(hopping, x.pseudofermions)
                - self.n * math.log(math.pi))

    def log_weight(self, x: JointField, log_q_gauge):
        """``log p(U, phi) - log q(U, phi)`` given ``log q(U)`` (one dense ``K`` for both terms)."""
        hopping = hopping_matrix(x.gauge)
        return (self.target_log_prob(x, hopping=hopping) - log_q_gauge
                - self.conditional_log_prob(hopping, x.pseudofermions))

    def gauge_transform(self, x: JointField, alpha) -> JointField:
        """``(U^Omega, Omega phi)`` for site angles ``alpha [B, L0, L1]`` (``Omega = e^{i alpha}``)."""
        odd = checkerboard(tuple(self.theory.lattice_shape), None).sites[1].to(alpha.device)
        rotation = torch.polar(torch.ones_like(alpha), alpha).flatten(1)[:, odd].to(torch.complex128)
        return JointField(self.theory.gauge_transform(x.gauge, alpha), rotation[:, None] * x.pseudofermions)


def build_pseudofermion_flow(arch: dict) -> PseudofermionFlow:
    """An untrained joint model: the gauge flow's prior and the conditional at ``kappa_q``."""
    gauge_arch = {k: v for k, v in arch.items() if k not in (ARCHITECTURE_KEY, MODEL_KIND_KEY)}
    return PseudofermionFlow(build_flow(gauge_arch), arch)


def _for_theory(theory) -> bool:
    from gaugeflow.lattice.schwinger import Pseudofermions

    return isinstance(getattr(theory, "fermions", None), Pseudofermions)


def load_pseudofermion_flow(state_dict: dict, arch: dict) -> PseudofermionFlow:
    """A joint model with the weights of ``state_dict`` (gauge-flow layers and the conditional's
    scalars; the priors and masks belong to the lattice of ``arch``), in their precision."""
    model = build_pseudofermion_flow(arch)
    wanted = {k: v for k, v in state_dict.items() if k.startswith("gauge.flows.") or k in ("log_scale", "kappa_q")}
    layers = [v for k, v in wanted.items() if k.startswith("gauge.flows.") and v.is_floating_point()]
    if layers:
        model.gauge.to(layers[0].dtype)
    result = model.load_state_dict(wanted, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("gauge.flows.") or k in ("log_scale", "kappa_q")]
    if missing or result.unexpected_keys:
        raise InputError(f"weights do not fit this architecture (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    return model


register_model_kind("pseudofermion", PseudofermionFlow, for_theory=_for_theory,
                    architecture=pseudofermion_architecture)
