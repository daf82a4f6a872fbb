"""Operator launches per training step: what makes flow training launch-bound on a GPU.

On an H100 one path-gradient step of the default U(1) 8x8 model launched 17,833 CUDA kernels
for 55 ms of GPU time against 512 ms of CPU time (shared/README.md).  torch.profiler counts
operator calls on the CPU too (``ProfilerActivity.CPU``, sum of ``count``), so the number of
launches can be measured, and cut, without a GPU.  For the default models of U(1) 8x8 and
phi^4 8x8: operator calls per step for each gradient estimator, the ten most frequent
operators, and training samples/s on this CPU.

    python benchmarks/training_ops_benchmark.py [--batch 64] [--top 10]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from gaugeflow.flows import architecture, build_flow
from gaugeflow.flows.train import reverse_kl_step_terms
from gaugeflow.lattice.theories import make_theory


def training_step(model, optimizer, batch, estimator):
    optimizer.zero_grad(set_to_none=True)
    surrogate, *_ = reverse_kl_step_terms(model, batch, estimator)
    surrogate.backward()
    optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | estimator | operator calls per step | samples/s (CPU, 1 thread) |")
    print("|---|---|---|---|")
    tops = {}
    for name, couplings in (("u1", {"beta": 2.0}), ("phi4", {"m2": -4.0, "lam": 8.0})):
        theory = make_theory(name, "8x8", **couplings)
        for estimator in ("path", "reparam"):
            torch.manual_seed(0)
            model = build_flow(architecture(theory))
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            training_step(model, optimizer, args.batch, estimator)  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                training_step(model, optimizer, args.batch, estimator)
            events = profiler.key_averages()
            calls = sum(event.count for event in events)
            began, steps = time.perf_counter(), 3
            for _ in range(steps):
                training_step(model, optimizer, args.batch, estimator)
            rate = steps * args.batch / (time.perf_counter() - began)
            arch = model.architecture
            label = f"{name} 8x8, {arch['n_layers']} {arch['kernel']} layers, hidden {arch['hidden_channels']}"
            print(f"| {label} | {estimator} | {calls} | {rate:.0f} |", flush=True)
            tops[label, estimator] = sorted(events, key=lambda e: -e.count)[: args.top]
    for (label, estimator), events in tops.items():
        print(f"\n{label}, {estimator}: " + ", ".join(f"{e.key} {e.count}" for e in events))


if __name__ == "__main__":
    main()
