"""Hybrid Monte Carlo (Duane, Kennedy, Pendleton, Roweth, Phys. Lett. B 195 (1987) 216).

One trajectory: draw momenta ``p ~ exp(-K)``, integrate Hamilton's equations for
``H = K(p) + S(field)`` with a reversible symplectic integrator, accept the end point with
probability ``min(1, exp(-dH))``.  Every entry of the batch is an independent chain with its
own accept/reject decision; ``H`` and the decision are computed in float64.

The step size of every trajectory is drawn uniformly from ``step * [1 - jitter, 1 + jitter]``
(independently of the state, so detailed balance is kept).  Without it HMC is not ergodic
for (nearly) harmonic modes whose frequency times the trajectory length is a multiple of pi:
such a mode comes back to (minus) itself and never thermalises (Mackenzie, Phys. Lett. B 226
(1989) 369).  The free scalar field on an 8x8 lattice at m2 = 0.5 with tau = 1 is an example.

Step-size tuning (during thermalisation only, so the stored chain is a fixed Markov
process): for second-order integrators the acceptance is ``erfc(sqrt(<dH>)/2)``
(Gupta, Kilcup, Sharpe, Phys. Rev. D 38 (1988) 1278) and ``<dH> ~ step^4``, so the measured
acceptance is inverted to an effective ``<dH>`` and the number of steps per trajectory of
fixed length is rescaled towards the target.

What HMC samples is an :class:`HMCTarget`, ``exp(-S)`` with what molecular dynamics needs: every
:class:`gaugeflow.lattice.theory.Theory` is one, and so is the action of a flow's latent
variables (:class:`gaugeflow.hmc.flow_hmc.PulledBackTheory`).  :class:`HMCSampler` is HMC as a
:class:`gaugeflow.hmc.sampler.Sampler` for the chain runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
from scipy.special import erfcinv
from tqdm.auto import tqdm

from gaugeflow.lattice.errors import InputError

from .integrators import free_drift, get_integrator, nested_drift
from .sampler import TrajectoryResult

if TYPE_CHECKING:
    from gaugeflow.lattice.fields import FieldType
    from gaugeflow.lattice.theory import ActionPart


@runtime_checkable
class HMCTarget(Protocol):
    """The distribution ``exp(-S)`` that HMC samples: everything :func:`hmc_trajectory`,
    :func:`molecular_dynamics` and :class:`HMCSampler` read of it.  Implemented by
    :class:`gaugeflow.lattice.theory.Theory` and by the pulled-back action of flow HMC
    (:class:`gaugeflow.hmc.flow_hmc.PulledBackTheory`); all methods are batched over axis 0."""

    name: str  # for messages
    field: FieldType  # how the state moves: momenta, kinetic energy, drift, tangent force, projection

    def action(self, field: torch.Tensor) -> torch.Tensor:
        """``S`` per configuration, ``[B]`` float64 (the Hamiltonian's potential)."""

    def force(self, field: torch.Tensor) -> torch.Tensor:
        """The gradient of ``S`` in the field's tangent space (one time scale)."""

    def action_parts(self) -> tuple[ActionPart, ...]:
        """``S`` as a sum of parts with their forces, finest time scale first (``md_substeps > 1``
        nests them; :func:`gaugeflow.hmc.integrators.nested_drift`); at least one."""

    def refresh_auxiliary_fields(self, field: torch.Tensor, generator=None) -> HMCTarget:
        """The target for one trajectory from ``field``, with any auxiliary fields (pseudofermions)
        drawn at fixed ``field``; a target without them returns itself."""


@dataclass
class HMCParameters:
    """Trajectory length ``tau``, integration steps per trajectory, integrator name, the
    relative jitter of the step size (0 disables it) and ``md_substeps``: with more than one,
    multiple time scales (:func:`gaugeflow.hmc.integrators.nested_drift`) over the theory's
    :meth:`~gaugeflow.lattice.theory.Theory.action_parts`, each finer part integrated with
    ``md_substeps`` steps per step of the next coarser one (``n_steps`` counts the coarsest)."""

    trajectory_length: float = 1.0
    n_steps: int = 10
    integrator: str = "omelyan"
    jitter: float = 0.2
    md_substeps: int = 1

    def __post_init__(self):
        if not (math.isfinite(self.trajectory_length) and self.trajectory_length > 0):
            raise InputError(f"trajectory_length must be positive and finite, got {self.trajectory_length}")
        if int(self.n_steps) < 1:
            raise InputError(f"n_steps must be at least 1, got {self.n_steps}")
        self.n_steps = int(self.n_steps)
        get_integrator(self.integrator)
        if not 0 <= self.jitter < 1:
            raise InputError(f"jitter (of the step size) must lie in [0, 1), got {self.jitter}")
        if int(self.md_substeps) < 1:
            raise InputError(f"md_substeps must be at least 1, got {self.md_substeps}")
        self.md_substeps = int(self.md_substeps)

    @property
    def step_size(self) -> float:
        return self.trajectory_length / self.n_steps


def hamiltonian(theory, field, momenta) -> torch.Tensor:
    return theory.action(field) + theory.field.kinetic_energy(momenta)


def molecular_dynamics(theory, field, momenta, params: HMCParameters, step_size: float | None = None):
    """Integrate one trajectory (step size ``params.step_size`` unless given); returns ``(field, momenta)``.

    With ``params.md_substeps > 1`` the theory's action parts run on nested time scales."""
    integrate = get_integrator(params.integrator)
    step_size = params.step_size if step_size is None else step_size
    if params.md_substeps == 1:
        drift, force = free_drift(theory.field), theory.force
    else:
        forces = [part.force for part in theory.action_parts()]
        drift, force = nested_drift(integrate, theory.field, forces, params.md_substeps), forces[-1]
    return integrate(drift, force, field, momenta, step_size, params.n_steps)


def hmc_trajectory(theory: HMCTarget, field: torch.Tensor, params: HMCParameters, generator=None) -> TrajectoryResult:
    """One HMC update of every chain in the batch (``theory``: any :class:`HMCTarget`).

    Auxiliary fields (pseudofermions) are refreshed first, at the current ``field``
    (:meth:`gaugeflow.lattice.theory.Theory.refresh_auxiliary_fields`); the trajectory and its
    Metropolis step then use the action with them held fixed.
    """
    theory = theory.refresh_auxiliary_fields(field, generator)
    momenta = theory.field.random_momenta(field, generator)
    h_start = hamiltonian(theory, field, momenta)
    jitter = 2 * torch.rand((), generator=generator, dtype=torch.float64, device=field.device).item() - 1
    step_size = params.step_size * (1 + params.jitter * jitter)
    proposal, momenta_end = molecular_dynamics(theory, field, momenta, params, step_size)
    delta_h = hamiltonian(theory, proposal, momenta_end) - h_start
    uniform = torch.rand(field.shape[0], generator=generator, dtype=torch.float64, device=field.device)
    # a NaN energy difference (a blown-up trajectory) is always rejected
    accepted = torch.log(uniform) < -delta_h
    mask = accepted.view(-1, *([1] * (field.dim() - 1)))
    new_field = torch.where(mask, proposal, field)
    return TrajectoryResult(theory.field.project(new_field), accepted, delta_h)


def acceptance_probability(delta_h: torch.Tensor) -> torch.Tensor:
    """``min(1, exp(-dH))`` per chain; its mean is a low-variance acceptance estimate."""
    return torch.exp(-delta_h.clamp(min=0)).nan_to_num(0.0)


def retuned_steps(params: HMCParameters, measured_acceptance: float, target: float, max_steps: int = 10_000) -> int:
    """Number of steps that moves the acceptance towards ``target`` at fixed trajectory length."""
    measured = min(max(measured_acceptance, 1e-3), 1 - 1e-6)
    mean_dh_measured = (2 * erfcinv(measured)) ** 2
    mean_dh_target = (2 * erfcinv(target)) ** 2
    factor = (mean_dh_target / mean_dh_measured) ** 0.25  # step size scales by this
    # damped: near the integrator's stability limit <dH> grows much faster than step^4,
    # and undamped updates then oscillate between too few and too many steps
    factor = min(max(factor, 2 / 3), 1.5)
    return int(min(max(1, math.ceil(params.n_steps / factor)), max_steps))


def thermalise(theory, field, params, n_therm, generator, tune, target, progress=False, received=None):
    """Run ``n_therm`` trajectories (not stored), retuning the step count every window."""
    window = max(5, min(20, n_therm // 10))
    probabilities = []
    for _ in tqdm(range(n_therm), disable=None if progress else True, desc="thermalise", unit="traj", leave=False):
        result = hmc_trajectory(theory, field, params, generator)
        field = result.field
        probabilities.append(acceptance_probability(result.delta_h).mean().item())
        if tune and len(probabilities) == window:
            steps = retuned_steps(params, float(np.mean(probabilities)), target)
            params = replace(params, n_steps=steps)
            probabilities = []
        if received is not None and received["signal"]:
            break
    return field, params


class HMCSampler:
    """HMC as a :class:`gaugeflow.hmc.sampler.Sampler` (adapted state: the tuned step count)."""

    name = "hmc"

    def __init__(self, theory: HMCTarget, params: HMCParameters | None = None, tune: bool = True,
                 target_acceptance: float = 0.8):
        if not 0 < target_acceptance < 1:
            raise InputError(f"target_acceptance must lie strictly between 0 and 1, got {target_acceptance}")
        self.theory, self.params = theory, params or HMCParameters()
        if self.params.md_substeps > 1 and len(theory.action_parts()) == 1:
            raise InputError(f"md_substeps={self.params.md_substeps} needs an action of several parts on different time "
                             f"scales; {theory.name} has one")
        self.tune, self.target_acceptance = tune, target_acceptance

    def run_parameters(self) -> dict:
        return {
            "integrator": self.params.integrator,
            "trajectory_length": float(self.params.trajectory_length),
            "step_size_jitter": float(self.params.jitter),
            "md_substeps": self.params.md_substeps,
        }

    def update(self, field, generator):
        return hmc_trajectory(self.theory, field, self.params, generator)

    def thermalise(self, field, n_therm, generator, progress=False, received=None):
        field, self.params = thermalise(
            self.theory, field, self.params, n_therm, generator, self.tune, self.target_acceptance, progress, received
        )
        return field

    def resume_attributes(self) -> dict:
        return {"n_steps": self.params.n_steps}

    def restore(self, state: dict) -> None:
        if "n_steps" in state:
            self.params = replace(self.params, n_steps=int(state["n_steps"]))

    def postfix(self) -> dict:
        return {"steps": self.params.n_steps}
