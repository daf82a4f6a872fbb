"""Independence Metropolis with a normalizing flow as the proposal.

Proposals ``x' ~ q`` are drawn independently of the current state and accepted with
probability ``min(1, w(x') / w(x))``, ``w = p / q = exp(log p - log q)``, which makes the
chain exact for ``p`` whatever the quality of ``q`` (Albergo, Kanwar, Shanahan,
arXiv:1904.12072).  The acceptance rate is a direct measure of the flow's quality.
"""

from __future__ import annotations

import torch


def independence_metropolis(log_weights: torch.Tensor, generator=None, current_log_weight=None):
    """Run the accept/reject sequence over proposals with the given ``log p - log q``.

    ``log_weights`` is ``[n]`` (one chain, proposals in order).  The chain starts in
    ``current_log_weight`` if given, otherwise it starts by accepting the first proposal.
    Returns ``(index, accepted)``: for each step the index of the proposal the chain holds
    (``-1`` for the initial state) and whether the step accepted.  Decisions are in float64.
    """
    log_weights = log_weights.detach().to(torch.float64)
    n = log_weights.shape[0]
    uniforms = torch.rand(n, generator=generator, dtype=torch.float64, device=log_weights.device).log().cpu()
    log_weights = log_weights.cpu()
    index = torch.empty(n, dtype=torch.long)
    accepted = torch.empty(n, dtype=torch.bool)
    held, held_log_weight = -1, current_log_weight
    for i in range(n):
        take = held_log_weight is None or bool(uniforms[i] < log_weights[i] - held_log_weight)
        take = take and bool(torch.isfinite(log_weights[i]))
        if take:
            held, held_log_weight = i, float(log_weights[i])
        index[i], accepted[i] = held, take
    return index, accepted


def acceptance_rate(log_weights: torch.Tensor, generator=None) -> float:
    """Fraction of accepted steps of an independence Metropolis chain over these proposals
    (the first proposal initialises the chain and is not counted)."""
    if log_weights.shape[0] < 2:
        return float("nan")
    _, accepted = independence_metropolis(log_weights, generator)
    return accepted[1:].double().mean().item()


def effective_sample_size(log_weights: torch.Tensor) -> float:
    """Normalised ESS ``(sum w)^2 / (n sum w^2)`` in (0, 1] of reweighting ``q`` to ``p``."""
    lw = log_weights.detach().to(torch.float64)
    lw = lw[torch.isfinite(lw)] if torch.isfinite(lw).any() else lw
    lw = lw - lw.max()
    w = torch.exp(lw)
    return (w.sum() ** 2 / (log_weights.shape[0] * (w * w).sum())).item()


class FlowMetropolisSampler:
    """Batched independence Metropolis with a trained flow, as the update of
    :func:`hmc.run.run_chains` (``gaugeflow sample``).

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
        import json

        return {"flow_architecture": json.dumps(self.model.architecture, sort_keys=True), "flow_checkpoint": self.source}

    def _log_weights(self, field):
        return self.model.target_log_prob(field) - self.model.log_prob(field)

    @torch.no_grad()
    def update(self, field, generator):
        from .hmc import TrajectoryResult

        device, n = field.device, field.shape[0]
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
            torch.manual_seed(seed)
            proposal, log_q = self.model.sample(n)
        proposal = proposal.to(field.dtype)
        new_log_weight = self.model.target_log_prob(proposal) - log_q
        if self.log_weight is None:
            self.log_weight = self._log_weights(field.to(proposal.dtype))
        log_ratio = new_log_weight - self.log_weight
        uniform = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        accepted = (torch.log(uniform) < log_ratio) & torch.isfinite(new_log_weight)
        mask = accepted.view(-1, *([1] * (field.dim() - 1)))
        self.log_weight = torch.where(accepted, new_log_weight, self.log_weight)
        return TrajectoryResult(torch.where(mask, proposal, field), accepted, -log_ratio)

    def thermalise(self, field, n_therm, generator, progress=False, received=None):
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
