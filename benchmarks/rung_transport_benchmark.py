"""Flow layers between annealing rungs: how much of one rung's work can a trained staple flow take?

A stochastic normalizing flow (Wu, Köhler, Noé, arXiv:2002.06707; in 4D SU(3): Bulgarelli,
Cellini, Nada, arXiv:2412.00200) puts trained layers ``f`` between the heat-bath sweeps of an
annealing ladder (:mod:`gaugeflow.hmc.annealing`).  The rung from ``beta`` to ``beta + d`` then
contributes

    log w_rung = -S_{beta + d}(f(U)) + S_beta(U) + log |det J_f(U)|        (without f: -d s(U))

to the log-weight (``s`` the action at ``beta = 1``), and the variance of ``log w`` over a
ladder is the sum of the rungs' variances where the sweeps decorrelate them.  This script
measures the best case: ``U`` drawn from ``exp(-S_beta)`` itself (a heat-bath chain at
``beta``, one sweep between training steps), the flow (``--layers`` staple layers, the default
layer family of the theory) trained by reverse KL on that one rung,
``E[S_{beta + d}(f(U)) - log det J_f(U)]``.  A flow shared by all rungs, or fed by a ladder
whose samples lag behind ``beta``, does no better.  It reports

* ``var(w) without / with`` the flow on fresh samples, and their ratio: how many rungs of
  plain annealing the flow's rung is worth, for small ``d`` (both variances scale as ``d^2``);
* the CPU time of one flow pass and of one heat-bath sweep per configuration: a rung with the
  flow costs ``(flow + sweep) / sweep`` plain rungs, and the flow pays where the ratio of the
  variances exceeds that.

    python benchmarks/rung_transport_benchmark.py u1 0.8 --step 0.05 --cpu-minutes 5
    python benchmarks/rung_transport_benchmark.py su3 1.5 --step 0.1 --cpu-minutes 5

Results: benchmarks/README.md ("Annealing: fresh random numbers with exact weights").
"""

from __future__ import annotations

import argparse
import time

import torch

from gaugeflow.flows.model import architecture, build_flow
from gaugeflow.hmc.heatbath import heat_bath_sweep
from gaugeflow.lattice.theories import make_theory


def rung_log_weights(model, unit_action, beta: float, step: float, field):
    """``log w`` of the rung ``beta -> beta + step`` through ``model``'s layers (module docstring)."""
    mapped, log_det = model.forward_and_log_det(field)
    return -(beta + step) * unit_action(mapped) + beta * unit_action(field) + log_det


def cpu_seconds_per_config(run, batch: int, repeats: int = 3) -> float:
    start = time.process_time()
    for _ in range(repeats):
        run()
    return (time.process_time() - start) / (repeats * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("theory", choices=["u1", "su2", "su3"])
    parser.add_argument("beta", type=float)
    parser.add_argument("--step", type=float, default=0.05, help="the rung's width d in beta")
    parser.add_argument("--lattice", default="4x4x4x4")
    parser.add_argument("--layers", type=int, help="staple layers (default: one sweep, 2 D)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cpu-minutes", type=float, default=5.0)
    parser.add_argument("--check-batches", type=int, default=16, help="batches of fresh samples for each variance")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    lattice = tuple(int(n) for n in args.lattice.split("x"))
    theory = make_theory(args.theory, lattice, beta=args.beta)
    unit_action = theory.with_couplings(beta=1.0).action
    layers = args.layers or 2 * theory.dimension
    model = build_flow(architecture(theory.with_couplings(beta=args.beta + args.step), n_layers=layers,
                                    layer_kind="staple")).double()
    field = theory.hot_start(args.batch_size, generator=generator)
    for _ in range(100):
        field = heat_bath_sweep(theory, field, generator)

    def variances(field):
        with_flow, without = [], []
        with torch.no_grad():
            for _ in range(args.check_batches):
                field = heat_bath_sweep(theory, heat_bath_sweep(theory, field, generator), generator)
                with_flow.append(rung_log_weights(model, unit_action, args.beta, args.step, field))
                without.append(-args.step * unit_action(field))
        return torch.cat(without).var().item(), torch.cat(with_flow).var().item(), field

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"{args.theory} {args.lattice}, beta {args.beta:g} -> {args.beta + args.step:g}, {layers} staple layers, "
          f"batch {args.batch_size}", flush=True)
    print("| training CPU-min | steps | var(w) without | var(w) with the flow | ratio |\n|---|---|---|---|---|")
    trained, steps, report_at = 0.0, 0, 0.0  # CPU seconds of training alone, not of the checks
    while True:
        if trained / 60 >= report_at or trained / 60 >= args.cpu_minutes:
            without, with_flow, field = variances(field)
            print(f"| {trained / 60:.1f} | {steps} | {without:.4f} | {with_flow:.4f} | {without / with_flow:.2f} |",
                  flush=True)
            report_at += args.cpu_minutes / 5
            if trained / 60 >= args.cpu_minutes:
                break
        began = time.process_time()
        field = heat_bath_sweep(theory, field, generator)
        loss = -rung_log_weights(model, unit_action, args.beta, args.step, field).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trained += time.process_time() - began
        steps += 1

    with torch.no_grad():
        flow_cost = cpu_seconds_per_config(lambda: model.forward_and_log_det(field), args.batch_size)
    sweep_cost = cpu_seconds_per_config(lambda: heat_bath_sweep(theory, field, generator), args.batch_size)
    print(f"\nCPU-ms per configuration: flow pass {1e3 * flow_cost:.2f}, heat-bath sweep {1e3 * sweep_cost:.2f}; "
          f"a rung with the flow costs {(flow_cost + sweep_cost) / sweep_cost:.1f} plain rungs")


if __name__ == "__main__":
    main()
