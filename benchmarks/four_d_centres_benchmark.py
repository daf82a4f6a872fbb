"""SU(N) staple couplings in 4D: one map of ``U W`` a layer (``--staple-centres sum``) against a map
of ``U W`` and then of ``U C_k`` for every staple (``each``), at equal CPU time.  ``u1 ... sum``
trains the U(1) staple model the same way (one map a layer, centred on the staple sum), for depth
scans (``--layers``).

    python benchmarks/four_d_centres_benchmark.py su3 1.0 each --layers 8 --cpu-minutes 25 --out results/

Trains the staple model (Haar prior, batch 64 or ``--batch-size``, path gradients, Adam at a constant learning rate)
on one torch thread until ``--cpu-minutes`` of process CPU time are used (so that runs sharing a
machine are compared by what they got), then evaluates ESS and independence-Metropolis
acceptance in float64 on 4096 samples.  Writes ``<out>/<theory>-<beta>-<centres>-<layers>.json``
with the loss curve against CPU seconds, and the trained model as a gaugeflow checkpoint beside it
(``.pt``; for ``four_d_exactness_benchmark.py``, ``gaugeflow sample``).

``--init-from CHECKPOINT`` starts from the weights of an earlier run of the same architecture
(another beta allowed, as ``gaugeflow train --init-from``; the optimizer starts anew): a run
continued, or a schedule annealed in beta.  The JSON then records the CPU seconds the
checkpoint's own training took (``earlier_cpu_seconds``), so totals compare at equal cost.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("theory", choices=("u1", "su2", "su3"))
    parser.add_argument("beta", type=float)
    parser.add_argument("centres", choices=("sum", "each"))
    parser.add_argument("--lattice", default="4x4x4x4")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--cpu-minutes", type=float, default=5.0)
    parser.add_argument("--estimator", default="path")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", metavar="WIDTH",
                        help="hidden widths of the conditioner (default: the architecture's, 32 32)")
    parser.add_argument("--chairs", action=argparse.BooleanOptionalAction,
                        help="the conditioners also see the chairs (default: the architecture's; on for U(1), SU(2))")
    parser.add_argument("--recompute", action="store_true", help="recompute the layers in the backward pass")
    parser.add_argument("--init-from", metavar="CHECKPOINT", help="start from this run's weights")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="centres_results")
    args = parser.parse_args()

    from gaugeflow.flows import architecture, build_flow
    from gaugeflow.flows import TrainConfig
    from gaugeflow.flows.checkpoint import load_checkpoint, save_checkpoint, warm_start
    from gaugeflow.flows.train import evaluate, make_optimizer, reverse_kl_step_terms
    from gaugeflow.lattice.theories import make_theory

    torch.set_num_threads(1)
    theory = make_theory(args.theory, args.lattice, beta=args.beta)
    if args.theory == "u1" and args.centres != "sum":
        parser.error("a U(1) staple layer has one map, centred on the staple sum: give 'sum'")
    centres = {} if args.theory == "u1" else {"staple_centres": args.centres}
    if args.hidden:
        centres["hidden_channels"] = list(args.hidden)
    if args.chairs is not None:
        centres["chairs"] = args.chairs
    arch = architecture(theory, layer_kind="staple", prior="haar", n_layers=args.layers, **centres)
    torch.manual_seed(args.seed)
    model = build_flow(arch).recompute_in_backward(args.recompute)
    earlier = 0.0
    if args.init_from:
        warm_start(model, args.init_from)
        earlier = float(load_checkpoint(args.init_from).get("training_seconds") or 0.0)
    optimizer = make_optimizer(model, args.lr)
    began, steps, curve = time.process_time(), 0, []
    while time.process_time() - began < 60 * args.cpu_minutes:
        optimizer.zero_grad(set_to_none=True)
        surrogate, loss, *_ = reverse_kl_step_terms(model, args.batch_size, args.estimator)
        surrogate.backward()
        optimizer.step()
        steps += 1
        curve.append((time.process_time() - began, float(loss)))
    cpu = time.process_time() - began
    os.makedirs(args.out, exist_ok=True)
    name = f"{args.theory}-{args.beta:g}-{args.centres}-{args.layers}"
    if args.batch_size != 64 or args.lr != 1e-3:
        name += f"-b{args.batch_size}-lr{args.lr:g}"
    if args.hidden:
        name += "-h" + "x".join(map(str, args.hidden))
    if args.chairs is not None:
        name += "-chairs" if args.chairs else "-nochairs"
    if args.init_from:
        name += "-from-" + os.path.splitext(os.path.basename(args.init_from))[0]
    config = TrainConfig(steps=max(steps, 1), batch_size=args.batch_size, learning_rate=args.lr, schedule="constant",
                         estimator=args.estimator, seed=args.seed)
    save_checkpoint(os.path.join(args.out, f"{name}.pt"), model, optimizer,
                    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), steps, config, {},
                    training_seconds=earlier + cpu)
    model = model.double()
    torch.manual_seed(args.seed + 1)
    final = evaluate(model, 512, 8)
    result = {"theory": args.theory, "lattice": args.lattice, "beta": args.beta, "centres": args.centres,
              "layers": args.layers, "hidden": arch["hidden_channels"], "batch_size": args.batch_size, "learning_rate": args.lr,
              "chairs": arch.get("chairs"), "recompute": args.recompute, "estimator": args.estimator, "steps": steps, "cpu_seconds": cpu,
              "init_from": args.init_from, "earlier_cpu_seconds": earlier,
              "cpu_seconds_per_step": cpu / max(steps, 1),
              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "parameters": sum(p.numel() for p in model.parameters()), **final, "curve": curve}
    with open(os.path.join(args.out, f"{name}.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))


if __name__ == "__main__":
    main()
