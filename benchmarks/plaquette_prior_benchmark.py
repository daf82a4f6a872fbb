"""The 2D U(1) plaquette prior before any training: acceptance and ESS against the Haar prior.

For each lattice and beta, four untrained models (one local layer, the identity) are
evaluated in float64 on ``--samples`` independent proposals: the Haar prior; the plaquette
prior alone (its constraint layer set to the identity); the plaquette prior with the constraint
layer at the quantile spline of the uniform -> von Mises transport (the start until 2026-12);
the plaquette prior with the constraint layer at its fitted start (the default:
``gaugeflow.flows.u1_global.constraint_transport``).  Columns: independence-Metropolis acceptance, ESS,
the KL to the exact distribution (character expansion) and the ESS the one-plaquette weight
``exp(beta cos P(x*))`` gives at large volume, ``I_0(beta)^2 / I_0(2 beta)``.

    python benchmarks/plaquette_prior_benchmark.py [--cases 8x8:2 16x16:6 ...] [--samples 4096]
"""

from __future__ import annotations

import argparse

import torch
from scipy.special import i0

from gaugeflow.flows import acceptance_rate, architecture, build_flow, effective_sample_size
from gaugeflow.flows.u1_global import von_mises_transport
from gaugeflow.lattice.theories import make_theory

DEFAULT_CASES = ["4x4:6", "8x8:2", "8x8:6", "8x8:8", "16x16:2", "16x16:4", "16x16:6", "32x32:6", "32x32:8", "32x32:12"]


def evaluate(model, theory, n_samples, seed):
    torch.manual_seed(seed)
    log_w = []
    with torch.no_grad():
        for _ in range(max(1, n_samples // 512)):
            x, log_q = model.sample(512)
            log_w.append(model.target_log_prob(x) - log_q)
    log_w = torch.cat(log_w)
    kl = theory.exact_log_partition_function() - log_w.mean().item()
    return acceptance_rate(log_w), effective_sample_size(log_w), kl


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, metavar="LATTICE:BETA")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| lattice | beta | prior | acceptance | ESS | KL | I0(b)^2/I0(2b) |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        lattice, beta = case.split(":")
        theory = make_theory("u1", lattice, beta=float(beta))
        for label in ("haar", "plaquette, constraint layer = identity", "plaquette, quantile start (before)",
                      "plaquette, fitted start (default)"):
            model = build_flow(architecture(theory, n_layers=1, prior=label.split(",")[0])).double()
            with torch.no_grad():
                if "identity" in label:
                    model.flows[0].params.zero_()
                elif "quantile" in label:
                    model.flows[0].params.copy_(von_mises_transport(model.flows[0].kernel, float(beta)))
            acceptance, ess, kl = evaluate(model, theory, args.samples, args.seed)
            bound = i0(float(beta)) ** 2 / i0(2 * float(beta))
            print(f"| {lattice} | {beta} | {label} | {acceptance:.3f} | {ess:.3f} | {kl:.3f} | {bound:.3f} |", flush=True)


if __name__ == "__main__":
    main()
