"""Training curves of a flow model as a PNG: the objective, ESS, Metropolis acceptance and the
learning rate, from the training log ``<model>.metrics.csv`` that :func:`gaugeflow.flows.train_flow`
writes next to the checkpoint ``<model>.pt``.

The objective is the reverse Kullback-Leibler divergence on a log axis where ``log Z`` is known
exactly (the log's ``kl`` column, ``KL = loss + log Z``), and the loss ``L = KL - log Z >= -log Z``
otherwise (also for a model conditioned on a coupling range, whose loss averages over the range).
ESS and acceptance are fractions, drawn on ``[0, 1]`` with the level at which the composite
sampler draws from the flow alone (:data:`gaugeflow.hmc.composite.PURE_FLOW_ACCEPTANCE`).
The title names theory, lattice and couplings, read from the checkpoint next to the log.

One file-name convention serves ``gaugeflow train --plot`` and ``gaugeflow plot``: the curves of
``<model>.pt`` are drawn to ``<model>.png`` (:func:`training_plot_path`).

matplotlib is imported lazily: it is needed only for plots (``pip install matplotlib``).  Figures
are built as :class:`matplotlib.figure.Figure` objects, without pyplot's global state.
"""

from __future__ import annotations

import csv
import math
import os

from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.storage import save_figure

METRICS_SUFFIX = ".metrics.csv"
REQUIRED_COLUMNS = ("step", "loss", "ess", "acceptance")

__all__ = ["is_training_log", "plot_training", "read_metrics", "training_figure", "training_plot_path",
           "training_title"]


def _model_root(metrics_path) -> str:
    """``runs/u1`` for ``runs/u1.metrics.csv`` (any other file: its name without extension)."""
    path = str(metrics_path)
    return path[: -len(METRICS_SUFFIX)] if path.endswith(METRICS_SUFFIX) else os.path.splitext(path)[0]


def training_plot_path(metrics_path) -> str:
    """``<model>.png`` for the log ``<model>.metrics.csv``: the name ``gaugeflow train --plot``
    and ``gaugeflow plot`` both write."""
    return _model_root(metrics_path) + ".png"


def checkpoint_path_for(metrics_path) -> str:
    """The checkpoint ``<model>.pt`` whose training wrote ``<model>.metrics.csv``."""
    return _model_root(metrics_path) + ".pt"


def is_training_log(path) -> bool:
    """Whether ``path`` is a text file whose first line is the header of a training log."""
    try:
        with open(path, newline="") as f:
            header = next(csv.reader([f.readline(4096)]), [])
    except (UnicodeDecodeError, csv.Error):
        return False
    return all(column in header for column in REQUIRED_COLUMNS)


def read_metrics(csv_path) -> dict[str, list[float]]:
    """The columns of a training log as lists of floats (a row cut short by a crash is skipped).

    Raises :class:`InputError` with one line if the file is no training log or has no rows yet."""
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise InputError(f"{csv_path} is not a training log (<model>.metrics.csv, written by gaugeflow train): "
                                 f"it has no column(s) {', '.join(missing)}")
            rows = []
            for row in reader:
                try:
                    rows.append({key: float(value) for key, value in row.items() if key is not None})
                except (TypeError, ValueError):
                    continue
    except UnicodeDecodeError:
        raise InputError(f"{csv_path} is not a training log (<model>.metrics.csv): it is not text") from None
    except csv.Error as error:
        raise InputError(f"{csv_path} is not a training log (<model>.metrics.csv): {error}") from None
    if not rows:
        raise InputError(f"{csv_path} holds no metrics yet (the first row is written after --log-every steps)")
    return {key: [r.get(key, math.nan) for r in rows] for key in header}


def _read_checkpoint(metrics_path) -> dict | None:
    """The checkpoint next to the log, read safely; ``None`` where there is none or it is unreadable."""
    from gaugeflow.lattice.errors import GaugeflowError

    from .checkpoint import load_checkpoint

    path = checkpoint_path_for(metrics_path)
    if not os.path.exists(path):
        return None
    try:
        return load_checkpoint(path)
    except GaugeflowError:
        return None


def _format_couplings(couplings: dict) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in couplings.items())


def training_title(metrics_path, checkpoint: dict | None = None) -> str:
    """Two lines: theory, lattice and couplings; then the model file and its architecture.

    ``checkpoint``: the payload of :func:`~gaugeflow.flows.checkpoint.load_checkpoint` (default:
    read ``<model>.pt`` next to the log)."""
    checkpoint = _read_checkpoint(metrics_path) if checkpoint is None else checkpoint
    name = os.path.basename(checkpoint_path_for(metrics_path))
    if checkpoint is None:
        return f"{os.path.basename(str(metrics_path))}\n(no checkpoint {name} next to it: theory unknown)"
    arch = checkpoint["architecture"]
    physics = f"{arch['theory']} on {'x'.join(map(str, arch['lattice']))}, {_format_couplings(arch['couplings'])}"
    condition = arch.get("condition")
    if condition:
        physics += f" (trained for {condition['coupling']} in [{condition['low']:g}, {condition['high']:g}])"
    kind = f" {arch['layer_kind']}" if arch.get("layer_kind") else ""
    model = f"{arch['n_layers']}{kind} layers, {arch['kernel']} kernel"
    if arch.get("prior"):
        model += f", {arch['prior']} prior"
    batch = checkpoint.get("train_config", {}).get("batch_size")
    if batch:
        model += f", batch {batch}"
    return f"{physics}\n{name}: {model}, step {checkpoint['step']}"


def _import_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install matplotlib") from None
    return Figure


def _draw_kl(ax, steps, metrics, sigma):
    """KL on a log axis with its statistical error; estimates <= 0 (zero within noise) marked below."""
    import numpy as np

    kl = np.asarray(metrics["kl"])
    log_z = float(np.nanmedian(kl - np.asarray(metrics["loss"])))
    positive = kl > 0
    ax.set_yscale("log")
    ax.plot(steps[positive], kl[positive], color="C0", marker=".", ms=3, label="KL = loss + log Z")
    if sigma is not None and positive.any():
        floor = kl[positive].min() / 10
        ax.fill_between(steps, np.clip(kl - sigma, floor, None), np.clip(kl + sigma, floor, None), color="C0",
                        alpha=0.2, lw=0, label="± statistical error")
    if (~positive).any():
        ax.plot(steps[~positive], np.full((~positive).sum(), 0.02), "v", color="C3", ms=5,
                transform=ax.get_xaxis_transform(), label="estimate ≤ 0 (KL = 0 within noise)")
    _readable_log_ticks(ax)
    ax.set_ylabel("KL(q‖p)  [nats]")
    ax.set_title(f"reverse KL divergence (exact log Z = {log_z:.6g})", fontsize="medium")


def _readable_log_ticks(ax):
    """Tick labels 0.05, 2, 300 rather than 5x10^-2 on a log axis; minor labels where the
    range spans less than about a decade and a half."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if 0 < low and high / low < 30 else NullFormatter())


def _draw_loss(ax, steps, metrics, sigma):
    """The loss, with its statistical error.  The y-range is that of the later steps: the first
    steps' loss may lie orders of magnitude above; how far is written in the panel."""
    import numpy as np

    loss = np.asarray(metrics["loss"])
    ax.plot(steps, loss, color="C0", marker=".", ms=3, label="loss = KL − log Z")
    if sigma is not None:
        ax.fill_between(steps, loss - sigma, loss + sigma, color="C0", alpha=0.2, lw=0, label="± statistical error")
    tail = loss[len(loss) // 5:] if len(loss) >= 5 else loss
    low, high = float(np.min(loss)), float(np.max(tail))
    if high > low:
        pad = 0.15 * (high - low)
        ax.set_ylim(low - pad, high + pad)
        above = loss > high + pad
        if above.any():
            ax.text(0.02, 0.97, f"{above.sum()} point(s) above the frame, up to {loss.max():.4g} (step "
                    f"{steps[np.argmax(loss)]:g})", transform=ax.transAxes, va="top", fontsize="small", color="C0")
    ax.set_ylabel("loss  [nats]")
    ax.set_title("loss ≥ −log Z (log Z not known exactly for this theory)", fontsize="medium")


def _fraction_axis(ax, ylabel: str, target: float, target_label: str):
    ax.axhline(target, color="0.4", ls="--", lw=1, label=target_label)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)


def training_figure(csv_path, title: str | None = None):
    """The training curves of the log ``csv_path`` as a matplotlib ``Figure`` (2 x 2 panels:
    objective, ESS, learning rate, acceptance).  ``title``: default :func:`training_title`."""
    import numpy as np

    from gaugeflow.hmc.composite import PURE_FLOW_ACCEPTANCE  # the level at which the flow samples alone

    Figure = _import_matplotlib()
    metrics = read_metrics(csv_path)
    checkpoint = _read_checkpoint(csv_path)
    steps = np.asarray(metrics["step"])
    batch = (checkpoint or {}).get("train_config", {}).get("batch_size")
    sigma = np.asarray(metrics["loss_std"]) / math.sqrt(batch) if batch and "loss_std" in metrics else None

    fig = Figure(figsize=(11, 7.2), layout="constrained")
    (objective, ess), (rate, acceptance) = fig.subplots(2, 2, sharex=True)
    # a conditioned model's loss averages over couplings drawn from its range: loss + log Z at its
    # own couplings is no KL divergence then
    condition = ((checkpoint or {}).get("architecture") or {}).get("condition")
    if "kl" in metrics and np.isfinite(metrics["kl"]).any() and not condition:
        _draw_kl(objective, steps, metrics, sigma)
    else:
        _draw_loss(objective, steps, metrics, sigma)
        if condition:
            objective.set_title(f"loss, averaged over {condition['coupling']} in [{condition['low']:g}, "
                                f"{condition['high']:g}]", fontsize="medium")

    if "ess_batch" in metrics:
        ess.plot(steps, metrics["ess_batch"], color="C1", alpha=0.45, lw=1, label="ESS of the training batch")
    ess.plot(steps, metrics["ess"], color="C1", marker=".", ms=3, label="ESS of the evaluation sample")
    _fraction_axis(ess, "ESS / N", PURE_FLOW_ACCEPTANCE, f"target {PURE_FLOW_ACCEPTANCE:g}")
    ess.set_title("effective sample size per sample", fontsize="medium")

    acceptance.plot(steps, metrics["acceptance"], color="C3", marker=".", ms=3, label="independence Metropolis")
    _fraction_axis(acceptance, "acceptance", PURE_FLOW_ACCEPTANCE,
                   f"{PURE_FLOW_ACCEPTANCE:g}: composite sampler uses the flow alone")
    acceptance.set_title("Metropolis acceptance of flow proposals", fontsize="medium")

    if "learning_rate" in metrics:
        rate.plot(steps, metrics["learning_rate"], color="C2")
        rate.set_ylim(0, None)
        rate.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    rate.set_ylabel("learning rate")
    rate.set_title("Adam learning rate", fontsize="medium")

    for ax in (objective, ess, rate, acceptance):
        ax.set_xlabel("optimizer step")
        ax.tick_params(labelbottom=True)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    fig.suptitle(training_title(csv_path, checkpoint) if title is None else title)
    return fig


def plot_training(csv_path, png_path=None, title: str | None = None) -> str:
    """Draw the curves of a training log (``<model>.metrics.csv``) into ``png_path`` (default:
    :func:`training_plot_path`, ``<model>.png``) and return its path.  ``title`` replaces the
    default title (:func:`training_title`: theory, lattice, couplings and model)."""
    png_path = training_plot_path(csv_path) if png_path is None else str(png_path)
    save_figure(training_figure(csv_path, title), png_path, dpi=110)
    return png_path
