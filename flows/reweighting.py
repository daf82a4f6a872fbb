"""Observables and the partition function from independent flow samples, by reweighting.

With ``N`` independent samples ``x_i ~ q`` and weights ``w_i = exp(-S(x_i)) / q(x_i)``:

* ``Z = E_q[w]`` is estimated by ``mean(w)``, so ``log Z ~ log mean(w)`` (Nicoli et al.,
  "Estimation of thermodynamic observables in lattice field theories with deep generative
  models", arXiv:2007.07115), with the delta-method error ``std(w) / (sqrt(N) mean(w))``;
  ``log Z`` is with respect to the reference measure of the field (Lebesgue on real fields and
  U(1) angles, normalised Haar on SU(N)), as :meth:`Theory.exact_log_partition_function`;
* ``<O> = sum w O / sum w`` (self-normalised importance sampling), with the delta-method
  error ``sqrt(sum w^2 (O - <O>)^2) / sum w``.

Both are unbiased only as ``N -> infinity`` (the ratio's bias is ``O(1/N)``) and their errors
are reliable only while the ESS is not tiny: the ESS is returned with them.  Also
``topological_charge_squared`` where the theory has a charge.
"""

from __future__ import annotations

import math

import torch

from gaugeflow.lattice.errors import InputError

from .diagnostics import effective_sample_size


@torch.no_grad()
def reweighted_estimates(model, n_samples: int, batch_size: int = 256) -> dict[str, dict]:
    """``{name: {"mean", "error"}}`` for every observable of the model's theory, plus
    ``log_partition_function`` and ``ess`` (the normalised effective sample size)."""
    if n_samples < 2 or batch_size < 1:
        raise InputError(f"need n_samples >= 2 and batch_size >= 1, got {n_samples} and {batch_size}")
    model = model.double().eval()
    theory = model.theory
    log_weights, observables = [], {}
    for start in range(0, n_samples, batch_size):
        x, log_q = model.sample(min(batch_size, n_samples - start))
        log_weights.append(model.target_log_prob(x) - log_q)
        values = theory.observables(model.physical_field(x))
        if "topological_charge" in values:
            values["topological_charge_squared"] = values["topological_charge"] ** 2
        for name, value in values.items():
            observables.setdefault(name, []).append(value.to(torch.float64))
    return reweight(torch.cat(log_weights), {name: torch.cat(chunks) for name, chunks in observables.items()})


def reweight(log_weights: torch.Tensor, observables: dict[str, torch.Tensor]) -> dict[str, dict]:
    """``{name: {"mean", "error"}}`` of self-normalised importance sampling with the weights
    ``exp(log_weights)`` (``[n]``, ``log p - log q`` up to a constant: a flow's, or annealed
    weights) for each ``[n]`` series of ``observables``, plus ``log_partition_function`` (``log
    mean w``) and ``ess``; delta-method errors (module docstring).  Non-finite weights count as 0."""
    log_w = log_weights.to(torch.float64)
    finite = torch.isfinite(log_w)
    if not finite.any():
        raise InputError("every sample has a non-finite weight; nothing can be reweighted")
    shift = log_w[finite].max()
    w = torch.where(finite, torch.exp(log_w - shift), torch.zeros_like(log_w))
    n, total = len(w), w.sum()
    mean_w = total / n
    results = {
        "log_partition_function": {"mean": float(shift + torch.log(mean_w)),
                                   "error": float(w.std() / (math.sqrt(n) * mean_w))},
        "ess": {"mean": effective_sample_size(log_w), "error": 0.0},
    }
    for name, values in observables.items():
        values = values.to(torch.float64)
        mean = (w * values).sum() / total
        error = torch.sqrt((w * w * (values - mean) ** 2).sum()) / total
        results[name] = {"mean": float(mean), "error": float(error)}
    return results
