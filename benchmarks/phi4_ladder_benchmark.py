"""The phi^4 E1-E5 ladder (Albergo, Kanwar, Shanahan, arXiv:1904.12072): flow against HMC.

Points E1..E5: L = 6, 8, 10, 12, 14, m2 = -4, lam = 6.975, 6.008, 5.550, 5.276, 5.113 (the
same correlation length in units of L).  For each: a default flow (affine couplings) trained
for ``--train-steps`` (its CPU time is reported), its float64 independence-Metropolis
acceptance and ESS, and the integrated autocorrelation time of |M| (Gamma method over the
chains) of the flow's Markov chain and of tuned HMC, with the CPU seconds per independent
|M| sample.

    python benchmarks/phi4_ladder_benchmark.py [--quick] [--train-steps 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow
from gaugeflow.hmc import HMCParameters, analyze_ensemble, generate_ensemble
from gaugeflow.lattice.theories import make_theory

LADDER = {"E1": (6, 6.975), "E2": (8, 6.008), "E3": (10, 5.550), "E4": (12, 5.276), "E5": (14, 5.113)}


def chain(theory, sampler, model, args, workdir):
    path = os.path.join(workdir, f"{sampler}-{theory.lattice_shape[0]}.h5")
    began = time.process_time()
    generate_ensemble(theory, path, sampler=sampler, model=model, n_configs=args.chains * args.updates,
                      n_chains=args.chains, n_therm=args.therm, seed=args.seed, params=HMCParameters(1.0, 10),
                      progress=False, commit_every=600)
    seconds = time.process_time() - began
    results = analyze_ensemble(path)
    tau = max(results["abs_magnetization"]["tau_int"], 0.5)
    return results, tau, seconds / (args.chains * args.updates / (2 * tau))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="E1 and E2 only, short chains")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--updates", type=int, default=400)
    parser.add_argument("--therm", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    points = dict(list(LADDER.items())[:2]) if args.quick else LADDER
    if args.quick:
        args.train_steps, args.updates, args.therm = 30, 60, 10
    torch.set_num_threads(1)
    print(f"phi^4, m2 = -4; default flow (8 affine layers, hidden 16,16) trained {args.train_steps} steps x batch 64 "
          f"(path gradients); {args.chains} chains x {args.updates} updates\n")
    print("| point | L | lam | flow training CPU s | flow acceptance | ESS | tau_int(abs M) flow | tau_int(abs M) HMC "
          "| CPU s per indep. sample, flow / HMC | <abs M> flow / HMC |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for point, (size, lam) in points.items():
            theory = make_theory("phi4", f"{size}x{size}", m2=-4.0, lam=lam)
            torch.manual_seed(args.seed)
            model = build_flow(architecture(theory))
            began = time.process_time()
            summary = train_flow(model, TrainConfig(steps=args.train_steps, batch_size=64, log_every=args.train_steps,
                                                    checkpoint_every=args.train_steps, eval_batches=16),
                                 os.path.join(workdir, f"{point}.pt"), progress=False)
            training = time.process_time() - began
            flow, tau_flow, cost_flow = chain(theory, "flow", model, args, workdir)
            hmc, tau_hmc, cost_hmc = chain(theory, "hmc", None, args, workdir)
            m = summary.metrics
            fmt = lambda r: f"{r['mean']:.4f}({1e4 * r['error']:.0f})"  # noqa: E731
            print(f"| {point} | {size} | {lam} | {training:.0f} | {flow['acceptance']['mean']:.3f} | {m['ess']:.3f} | "
                  f"{tau_flow:.1f} | {tau_hmc:.1f} | {cost_flow:.3g} / {cost_hmc:.3g} | "
                  f"{fmt(flow['abs_magnetization'])} / {fmt(hmc['abs_magnetization'])} |", flush=True)


if __name__ == "__main__":
    main()
