"""Flows in three and four dimensions: ESS against CPU time for the staple and plaquette couplings.

One case per run (run several side by side, one per core)::

    python benchmarks/four_d_flow_benchmark.py su3-4d-b1 --minutes 8 --layer-kind staple --out results/
    python benchmarks/four_d_flow_benchmark.py --plot results/   # table and ESS-vs-time figure

A case trains the default model of its layer kind for ``--minutes`` of wall time on one torch
thread (batch 64, path gradients, the default schedule), logs the ESS and acceptance of 256
samples every ``--log-every`` steps, and ends with a float64 independence-Metropolis evaluation
on 4096 samples.  It also records the CPU seconds per training step and the peak resident
memory.  ``--plot`` reads every ``*.json`` in the folder and writes ``four_d_ess.png`` and a
Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import time

import torch

CASES = {
    "su3-4d-b1": ("su3", "4x4x4x4", 1.0),
    "su3-4d-b2": ("su3", "4x4x4x4", 2.0),
    "su2-4d-b1.5": ("su2", "4x4x4x4", 1.5),
    "u1-4d-b0.8": ("u1", "4x4x4x4", 0.8),
    "u1-4d-b1.2": ("u1", "4x4x4x4", 1.2),
    "u1-2d-16-b6-haar": ("u1", "16x16", 6.0),
}


def run_case(name: str, minutes: float, layer_kind: str, out: str, log_every: int, seed: int) -> dict:
    from gaugeflow import TrainConfig, architecture, build_flow, make_theory, train_flow
    from gaugeflow.flows.train import evaluate

    torch.set_num_threads(1)
    theory_name, lattice, beta = CASES[name]
    theory = make_theory(theory_name, lattice, beta=beta)
    torch.manual_seed(seed)
    arch = architecture(theory, layer_kind=layer_kind, prior="haar")
    model = build_flow(arch)
    tag = f"{name}-{layer_kind}"
    checkpoint = os.path.join(out, f"{tag}.pt")
    for stale in (checkpoint, os.path.join(out, f"{tag}.metrics.csv")):
        if os.path.exists(stale):
            os.remove(stale)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    summary = train_flow(model, TrainConfig(steps=10**9, minutes=minutes, batch_size=64, log_every=log_every,
                                            checkpoint_every=10**9, seed=seed), checkpoint, progress=False)
    cpu_seconds = time.process_time() - cpu_start
    model = model.double()
    torch.manual_seed(seed + 1)
    final = evaluate(model, 512, 8)
    with open(os.path.join(out, f"{tag}.metrics.csv")) as handle:
        rows = list(csv.DictReader(handle))
    result = {
        "case": name, "layer_kind": layer_kind, "theory": theory_name, "lattice": lattice, "beta": beta,
        "n_layers": arch["n_layers"], "hidden": arch["hidden_channels"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": summary.step, "wall_seconds": time.perf_counter() - wall_start, "cpu_seconds": cpu_seconds,
        "cpu_seconds_per_step": cpu_seconds / max(summary.step, 1),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ess": final["ess"], "acceptance": final["acceptance"],
        "curve": [(float(r["seconds"]), float(r["ess"]), float(r["acceptance"]), float(r["loss"])) for r in rows],
    }
    with open(os.path.join(out, f"{tag}.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    return result


def plot(folder: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as handle:
                results.append(json.load(handle))
    cases = sorted({r["case"] for r in results}, key=list(CASES).index)
    columns = (len(cases) + 1) // 2
    fig, axes = plt.subplots(2, columns, figsize=(4.4 * columns, 7.2), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        spread = ax.twinx()
        for colour, r in zip(("C0", "C1", "C2"), [r for r in results if r["case"] == case]):
            with open(os.path.join(folder, f"{case}-{r['layer_kind']}.metrics.csv")) as handle:
                rows = list(csv.DictReader(handle))
            minutes = [float(row["seconds"]) / 60 for row in rows]
            ax.plot(minutes, [float(row["ess"]) for row in rows], color=colour, marker=".",
                    label=f"{r['layer_kind']}: ESS (final, 4096: {r['ess']:.3f})")
            spread.plot(minutes, [float(row["loss_std"]) for row in rows], color=colour, ls="--", lw=1)
        ax.axhline(1 / 256, color="grey", lw=0.8, ls=":")
        theory, lattice, beta = CASES[case]
        ax.set_title(f"{theory.upper()} {lattice}, beta={beta:g}")
        ax.set_xlabel("training time [wall-clock min; CPU share: table]")
        ax.set_ylabel("ESS of 256 samples (solid)")
        spread.set_ylabel("std of log p - log q [nats] (dashed)")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 1.05)
        spread.set_ylim(0, None)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    fig.suptitle("4D flows: ESS and the spread of the log-weights against training time (batch 64, path gradients)")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "four_d_ess.png"), dpi=110)
    print("| case | layers | parameters | steps | CPU-s / step | peak RSS | ESS (4096) | acceptance |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (list(CASES).index(r["case"]), r["layer_kind"])):
        print(f"| {r['case']} | {r['n_layers']} {r['layer_kind']} | {r['parameters']} | {r['steps']} | "
              f"{r['cpu_seconds_per_step']:.2f} | {r['max_rss_mb']:.0f} MB | {r['ess']:.3f} | {r['acceptance']:.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", choices=list(CASES))
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--layer-kind", default="staple", choices=("staple", "plaquette", "both"))
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="four_d_results")
    parser.add_argument("--plot", metavar="FOLDER")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot)
        return 0
    if not args.case:
        parser.error("name a case or --plot FOLDER")
    os.makedirs(args.out, exist_ok=True)
    r = run_case(args.case, args.minutes, args.layer_kind, args.out, args.log_every, args.seed)
    print(json.dumps({k: v for k, v in r.items() if k != "curve"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
