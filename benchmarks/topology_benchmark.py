"""Topological freezing: HMC against the flow samplers for 2D U(1) (Kanwar et al. arXiv:2003.06413).

For each beta, side by side on the same lattice: tuned HMC, flow independence Metropolis,
the composite chain (fallback policy) and flow HMC.  For each: Metropolis acceptance, the
integrated autocorrelation time of Q^2 (Gamma method over the chains; marked ">" when the
chains are shorter than 50 tau_int, i.e. not resolved), CPU seconds per effectively
independent Q^2 sample, and chi_t = <Q^2>/V against the exact value (character expansion).

The flow: one model conditioned on beta (``--condition``), trained at a small volume
(``--train-lattice``) for ``--train-steps`` and transferred to the benchmark lattice (the
conditioners are translation equivariant); its training cost is reported separately, with
the break-even number of samples against HMC.

    python benchmarks/topology_benchmark.py [--quick] [--lattice 16x16] [--betas 2 3 4 5 6]

Writes the table (markdown) to stdout and a PNG (``--png``).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import torch

from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow, transfer_weights
from gaugeflow.hmc import HMCParameters, gamma_method, generate_ensemble
from gaugeflow.lattice import exact, open_ensemble
from gaugeflow.lattice.theories import make_theory

SAMPLERS = ("hmc", "flow", "composite", "flow-hmc")


def train_conditioned_model(args, workdir):
    theory = make_theory("u1", args.train_lattice, beta=float(np.mean(args.betas)))
    condition = ("beta", min(args.betas) - 0.25, max(args.betas) + 0.25)
    torch.manual_seed(args.seed)
    model = build_flow(architecture(theory, condition=condition, n_layers=args.layers))
    config = TrainConfig(steps=args.train_steps, batch_size=args.train_batch, log_every=max(1, args.train_steps // 4),
                         checkpoint_every=args.train_steps, seed=args.seed, estimator="reparam", learning_rate=5e-3)
    began = time.process_time()
    summary = train_flow(model, config, os.path.join(workdir, "conditioned.pt"), progress=False)
    return model, time.process_time() - began, summary.metrics


def model_at(trained, lattice, beta):
    arch = dict(trained.architecture, lattice=list(lattice), couplings={"beta": float(beta)})
    model = build_flow(arch)
    transfer_weights(model, trained.state_dict())
    return model.double()


def run_sampler(sampler, theory, model, args, workdir):
    path = os.path.join(workdir, f"{sampler}-{theory.couplings['beta']:g}-{time.monotonic_ns()}.h5")
    n_updates = {"hmc": args.hmc_updates, "flow": args.flow_updates, "composite": args.composite_updates,
                 "flow-hmc": args.flow_hmc_updates}[sampler]
    began = time.process_time()
    summary = generate_ensemble(theory, path, sampler=sampler, model=None if sampler == "hmc" else model,
                                n_configs=args.chains * n_updates, n_chains=args.chains,
                                n_therm=args.flow_hmc_therm if sampler == "flow-hmc" else args.therm, seed=args.seed,
                                params=HMCParameters(1.0, 10), progress=False, commit_every=600)
    seconds = time.process_time() - began
    with open_ensemble(path) as ensemble:
        q = ensemble.per_chain(ensemble.column("topological_charge"))
        accepted = ensemble.column("accepted").mean()
        policy = ensemble.metadata.get("fallback_reason", "")
    q2 = gamma_method([c * c for c in q])
    per_chain = len(q[0])
    volume = math.prod(theory.lattice_shape)
    independent = args.chains * per_chain / (2 * q2.tau_int)
    return {
        "acceptance": float(accepted), "tau": q2.tau_int, "resolved": per_chain >= 50 * q2.tau_int,
        "chi": q2.mean / volume, "chi_error": q2.error / volume, "cost": seconds / independent, "seconds": seconds,
        "policy": policy, "summary": summary,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8x8, two betas, short chains (a smoke test)")
    parser.add_argument("--lattice", default="16x16")
    parser.add_argument("--betas", type=float, nargs="+", default=[2.0, 3.0, 4.0, 5.0, 6.0])
    parser.add_argument("--train-lattice", default="8x8")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--therm", type=int, default=100)
    parser.add_argument("--hmc-updates", type=int, default=1000)
    parser.add_argument("--flow-updates", type=int, default=300)
    parser.add_argument("--composite-updates", type=int, default=300)
    parser.add_argument("--flow-hmc-updates", type=int, default=60)
    parser.add_argument("--flow-hmc-therm", type=int, default=20, help="(each latent trajectory costs ~100 flow passes)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--png", default="benchmarks/topology.png")
    args = parser.parse_args()
    if args.quick:
        args.lattice, args.betas, args.train_steps, args.layers = "8x8", [2.0, 4.0], 40, 8
        args.therm, args.hmc_updates, args.flow_updates, args.composite_updates, args.flow_hmc_updates = 20, 60, 30, 30, 8
        args.flow_hmc_therm = 4
    torch.set_num_threads(1)
    lattice = tuple(int(n) for n in args.lattice.split("x"))
    with tempfile.TemporaryDirectory() as workdir:
        trained, train_seconds, metrics = train_conditioned_model(args, workdir)
        print(f"training: conditioned model beta in [{min(args.betas) - 0.25:g}, {max(args.betas) + 0.25:g}] at "
              f"{args.train_lattice}, {args.layers} layers, {args.train_steps} steps x batch {args.train_batch}: "
              f"{train_seconds / 60:.1f} CPU min; at its own volume and mid beta: acceptance "
              f"{metrics.get('acceptance', float('nan')):.3f}, ESS {metrics.get('ess', float('nan')):.3f}\n")
        print("| beta | sampler | acceptance | tau_int(Q^2) | CPU s per indep. Q^2 sample | chi_t | exact chi_t | pull |")
        print("|---|---|---|---|---|---|---|---|")
        rows = {}
        for beta in args.betas:
            theory = make_theory("u1", lattice, beta=beta)
            model = model_at(trained, lattice, beta)
            volume = math.prod(lattice)
            chi_exact = exact.u1_topological_charge_squared(beta, volume) / volume
            for sampler in SAMPLERS:
                r = run_sampler(sampler, theory, model, args, workdir)
                rows[beta, sampler] = r
                tau = f"{r['tau']:.1f}" if r["resolved"] else f"> {r['tau']:.1f} (unresolved)"
                pull = f"{(r['chi'] - chi_exact) / r['chi_error']:+.1f}" if r["chi_error"] > 0 else "n/a (no move)"
                label = sampler + (f" ({r['policy'].split(':')[0]})" if r["policy"] else "")
                print(f"| {beta:g} | {label} | {r['acceptance']:.3f} | {tau} | {r['cost']:.3g} | "
                      f"{r['chi']:.5f} +- {r['chi_error']:.5f} | {chi_exact:.5f} | {pull} |", flush=True)
        print("\n| beta | HMC / best flow sampler (cost per independent sample) | best | break-even samples |")
        print("|---|---|---|---|")
        ratios = []
        for beta in args.betas:
            best = min(SAMPLERS[1:], key=lambda s: rows[beta, s]["cost"])
            ratio = rows[beta, "hmc"]["cost"] / rows[beta, best]["cost"]
            saving = rows[beta, "hmc"]["cost"] - rows[beta, best]["cost"]
            even = f"{train_seconds / saving:.0f}" if saving > 0 else "never"
            ratios.append(ratio)
            print(f"| {beta:g} | {ratio:.2f} | {best} | {even} |")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        figure, axis = plt.subplots(figsize=(6, 4))
        for sampler in SAMPLERS:
            axis.semilogy(args.betas, [rows[b, sampler]["cost"] for b in args.betas], "o-", label=sampler)
        axis.set_xlabel("beta")
        axis.set_ylabel("CPU s per independent Q^2 sample")
        axis.set_title(f"2D U(1) {args.lattice}: cost per independent sample")
        axis.legend()
        figure.tight_layout()
        figure.savefig(args.png, dpi=120)
        print(f"\n{args.png}")


if __name__ == "__main__":
    main()
