"""Operator launches per training step: what makes flow training launch-bound on a GPU.

On an H100 one path-gradient step of the default U(1) 8x8 model launched 17,833 CUDA kernels
for 55 ms of GPU time against 512 ms of CPU time (shared/README.md).  torch.profiler counts
operator calls on the CPU too (``ProfilerActivity.CPU``, sum of ``count``), so the number of
launches can be measured, and cut, without a GPU.  For the default models of U(1) 8x8 and
phi^4 8x8: operator calls per step for each gradient estimator, the ten most frequent
operators, and training samples/s on this CPU.  With ``--compile`` each case is measured a
second time with the layer passes compiled (``LatticeFlow.compile_layers``, what
``gaugeflow train --compile`` does), after warm-up steps that compile them (minutes on a CPU;
the time is printed).

    python benchmarks/training_ops_benchmark.py [--batch 64] [--top 10] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from gaugeflow.flows import architecture, build_flow
from gaugeflow.flows.train import make_optimizer, reverse_kl_step_terms
from gaugeflow.lattice.theories import make_theory


def training_step(model, optimizer, batch, estimator):
    optimizer.zero_grad(set_to_none=True)
    surrogate, *_ = reverse_kl_step_terms(model, batch, estimator)
    surrogate.backward()
    optimizer.step()


def measure(model, batch, estimator, warmup_steps=1, timed_steps=3):
    """``(operator calls of one step, the profiler's events, samples/s, seconds of warm-up)``."""
    optimizer = make_optimizer(model, 1e-3)  # as gaugeflow train makes it
    began = time.perf_counter()
    for _ in range(warmup_steps):
        training_step(model, optimizer, batch, estimator)
    warmup = time.perf_counter() - began
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        training_step(model, optimizer, batch, estimator)
    events = profiler.key_averages()
    began = time.perf_counter()
    for _ in range(timed_steps):
        training_step(model, optimizer, batch, estimator)
    rate = timed_steps * batch / (time.perf_counter() - began)
    return sum(event.count for event in events), events, rate, warmup


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also measure with the layer passes compiled")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | estimator | operator calls per step | samples/s (CPU, 1 thread) |")
    print("|---|---|---|---|")
    tops = {}
    for name, couplings in (("u1", {"beta": 2.0}), ("phi4", {"m2": -4.0, "lam": 8.0})):
        theory = make_theory(name, "8x8", **couplings)
        for estimator in ("path", "reparam"):
            for compiled in (False, True) if args.compile else (False,):
                torch.manual_seed(0)
                model = build_flow(architecture(theory))
                if compiled:
                    model.compile_layers()
                calls, events, rate, warmup = measure(model, args.batch, estimator, warmup_steps=3 if compiled else 1)
                arch = model.architecture
                label = f"{name} 8x8, {arch['n_layers']} {arch['kernel']} layers, hidden {arch['hidden_channels']}"
                mode = f"{estimator}, compiled ({warmup:.0f} s to compile)" if compiled else estimator
                print(f"| {label} | {mode} | {calls} | {rate:.0f} |", flush=True)
                tops[label, mode] = sorted(events, key=lambda e: -e.count)[: args.top]
    for (label, mode), events in tops.items():
        print(f"\n{label}, {mode}: " + ", ".join(f"{e.key} {e.count}" for e in events))


if __name__ == "__main__":
    main()
