"""Flow HMC: Hybrid Monte Carlo in the latent variables of a normalizing flow.

With a flow ``x = f(z)`` whose Jacobian determinant is known exactly, the target ``p(x) ~
exp(-S(x))`` pulls back to the latent variables as ``p_z(z) ~ exp(-S_z(z))``,

    S_z(z) = S(f(z)) - log |det df/dz|,

(densities with respect to the field type's reference measure: Lebesgue on real fields and
U(1) angles, Haar on SU(N), on which the flow layers' log-determinants are defined).  HMC on
``S_z`` is exact for any flow -- a poor one only makes the molecular dynamics harder -- and
for a good flow ``S_z`` is nearly constant, so trajectories move far: the flow acts as a
trivialising map (Lüscher, Commun. Math. Phys. 293 (2010) 899, arXiv:0907.5491; with trained
flows Foreman et al., arXiv:2112.01582, and Jin, arXiv:2201.01862).  The chains' state is
``z``; the stored configurations are ``x = f(z)``.

The integrators' ``dH ~ dt^2`` needs a smooth ``S_z``: with NCP kernels (C-infinity) halving
the step size quarters the energy error (tested); rational-quadratic splines
are only C^1, so the pulled-back force jumps at their knots and the error there is O(dt).
The chain stays exact either way (every kick and drift still preserves volume and is
reversible); only the acceptance at a given step size suffers.
"""

from __future__ import annotations

import torch

from .flow_metropolis import flow_run_parameters
from .hmc import HMCParameters, HMCSampler


class PulledBackTheory:
    """The action ``S_z(z) = S(f(z)) - log|det df/dz|`` of a flow's latent variables, with what
    :func:`gaugeflow.hmc.hmc.hmc_trajectory` needs of a theory (``field``, ``action``, ``force``,
    ``refresh_auxiliary_fields``).  The flow's parameters are frozen; float64 throughout."""

    def __init__(self, model):
        self.model = model.double().eval().requires_grad_(False)
        self.theory = self.model.theory
        self.field = self.theory.field
        self.name = f"{self.theory.name} pulled back through a flow"

    def configurations(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.forward_and_log_det(z)[0]

    def action(self, z: torch.Tensor) -> torch.Tensor:
        x, log_det = self.model.forward_and_log_det(z)
        return self.theory.action(x) - log_det

    def force(self, z: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.action(leaf).sum(), leaf)
        return self.field.tangent_force(z, gradient)

    def refresh_auxiliary_fields(self, z, generator=None):
        return self


class FlowHMCSampler(HMCSampler):
    """HMC on :class:`PulledBackTheory` as a :class:`gaugeflow.hmc.sampler.Sampler`: the state
    is the latent field ``z`` (stored for resuming), the rows hold ``x = f(z)``."""

    name = "flow-hmc"

    def __init__(self, model, params: HMCParameters | None = None, tune: bool = True, target_acceptance: float = 0.8,
                 source: str = ""):
        super().__init__(PulledBackTheory(model), params, tune, target_acceptance)
        self.source = str(source)

    def run_parameters(self) -> dict:
        return {**super().run_parameters(), **flow_run_parameters(self.theory.model, self.source)}

    def update(self, z, generator):
        result = super().update(z, generator)
        result.configs = self.theory.configurations(result.field).detach()
        return result

