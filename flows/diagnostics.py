"""Quality measures of a flow from its importance weights ``w = p / q``.

Given log-weights ``log w = log p - log q`` (``log p = -S`` unnormalised) of independent flow
samples:

* :func:`effective_sample_size` -- the normalised ESS ``(sum w)^2 / (n sum w^2)`` of
  reweighting ``q`` to ``p`` (Kish; in this context Nicoli et al., arXiv:2007.07115);
* :func:`acceptance_rate` -- the acceptance of an independence-Metropolis chain over the
  samples (Albergo, Kanwar, Shanahan, arXiv:1904.12072), run by :func:`independence_metropolis`.

Both are used by training (``gaugeflow.flows.train``) and by the samplers (``gaugeflow.hmc``).
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


def effective_fraction(log_weights: torch.Tensor) -> torch.Tensor:
    """``(sum w)^2 / (n sum w^2)`` over the last axis of ``log_weights [..., n]``: the normalised
    effective sample size of each row (the resampling test of a particle system)."""
    w = torch.exp(log_weights - log_weights.amax(-1, keepdim=True))
    return w.sum(-1) ** 2 / (log_weights.shape[-1] * (w * w).sum(-1))


def effective_sample_size(log_weights: torch.Tensor) -> float:
    """Normalised ESS ``(sum w)^2 / (n sum w^2)`` in (0, 1] of reweighting ``q`` to ``p``; weights
    that are not finite count in ``n`` only."""
    lw = log_weights.detach().to(torch.float64)
    finite = lw[torch.isfinite(lw)] if torch.isfinite(lw).any() else lw
    return (effective_fraction(finite) * (finite.shape[0] / log_weights.shape[0])).item()
