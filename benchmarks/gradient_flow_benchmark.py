r"""SU(3) Wilson action near beta = 6: t0/a^2 (and w0/a) from the Wilson flow on a `gaugeflow hmc` ensemble.

Generates an ensemble with the command line (``gaugeflow hmc --theory su3 ...``; or reads one
given with ``--ensemble``), flows every configuration with Lüscher's RK3 integrator
(:func:`gaugeflow.lattice.gradient_flow.wilson_flow`), and prints ``t0/a^2`` and ``w0/a`` (clover
and plaquette energy densities) with Gamma-method errors, each Markov chain a replica, next to
the published values, and the cost per flowed configuration.

Reference values (SU(3), Wilson gauge action):

* Lüscher, arXiv:1006.4518, Table 1: ``t0/a^2`` at beta = 5.96 (L/a = 16), 6.17 (24) and 6.42
  (32), about 2.79 at beta = 5.96.  The table itself could not be retrieved with the tools of this
  project (the stored copies of the paper give its first page only), so no figure of it is
  hard-coded here; benchmarks/README.md lists the figures as recalled, marked unconfirmed.
* The parametrisation of ``sqrt(t0)/a`` in beta printed below: the ansatz of Francis, Kaczmarek,
  Laine, Neuhaus and Ohno, arXiv:1503.05652, with the coefficients of LatticeQCD/AnalysisToolbox
  (``latqcdtools/physics/referenceScales.py``, ``sqrtt0``).  It gives t0/a^2 = 2.777 at
  beta = 5.96, 5.47 at 6.17 and 11.23 at 6.42.  The FlowQCD parametrisation (arXiv:1503.06516) was
  not retrieved; it is fitted to 6.3 <= beta <= 7.5 (its abstract), so it would not apply at 5.96.

Both are infinite-volume (L >> sqrt(8 t0)) values; small lattices differ by finite-volume
effects (see benchmarks/README.md).

    python benchmarks/gradient_flow_benchmark.py                       # 4^4, 8 configurations
    python benchmarks/gradient_flow_benchmark.py --lattice 12x12x12x12 --start cold --pretherm 25 --steps 12 \
        --therm 30 --n-configs 32 --save-every 5 --flow-step 0.02 --t-max 3.5 --measure-interval 0.1 \
        --keep su3.h5 --select 12:
    python benchmarks/gradient_flow_benchmark.py --ensemble su3.h5 --select 12:13 --flow-step 0.01  # step check
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
from gaugeflow.lattice.gradient_flow import _crossing as crossing, wilson_flow
from gaugeflow.lattice.ildg import parse_selection


def sqrt_t0_parametrisation(beta: float) -> float:
    """``sqrt(t0)/a`` of SU(3) with the Wilson action: two-loop asymptotic scaling times a rational
    correction in 1/beta (arXiv:1503.05652; coefficients as in LatticeQCD/AnalysisToolbox)."""
    b0, b1 = 11 / (4 * math.pi) ** 2, 102 / (4 * math.pi) ** 4
    c1, c2, c3, c4 = -9.945, 24.191, -5.334, 1.452
    exponent = beta / (12 * b0) + b1 / (2 * b0**2) * math.log(6 * b0 / beta)
    return math.exp(exponent * (1 + c1 / beta + c2 / beta**2) / (1 + c3 / beta + c4 / beta**2))


def prethermalise(args, path) -> str:
    """``--pretherm`` molecular-dynamics trajectories with momentum refresh and no accept/reject from
    ``--start``, written to the ILDG file ``path``: a start close to equilibrium for every chain.

    From a cold start on 12^4 at beta = 5.96, HMC with 12 steps has dH ~ 50-130 and accepts
    nothing; about 15 such trajectories bring the plaquette within 0.002 of equilibrium, and the
    exact HMC thermalisation of ``gaugeflow hmc`` (``--therm``) does the rest."""
    from gaugeflow.hmc.hmc import HMCParameters, hamiltonian, molecular_dynamics
    from gaugeflow.lattice import gauge
    from gaugeflow.lattice.ildg import save_configuration

    theory = make_theory("su3", args.lattice, beta=args.beta)
    generator = torch.Generator().manual_seed(args.seed)
    field = theory.cold_start(1) if args.start == "cold" else theory.hot_start(1, generator=generator)
    params = HMCParameters(n_steps=args.steps)
    for k in range(args.pretherm):
        momenta = theory.field.random_momenta(field, generator)
        h_start = hamiltonian(theory, field, momenta)
        field, momenta = molecular_dynamics(theory, field, momenta, params)
        field = theory.field.project(field)
        delta_h = float(hamiltonian(theory, field, momenta) - h_start)
        plaquette = float(gauge.average_plaquette(theory.links_as_matrices(field)))
        print(f"pretherm {k}: dH = {delta_h:.2f}, plaquette {plaquette:.5f}", flush=True)
    save_configuration(theory, field[0], path)
    return path


def generate(args, path) -> float:
    """Run ``gaugeflow hmc``; seconds taken."""
    command = [sys.executable, "-m", "gaugeflow.cli", "hmc", "--theory", "su3", "--lattice", args.lattice,
               "--beta", str(args.beta), "--n-configs", str(args.n_configs), "--chains", str(args.chains),
               "--therm", str(args.therm), "--save-every", str(args.save_every), "--seed", str(args.seed),
               "--steps", str(args.steps), "--start", args.start, "--observables", "plaquette",
               "--device", args.device, "--threads", str(args.threads), "--quiet", "--out", path]
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
    parser.add_argument("--steps", type=int, default=10,
                        help="initial MD steps per trajectory (tuned in thermalisation)")
    parser.add_argument("--start", default="hot", help="hot, cold or an ILDG file every chain starts from")
    parser.add_argument("--pretherm", type=int, default=0,
                        help="molecular-dynamics trajectories without accept/reject from a hot or cold --start "
                             "before gaugeflow hmc (its start for every chain)")
    parser.add_argument("--keep", metavar="PATH",
                        help="write the generated ensemble to PATH (reuse it with --ensemble)")
    parser.add_argument("--flow-step", "--eps", dest="eps", type=float, default=0.01,
                        help="RK3 flow step (Lüscher: 0.01)")
    parser.add_argument("--measure-interval", type=float, default=0.05)
    parser.add_argument("--t-max", type=float, help="flow time (default: 1.6 x the parametrised t0/a^2)")
    parser.add_argument("--select", help="rows of the ensemble to flow, e.g. 0:1 or ::2 (default: all)")
    parser.add_argument("--save-flow", metavar="NPZ", help="write times, t^2 E and chain labels per configuration")
    parser.add_argument("--batch", type=int, default=4, help="configurations flowed together")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as scratch:
        path = args.ensemble or args.keep or os.path.join(scratch, "su3.h5")
        if args.pretherm and not args.ensemble:
            began = time.perf_counter()
            args.start = prethermalise(args, os.path.join(scratch, "start.ildg"))
            print(f"prethermalisation: {time.perf_counter() - began:.1f} s")
        hmc_seconds = None if args.ensemble else generate(args, path)
        with open_ensemble(path) as ensemble:
            analyse(args, ensemble, device, hmc_seconds)


def chains_of(ensemble, rows):
    """The selected rows grouped per Markov chain, each in Monte Carlo order: a list of row arrays."""
    chain, step = ensemble.column("chain")[rows], ensemble.column("step")[rows]
    return [rows[chain == c][np.argsort(step[chain == c], kind="stable")] for c in np.unique(chain)]


def report_chains(ensemble, chains):
    """Thermalisation check: the stored plaquette per chain, first half against second half, and
    the acceptance."""
    if "plaquette" not in ensemble.observable_names:
        return
    plaquette, accepted = ensemble.column("plaquette"), ensemble.column("accepted")
    for c, rows in enumerate(chains):
        p = plaquette[rows]
        half = len(p) // 2
        halves = (f"first half {p[:half].mean():.5f}, second half {p[half:].mean():.5f}, "
                  if half else "")
        print(f"chain {c}: {len(rows)} configurations (steps {ensemble.column('step')[rows].min()}-"
              f"{ensemble.column('step')[rows].max()}); plaquette {halves}all {p.mean():.5f} +- "
              f"{p.std(ddof=1) / math.sqrt(len(p)) if len(p) > 1 else 0:.5f} (naive); acceptance at the stored "
              f"trajectories {accepted[rows].mean():.2f}")
    state = ensemble.resume_state() or {}
    if "n_steps" in state:
        print(f"HMC: {int(state['n_steps'])} MD steps per trajectory after tuning")


def analyse(args, ensemble, device, hmc_seconds):
    theory = make_theory(ensemble.theory_name, ensemble.lattice_shape, **ensemble.couplings)
    rows = np.asarray(parse_selection(args.select, len(ensemble)), dtype=np.int64)
    chains = chains_of(ensemble, rows)
    order = np.concatenate(chains)  # rows flowed, chain by chain
    beta = theory.couplings["beta"]
    expected = sqrt_t0_parametrisation(beta) ** 2
    t_max = args.t_max or 1.6 * expected
    print(f"\n{theory!r}: {len(order)} of {len(ensemble)} configurations, {len(chains)} chain(s); flow to "
          f"t = {t_max:.2f} with eps = {args.eps}, measured every {args.measure_interval}; device {device}, "
          f"{args.threads} thread(s)")
    report_chains(ensemble, chains)

    t2e, w = {"clover": [], "plaquette": []}, {"clover": [], "plaquette": []}
    began = time.perf_counter()
    for start in range(0, len(order), args.batch):
        batch = order[start:start + args.batch]
        links = torch.as_tensor(np.concatenate([ensemble.configs(int(r), int(r) + 1) for r in batch])).to(device)
        result = wilson_flow(links, theory, t_max, args.eps, measure_interval=args.measure_interval)
        for definition in t2e:
            t2e[definition].append(t2_energy(result, definition))
            w[definition].append(t_derivative_t2_energy(result, definition))
        print(f"flowed {min(start + args.batch, len(order))}/{len(order)} ({time.perf_counter() - began:.0f} s)",
              flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    flow_seconds = time.perf_counter() - began
    times = result.times
    n_steps = math.ceil(t_max / args.eps - 1e-9)
    t2e = {k: np.concatenate(v) for k, v in t2e.items()}
    w = {k: np.concatenate(v) for k, v in w.items()}
    bounds = np.cumsum([0] + [len(c) for c in chains])
    per_chain = lambda values: [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]  # noqa: E731
    if args.save_flow:
        np.savez(args.save_flow, times=times, rows=order, chain=np.repeat(np.arange(len(chains)), np.diff(bounds)),
                 t2e_clover=t2e["clover"], t2e_plaquette=t2e["plaquette"], w_clover=w["clover"],
                 w_plaquette=w["plaquette"], eps=args.eps, beta=beta, lattice=np.array(theory.lattice_shape))

    print("\n| E(t) | t0/a^2 (Gamma) | jackknife error | tau_int | w0/a | t0/a^2 parametrised, L = inf |")
    print("|---|---|---|---|---|---|")
    for definition in ("clover", "plaquette"):
        try:
            if min(np.diff(bounds)) < 2:  # too few for errors (e.g. a step-size check on one configuration)
                t0_text = f"{crossing(times, t2e[definition].mean(0), 0.3):.5f} (no error: < 2 per chain) | | "
            else:
                t0 = scale_t0(times, per_chain(t2e[definition]))  # each chain a replica
                t0_text = f"{t0.value:.3f} +- {t0.error:.3f} | {t0.jackknife_error:.3f} | {t0.tau_int:.2f}"
        except ValueError:  # t^2 <E> never reaches the reference value: see the line below the table
            t0_text = "not reached | | "
        try:
            w0 = scale_w0(times, per_chain(w[definition]))
            w0_text = f"{w0.value:.3f} +- {w0.error:.3f}"
        except ValueError:
            w0_text = "not reached"
        print(f"| {definition} | {t0_text} | {w0_text} | {expected:.3f} |")

    largest = t2e["clover"].mean(0).max()
    print(f"\nlargest <t^2 E_clover>: {largest:.3f} (t0 needs 0.3); sqrt(8 t0)/L with the parametrised "
          f"t0: {math.sqrt(8 * expected) / max(theory.lattice_shape):.2f}")
    print(f"cost: {flow_seconds / len(order):.2f} s per flowed configuration ({n_steps} RK3 steps, "
          f"{len(times)} measurements; {1e3 * flow_seconds / len(order) / n_steps:.1f} ms per step and configuration, "
          f"batches of {args.batch})")
    if hmc_seconds is not None:
        n_trajectories = len(ensemble) * args.save_every + args.chains * args.therm
        print(f"ensemble: {hmc_seconds:.1f} s for about {n_trajectories} HMC trajectories "
              f"({args.chains} chains batched, {args.therm} thermalisation each)")


if __name__ == "__main__":
    main()
