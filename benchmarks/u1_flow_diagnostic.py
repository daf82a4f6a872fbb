"""Where a 2D U(1) flow falls short: plaquettes, line sums and topology, against exact values.

    python benchmarks/u1_flow_diagnostic.py model.pt [--samples 1024] [--seed 0]

For a trained 2D U(1) model it draws samples in float64 and prints, next to the exact
torus values from the character expansion (:mod:`gaugeflow.lattice.exact`):

* ``<cos theta_P>``, the mean plaquette (too small: the model's plaquettes are too broad);
* ``<cos(sum of the plaquettes of a line)>`` along each direction.  The product of the
  plaquettes of a strip one plaquette wide that wraps the torus is the correlator of the two
  Polyakov loops bounding it, and in 2D U(1) it depends only on the number of plaquettes it
  holds: ``u1_wilson_loop(beta, V, A = L)``.  A ``(mu, nu)`` coupling layer keeps every line sum
  along ``nu``, so a model whose line sums are off cannot be repaired by more of the same
  layers (benchmarks/README.md, "Loop features");
* ``<Q^2>`` and the fraction of samples with ``|Q| >= 2`` (the Haar prior has ``<Q^2> = V/12``:
  a flow must move most of its prior's mass across topological sectors).

It also prints the KL estimate ``<log q - log p> + log Z`` and the spread of the log-weights.
"""

from __future__ import annotations

import argparse
import math

import torch

from gaugeflow.flows import load_flow
from gaugeflow.lattice import exact
from gaugeflow.lattice.groups import wrap_angle
from gaugeflow.lattice.u1 import plaquette_angles


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint of a 2D U(1) model (gaugeflow train --theory u1)")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = load_flow(args.model).double()
    theory = model.theory
    if theory.name != "u1" or theory.dimension != 2:
        parser.error(f"{args.model} holds a {theory.name} model in {theory.dimension}D; this diagnostic is for 2D U(1)")
    beta, volume = theory.couplings["beta"], theory.volume
    torch.manual_seed(args.seed)
    with torch.no_grad():
        links, log_q = model.sample(args.samples)
        log_p = model.target_log_prob(links)
    plaquettes = wrap_angle(plaquette_angles(links, 0, 1))  # [B, x0, x1]

    def row(name, values, exact_value):
        mean, error = values.mean().item(), values.std().item() / len(values) ** 0.5
        print(f"| {name} | {mean:.4f} +- {error:.4f} | {exact_value:.4f} |")

    shape = "x".join(map(str, theory.lattice_shape))
    print(f"U(1) {shape}, beta = {beta:g}, {args.samples} flow samples\n")
    print("| quantity | model | exact |\n|---|---|---|")
    row("<cos theta_P>", plaquettes.cos().mean((1, 2)), exact.u1_plaquette(beta, volume))
    for axis in (0, 1):  # the sum along axis `axis`, one per line
        extent = theory.lattice_shape[axis]
        line_sums = plaquettes.sum(1 + axis)
        row(f"<cos(line sum along x_{axis})>", line_sums.cos().mean(1), exact.u1_wilson_loop(beta, volume, extent))
    charge = torch.round(plaquettes.sum((1, 2)) / (2 * math.pi))
    row("<Q^2>", charge**2, exact.u1_topological_charge_squared(beta, volume))
    print(f"| fraction with abs(Q) >= 2 | {(charge.abs() >= 2).double().mean().item():.4f} | |")
    log_weights = log_p - log_q
    kl = -log_weights.mean().item() + theory.exact_log_partition_function()
    print(f"\nKL(q || p) = {kl:.3f}; std of log p - log q = {log_weights.std().item():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
