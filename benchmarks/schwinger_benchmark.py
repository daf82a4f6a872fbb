"""The Schwinger model (N_f = 2 Wilson fermions): exact-determinant HMC, pseudofermion HMC
(even-odd preconditioned; on one and on two time scales) and the composite chain on an
exact-determinant flow and on a joint pseudofermion flow (:mod:`gaugeflow.flows.pseudofermion_flow`),
side by side.

For 2D U(1) at ``--beta`` on ``--lattice`` and each ``--kappas``: acceptance, the tuned number
of (outer) MD steps, plaquette, chiral condensate and <Q^2> with Gamma-method errors,
tau_int(Q^2), CPU seconds per effectively independent Q^2 sample, and for pseudofermions the
conjugate-gradient iterations per trajectory.  The pull columns compare every sampler with
exact-determinant HMC.  A second table compares conjugate gradient on ``D^dagger D`` (no
preconditioning) with the even-odd ``D_hat^dagger D_hat`` on the last configuration of every
exact-determinant chain: iterations and CPU milliseconds per batched solve.  A third runs
pseudofermion HMC on from those configurations at fixed (untuned) numbers of outer MD steps,
on one time scale and on two: acceptance, <dH> and CG iterations per trajectory at equal
fermion-force cost.

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
from gaugeflow.flows.pseudofermion_flow import build_model, model_architecture
from gaugeflow.hmc import HMCParameters, analyze_ensemble, generate_ensemble
from gaugeflow.hmc.hmc import acceptance_probability, hmc_trajectory
from gaugeflow.lattice import open_ensemble
from gaugeflow.lattice.fermions import EvenOddWilson, apply_wilson, apply_wilson_dagger, conjugate_gradient
from gaugeflow.lattice.schwinger import Pseudofermions
from gaugeflow.lattice.theories import make_theory


def trained(build, arch, args, workdir, name):
    """A model ``build(arch)`` after ``--train-steps`` reverse-KL steps (batch 32, seeded)."""
    torch.manual_seed(args.seed)
    model = build(arch)
    train_flow(model, TrainConfig(steps=args.train_steps, batch_size=32, log_every=args.train_steps,
                                  checkpoint_every=args.train_steps, seed=args.seed), os.path.join(workdir, f"{name}.pt"),
               progress=False)
    return model


def run(name, sampler, theory, model, params, args, workdir):
    path = os.path.join(workdir, f"{name}-{sampler}-{theory.couplings['kappa']:g}.h5")
    began = time.process_time()
    summary = generate_ensemble(theory, path, sampler=sampler, model=model, n_configs=args.chains * args.updates,
                                n_chains=args.chains, n_therm=args.therm, seed=args.seed, params=params,
                                hmc_per_step=1 if sampler == "composite" else None, progress=False, commit_every=600)
    seconds = time.process_time() - began
    results = analyze_ensemble(path)
    q2 = results["topological_charge_squared"]
    independent = args.chains * args.updates / (2 * max(q2["tau_int"] or 0.5, 0.5))
    return results, seconds / independent, summary.postfix.get("steps", "-"), path


def last_configurations(path, chains):
    with open_ensemble(path) as ensemble:
        return torch.as_tensor(ensemble.configs(len(ensemble) - chains))


def time_scale_costs(path, args, kappa, trajectories=20):
    """``{(outer steps, substeps): (acceptance, <dH>, CG iterations per trajectory)}`` of
    pseudofermion HMC continued from the last configuration of every chain in ``path``."""
    costs = {}
    for n_steps in (2, 4):
        for substeps in (1, args.md_substeps):
            theory = make_theory("schwinger", args.lattice, beta=args.beta, kappa=kappa, fermions="pseudofermion")
            theta, generator = last_configurations(path, args.chains), torch.Generator().manual_seed(args.seed)
            params = HMCParameters(1.0, n_steps, md_substeps=substeps)
            accepted, delta_h = [], []
            for _ in range(trajectories):
                result = hmc_trajectory(theory, theta, params, generator)
                theta = result.field
                accepted.append(acceptance_probability(result.delta_h).mean().item())
                delta_h.append(result.delta_h.mean().item())
            costs[n_steps, substeps] = (sum(accepted) / trajectories, sum(delta_h) / trajectories,
                                        sum(theory.cg_iterations) / trajectories)
    return costs


def solve_costs(path, kappa, chains):
    """``(iterations, CPU ms)`` of one batched pseudofermion solve on the last configuration of
    every chain in ``path``, for ``D^dagger D`` and for the even-odd ``D_hat^dagger D_hat``, with
    heat-bath sources (``D^dagger eta`` and ``D_hat^dagger eta_odd``) and the pseudofermions'
    tolerance."""
    theta = last_configurations(path, chains)
    generator = torch.Generator().manual_seed(0)
    eta = torch.randn(*theta.shape, dtype=torch.complex128, generator=generator)
    even_odd = EvenOddWilson(theta, kappa)
    systems = {
        "D^dagger D": (lambda v: apply_wilson_dagger(theta, apply_wilson(theta, v, kappa), kappa),
                       apply_wilson_dagger(theta, eta, kappa)),
        "even-odd": (even_odd.apply_normal, even_odd.apply_dagger(eta.flatten(2)[..., : eta[0, 0].numel() // 2])),
    }
    costs = {}
    for name, (normal, source) in systems.items():
        began = time.process_time()
        _, report = conjugate_gradient(normal, source, Pseudofermions.cg_tolerance)
        costs[name] = (report.iterations, 1e3 * (time.process_time() - began))
    return costs


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
    parser.add_argument("--md-substeps", type=int, default=4, help="gauge steps per fermion step on two time scales")
    args = parser.parse_args()
    if args.quick:
        args.lattice, args.kappas, args.updates, args.therm, args.train_steps = "4x4", [0.22], 30, 10, 10
    torch.set_num_threads(1)
    print(f"2D Schwinger model, N_f = 2, {args.lattice}, beta = {args.beta:g}; {args.chains} chains x {args.updates} "
          f"updates after {args.therm}; composite: flows (exact-det gauge flow, joint pseudofermion flow) trained "
          f"{args.train_steps} steps\n")
    print("| kappa | sampler | acceptance | MD steps | plaquette | condensate | <Q^2> | tau_int(Q^2) | "
          "CPU s per indep. sample | CG iterations per trajectory | pulls vs exact (P, cond, Q^2) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    solves, scales = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for kappa in args.kappas:
            exact_theory = make_theory("schwinger", args.lattice, beta=args.beta, kappa=kappa)
            pf_theory, pf_mts_theory = (make_theory("schwinger", args.lattice, beta=args.beta, kappa=kappa,
                                                    fermions="pseudofermion") for _ in range(2))
            model, joint_model = (
                trained(build, architecture(theory, n_layers=8, hidden_channels=[8]), args, workdir, f"{name}{kappa}")
                for name, theory, build in (("exact", exact_theory, build_flow),
                                            ("joint", pf_theory, lambda a: build_model(model_architecture(pf_theory, a)))))
            rows = {}
            one_scale, two_scales = HMCParameters(1.0, 8), HMCParameters(1.0, 4, md_substeps=args.md_substeps)
            for label, theory, sampler, flow, params in (
                    ("exact-det HMC", exact_theory, "hmc", None, one_scale),
                    ("pseudofermion HMC", pf_theory, "hmc", None, one_scale),
                    (f"pseudofermion HMC, 2 time scales ({args.md_substeps} gauge steps)", pf_mts_theory, "hmc", None,
                     two_scales),
                    ("exact-det flow, composite K=1", exact_theory, "composite", model, one_scale),
                    # the model's own theory instance: its HMC part counts the CG iterations there
                    ("pseudofermion flow (joint), composite K=1", joint_model.theory, "composite", joint_model,
                     one_scale)):
                results, cost, steps, path = run(len(rows), sampler, theory, flow, params, args, workdir)
                rows[label] = results
                if len(rows) == 1:
                    solves[kappa] = solve_costs(path, kappa, args.chains)
                    scales[kappa] = time_scale_costs(path, args, kappa)
                trajectories = args.updates + args.therm  # every solve of a batch of chains counts once
                cg = f"{sum(theory.cg_iterations) / trajectories:.0f}" if theory.cg_iterations else "-"
                reference = rows["exact-det HMC"]
                pulls = ", ".join(f"{pull(results[k], reference[k]):+.1f}" for k in
                                  ("plaquette", "chiral_condensate", "topological_charge_squared")) \
                    if label != "exact-det HMC" else "-"
                fmt = lambda r: f"{r['mean']:.4f}({1e4 * r['error']:.0f})"  # noqa: E731
                print(f"| {kappa:g} | {label} | {results['acceptance']['mean']:.3f} | {steps} | {fmt(results['plaquette'])} | "
                      f"{fmt(results['chiral_condensate'])} | {fmt(results['topological_charge_squared'])} | "
                      f"{results['topological_charge_squared']['tau_int']:.1f} | {cost:.3g} | {cg} | {pulls} |",
                      flush=True)
    print(f"\nOne batched pseudofermion solve ({args.chains} configurations, tolerance {Pseudofermions.cg_tolerance:g}):\n")
    print("| kappa | CG iterations, D^dagger D | CG iterations, even-odd | CPU ms, D^dagger D | CPU ms, even-odd |")
    print("|---|---|---|---|---|")
    for kappa, costs in solves.items():
        (n_full, ms_full), (n_eo, ms_eo) = costs["D^dagger D"], costs["even-odd"]
        print(f"| {kappa:g} | {n_full} | {n_eo} | {ms_full:.0f} | {ms_eo:.0f} |")
    print("\nPseudofermion HMC at fixed outer steps (omelyan, tau = 1), 20 trajectories from the exact-det chains' "
          "last configurations:\n")
    print("| kappa | outer steps | gauge steps per outer step | acceptance | <dH> | CG iterations per trajectory |")
    print("|---|---|---|---|---|---|")
    for kappa, costs in scales.items():
        for (n_steps, substeps), (acceptance, delta_h, cg) in costs.items():
            print(f"| {kappa:g} | {n_steps} | {substeps} | {acceptance:.3f} | {delta_h:.3f} | {cg:.0f} |")


if __name__ == "__main__":
    main()
