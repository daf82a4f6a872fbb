"""Independence Metropolis with a normalizing flow as the proposal.

Proposals ``x' ~ q`` are drawn independently of the current state and accepted with
probability ``min(1, w(x') / w(x))``, ``w = p / q = exp(log p - log q)``, which makes the
chain exact for ``p`` whatever the quality of ``q`` (Albergo, Kanwar, Shanahan,
arXiv:1904.12072).  The acceptance rate is a direct measure of the flow's quality.
"""

from __future__ import annotations

import json

import torch

from gaugeflow.lattice.storage import digest

from .sampler import global_rng_seeded_from, independence_step


def flow_run_parameters(model, source: str) -> dict:
    """What identifies the flow a chain runs on (stored as ensemble attributes, checked on resume):
    its architecture, checkpoint and the SHA-256 of its weights."""
    return {"flow_architecture": json.dumps(model.architecture, sort_keys=True), "flow_checkpoint": str(source),
            "flow_weights_sha256": digest(model.state_dict())}


class FlowMetropolisSampler:
    """Batched independence Metropolis with a trained flow, as a
    :class:`gaugeflow.hmc.sampler.Sampler` (``gaugeflow sample``).

    Every chain proposes one flow sample per step and accepts it with probability
    ``min(1, w'/w)``; the stored ``delta_h`` is ``-log(w'/w)``, so ``accepted`` has
    probability ``min(1, exp(-delta_h))`` as for HMC.  The flow runs in float64.  Proposals
    are drawn from a generator seeded from the chain's own generator, so a resumed run
    continues exactly.  The current chains' log-weights are recomputed from their fields with
    the flow's exact inverse after a resume.
    """

    name = "flow"

    def __init__(self, model, source: str = ""):
        self.model = model.double()
        self.model.eval()
        self.source = str(source)
        self.log_weight = None

    def run_parameters(self) -> dict:
        return flow_run_parameters(self.model, self.source)

    def _log_weights(self, field):
        return self.model.target_log_prob(field) - self.model.log_prob(field)

    @torch.no_grad()
    def _proposals(self, n: int, device, generator):
        """:meth:`_draw` ``(n)`` under torch's global RNG seeded from the chain's generator (so a
        resumed run proposes the same samples), leaving the global RNG as it was."""
        with global_rng_seeded_from(generator, device):
            return self._draw(n)

    def _draw(self, n: int):
        """``n`` flow samples and their ``log q``."""
        return self.model.sample(n)

    @torch.no_grad()
    def update(self, field, generator):
        device, n = field.device, field.shape[0]
        proposal, log_q = self._proposals(n, device, generator)
        proposal = proposal.to(field.dtype)
        new_log_weight = self.model.target_log_prob(proposal) - log_q
        if self.log_weight is None:
            self.log_weight = self._log_weights(field.to(proposal.dtype))
        result = independence_step(field, proposal, new_log_weight - self.log_weight, new_log_weight, generator)
        self.log_weight = torch.where(result.accepted, new_log_weight, self.log_weight)
        return result

    def thermalise(self, field, n_therm, generator, progress=False, received=None):
        """Start every chain from a flow sample, then ``n_therm`` steps.  A hot start can have a
        weight ``p/q`` so large that no proposal is ever accepted (phi^4: the flow density of a
        standard-normal field is tiny where the target's is not); any initial state keeps the
        chain exact, and a proposal is typical."""
        proposal, _ = self._proposals(field.shape[0], field.device, generator)
        field, self.log_weight = proposal.to(field.dtype), None
        for _ in range(n_therm):
            field = self.update(field, generator).field
            if received is not None and received["signal"]:
                break
        return field

    def resume_attributes(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        self.log_weight = None

    def postfix(self) -> dict:
        return {}
