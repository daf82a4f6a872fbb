"""Where a 4D U(1) flow falls short: its plaquette and fluxes against HMC and against heat-bath sweeps.

    python benchmarks/four_d_u1_diagnostic.py MODEL.pt [MODEL.pt ...] [--samples 1024] [--sweeps 6]

For trained U(1) models of one lattice and beta (in any dimension >= 3; ``four_d_centres_benchmark.py
u1 ...`` writes them) it prints, in float64:

* the mean plaquette ``<cos theta_P>`` and the spread of the log-weights ``log p - log q``;
* the **fluxes**: the wrapped plaquette angles summed over each 2D slice of the torus (a
  ``(mu, nu)`` plane at fixed other coordinates) are ``2 pi n`` with an integer ``n``; their
  variance and the fraction with ``n = 0``.  The Haar prior has variance ``L^2 / 12`` per slice
  (``1.33`` on 4^4); a flow moves a flux only by carrying a plaquette through ``pi``;
* the same for an HMC ensemble (``--trajectories``, every tenth after the first 200 kept) -- the
  target;
* and for **heat-bath sweeps from the Haar prior**: each sweep draws every link from its exact
  conditional ``exp(beta |A| cos(theta + arg A))`` given the others, the links of one staple mask
  (:func:`gaugeflow.flows.masks.staple_link_mask`, which share no plaquette) at a time, in the
  order the staple layers use.  A sweep of such a chain visits every link as one sweep of staple
  layers does, with fresh random numbers; a flow reuses each link's prior value as its random
  number, and the links it has already moved depend on it (:func:`gaugeflow.hmc.heatbath.heat_bath_sweep`).
"""

from __future__ import annotations

import argparse
import math

import torch

from gaugeflow.flows import load_flow
from gaugeflow.hmc import HMCParameters, hmc_trajectory
from gaugeflow.hmc.heatbath import heat_bath_sweep
from gaugeflow.lattice.gauge import average_plaquette, planes
from gaugeflow.lattice.groups import wrap_angle
from gaugeflow.lattice.u1 import plaquette_angles


def slice_fluxes(theta: torch.Tensor) -> torch.Tensor:
    """``[B, n_slices]`` integer fluxes: the wrapped plaquette angles of every 2D slice, summed, over ``2 pi``."""
    dimension = theta.shape[1]
    fluxes = [wrap_angle(plaquette_angles(theta, mu, nu)).sum(dim=(1 + mu, 1 + nu)).flatten(1)
              for mu, nu in planes(dimension)]
    return torch.round(torch.cat(fluxes, 1) / (2 * math.pi))


def summary(theory, theta: torch.Tensor) -> dict:
    plaquette = average_plaquette(theory.links_as_matrices(theta)).mean()
    fluxes = slice_fluxes(theta)
    return {"plaquette": plaquette.item(), "flux variance": fluxes.var().item(),
            "P(flux 0)": (fluxes == 0).double().mean().item()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="checkpoints of U(1) models of one lattice and beta")
    parser.add_argument("--samples", type=int, default=1024, help="flow samples and heat-bath chains")
    parser.add_argument("--sweeps", type=int, default=6)
    parser.add_argument("--trajectories", type=int, default=360, help="HMC trajectories of 64 chains")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    rows = []
    theory = None
    for path in args.models:
        model = load_flow(path).double()
        found = model.theory
        if found.name != "u1" or found.dimension < 3:
            parser.error(f"{path} holds a {found.name} model in {found.dimension}D; this diagnostic is for U(1) in 3D or 4D")
        if theory is not None and (found.lattice_shape, found.couplings) != (theory.lattice_shape, theory.couplings):
            parser.error(f"{path} is for another lattice or beta than {args.models[0]}")
        theory = found
        with torch.no_grad():
            links, log_q = model.sample(args.samples)
            log_w = model.target_log_prob(links) - log_q
        rows.append((path.rsplit("/", 1)[-1], {**summary(theory, links), "spread of log w": log_w.std().item()}))

    generator = torch.Generator().manual_seed(args.seed)
    theta = theory.hot_start(args.samples, generator=generator)
    rows.append(("Haar prior", summary(theory, theta)))
    for sweep in range(1, args.sweeps + 1):
        theta = heat_bath_sweep(theory, theta, generator)
        rows.append((f"heat bath, {sweep} sweep{'s' if sweep > 1 else ''}", summary(theory, theta)))

    field = theory.hot_start(64, generator=generator)
    kept = []
    for trajectory in range(args.trajectories):
        field = hmc_trajectory(theory, field, HMCParameters(trajectory_length=1.0, n_steps=10), generator).field
        if trajectory >= 200 and trajectory % 10 == 0:
            kept.append(field)
    rows.append((f"HMC ({64 * len(kept)} configurations)", summary(theory, torch.cat(kept))))

    beta = theory.couplings["beta"]
    print(f"U(1) {'x'.join(map(str, theory.lattice_shape))}, beta = {beta}\n")
    columns = ["plaquette", "flux variance", "P(flux 0)", "spread of log w"]
    print("| ensemble | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, values in rows:
        print(f"| {name} | " + " | ".join(f"{values[c]:.4f}" if c in values else "" for c in columns) + " |")


if __name__ == "__main__":
    main()
