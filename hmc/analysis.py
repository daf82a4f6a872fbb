"""Observable averages with autocorrelation-aware errors for a stored ensemble.

Primary observables (one number per configuration) get the Gamma method
(:func:`gaugeflow.hmc.autocorrelation.gamma_method`) with every Markov chain as a replica.
Derived quantities are :class:`DerivedQuantity` objects (:func:`register_derived` adds one),
each with its own error propagation; built in:

* ``chi_2pt`` (phi^4) ``= V (<m^2> - <m>^2)`` with ``m`` the magnetisation per site, i.e. the
  sum over separations of the connected two-point function (Albergo et al., arXiv:2101.08176);
* ``topological_susceptibility`` ``= <Q^2> / V`` (where the ensemble has a topological charge);
* ``topological_charge_squared`` ``= <Q^2>``;
* ``pion_effective_mass_t{t}`` ``= log(C(t) / C(t+1))`` for ``t < T/2`` where the ensemble has
  a pion correlator ``pion_correlator_t{t}`` (Schwinger model).

Diagnostics: ``acceptance`` and ``exp_minus_delta_h`` (``<exp(-dH)>``, exactly 1 for HMC with a
reversible, area-preserving integrator: given as its exact value for HMC ensembles).

Where the exact value of an observable is known for the ensemble's theory, lattice and couplings
(:func:`gaugeflow.lattice.exact.expectation_values`: 2D U(1) and SU(N) plaquettes, Wilson loops,
``<Q^2>``, the free scalar field), it is given with the *pull* ``(estimate - exact) / error``,
which is normally distributed with unit width for a correct sampler and a reliable error.

Numbers are written as papers write them (:func:`format_value_error`): ``0.7004(34)`` means
``0.7004 +- 0.0034``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gaugeflow.lattice.ensemble import open_ensemble
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.exact import expectation_values
from gaugeflow.lattice.gradient_flow import FLOW_COLUMN, flow_columns, scale_t0, scale_w0

from .autocorrelation import gamma_method, jackknife


def _result(mean, error, tau_int=None, tau_int_error=None, replica_q=None) -> dict:
    return {"mean": float(mean), "error": float(error), "tau_int": None if tau_int is None else float(tau_int),
            "tau_int_error": None if tau_int_error is None else float(tau_int_error),
            "replica_q": None if replica_q is None else float(replica_q)}


def _gamma_result(g, scale: float = 1.0) -> dict:
    return _result(g.mean * scale, g.error * scale, g.tau_int, g.tau_int_error, g.replica_q)


# Healthy chains (all of them sampling one distribution, each of at least ~60 tau_int) fall below
# this Q-value for fewer than 1 in 1000 observables; chains of 15 tau_int, whose errors are not to
# be trusted, for 3 in 100; chains stuck in different places at Q ~ 0.  Chains shorter than
# REPLICA_MIN_LENGTH are not judged: a Gamma-method error from a few configurations a chain is
# biased low, and 8 chains of 16 at tau_int = 2 fall below the threshold one time in seven.
REPLICA_Q_THRESHOLD = 1e-4
REPLICA_MIN_LENGTH = 50
# An independence-Metropolis chain holds (accepted proposals + 1) distinct configurations, and its
# tau_int is about 1 / acceptance (a chain that stays with probability 1 - a has rho(t) = (1 - a)^t):
# with fewer accepted proposals than this a chain is shorter than ~20 tau_int and still remembers
# where it started (the flow's distribution, not the target's).
FEWEST_ACCEPTED = 20


def _warnings(results: dict[str, dict], sampler, accepted: list[np.ndarray]) -> list[str]:
    """The warnings of :func:`analyze_with_warnings` from its results, the ensemble's sampler and
    its accepted flags per chain."""
    lines = []
    if sampler == "flow":
        fewest = min(int(chain.sum()) for chain in accepted)
        if fewest < FEWEST_ACCEPTED:
            lines.append(f"a chain accepted only {fewest} of its flow proposals (fewer than {FEWEST_ACCEPTED}): the "
                         "chains have hardly moved from the flow's samples and the errors are meaningless; sample "
                         "with 'gaugeflow sample --sampler composite', or train the flow further")
    for name, result in results.items():
        q = result.get("replica_q")
        if q is not None and q < REPLICA_Q_THRESHOLD and min(map(len, accepted)) >= REPLICA_MIN_LENGTH:
            lines.append(f"{name}: the chains' means disagree beyond the error (replica Q = {q:.1e}); they have not "
                         "mixed or are too short for the error to be trusted")
    return lines


def analyze_ensemble(path, S: float = 1.5) -> dict[str, dict]:
    """``{name: {"mean", "error", "tau_int", "tau_int_error", "replica_q", "exact", "pull"}}`` for
    every observable of the ensemble at ``path`` (:func:`analyze_with_warnings` without its
    warnings).

    ``tau_int`` and its error are in units of stored configurations of one chain (``None`` for
    jackknifed derived quantities and the acceptance).  ``replica_q`` is the Q-value of the
    chains' means given the error (``None`` for one chain and where there is no Gamma-method
    error): tiny when the chains disagree beyond it (:func:`analyze_with_warnings`).  ``exact`` is the
    exact value where it is known for the ensemble's theory, lattice and couplings, and ``pull`` is
    ``(mean - exact) / error`` (both ``None`` otherwise; see :func:`with_exact_values`).
    """
    return analyze_with_warnings(path, S)[0]


def analyze_with_warnings(path, S: float = 1.5) -> tuple[dict[str, dict], list[str]]:
    """:func:`analyze_ensemble`'s results, and what makes their errors untrustworthy, one line
    each (none for a healthy ensemble), from the same single read of the ensemble:

    * an observable whose chains' means disagree beyond its error (replica Q-value below
      ``REPLICA_Q_THRESHOLD``; :func:`gaugeflow.hmc.autocorrelation.replica_q`; chains of at
      least ``REPLICA_MIN_LENGTH`` configurations): the chains have not mixed (e.g. frozen in
      different topological sectors) or are too short for their autocorrelation to be measured;
    * an independence-Metropolis (``flow``) chain that accepted fewer than ``FEWEST_ACCEPTED``
      proposals: it has hardly moved, so its configurations are still those of the flow, its own
      fluctuations (and so the error) nearly vanish, and all chains can be biased alike, which
      no comparison of chains reveals.

    Neither check can prove an ensemble right; they catch the two common ways an error bar lies."""
    with open_ensemble(path) as ensemble:
        if len(ensemble) == 0:
            raise InputError(f"{path} holds no configurations yet")
        volume = math.prod(ensemble.lattice_shape)
        theory = (ensemble.theory_name, ensemble.lattice_shape, ensemble.couplings)
        sampler = ensemble.attrs.get("sampler")
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
        if not FLOW_COLUMN.match(name):  # a flow curve is summarised by its scales (_flow_scales)
            results[name] = _gamma_result(gamma_method(chains, S=S))
    for derived in _DERIVED:
        if all(name in per_chain for name in derived.needs):
            results.update(derived.estimate(per_chain, volume, S))
    results["acceptance"] = _result(*_mean_and_naive_error(accepted))
    finite = [np.exp(-np.nan_to_num(c, nan=np.inf)) for c in delta_h]
    results["exp_minus_delta_h"] = _result(*_mean_and_naive_error(finite))
    exact = expectation_values(*theory, results)
    if sampler == "hmc":  # an area-preserving, reversible integrator (Creutz, Phys. Rev. D 38 (1988) 1228)
        exact["exp_minus_delta_h"] = 1.0
    results = with_exact_values(results, exact)
    return results, _warnings(results, sampler, accepted)


@dataclass(frozen=True)
class DerivedQuantity:
    """Quantities computed from primary observables, with their errors propagated:
    ``estimate(per_chain, volume, S) -> {name: {"mean", "error", ...}}`` where ``per_chain``
    maps every observable to one array per chain.  Applied to every ensemble that has all the
    observables ``needs``; register one with :func:`register_derived`."""

    needs: tuple[str, ...]
    estimate: Callable[[dict, int, float], dict]
    description: str = ""


_DERIVED: list[DerivedQuantity] = []


def register_derived(derived: DerivedQuantity) -> DerivedQuantity:
    """Add a derived quantity to what :func:`analyze_ensemble` (``gaugeflow analyze``) reports."""
    if derived not in _DERIVED:
        _DERIVED.append(derived)
    return derived


def _chi_2pt(per_chain, volume, S):
    m = per_chain["magnetization"]
    return {"chi_2pt": _result(*jackknife(lambda a, b: volume * (b - a * a), m, [c * c for c in m]))}


def _topological(per_chain, volume, S):
    g = gamma_method([c * c for c in per_chain["topological_charge"]], S=S)
    return {"topological_charge_squared": _gamma_result(g), "topological_susceptibility": _gamma_result(g, 1 / volume)}


def _effective_masses(per_chain, volume, S):
    correlator = []
    while f"pion_correlator_t{len(correlator)}" in per_chain:
        correlator.append(per_chain[f"pion_correlator_t{len(correlator)}"])
    return {f"pion_effective_mass_t{t}": _result(*jackknife(lambda a, b: math.log(a / b), correlator[t],
                                                             correlator[t + 1])) for t in range(len(correlator) // 2)}


def _flow_curve(per_chain, names) -> list[np.ndarray]:
    """One ``[n_r, T]`` array per chain from the columns ``names`` (one per flow time)."""
    return [np.stack(columns, axis=1) for columns in zip(*(per_chain[n] for n in names))]


def _flow_scales(per_chain, volume, S):
    """``t0``, ``w0`` (clover), ``t0_plaquette``, ``w0_plaquette`` from a stored ``wilson_flow``
    measurement, interpolation inside the Gamma-method propagation
    (:func:`gaugeflow.lattice.gradient_flow.scale_t0`), reference 0.3; a scale the flow did not
    reach is left out.  Also the charge at the largest flow time and its susceptibility."""
    found = flow_columns(per_chain)
    out = {}
    for definition, suffix in (("clover", ""), ("plaquette", "_plaquette")):
        if f"E_{definition}" not in found:
            continue
        times, names = found[f"E_{definition}"]
        energy = _flow_curve(per_chain, names)
        if definition == "plaquette" and "dE_plaquette" in found:
            derivative = _flow_curve(per_chain, found["dE_plaquette"][1])  # exact along the flow
        else:
            derivative = [np.gradient(e, times, axis=1) for e in energy]
        t2e = [times**2 * e for e in energy]
        t_d_t2e = [2 * times**2 * e + times**3 * d for e, d in zip(energy, derivative)]
        for name, data, scale in (("t0", t2e, scale_t0), ("w0", t_d_t2e, scale_w0)):
            try:
                value = scale(times, data, S=S)
            except InputError:  # not reached within the measured flow time
                continue
            out[name + suffix] = _result(value.value, value.error, value.tau_int, value.tau_int_error)
    if "Q" in found:
        times, names = found["Q"]
        charge = per_chain[names[-1]]
        out[f"flowed_topological_charge_t{times[-1]:.4f}"] = _gamma_result(gamma_method(charge, S=S))
        g = gamma_method([c * c for c in charge], S=S)
        out[f"flowed_topological_susceptibility_t{times[-1]:.4f}"] = _gamma_result(g, 1 / volume)
    return out


register_derived(DerivedQuantity(("magnetization",), _chi_2pt, "chi_2pt = V (<m^2> - <m>^2), jackknife"))
register_derived(DerivedQuantity(("topological_charge",), _topological,
                                 "<Q^2> and chi_t = <Q^2>/V, Gamma method of Q^2"))
register_derived(DerivedQuantity(("pion_correlator_t0",), _effective_masses,
                                 "pion effective masses log(C(t)/C(t+1)) for t < T/2, jackknife"))
register_derived(DerivedQuantity((), _flow_scales, "t0, w0 (clover and plaquette) and the flowed charge from a "
                                                   "wilson_flow measurement"))


def _mean_and_naive_error(chains):
    values = np.concatenate(chains)
    return values.mean(), values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def with_exact_values(results: dict[str, dict], exact: dict[str, float]) -> dict[str, dict]:
    """``results`` (``{name: {"mean", "error", ...}}``) with ``"exact"`` and ``"pull" = (mean -
    exact) / error`` added to every entry: ``None`` where ``exact`` has no value for the name
    (the pull also where the error is 0 or not finite)."""
    combined = {}
    for name, result in results.items():
        value = exact.get(name)
        error = result.get("error")
        pull = None
        if value is not None and error is not None and math.isfinite(error) and error > 0:
            pull = (result["mean"] - value) / error
        combined[name] = {**result, "exact": None if value is None else float(value), "pull": pull}
    return combined


def _rounded_error(error: float, significance: int) -> tuple[int, int]:
    """``(digits, place)`` with ``error`` rounded to ``significance`` significant digits equal to
    ``digits * 10**place``."""
    place = math.floor(math.log10(error)) - significance + 1
    for _ in range(2):  # log10 may land one off at a power of ten; rounding may carry (0.0996 -> 0.100)
        digits = round(error / 10.0**place)
        if digits >= 10**significance:
            place += 1
        elif digits < 10 ** (significance - 1):
            place -= 1
        else:
            break
    return round(error / 10.0**place), place


def format_value_error(value: float, error: float, significance: int = 2) -> str:
    """``value`` and its ``error`` in the parenthesis notation of papers (and of pyerrors).

    The error is rounded to ``significance`` significant digits (2) and the value to the same
    decimal place.  The digits in parentheses are the error in units of the value's last digit,
    so ``0.7004(34)`` is ``0.7004 +- 0.0034``; an error of 1 or more is written as a number
    (``12.3(4.5)``, ``1230(120)``: the value rounded to tens).  Where the larger of the two
    is ``>= 1e6`` or ``< 1e-4``, both are scaled by a power of ten written after them
    (``1.234(56)e-05``).  An error of 0 gives the value alone, to 10 significant digits; a
    non-finite value or error is shown as it is.

    >>> format_value_error(0.70041, 0.00342)
    '0.7004(34)'
    >>> format_value_error(12.34, 4.47)
    '12.3(4.5)'
    >>> format_value_error(1234.5, 123.4)
    '1230(120)'
    >>> format_value_error(-0.0013859, 0.0104)
    '-0.001(10)'
    >>> format_value_error(0.69992, 0.009961)  # the error rounds up to 0.010
    '0.700(10)'
    >>> format_value_error(1.2345e-5, 5.6e-7)
    '1.234(56)e-05'
    >>> format_value_error(1.0, 0.0)
    '1'
    """
    value, error = float(value), float(error)
    if not (math.isfinite(value) and math.isfinite(error)) or error < 0:
        return f"{value:.10g}({error:g})" if math.isfinite(value) else f"{value}"
    if error == 0:
        return f"{value:.10g}"
    digits, place = _rounded_error(error, significance)
    magnitude = math.floor(math.log10(max(abs(value), digits * 10.0**place)))
    if magnitude >= 6 or magnitude < -4:
        scale = 10.0**magnitude
        return f"{format_value_error(value / scale, error / scale, significance)}e{magnitude:+03d}"
    if place < 0:
        shown = f"{value:.{-place}f}"
        uncertainty = f"{digits * 10.0**place:.{-place}f}" if digits * 10.0**place >= 1 else f"{digits}"
    else:
        shown, uncertainty = f"{round(value / 10.0**place) * 10**place}", f"{digits * 10**place}"
    if shown.startswith("-") and not shown.strip("-0."):
        shown = shown[1:]  # -0.000(12) reads as a sign that is not there
    return f"{shown}({uncertainty})"


def _format_exact(exact: float, error: float) -> str:
    """The exact value to two more decimals than the estimate beside it."""
    if exact == 0:
        return "0"
    if not (math.isfinite(error) and error > 0):
        return f"{exact:.8g}"
    _, place = _rounded_error(error, 2)
    if place - 2 < -12 or abs(exact) >= 1e6:
        return f"{exact:.8g}"
    return f"{exact:.{max(0, 2 - place)}f}"


def format_table(results: dict[str, dict]) -> str:
    """The results as a table a physicist reads: the estimate as value(error)
    (:func:`format_value_error`), ``tau_int`` with its error where there are any, and the exact
    value with the pull ``(estimate - exact) / error`` where any is known.  Columns that would
    be empty are left out."""
    has_tau = any(r.get("tau_int") is not None for r in results.values())
    has_exact = any(r.get("exact") is not None for r in results.values())
    header = ["observable", "estimate"] + ["tau_int"] * has_tau + ["exact", "pull"] * has_exact
    rows = []
    for name, r in results.items():
        row = [name, format_value_error(r["mean"], r["error"])]
        if has_tau:
            tau, tau_error = r.get("tau_int"), r.get("tau_int_error")
            row.append("" if tau is None else f"{tau:.2f}" if tau_error is None else format_value_error(tau, tau_error))
        if has_exact:
            exact, pull = r.get("exact"), r.get("pull")
            row.append("" if exact is None else _format_exact(exact, r["error"]))
            row.append("" if pull is None else f"{pull:+.1f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
