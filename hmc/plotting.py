r"""What a physicist looks at for an ensemble, as one PNG: for every observable its Monte Carlo
history (every chain), its histogram beside it (integer bins for the topological charge), and
its normalised autocorrelation function :math:`\rho(t) = \Gamma(t)/\Gamma(0)` with the summation
window :math:`W` that Wolff's automatic windowing chose and the resulting :math:`\tau_\mathrm{int}`
(:func:`gaugeflow.hmc.autocorrelation.gamma_method`; U. Wolff, Comput. Phys. Commun. 156 (2004)
143, hep-lat/0306017).  The history shows the mean and its error as a dashed line and a band,
and, where the package knows the exact expectation value for the ensemble's theory, lattice and
couplings (:func:`gaugeflow.lattice.exact.expectation_values`), that value as a dotted line.

Time series of one observable per time slice (``pion_correlator_t0``, ``_t1``, ...) are left out
of the figure (``gaugeflow analyze`` lists them).  ``gaugeflow plot ens.h5`` draws ``ens.png``
(:func:`ensemble_plot_path`).

matplotlib is imported lazily; figures are :class:`matplotlib.figure.Figure` objects, without
pyplot's global state.
"""

from __future__ import annotations

import os
import re

import numpy as np

from gaugeflow.lattice.ensemble import open_ensemble
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.exact import expectation_values
from gaugeflow.lattice.storage import save_figure

from .analysis import format_value_error
from .autocorrelation import gamma_method, normalized_autocorrelation

SERIES = re.compile(r"_t\d+(\.\d+)?$")  # per time slice or flow time: a curve, not a history to look at
CHARGE = "topological_charge"

__all__ = ["ensemble_figure", "ensemble_plot_path", "plot_ensemble"]


def ensemble_plot_path(path) -> str:
    """``ens.png`` for the ensemble ``ens.h5``."""
    return os.path.splitext(str(path))[0] + ".png"


def _read(path) -> dict:
    """Metadata and per-chain observable series of the ensemble at ``path``."""
    with open_ensemble(path) as ensemble:
        if len(ensemble) == 0:
            raise InputError(f"{path} holds no configurations yet")
        attrs = ensemble.attrs
        observables = ensemble.observables()
        order = [n for n in attrs.get("observable_names", ()) if n in observables]  # the theory's order
        series = {name: ensemble.per_chain(observables[name]) for name in order + sorted(set(observables) - set(order))}
        info = dict(theory=ensemble.theory_name, lattice=ensemble.lattice_shape, couplings=ensemble.couplings,
                    sampler=str(attrs.get("sampler", "")), save_every=int(attrs.get("save_every", 1) or 1),
                    n_configs=len(ensemble))
    shortest = min((len(chain) for chains in series.values() for chain in chains), default=0)
    if shortest < 2:
        raise InputError(f"{path} holds {shortest} configuration(s) in its shortest chain so far; "
                         "the plots need at least 2 per chain")
    return {**info, "series": series}


def _title(path, info: dict, n_chains: int) -> str:
    couplings = ", ".join(f"{name}={value:g}" for name, value in info["couplings"].items())
    lattice = "x".join(map(str, info["lattice"]))
    sampler = f"{info['sampler']} ensemble" if info["sampler"] else "ensemble"
    return (f"{info['theory']} on {lattice}, {couplings}\n{os.path.basename(str(path))}: {sampler}, "
            f"{info['n_configs']} configurations in {n_chains} chain(s)")


def _time_units(info: dict) -> tuple[str, str]:
    """The units of Monte Carlo time and of the autocorrelation lag (stored configurations)."""
    unit, units = ("trajectory", "trajectories") if info["sampler"] == "hmc" else ("update", "updates")
    if info["save_every"] == 1:
        return unit, units
    return f"{unit}; one in {info['save_every']} stored", "stored configurations"


def _is_integer_valued(values: np.ndarray) -> bool:
    return bool(np.all(np.abs(values - np.round(values)) < 1e-6))


def _draw_history(ax, chains, save_every: int, result, color_of, integer: bool, exact: float | None):
    for index, chain in enumerate(chains):
        ax.plot(np.arange(len(chain)) * save_every, chain, lw=0.7, alpha=0.8, color=color_of(index),
                drawstyle="steps-post" if integer else "default", label=f"chain {index}" if len(chains) > 1 else None)
    ax.axhline(result.mean, color="k", ls="--", lw=0.9)
    ax.axhspan(result.mean - result.error, result.mean + result.error, color="k", alpha=0.12, lw=0)
    if exact is not None:
        ax.axhline(exact, color="C2", ls=":", lw=1.6)


def _draw_histogram(ax, values: np.ndarray, integer: bool):
    if integer:
        low, high = int(np.round(values.min())), int(np.round(values.max()))
        bins = np.arange(low - 0.5, high + 1.5)
    else:
        bins = min(40, max(10, int(np.sqrt(len(values)))))
    ax.hist(values, bins=bins, orientation="horizontal", color="0.45", alpha=0.8)
    ax.set_xlabel("count")
    ax.tick_params(labelleft=False)


def _draw_autocorrelation(ax, chains, result, lag_unit: str):
    longest = max(len(chain) for chain in chains)
    max_lag = min(longest // 2 - 1, max(4 * result.window, 3 * int(np.ceil(result.tau_int)), 10))
    rho = normalized_autocorrelation(chains, max_lag=max(max_lag, 0))
    ax.axhline(0, color="0.5", lw=0.8)
    ax.plot(np.arange(len(rho)), rho, color="C0", marker=".", ms=3)
    ax.axvline(result.window, color="C3", ls="--", lw=1,
               label=f"window W = {result.window}: τ_int = {format_value_error(result.tau_int, result.tau_int_error)}")
    ax.set_ylim(min(-0.2, float(rho.min()) - 0.05), 1.05)
    ax.set_xlabel(f"lag t [{lag_unit}]")
    ax.set_ylabel("ρ(t)")
    ax.legend(fontsize="small", loc="upper right")


def ensemble_figure(path, S: float = 1.5):
    """The figure of the ensemble at ``path`` (see the module docstring); ``S``: Wolff's S_tau."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install matplotlib") from None
    info = _read(path)
    names = [name for name in info["series"] if not SERIES.search(name)]
    left_out = [name for name in info["series"] if SERIES.search(name)]
    if CHARGE in names:  # topology first: what a frozen chain shows first
        names.insert(0, names.pop(names.index(CHARGE)))
    n_chains = len(next(iter(info["series"].values())))
    exact = expectation_values(info["theory"], info["lattice"], info["couplings"], names)
    unit, lag_unit = _time_units(info)

    fig = Figure(figsize=(13, 0.9 + 2.3 * len(names)), layout="constrained")
    grid = fig.add_gridspec(len(names), 3, width_ratios=[5, 1.2, 2.6])
    colors = [f"C{i % 10}" for i in range(10)]
    for row, name in enumerate(names):
        chains = info["series"][name]
        values = np.concatenate(chains)
        integer = name == CHARGE and _is_integer_valued(values)
        result = gamma_method(chains, S=S)
        history = fig.add_subplot(grid[row, 0])
        histogram = fig.add_subplot(grid[row, 1], sharey=history)
        autocorrelation = fig.add_subplot(grid[row, 2])
        _draw_history(history, chains, info["save_every"], result, lambda i: colors[i % 10], integer, exact.get(name))
        history.set_ylabel(name.replace("_", " "))
        history.set_xlabel(f"Monte Carlo time [{unit}]")
        summary = f"{name} = {format_value_error(result.mean, result.error)}"
        if name in exact:
            summary += f" (exact {exact[name]:.6g}, dotted)"
        history.set_title(f"{summary}, τ_int = {format_value_error(result.tau_int, result.tau_int_error)}",
                          fontsize="medium", loc="left")
        _draw_histogram(histogram, values, integer)
        if name == CHARGE:
            histogram.set_title("Q distribution", fontsize="medium")
        _draw_autocorrelation(autocorrelation, chains, result, lag_unit)
        for ax in (history, histogram, autocorrelation):
            ax.grid(alpha=0.3)
    if n_chains > 1:
        fig.axes[0].legend(fontsize="x-small", ncol=min(n_chains, 8), loc="upper right")
    title = _title(path, info, n_chains)
    if left_out:
        title += f"; not shown: {left_out[0]} ... {left_out[-1]} (see gaugeflow analyze)"
    fig.suptitle(title)
    return fig


def plot_ensemble(path, png_path=None, S: float = 1.5) -> str:
    """Draw :func:`ensemble_figure` of the ensemble at ``path`` into ``png_path`` (default:
    :func:`ensemble_plot_path`) and return its path."""
    png_path = ensemble_plot_path(path) if png_path is None else str(png_path)
    save_figure(ensemble_figure(path, S=S), png_path, dpi=100)
    return png_path
