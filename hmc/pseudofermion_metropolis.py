"""Independence Metropolis on the joint density of gauge field and pseudofermions.

With a pseudofermion flow ``q(U, phi) = q(U) q(phi | U)``
(:mod:`gaugeflow.flows.pseudofermion_flow`, Abbott et al. arXiv:2207.08945) and the joint
target ``p(U, phi)`` whose ``phi``-marginal is ``exp(-S_gauge) det(D^dagger D)``, one step of
every chain is

1. a Gibbs step on the pseudofermions: ``phi ~ p(phi | U)``, i.e. ``phi = D_hat^dagger eta``
   (the HMC heat bath); it leaves ``p(U, phi)`` invariant;
2. an independence-Metropolis step on the pair: propose ``(U', phi') ~ q``, accept with
   probability ``min(1, w'/w)``, ``w = p(U, phi) / q(U, phi)``; it leaves ``p(U, phi)``
   invariant whatever ``q`` is.

So the gauge fields are exact samples of the Schwinger model, and the chain's state is the
gauge field alone (``phi`` is drawn afresh from the chain's generator each step), which is what
the ensemble stores and resumes from.  ``log q(U)`` of the current chains is kept between steps
and recomputed with the gauge flow's exact inverse after a resume or an HMC step (composite
chain).  All densities are float64.
"""

from __future__ import annotations

import torch

from .flow_metropolis import FlowMetropolisSampler
from .sampler import independence_step


class PseudofermionFlowMetropolisSampler(FlowMetropolisSampler):
    """Batched joint independence Metropolis with a
    :class:`gaugeflow.flows.pseudofermion_flow.PseudofermionFlow` (module docstring), as a
    :class:`gaugeflow.hmc.sampler.Sampler`; ``delta_h = -log(w'/w)``."""

    name = "pseudofermion-flow"

    @property
    def log_weight(self):
        """``log q(U)`` of the current chains (``None``: recomputed at the next step).  Named as
        in :class:`FlowMetropolisSampler`, whose callers reset it when the state moved."""
        return self._log_q_gauge

    @log_weight.setter
    def log_weight(self, value):
        self._log_q_gauge = value

    def _draw(self, n: int):
        """``(JointField, log q(U), log q(phi | U))`` of ``n`` joint samples."""
        return self.model.sample_parts(n)

    @torch.no_grad()
    def update(self, field, generator):
        from gaugeflow.flows.pseudofermion_flow import JointField

        device, n = field.device, field.shape[0]
        gauge = field.to(torch.float64)
        current = JointField(gauge, self.model.heat_bath(gauge, generator))
        proposal, log_q_gauge, _ = self._proposals(n, device, generator)
        new_log_weight = self.model.log_weight(proposal, log_q_gauge)
        if self.log_weight is None:
            self.log_weight = self.model.gauge.log_prob(gauge)
        log_ratio = new_log_weight - self.model.log_weight(current, self.log_weight)
        result = independence_step(field, proposal.gauge.to(field.dtype), log_ratio, new_log_weight, generator)
        self.log_weight = torch.where(result.accepted, log_q_gauge, self.log_weight)
        return result

    def thermalise(self, field, n_therm, generator, progress=False, received=None):
        """Start every chain from a flow sample, then ``n_therm`` steps."""
        proposal, _, _ = self._proposals(field.shape[0], field.device, generator)
        field, self.log_weight = proposal.gauge.to(field.dtype), None
        for _ in range(n_therm):
            field = self.update(field, generator).field
            if received is not None and received["signal"]:
                break
        return field


def flow_metropolis_sampler(model, source: str = "") -> FlowMetropolisSampler:
    """The independence-Metropolis sampler for ``model``, as its kind says (on the joint density
    for a pseudofermion flow, on the field's density otherwise;
    :meth:`gaugeflow.flows.contract.FlowModel.metropolis_sampler`)."""
    return model.metropolis_sampler(source)
