"""Pseudofermion flow vs exact-determinant flow at equal training budget (Schwinger model).

Two models with the same U(1) gauge-flow architecture and seed, trained for the same number
of steps at the same batch size and learning rate (path gradients, float32):

* exact-det: the gauge flow on ``S_gauge - log det(D^dagger D)`` (theory ``schwinger``);
* joint: the pseudofermion flow ``q(U) q(phi | U)`` (:mod:`gaugeflow.flows.pseudofermion_flow`)
  on the joint action ``S_gauge + phi^dagger (D_hat^dagger D_hat)^{-1} phi``, its conditional
  started at ``--kappa-q`` (default: off the exact one, 0.9 kappa).

Then, in float64, ``--chains`` chains of ``--steps-mcmc`` independence-Metropolis steps each
(after 20 unstored ones): the exact-det flow on the exact-det density, the joint model's chain
on the joint density (heat-bath ``phi``, then a joint proposal), and the joint model's gauge
flow ``q(U)`` alone used as an exact-det proposal (shows what the pseudofermion noise in the
training gradient cost the gauge flow).  Reported: training CPU seconds, acceptance, and the
learned ``kappa_q`` and ``a``.

    python benchmarks/pseudofermion_flow_benchmark.py [--lattice 8x8] [--beta 2] [--kappa 0.22] [--train-steps 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow
from gaugeflow.flows.pseudofermion_flow import build_pseudofermion_flow, pseudofermion_architecture
from gaugeflow.hmc.flow_metropolis import FlowMetropolisSampler
from gaugeflow.hmc.pseudofermion_metropolis import PseudofermionFlowMetropolisSampler
from gaugeflow.lattice.theories import make_theory


def train(model, args, path) -> float:
    began = time.process_time()
    train_flow(model, TrainConfig(steps=args.train_steps, batch_size=args.batch_size, learning_rate=args.lr,
                                  log_every=args.train_steps, checkpoint_every=args.train_steps, seed=args.seed),
               path, progress=False)
    return time.process_time() - began


def acceptance(sampler, lattice_shape, args) -> float:
    generator = torch.Generator().manual_seed(args.seed)
    field = sampler.thermalise(torch.zeros(args.chains, 2, *lattice_shape, dtype=torch.float64), 20, generator)
    accepted = []
    for _ in range(args.steps_mcmc):
        result = sampler.update(field, generator)
        field = result.field
        accepted.append(result.accepted.double().mean().item())
    return float(np.mean(accepted))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lattice", default="8x8")
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--kappa", type=float, default=0.22)
    parser.add_argument("--kappa-q", type=float, default=None)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", default="16")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--steps-mcmc", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    hidden = [int(c) for c in args.hidden.split(",")]
    exact = make_theory("schwinger", args.lattice, beta=args.beta, kappa=args.kappa)
    joint_theory = make_theory("schwinger", args.lattice, beta=args.beta, kappa=args.kappa, fermions="pseudofermion")
    kappa_q = 0.9 * args.kappa if args.kappa_q is None else args.kappa_q
    with tempfile.TemporaryDirectory() as workdir:
        torch.manual_seed(args.seed)
        exact_model = build_flow(architecture(exact, n_layers=args.layers, hidden_channels=hidden))
        exact_seconds = train(exact_model, args, os.path.join(workdir, "exact.pt"))
        torch.manual_seed(args.seed)
        joint = build_pseudofermion_flow(pseudofermion_architecture(
            architecture(joint_theory, n_layers=args.layers, hidden_channels=hidden), kappa_q))
        joint_seconds = train(joint, args, os.path.join(workdir, "joint.pt"))
    shape = exact.lattice_shape
    rows = [
        ("exact-det flow", exact_seconds, acceptance(FlowMetropolisSampler(exact_model), shape, args), "-"),
        ("pseudofermion flow, joint chain", joint_seconds,
         acceptance(PseudofermionFlowMetropolisSampler(joint), shape, args),
         f"kappa_q {joint.kappa_q.item():.4f} (from {kappa_q:.4f}), log a {joint.log_scale.item():+.5f}"),
        ("its gauge flow q(U) alone, exact-det density", joint_seconds,
         acceptance(FlowMetropolisSampler(joint.gauge), shape, args), "-"),
    ]
    print(f"Schwinger {args.lattice}, beta={args.beta:g}, kappa={args.kappa:g}; {args.layers} layers, hidden {hidden}; "
          f"{args.train_steps} steps x batch {args.batch_size}, lr {args.lr:g}; {args.chains} chains x "
          f"{args.steps_mcmc} Metropolis steps")
    print("| model | training CPU s | acceptance | learned conditional |")
    print("|---|---|---|---|")
    for label, seconds, rate, note in rows:
        print(f"| {label} | {seconds:.0f} | {rate:.3f} | {note} |")


if __name__ == "__main__":
    main()
