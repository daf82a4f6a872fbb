"""The Schwinger model (N_f = 2 Wilson fermions): exact-determinant HMC, pseudofermion HMC and
the composite chain on an exact-determinant flow, side by side.

For 2D U(1) at ``--beta`` on ``--lattice`` and each ``--kappas``: acceptance, plaquette,
chiral condensate and <Q^2> with Gamma-method errors, tau_int(Q^2), CPU seconds per
effectively independent Q^2 sample, and for pseudofermions the conjugate-gradient iterations
per trajectory.  The pull columns compare every sampler with exact-determinant HMC.

    python benchmarks/schwinger_benchmark.py [--quick] [--lattice 8x8] [--kappas 0.22 0.26 0.276]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import torch

from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow
from gaugeflow.hmc import HMCParameters, analyze_ensemble, generate_ensemble
from gaugeflow.lattice.theories import make_theory


def run(name, sampler, theory, model, args, workdir):
    path = os.path.join(workdir, f"{name}-{sampler}-{theory.couplings['kappa']:g}.h5")
    began = time.process_time()
    generate_ensemble(theory, path, sampler=sampler, model=model, n_configs=args.chains * args.updates,
                      n_chains=args.chains, n_therm=args.therm, seed=args.seed, params=HMCParameters(1.0, 8),
                      hmc_per_step=1 if sampler == "composite" else None, progress=False, commit_every=600)
    seconds = time.process_time() - began
    results = analyze_ensemble(path)
    q2 = results["topological_charge_squared"]
    independent = args.chains * args.updates / (2 * max(q2["tau_int"] or 0.5, 0.5))
    return results, seconds / independent


def pull(a, b):
    return (a["mean"] - b["mean"]) / math.hypot(a["error"], b["error"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4x4, one kappa, short chains")
    parser.add_argument("--lattice", default="8x8")
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--kappas", type=float, nargs="+", default=[0.22, 0.26, 0.276])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--therm", type=int, default=40)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.lattice, args.kappas, args.updates, args.therm, args.train_steps = "4x4", [0.22], 30, 10, 10
    torch.set_num_threads(1)
    print(f"2D Schwinger model, N_f = 2, {args.lattice}, beta = {args.beta:g}; {args.chains} chains x {args.updates} "
          f"updates after {args.therm}; composite: a gauge flow trained {args.train_steps} steps on the exact target\n")
    print("| kappa | sampler | acceptance | plaquette | condensate | <Q^2> | tau_int(Q^2) | CPU s per indep. sample "
          "| CG iterations per trajectory | pulls vs exact (P, cond, Q^2) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for kappa in args.kappas:
            exact_theory = make_theory("schwinger", args.lattice, beta=args.beta, kappa=kappa)
            pf_theory = make_theory("schwinger-pseudofermion", args.lattice, beta=args.beta, kappa=kappa)
            torch.manual_seed(args.seed)
            model = build_flow(architecture(exact_theory, n_layers=8, hidden_channels=[8]))
            train_flow(model, TrainConfig(steps=args.train_steps, batch_size=32, log_every=args.train_steps,
                                          checkpoint_every=args.train_steps), os.path.join(workdir, f"m{kappa}.pt"),
                       progress=False)
            rows = {}
            for label, theory, sampler, flow in (("exact-det HMC", exact_theory, "hmc", None),
                                                 ("pseudofermion HMC", pf_theory, "hmc", None),
                                                 ("exact-det flow, composite K=1", exact_theory, "composite", model)):
                results, cost = run(label.split()[0], sampler, theory, flow, args, workdir)
                rows[label] = results
                trajectories = args.updates + args.therm  # every solve of a batch of chains counts once
                cg = f"{sum(pf_theory.cg_iterations) / trajectories:.0f}" if theory is pf_theory else "-"
                reference = rows["exact-det HMC"]
                pulls = ", ".join(f"{pull(results[k], reference[k]):+.1f}" for k in
                                  ("plaquette", "chiral_condensate", "topological_charge_squared")) \
                    if label != "exact-det HMC" else "-"
                fmt = lambda r: f"{r['mean']:.4f}({1e4 * r['error']:.0f})"  # noqa: E731
                print(f"| {kappa:g} | {label} | {results['acceptance']['mean']:.3f} | {fmt(results['plaquette'])} | "
                      f"{fmt(results['chiral_condensate'])} | {fmt(results['topological_charge_squared'])} | "
                      f"{results['topological_charge_squared']['tau_int']:.1f} | {cost:.3g} | {cg} | {pulls} |",
                      flush=True)


if __name__ == "__main__":
    main()
