"""Training curves of 4D benchmark runs: the reverse-KL loss against process CPU minutes, one
panel per (theory, beta), with each run's final ESS in its legend.

    python benchmarks/four_d_curves.py results/*.json --out benchmarks/four_d_centres.png

Reads the JSON files of ``four_d_centres_benchmark.py`` (``curve``: ``[cpu_seconds, loss]`` per
step; ``four_d_flow_benchmark.py`` logs wall-clock time and is not comparable).  The loss is ``<log q - log p>``, i.e. ``KL(q || p) - log Z``: runs at the same
coupling share the offset ``log Z``, so their curves compare directly and lower is better.
Per-step losses are smoothed by a running mean over ``--smooth`` steps.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def describe(run: dict) -> str:
    return f"{run['layers']} layers, {run['centres']}, batch {run.get('batch_size', 64)}: ESS {run['ess']:.3g} after {run['cpu_seconds'] / 60:.0f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="JSON files with a 'curve'")
    parser.add_argument("--out", default="four_d_centres.png")
    parser.add_argument("--smooth", type=int, default=10)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, list] = {}
    for path in args.runs:
        with open(path) as handle:
            run = json.load(handle)
        if len(run["curve"][0]) != 2:
            raise SystemExit(f"{path}: not a four_d_centres_benchmark.py result (its curve is not CPU time and loss)")
        panels.setdefault((run["theory"], run["beta"]), []).append(run)
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for axis, ((theory, beta), runs) in zip(axes[0], sorted(panels.items())):
        for run in sorted(runs, key=describe):
            curve = np.asarray(run["curve"], dtype=float)
            minutes, loss = curve[:, 0] / 60, curve[:, -1]
            if len(loss) > args.smooth:
                loss = np.convolve(loss, np.ones(args.smooth) / args.smooth, mode="valid")
                minutes = minutes[args.smooth - 1:]
            axis.plot(minutes, loss, label=describe(run))
        axis.set(title=f"{theory.upper()} 4^4, beta = {beta:g}", xlabel="training, process CPU minutes",
                 ylabel="loss <log q - log p> (lower is better)")
        low = min(np.min(np.asarray(run["curve"])[:, -1]) for run in runs)
        axis.set_ylim(low - 1, low + 15)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
