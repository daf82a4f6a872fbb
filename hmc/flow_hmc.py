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

Multiple time scales (``md_substeps > 1``) split ``S_z`` into the prior's action
``-log q_0(z)`` -- no pass through the flow, and for a good flow the part of ``S_z`` that
varies (``q = p`` makes ``S_z = -log q_0 + const``): the finest scale -- then the theory's parts
at ``f(z)``, the first of them with the flow's remainder ``log q_0(z) - log |det df/dz|``
(:meth:`PulledBackTheory.action_parts`).  So every target, U(1) included, has at least two
parts; for the Schwinger model they are prior, gauge and fermions.
"""

from __future__ import annotations

import torch

from gaugeflow.lattice.theory import ActionPart

from .flow_metropolis import flow_run_parameters
from .hmc import HMCParameters, HMCSampler


class PulledBackTheory:
    """The action ``S_z(z) = S(f(z)) - log|det df/dz|`` of a flow's latent variables, an
    :class:`gaugeflow.hmc.hmc.HMCTarget` like any theory.  The flow's parameters are frozen;
    float64 throughout; every force is the automatic derivative of its action through the flow.

    It holds no auxiliary fields of its own: with pseudofermions the theory's action without
    them drawn is the exact determinant, the density the flow was trained on, and so the
    latent chain samples that (:meth:`refresh_auxiliary_fields` returns the target itself)."""

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
        return self._force(self.action, z)

    def _force(self, action, z: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            value = action(leaf).sum()
            # a constant action (the Haar priors') does not depend on z at all
            gradient = torch.autograd.grad(value, leaf)[0] if value.requires_grad else torch.zeros_like(z)
        return self.field.tangent_force(z, gradient)

    def _part(self, name: str, action) -> ActionPart:
        return ActionPart(name, action, lambda z: self._force(action, z))

    def prior_action(self, z: torch.Tensor) -> torch.Tensor:
        """``-log q_0(z)``, the action of the flow's prior."""
        return -self.model.prior_log_prob(z)

    def action_parts(self) -> tuple[ActionPart, ...]:
        """``-log q_0(z)`` (``prior``, the finest time scale), then the theory's parts at ``f(z)``
        in their order, the first with ``log q_0(z) - log|det df/dz|`` added; they add up to
        :meth:`action` (module docstring)."""
        first, *rest = self.theory.action_parts()

        def first_with_remainder(z):
            x, log_det = self.model.forward_and_log_det(z)
            return first.action(x) - log_det + self.model.prior_log_prob(z)

        parts = [self._part("prior", self.prior_action), self._part(first.name, first_with_remainder)]
        parts += [self._part(part.name, self._pulled_back(part.action)) for part in rest]
        return tuple(parts)

    def _pulled_back(self, action):
        return lambda z: action(self.configurations(z))

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

