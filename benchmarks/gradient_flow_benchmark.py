"""SU(3) Wilson action near beta = 6: t0/a^2 (and w0/a) from the Wilson flow on a `gaugeflow hmc` ensemble.

Generates an ensemble with the command line (``gaugeflow hmc --theory su3 ...``; or reads one
given with ``--ensemble``), flows every configuration with Lüscher's RK3 integrator
(:func:`gaugeflow.lattice.gradient_flow.wilson_flow`), and prints ``t0/a^2`` and ``w0/a`` (clover
and plaquette energy densities) with Gamma-method errors, each Markov chain a replica, next to
the published values, and the cost per flowed configuration.

Published values (SU(3), Wilson gauge action):

* Lüscher, arXiv:1006.4518, Table 1: ``t0/a^2`` at beta = 5.96, 6.17, 6.42 (about 2.79 at
  beta = 5.96).  The exact figures could not be retrieved with the tools of this project, so
  none is hard-coded here; compare by hand with the paper.
* The parametrisation of ``sqrt(t0)/a`` in beta used for comparison below is the ansatz of
  Francis, Kaczmarek, Laine, Neuhaus and Ohno, arXiv:1503.05652 (a fit to, among others, the
  FlowQCD data of arXiv:1503.06516), with the coefficients as implemented in
  LatticeQCD/AnalysisToolbox (``latqcdtools/physics/referenceScales.py``, ``sqrtt0``).  It gives
  t0/a^2 = 2.777 at beta = 5.96, 5.47 at 6.17 and 11.23 at 6.42, within 0.5 % of the values
  the issue quotes from Lüscher's table.  The FlowQCD parametrisation itself (arXiv:1503.06516)
  could not be retrieved; it is not used.

Both references are infinite-volume (L >> sqrt(8 t0)) values; small lattices differ by
finite-volume effects (see benchmarks/README.md).

    python benchmarks/gradient_flow_benchmark.py                       # 4^4, 8 configurations
    python benchmarks/gradient_flow_benchmark.py --lattice 16x16x16x16 --n-configs 100 --save-every 10
    python benchmarks/gradient_flow_benchmark.py --ensemble su3.h5      # an existing ensemble
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from gaugeflow.lattice import open_ensemble, make_theory, scale_t0, scale_w0, t2_energy, t_derivative_t2_energy
from gaugeflow.lattice.backend import resolve_device
from gaugeflow.lattice.gradient_flow import wilson_flow


def sqrt_t0_parametrisation(beta: float) -> float:
    """``sqrt(t0)/a`` of SU(3) with the Wilson action: two-loop asymptotic scaling times a rational
    correction in 1/beta (arXiv:1503.05652; coefficients as in LatticeQCD/AnalysisToolbox)."""
    b0, b1 = 11 / (4 * math.pi) ** 2, 102 / (4 * math.pi) ** 4
    c1, c2, c3, c4 = -9.945, 24.191, -5.334, 1.452
    exponent = beta / (12 * b0) + b1 / (2 * b0**2) * math.log(6 * b0 / beta)
    return math.exp(exponent * (1 + c1 / beta + c2 / beta**2) / (1 + c3 / beta + c4 / beta**2))


def generate(args, path) -> float:
    """Run ``gaugeflow hmc``; seconds taken."""
    command = [sys.executable, "-m", "gaugeflow.cli", "hmc", "--theory", "su3", "--lattice", args.lattice,
               "--beta", str(args.beta), "--n-configs", str(args.n_configs), "--chains", str(args.chains),
               "--therm", str(args.therm), "--save-every", str(args.save_every), "--seed", str(args.seed),
               "--observables", "plaquette", "--device", args.device, "--threads", str(args.threads),
               "--quiet", "--out", path]
    print("$ gaugeflow", " ".join(command[3:]), flush=True)
    began = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - began


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensemble", help="an existing SU(3) ensemble (else one is generated)")
    parser.add_argument("--lattice", default="4x4x4x4")
    parser.add_argument("--beta", type=float, default=5.96)
    parser.add_argument("--n-configs", type=int, default=8)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--therm", type=int, default=100)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eps", type=float, default=0.01, help="flow step (Lüscher: 0.01)")
    parser.add_argument("--measure-interval", type=float, default=0.05)
    parser.add_argument("--t-max", type=float, help="flow time (default: 1.6 x the parametrised t0/a^2)")
    parser.add_argument("--batch", type=int, default=4, help="configurations flowed together")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as scratch:
        path = args.ensemble or os.path.join(scratch, "su3.h5")
        hmc_seconds = None if args.ensemble else generate(args, path)
        with open_ensemble(path) as ensemble:
            analyse(args, ensemble, device, hmc_seconds)


def analyse(args, ensemble, device, hmc_seconds):
    theory = make_theory(ensemble.theory_name, ensemble.lattice_shape, **ensemble.couplings)
    configs = ensemble.configs()
    beta = theory.couplings["beta"]
    expected = sqrt_t0_parametrisation(beta) ** 2
    t_max = args.t_max or 1.6 * expected
    print(f"\n{theory!r}: {len(configs)} configurations; flow to t = {t_max:.2f} with eps = {args.eps}, "
          f"measured every {args.measure_interval}; device {device}, {args.threads} thread(s)")

    t2e, w = {"clover": [], "plaquette": []}, {"clover": [], "plaquette": []}
    began = time.perf_counter()
    for start in range(0, len(configs), args.batch):
        links = torch.as_tensor(configs[start:start + args.batch]).to(device)
        result = wilson_flow(links, theory, t_max, args.eps, measure_interval=args.measure_interval)
        for definition in t2e:
            t2e[definition].append(t2_energy(result, definition))
            w[definition].append(t_derivative_t2_energy(result, definition))
    if device.type == "cuda":
        torch.cuda.synchronize()
    flow_seconds = time.perf_counter() - began
    times = result.times
    n_steps = math.ceil(t_max / args.eps - 1e-9)

    print("\n| E(t) | t0/a^2 (Gamma) | jackknife error | tau_int | w0/a | t0/a^2 parametrised, L = inf |")
    print("|---|---|---|---|---|---|")
    for definition in ("clover", "plaquette"):
        t0_data = ensemble.per_chain(np.concatenate(t2e[definition]))  # each chain a replica
        w_data = ensemble.per_chain(np.concatenate(w[definition]))
        try:
            t0 = scale_t0(times, t0_data)
            t0_text = f"{t0.value:.3f} +- {t0.error:.3f} | {t0.jackknife_error:.3f} | {t0.tau_int:.2f}"
        except ValueError:  # t^2 <E> never reaches the reference value: see the line below the table
            t0_text = "not reached | | "
        try:
            w0 = scale_w0(times, w_data)
            w0_text = f"{w0.value:.3f} +- {w0.error:.3f}"
        except ValueError:
            w0_text = "not reached"
        print(f"| {definition} | {t0_text} | {w0_text} | {expected:.3f} |")

    largest = np.concatenate(t2e["clover"]).mean(0).max()
    print(f"\nlargest <t^2 E_clover>: {largest:.3f} (t0 needs 0.3); sqrt(8 t0)/L with the parametrised "
          f"t0: {math.sqrt(8 * expected) / max(theory.lattice_shape):.2f}")
    print(f"cost: {flow_seconds / len(configs):.2f} s per flowed configuration ({n_steps} RK3 steps, "
          f"{len(times)} measurements; {1e3 * flow_seconds / len(configs) / n_steps:.1f} ms per step and configuration, "
          f"batches of {args.batch})")
    if hmc_seconds is not None:
        n_trajectories = len(configs) * args.save_every + args.chains * args.therm
        print(f"ensemble: {hmc_seconds:.1f} s for about {n_trajectories} HMC trajectories "
              f"({args.chains} chains batched, {args.therm} thermalisation each)")


if __name__ == "__main__":
    main()
