"""What crash consistency costs: the time of one commit (a segment built in memory, written,
fsynced and renamed, then the manifest), and HMC throughput when committing after every
update against committing every 30 s (the default).

    python benchmarks/storage_benchmark.py [--quick]

Prints a markdown table; numbers depend on the file system (fsync on a local SSD, tmpfs or
Lustre differ by orders of magnitude), so run it where the ensembles will live (--dir).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from gaugeflow.hmc.hmc import HMCParameters
from gaugeflow.hmc.run import generate_ensemble
from gaugeflow.lattice.ensemble import create_ensemble, open_ensemble
from gaugeflow.lattice.theories import make_theory


def commit_times(theory, n_chains, rows_per_commit, repeats, directory):
    """Seconds per commit of ``rows_per_commit`` updates of ``n_chains`` chains, and MB per commit."""
    path = os.path.join(directory, f"commit-{theory.name}-{os.getpid()}-{time.monotonic_ns()}.h5")
    field = theory.hot_start(n_chains)
    observables = {k: v.numpy() for k, v in theory.observables(field).items()}
    configs = field.to(theory.storage_dtype(torch.float64)).numpy()
    times = []
    with create_ensemble(path, theory=theory, observable_names=list(observables), sampler="bench", seed=0) as ensemble:
        for _ in range(repeats):
            for step in range(rows_per_commit):
                ensemble.append(configs, np.arange(n_chains), np.full(n_chains, step), np.ones(n_chains, bool),
                                np.zeros(n_chains), observables)
            began = time.perf_counter()
            ensemble.commit({"field": configs, "rng_state": np.zeros(16, np.uint8)}, {"next_trajectory": 0})
            times.append(time.perf_counter() - began)
        size = os.path.getsize(ensemble.segments[-1].path)
    return statistics.median(times), size / 1e6


def throughput(theory, n_chains, n_configs, commit_every, directory):
    path = os.path.join(directory, f"hmc-{commit_every}-{os.getpid()}-{time.monotonic_ns()}.h5")
    began = time.perf_counter()
    generate_ensemble(theory, path, n_configs=n_configs, n_chains=n_chains, n_therm=5, seed=1,
                      params=HMCParameters(1.0, 8), tune=False, progress=False, commit_every=commit_every)
    seconds = time.perf_counter() - began
    with open_ensemble(path) as ensemble:
        return n_configs / n_chains / seconds, len(ensemble.segments)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test)")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 3 if args.quick else 10
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        print("| case | chains | updates per commit | ms per commit | MB per segment |")
        print("|---|---|---|---|---|")
        for name, lattice, couplings, chains in (("u1", "16x16", {"beta": 2.0}, 16), ("u1", "64x64", {"beta": 2.0}, 16),
                                                 ("su3", "4x4x4x4", {"beta": 5.5}, 4)):
            theory = make_theory(name, lattice, **couplings)
            for rows in (1, 100):
                seconds, size = commit_times(theory, chains, rows, repeats, directory)
                print(f"| {name} {lattice} | {chains} | {rows} | {1e3 * seconds:.1f} | {size:.2f} |")
        print()
        print("| HMC, u1 16x16, 16 chains | trajectories/s per chain | segments written |")
        print("|---|---|---|")
        theory = make_theory("u1", "16x16", beta=2.0)
        n_configs = 16 * (40 if args.quick else 200)
        for commit_every in (0.0, 30.0):
            rate, segments = throughput(theory, 16, n_configs, commit_every, directory)
            label = "after every update" if commit_every == 0 else f"every {commit_every:g} s (default)"
            print(f"| commit {label} | {rate:.1f} | {segments} |")


if __name__ == "__main__":
    main()
