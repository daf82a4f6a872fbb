"""HMC throughput benchmark for gaugeflow on the CPU.

For each case (U(1) 16x16 and 64x64 at beta=2, SU(3) 4^4 at beta=5.5, phi^4 16x16 at
m2=-4, lam=8), all in float64, and each torch thread count, it measures

* trajectories/s: full ``gaugeflow.hmc.hmc.hmc_trajectory`` calls (momenta, leapfrog with a fixed
  number of steps, Metropolis), after a few untimed thermalisation trajectories;
* force evaluations/s: ``theory.force(field)`` alone, on the thermalised field.

Each quantity is timed over blocks of calls lasting about ``block`` seconds (the number of
calls is set from one untimed call); the block is repeated and the median rate is reported,
because other processes may share the CPU.

For U(1) the same trajectory is also written in plain numpy (analytic Wilson-action force,
``np.roll`` shifts, leapfrog, Metropolis, angle wrapping) and the "vs numpy" column gives
torch trajectories/s divided by numpy trajectories/s on the same lattice and batch.
At startup the numpy force and a numpy molecular-dynamics trajectory are checked against
the torch theory to 1e-10, so both sides compute the same thing.  numpy's elementwise
operations are single-threaded, so it is timed once per lattice, not per thread count.

Run: ``python benchmarks/hmc_benchmark.py [--quick] [--threads 1 2] [--batch 1] [--markdown]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

from gaugeflow.hmc.hmc import HMCParameters, hmc_trajectory, molecular_dynamics
from gaugeflow.lattice.theories import make_theory

CASES = [  # label, theory name, lattice, couplings
    ("U(1) 16x16 beta=2", "u1", "16x16", {"beta": 2.0}),
    ("U(1) 64x64 beta=2", "u1", "64x64", {"beta": 2.0}),
    ("SU(3) 4^4 beta=5.5", "su3", "4x4x4x4", {"beta": 5.5}),
    ("phi^4 16x16 m2=-4 lam=8", "phi4", "16x16", {"m2": -4.0, "lam": 8.0}),
]
PARAMS = HMCParameters(trajectory_length=1.0, n_steps=10, integrator="leapfrog")


# -- plain numpy reference: 2D U(1) Wilson action, theta of shape [B, 2, L0, L1] -------------
def np_wrap(a):
    """Angles to (-pi, pi], as ``gaugeflow.lattice.groups.wrap_angle``."""
    return np.pi - np.mod(np.pi - a, 2 * np.pi)


def np_plaquette(theta):
    """theta_P(x) = theta_0(x) + theta_1(x+0) - theta_0(x+1) - theta_1(x); shift(+1) = roll(-1)."""
    t0, t1 = theta[:, 0], theta[:, 1]
    return t0 + np.roll(t1, -1, axis=1) - np.roll(t0, -1, axis=2) - t1


def np_action(theta, beta):
    return -beta * np.cos(np_plaquette(theta)).sum(axis=(1, 2))


def np_force(theta, beta):
    """dS/dtheta_0(x) = beta[sin P(x) - sin P(x-1)], dS/dtheta_1(x) = beta[sin P(x-0) - sin P(x)]."""
    s = np.sin(np_plaquette(theta))
    return beta * np.stack([s - np.roll(s, 1, axis=2), np.roll(s, 1, axis=1) - s], axis=1)


def np_leapfrog(theta, p, beta, step, n_steps):
    p = p - 0.5 * step * np_force(theta, beta)
    for i in range(n_steps):
        theta = np_wrap(theta + step * p)
        p = p - (step if i < n_steps - 1 else 0.5 * step) * np_force(theta, beta)
    return theta, p


def np_hmc_trajectory(theta, beta, params, rng):
    p = rng.standard_normal(theta.shape)
    h0 = np_action(theta, beta) + 0.5 * (p * p).sum(axis=(1, 2, 3))
    new, p = np_leapfrog(theta, p, beta, params.step_size, params.n_steps)
    dh = np_action(new, beta) + 0.5 * (p * p).sum(axis=(1, 2, 3)) - h0
    accept = np.log(rng.random(theta.shape[0])) < -dh
    return np_wrap(np.where(accept[:, None, None, None], new, theta))


def check_numpy_reference(theory, batch):
    """Assert the numpy force and MD trajectory agree with the torch theory to 1e-10."""
    beta = theory.couplings["beta"]
    generator = torch.Generator().manual_seed(1)
    theta = theory.hot_start(batch, generator=generator)
    momenta = theory.field.random_momenta(theta, generator)
    force_err = np.abs(np_force(theta.numpy(), beta) - theory.force(theta).numpy()).max()
    assert force_err < 1e-10, f"numpy force differs from torch force by {force_err}"
    t_end, p_end = molecular_dynamics(theory, theta, momenta, PARAMS)
    n_end, q_end = np_leapfrog(theta.numpy(), momenta.numpy(), beta, PARAMS.step_size, PARAMS.n_steps)
    md_err = max(np.abs(np_wrap(n_end - t_end.numpy())).max(), np.abs(q_end - p_end.numpy()).max())
    assert md_err < 1e-10, f"numpy leapfrog differs from torch leapfrog by {md_err}"


# -- timing ---------------------------------------------------------------------------------
def median_rate(fn, block_seconds, repeats):
    """Calls per second of ``fn``: median over ``repeats`` timed blocks of about ``block_seconds``."""
    start = time.perf_counter()
    fn()
    calls = max(1, math.ceil(block_seconds / (time.perf_counter() - start)))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_torch(theory, batch, cfg):
    generator = torch.Generator().manual_seed(0)
    state = {"field": theory.hot_start(batch, generator=generator)}

    def trajectory():
        state["field"] = hmc_trajectory(theory, state["field"], PARAMS, generator).field

    for _ in range(cfg["thermalise"]):
        trajectory()
    traj_rate = median_rate(trajectory, cfg["block"], cfg["repeats"])
    field = state["field"]
    force_rate = median_rate(lambda: theory.force(field), cfg["block"], cfg["repeats"])
    return traj_rate, force_rate


def bench_numpy(theory, batch, cfg):
    beta, rng = theory.couplings["beta"], np.random.default_rng(0)
    state = {"theta": theory.hot_start(batch, generator=torch.Generator().manual_seed(0)).numpy()}

    def trajectory():
        state["theta"] = np_hmc_trajectory(state["theta"], beta, PARAMS, rng)

    for _ in range(cfg["thermalise"]):
        trajectory()
    return median_rate(trajectory, cfg["block"], cfg["repeats"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few short repeats (smoke test)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts")
    parser.add_argument("--batch", type=int, default=1, help="independent chains per trajectory")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    cfg = (
        {"thermalise": 2, "block": 0.05, "repeats": 3}
        if args.quick
        else {"thermalise": 10, "block": 0.5, "repeats": 7}
    )

    load_start = os.getloadavg()[0]
    header = ["case", "threads", "batch", "trajectories/s", "force evals/s", "vs numpy"]
    rows = []
    for label, name, lattice, couplings in CASES:
        theory = make_theory(name, lattice, **couplings)
        numpy_rate = None
        if name == "u1":
            check_numpy_reference(theory, args.batch)
            numpy_rate = bench_numpy(theory, args.batch, cfg)
        for threads in args.threads:
            torch.set_num_threads(threads)
            traj_rate, force_rate = bench_torch(theory, args.batch, cfg)
            ratio = f"{traj_rate / numpy_rate:.2f}" if numpy_rate else "-"
            rows.append([label, str(threads), str(args.batch), f"{traj_rate:.1f}", f"{force_rate:.0f}", ratio])
            print(f"done: {label}, {threads} thread(s)", file=sys.stderr, flush=True)
    print(f"\nleapfrog, {PARAMS.n_steps} steps, trajectory length {PARAMS.trajectory_length:g}, float64; "
          f"median of {cfg['repeats']} timed blocks of ~{cfg['block']:g} s each; "
          f"1-min load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end ({os.cpu_count()} CPUs)\n")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
