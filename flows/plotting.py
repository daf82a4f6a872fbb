"""Training curves as a PNG: loss (and KL where exact), ESS and Metropolis acceptance.

matplotlib is imported lazily: it is needed only for plots (``pip install matplotlib``).
"""

from __future__ import annotations

import csv
import math

from gaugeflow.lattice.errors import InputError


def read_metrics(csv_path) -> dict[str, list[float]]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{csv_path} holds no metrics yet")
    return {key: [float(r[key]) for r in rows] for key in rows[0]}


def plot_training(csv_path, png_path, title: str | None = None) -> str:
    """Draw the curves of a training log (``*.metrics.csv``) into ``png_path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install matplotlib") from None
    metrics = read_metrics(csv_path)
    steps = metrics["step"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    axes[0].plot(steps, metrics["loss"], label="loss = KL - log Z")
    if not all(math.isnan(v) for v in metrics["kl"]):
        axes[0].plot(steps, metrics["kl"], label="KL (exact log Z)")
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[1].plot(steps, metrics["ess_batch"], alpha=0.5, label="ESS (batch)")
    axes[1].plot(steps, metrics["ess"], label="ESS (evaluation sample)")
    axes[1].set_ylim(0, 1)
    axes[1].set_xlabel("step")
    axes[1].legend()
    axes[2].plot(steps, metrics["acceptance"], color="C3")
    axes[2].set_ylim(0, 1)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("Metropolis acceptance")
    if title:
        fig.suptitle(title)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return str(png_path)
