"""Cost of one 4D training step: CPU seconds, peak memory, operator calls, checkpoint size.

For U(1) and SU(3) at 4^4 and 8^4, the default model of each layer kind -- ``plaquette`` (16
plaquette couplings with CNN conditioners in the earlier ``planes`` order, the 4D default before
architecture version 6) and ``staple`` (the 4D default now) -- one path-gradient step at batch 64
on one torch thread.  Each case runs in its own process, so that the peak resident memory is its
own.  Cases whose estimated memory exceeds ``--max-gb`` (default 12) are run at a smaller batch
and say so.  ``--recompute`` recomputes every layer in the backward pass (``train --recompute``);
``--staple-centres each`` measures SU(3) staple layers centred on every staple; ``--micro-batch M``
draws the batch in parts of at most ``M`` samples (``train --micro-batch``).

    python benchmarks/four_d_cost_benchmark.py [--max-gb 16] [--recompute] [--micro-batch 32] [--staple-centres each] [--kinds staple]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = [("u1", "4x4x4x4"), ("su3", "4x4x4x4"), ("u1", "8x8x8x8"), ("su3", "8x8x8x8")]
# peak GB per sample measured at 4^4 and batch 64, for choosing a batch that fits at 8^4
GB_PER_SAMPLE_4 = {("u1", "plaquette"): 1.6 / 64, ("su3", "plaquette"): 3.5 / 64,
                   ("u1", "staple"): 0.66 / 64, ("su3", "staple"): 3.0 / 64}


def measure(theory_name: str, lattice: str, kind: str, batch: int, recompute: bool = False, centres: str = "sum",
            micro_batch: int | None = None) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from gaugeflow.flows import architecture, build_flow
    from gaugeflow.flows.train import accumulate_gradient, make_optimizer
    from gaugeflow.lattice.theories import make_theory

    torch.set_num_threads(1)
    theory = make_theory(theory_name, lattice, beta=1.0)
    options = {"plaquette_order": "planes"} if kind == "plaquette" else {}
    if kind == "staple" and theory_name.startswith("su"):
        options["staple_centres"] = centres
    arch = architecture(theory, layer_kind=kind, prior="haar", **options)
    torch.manual_seed(0)
    model = build_flow(arch).recompute_in_backward(recompute)
    optimizer = make_optimizer(model, 1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradient(model, batch, "path", micro_batch)
        optimizer.step()

    step()
    times = []
    for _ in range(3 if theory.volume <= 256 else 1):  # an 8^4 SU(3) step takes a minute
        began = time.process_time()
        step()
        times.append(time.process_time() - began)
    # read before the profiled step: the profiler's own record of ~10^5 operator calls takes
    # hundreds of MB (a recomputed SU(3) 4^4 step read 2.09 GB with it, 1.29 without)
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    covered = torch.zeros(theory.dimension, *theory.lattice_shape, dtype=torch.bool)
    for layer in model.flows:
        covered[layer.mu] |= layer.active
    return {
        "theory": theory_name, "lattice": lattice, "kind": kind, "layers": arch["n_layers"], "batch": batch,
        "recompute": recompute, "centres": options.get("staple_centres"), "micro_batch": micro_batch,
        "cpu_seconds_per_step": statistics.median(times),
        "peak_rss_gb": peak_rss_gb,
        "operator_calls": sum(event.count for event in profiler.key_averages()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "checkpoint_mb": len(buffer.getvalue()) / 2**20,
        "links_updated": f"{int(covered.sum())}/{covered.numel()}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-gb", type=float, default=12.0)
    parser.add_argument("--lattices", default="4x4x4x4,8x8x8x8", help="comma-separated subset of the cases' lattices")
    parser.add_argument("--kinds", default="plaquette,staple", help="comma-separated layer kinds")
    parser.add_argument("--theories", default="u1,su3", help="comma-separated subset of the cases' theories")
    parser.add_argument("--recompute", action="store_true", help="recompute every layer in the backward pass")
    parser.add_argument("--staple-centres", default="sum", choices=("sum", "each"))
    parser.add_argument("--micro-batch", type=int, default=None, help="draw the batch in parts of at most this many samples")
    parser.add_argument("--batch", type=int, default=64, help="batch size before --max-gb lowers it")
    parser.add_argument("--one", nargs=4, metavar=("THEORY", "LATTICE", "KIND", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        theory, lattice, kind, batch = args.one
        print(json.dumps(measure(theory, lattice, kind, int(batch), args.recompute, args.staple_centres, args.micro_batch)))
        return 0
    print("| theory | lattice | layers | batch | CPU-s / step | peak RSS | operator calls / step | parameters | "
          "checkpoint | links updated |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for theory, lattice in CASES:
        if lattice not in args.lattices.split(",") or theory not in args.theories.split(","):
            continue
        for kind in args.kinds.split(","):
            batch = args.batch
            volume_ratio = (int(lattice.split("x")[0]) / 4) ** 4
            # recomputation holds one layer's intermediates instead of all 16 layers'
            layers_held = 2 if args.recompute else 16
            # a step in parts holds one part's graph at a time
            while batch > 1 and (GB_PER_SAMPLE_4[theory, kind] * volume_ratio * min(batch, args.micro_batch or batch)
                                 * layers_held / 16 > args.max_gb):
                batch //= 2
            extra = (["--recompute"] if args.recompute else []) + ["--staple-centres", args.staple_centres]
            extra += ["--micro-batch", str(args.micro_batch)] if args.micro_batch else []
            run = subprocess.run([sys.executable, __file__, "--one", theory, lattice, kind, str(batch), *extra],
                                 capture_output=True, text=True)
            if run.returncode:
                print(f"| {theory} | {lattice} | {kind} | {batch} | failed: {run.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(run.stdout)
            label = f"{r['layers']} {kind}" + (f" ({r['centres']})" if r["centres"] else "") + (", recompute" if r["recompute"] else "")
            label += f", parts of {r['micro_batch']}" if r["micro_batch"] else ""
            print(f"| {theory} | {lattice} | {label} | {r['batch']} | {r['cpu_seconds_per_step']:.2f} | "
                  f"{r['peak_rss_gb']:.2f} GB | {r['operator_calls']:,} | {r['parameters']:,} | {r['checkpoint_mb']:.2f} MB | "
                  f"{r['links_updated']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
