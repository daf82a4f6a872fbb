"""Annealed importance sampling in 4D against HMC and heat-bath chains: effective samples per CPU-minute.

    python benchmarks/four_d_annealing_benchmark.py u1-4d-b0.8 --steps 50 100 200 400 --samples 1024
    python benchmarks/four_d_annealing_benchmark.py su3-4d-b2 --start results/su3-1-each-8.pt --steps 50 100
    python benchmarks/four_d_annealing_benchmark.py u1-4d-b1.2 --particles 256 --steps 400 --samples 24

For each ladder length ``n`` (:func:`gaugeflow.hmc.annealing.annealed_samples`: ``n`` heat-bath
sweeps from Haar measure, or from a flow model trained at a lower ``beta`` with ``--start``) it
prints the spread of ``log w``, the ESS and independence-Metropolis acceptance, the CPU seconds per
sample and the effective samples per CPU-minute (``ESS x samples / CPU-minutes``), with the
reweighted plaquette.  With ``--particles K`` every sample is a particle system of ``K`` paths
resampled along the ladder (:func:`gaugeflow.hmc.annealing.annealed_particles`): the spread, ESS
and acceptance are those of the systems' ``log Z_hat`` (the proposals of particle independent
Metropolis-Hastings, ``gaugeflow hmc --sampler annealed --particles K``), the cost is per system
and the plaquette is weighted by ``Z_hat``.  Beside them, HMC and heat-bath chains of the same theory (``--chains`` in
one batch, ``--reference-seconds`` of CPU each after thermalisation) give their plaquette,
integrated autocorrelation times (Gamma method) of the plaquette and of ``|P|`` (the Polyakov
loop), and effective samples per CPU-minute of each, ``configurations / (2 tau_int) / CPU-minutes``.
One torch thread; CPU time of this process.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from four_d_flow_benchmark import CASES
from gaugeflow.flows.diagnostics import acceptance_rate
from gaugeflow.flows.reweighting import reweight
from gaugeflow.hmc.annealing import annealed_particles, annealed_samples
from gaugeflow.hmc.autocorrelation import gamma_method
from gaugeflow.hmc.heatbath import HeatBathSampler
from gaugeflow.hmc.hmc import HMCParameters, HMCSampler
from gaugeflow.lattice.theories import make_theory

OBSERVABLES = ("plaquette", "polyakov_loop_abs")


def annealing_row(theory, n_steps: int, samples: int, start, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    began = time.process_time()
    field, log_w = annealed_samples(theory, samples, n_steps, start=start, generator=generator, batch_size=256)
    seconds = time.process_time() - began
    estimates = reweight(log_w, {"plaquette": theory.observables(field)["plaquette"]})
    ess, plaquette = estimates["ess"]["mean"], estimates["plaquette"]
    return {"sampler": f"annealed, {n_steps} sweeps", "steps": n_steps, "samples": samples,
            "spread": log_w.std().item(), "ess": ess, "acceptance": acceptance_rate(log_w, generator),
            "cpu_per_sample": seconds / samples, "effective_per_minute": ess * samples / (seconds / 60),
            "plaquette": plaquette["mean"], "plaquette_error": plaquette["error"]}


def particle_row(theory, n_steps: int, systems: int, particles: int, start, seed: int) -> dict:
    """``systems`` particle systems of ``particles`` resampled paths each (``--particles``): the
    proposals of particle independent Metropolis-Hastings, weighted by their ``Z_hat``."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    began = time.process_time()
    field, log_w, log_z = annealed_particles(theory, systems, particles, n_steps, start=start, generator=generator)
    seconds = time.process_time() - began
    plaquettes = (torch.softmax(log_w, -1) * theory.observables(field.flatten(0, 1))["plaquette"].view(systems, -1)).sum(-1)
    estimates = reweight(log_z, {"plaquette": plaquettes})
    ess, plaquette = estimates["ess"]["mean"], estimates["plaquette"]
    return {"sampler": f"{particles} particles, {n_steps} sweeps", "steps": n_steps, "samples": systems,
            "particles": particles, "spread": log_z.std().item(), "ess": ess,
            "acceptance": acceptance_rate(log_z, generator), "cpu_per_sample": seconds / systems,
            "effective_per_minute": ess * systems / (seconds / 60),
            "plaquette": plaquette["mean"], "plaquette_error": plaquette["error"]}


def chain_row(theory, sampler, name: str, chains: int, seconds: float, seed: int, n_therm: int) -> dict:
    """Run a :class:`gaugeflow.hmc.sampler.Sampler` on ``chains`` chains for ``seconds`` of CPU
    after ``n_therm`` thermalisation updates."""
    generator = torch.Generator().manual_seed(seed)
    field = sampler.thermalise(theory.hot_start(chains, generator=generator), n_therm, generator)
    series, began = [], time.process_time()
    while time.process_time() - began < seconds or len(series) < 20:
        field = sampler.update(field, generator).field
        values = theory.observables(field)
        series.append(np.stack([values[o].numpy() for o in OBSERVABLES]))
    used = time.process_time() - began
    series = np.stack(series, axis=-1)  # [observable, chain, time]
    results = {o: gamma_method(series[i]) for i, o in enumerate(OBSERVABLES)}
    configurations = series.shape[1] * series.shape[2]
    row = {"sampler": name, "samples": configurations, "cpu_per_sample": used / configurations,
           "plaquette": results["plaquette"].mean, "plaquette_error": results["plaquette"].error}
    for o, r in results.items():
        row[f"tau_{o}"] = r.tau_int
        row[f"effective_per_minute_{o}"] = configurations / (2 * r.tau_int) / (used / 60)
    row["effective_per_minute"] = row["effective_per_minute_plaquette"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=list(CASES))
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--start", help="a flow checkpoint of the same theory and lattice at a lower beta")
    parser.add_argument("--particles", type=int, default=1,
                        help="K > 1: --samples particle systems of K resampled paths each, weighted by their Z_hat")
    parser.add_argument("--chains", type=int, default=16, help="chains of the HMC and heat-bath references")
    parser.add_argument("--reference-seconds", type=float, default=120, help="CPU seconds of each reference (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    theory_name, lattice, beta = CASES[args.case]
    theory = make_theory(theory_name, lattice, beta=beta)
    start = None
    if args.start:
        from gaugeflow.flows import load_flow

        start = load_flow(args.start).double()
        start.eval()
    rows = []
    for n_steps in args.steps:
        rows.append(particle_row(theory, n_steps, args.samples, args.particles, start, args.seed) if args.particles > 1
                    else annealing_row(theory, n_steps, args.samples, start, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    if args.reference_seconds > 0:
        references = (("HMC", HMCSampler(theory, HMCParameters(trajectory_length=1.0, n_steps=10)), 100),
                      ("heat bath, 1 sweep", HeatBathSampler(theory), 50))
        for name, sampler, n_therm in references:
            rows.append(chain_row(theory, sampler, name, args.chains, args.reference_seconds, args.seed, n_therm))
            print(json.dumps(rows[-1]), flush=True)

    where = (f" from {args.start} (beta = {start.theory.couplings['beta']})" if start is not None
             else " from Haar measure")
    print(f"\n{theory_name} {lattice}, beta = {beta}; annealing{where}\n")
    print("| sampler | samples | spread of log w | ESS | acceptance | tau_int plaquette / abs P | CPU-ms / sample "
          "| effective samples / CPU-min (plaquette) | plaquette |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        taus = (f"{r['tau_plaquette']:.1f} / {r['tau_polyakov_loop_abs']:.1f}" if "tau_plaquette" in r else "")
        spread = f"{r['spread']:.2f}" if "spread" in r else ""
        ess = f"{r['ess']:.3f}" if "ess" in r else ""
        acceptance = f"{r['acceptance']:.3f}" if "acceptance" in r else ""
        print(f"| {r['sampler']} | {r['samples']} | {spread} | {ess} | {acceptance} | {taus} | "
              f"{1e3 * r['cpu_per_sample']:.1f} | {r['effective_per_minute']:.0f} | "
              f"{r['plaquette']:.5f} +- {r['plaquette_error']:.5f} |")
    if args.out:
        with open(args.out, "w") as stream:
            json.dump({"case": args.case, "start": args.start, "rows": rows}, stream, indent=1)
    if not all(math.isfinite(r["effective_per_minute"]) for r in rows):
        raise SystemExit("a row has no finite rate")


if __name__ == "__main__":
    main()
