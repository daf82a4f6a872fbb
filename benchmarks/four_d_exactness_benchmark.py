"""Exact in use: 4D flow chains against HMC (and the strong-coupling plaquette at SU(3) beta=1).

For a trained 4D model (e.g. from ``four_d_flow_benchmark.py``) this generates the same
number of configurations with HMC and with the flow's composite chain (one flow proposal and
``--hmc-per-step`` HMC trajectories per step) and its independence-Metropolis chain, and
compares every observable the ensembles share (plaquette, Polyakov loop, clover ``Q^2`` for
SU(N)) with Gamma-method errors; for SU(3) at beta = 1 also against the strong-coupling value
``u + O(u^5)`` (``u`` the single-plaquette expectation).

    python benchmarks/four_d_exactness_benchmark.py MODEL.pt [MODEL.pt ...] --n-configs 2000
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

import torch


def compare(model_path: str, n_configs: int, n_chains: int, hmc_per_step: int, seed: int) -> list[str]:
    from gaugeflow import generate_ensemble, load_flow
    from gaugeflow.hmc.analysis import analyze_with_warnings
    from gaugeflow.lattice import exact

    torch.set_num_threads(1)
    model = load_flow(model_path).double()
    theory = model.theory
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        results, warnings = {}, []
        for sampler, options in (("hmc", {}), ("composite", {"hmc_per_step": hmc_per_step}), ("flow", {})):
            path = os.path.join(folder, f"{sampler}.h5")
            generate_ensemble(theory, path, sampler=sampler, model=None if sampler == "hmc" else model,
                              n_configs=n_configs, n_chains=n_chains, n_therm=50, seed=seed, progress=False, **options)
            results[sampler], found = analyze_with_warnings(path)
            warnings += [f"{sampler}: {line}" for line in found]
    reference = results["hmc"]
    couplings = ", ".join(f"{k}={v:g}" for k, v in theory.couplings.items())
    for name in sorted(reference):
        if name in ("acceptance", "exp_minus_delta_h") or not all(name in r for r in results.values()):
            continue
        line = [f"{theory.name} {'x'.join(map(str, theory.lattice_shape))} {couplings}", name,
                f"{reference[name]['mean']:.5f} +- {reference[name]['error']:.5f}"]
        for sampler in ("composite", "flow"):
            r = results[sampler][name]
            pull = (r["mean"] - reference[name]["mean"]) / math.hypot(r["error"], reference[name]["error"])
            line.append(f"{r['mean']:.5f} +- {r['error']:.5f} ({pull:+.1f} sigma)")
        if name == "plaquette" and theory.name == "su3" and theory.couplings["beta"] == 1.0:
            u = exact.su3_plaquette_infinite_volume(1.0)
            pulls = [(results[s][name]["mean"] - u) / results[s][name]["error"] for s in ("hmc", "composite", "flow")]
            line.append(f"u = {u:.5f}: pulls " + ", ".join(f"{p:+.1f}" for p in pulls))
        rows.append("| " + " | ".join(line) + " |")
    acceptance = ", ".join(f"{s} {results[s]['acceptance']['mean']:.3f}" for s in results)
    rows.append(f"| {theory.name} | acceptance | {acceptance} | | |")
    rows += [f"| {theory.name} | warning | {line} | | |" for line in warnings]  # gaugeflow analyze's
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--n-configs", type=int, default=2000)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--hmc-per-step", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print("| case | observable | HMC | composite chain (pull vs HMC) | flow chain (pull vs HMC) | strong coupling |")
    print("|---|---|---|---|---|---|")
    for path in args.models:
        for row in compare(path, args.n_configs, args.chains, args.hmc_per_step, args.seed):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
