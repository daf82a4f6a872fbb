"""Observable averages with autocorrelation-aware errors for a stored ensemble.

Primary observables (one number per configuration) get the Gamma method
(:func:`gaugeflow.hmc.autocorrelation.gamma_method`) with every Markov chain as a replica.
Derived quantities use the binned jackknife:

* ``chi_2pt`` (phi^4) ``= V (<m^2> - <m>^2)`` with ``m`` the magnetisation per site, i.e. the
  sum over separations of the connected two-point function (Albergo et al., arXiv:2101.08176);
* ``topological_susceptibility`` ``= <Q^2> / V`` (where the ensemble has a topological charge);
* ``topological_charge_squared`` ``= <Q^2>``;
* ``pion_effective_mass_t{t}`` ``= log(C(t) / C(t+1))`` for ``t < T/2`` where the ensemble has
  a pion correlator ``pion_correlator_t{t}`` (Schwinger model).

Diagnostics: ``acceptance`` and ``exp_minus_delta_h`` (``<exp(-dH)>``, 1 for a correct HMC).
"""

from __future__ import annotations

import math

import numpy as np

from gaugeflow.lattice.ensemble import open_ensemble
from gaugeflow.lattice.errors import InputError

from .autocorrelation import gamma_method, jackknife


def _result(mean, error, tau_int=None) -> dict:
    return {"mean": float(mean), "error": float(error), "tau_int": None if tau_int is None else float(tau_int)}


def analyze_ensemble(path, S: float = 1.5) -> dict[str, dict]:
    """``{name: {"mean", "error", "tau_int"}}`` for every observable of the ensemble at ``path``.

    ``tau_int`` is in units of stored configurations of one chain (``None`` for jackknifed
    derived quantities).
    """
    with open_ensemble(path) as ensemble:
        if len(ensemble) == 0:
            raise InputError(f"{path} holds no configurations yet")
        volume = math.prod(ensemble.lattice_shape)
        per_chain = {name: ensemble.per_chain(values) for name, values in ensemble.observables().items()}
        accepted = ensemble.per_chain(ensemble.column("accepted").astype(np.float64))
        delta_h = ensemble.per_chain(ensemble.column("delta_h"))
    shortest = min(len(chain) for chain in accepted)
    if shortest < 2:
        # A job that has just started has committed one configuration per chain.
        raise InputError(f"{path} holds {shortest} configuration in its shortest chain so far; "
                         "the analysis needs at least 2 per chain")

    results = {}
    for name, chains in per_chain.items():
        g = gamma_method(chains, S=S)
        results[name] = _result(g.mean, g.error, g.tau_int)
    if "magnetization" in per_chain:
        m = per_chain["magnetization"]
        m2 = [c * c for c in m]
        results["chi_2pt"] = _result(*jackknife(lambda a, b: volume * (b - a * a), m, m2))
    if "topological_charge" in per_chain:
        q2 = [c * c for c in per_chain["topological_charge"]]
        g = gamma_method(q2, S=S)
        results["topological_charge_squared"] = _result(g.mean, g.error, g.tau_int)
        results["topological_susceptibility"] = _result(g.mean / volume, g.error / volume, g.tau_int)
    correlator = [per_chain[f"pion_correlator_t{t}"] for t in range(len(per_chain)) if f"pion_correlator_t{t}" in per_chain]
    for t in range(len(correlator) // 2):
        results[f"pion_effective_mass_t{t}"] = _result(*jackknife(lambda a, b: math.log(a / b), correlator[t],
                                                                   correlator[t + 1]))
    results["acceptance"] = _result(*_mean_and_naive_error(accepted))
    finite = [np.exp(-np.nan_to_num(c, nan=np.inf)) for c in delta_h]
    results["exp_minus_delta_h"] = _result(*_mean_and_naive_error(finite))
    return results


def _mean_and_naive_error(chains):
    values = np.concatenate(chains)
    return values.mean(), values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def format_table(results: dict[str, dict]) -> str:
    """Fixed-width table of the analysis results."""
    width = max(len(name) for name in results)
    lines = [f"{'observable':<{width}}  {'mean':>14}  {'error':>11}  {'tau_int':>8}"]
    for name, r in results.items():
        tau = "" if r["tau_int"] is None else f"{r['tau_int']:8.2f}"
        lines.append(f"{name:<{width}}  {r['mean']:14.8g}  {r['error']:11.3g}  {tau:>8}")
    return "\n".join(lines)
