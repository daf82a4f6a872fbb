"""Data-parallel training over MPI ranks: weak scaling, allreduce cost, replica identity.

For 1, 2, ... ranks (``mpiexec -n R``, one torch thread each) at a fixed per-rank batch: the
time of one training step of the default U(1) 8x8 model (sampling, path gradient, gradient
allreduce, optimizer), training samples/s over all ranks, the time of the allreduce of the
model's gradient buffer alone (float64, as :class:`gaugeflow.flows.distributed.Communicator`
sends it), and whether every rank ends with bit-identical parameters.  Then a weak-scaling
model for N Aurora-class nodes from these measured figures plus stated interconnect figures.

    python benchmarks/mpi_scaling_benchmark.py [--ranks 1 2] [--batch 64] [--steps 20]

The weak-scaling model: a step on N nodes of R ranks (one per GPU tile) takes
``T(N) = T_step + T_copy + T_allreduce(p = N R)``, with the gradient (S bytes, float64) moved
device -> host -> device (``T_copy = 2 S / B_host``) and summed by MPI's allreduce for
medium messages (recursive doubling / Rabenseifner: ``2 ceil(log2 p) alpha + 2 (p-1)/p S /
B_rank``).  Assumed figures, stated so they can be replaced by measured ones: Aurora has 12
tiles and 8 HPE Slingshot-11 NICs of 25 GB/s per node (ALCF, "Aurora machine overview"), so
``B_rank = 8 * 25 / 12`` GB/s when every rank communicates at once; MPI latency ``alpha`` =
3 us (Slingshot-11 inter-node, small messages); ``B_host`` = 50 GB/s (device-host copies);
``T_step`` = 344 ms, the measured path-gradient step of this model at batch 1024 on one H100
(shared/README.md), standing in for one Aurora tile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def worker(args) -> None:
    import numpy as np
    import torch

    from gaugeflow.flows import TrainConfig, architecture, build_flow
    from gaugeflow.flows.distributed import Communicator
    from gaugeflow.flows.train import _start_or_resume, training_step
    from gaugeflow.lattice.theories import make_theory

    torch.set_num_threads(1)
    comm = Communicator()
    theory = make_theory("u1", "8x8", beta=2.0)
    torch.manual_seed(0)
    model = build_flow(architecture(theory))
    config = TrainConfig(steps=args.steps + 3, batch_size=args.batch * comm.size)
    with tempfile.TemporaryDirectory() as scratch:
        run = _start_or_resume(model, config, os.path.join(scratch, "m.pt"), False, comm)
    for _ in range(3):  # warm-up
        training_step(model, run, config, args.batch, comm)
    comm.comm.Barrier()
    began = time.perf_counter()
    for _ in range(args.steps):
        training_step(model, run, config, args.batch, comm)
    comm.comm.Barrier()
    step_seconds = (time.perf_counter() - began) / args.steps
    n_parameters = sum(p.numel() for p in model.parameters())
    gradient = np.random.default_rng(comm.rank).normal(size=n_parameters)
    total = np.empty_like(gradient)
    comm.comm.Barrier()
    began = time.perf_counter()
    for _ in range(200):
        comm.comm.Allreduce(gradient, total, op=comm.MPI.SUM)
    allreduce_seconds = (time.perf_counter() - began) / 200
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    digests = comm.comm.gather(digest, root=0)
    if comm.is_root:
        print(json.dumps({"ranks": comm.size, "step_seconds": step_seconds,
                          "samples_per_second": args.batch * comm.size / step_seconds,
                          "allreduce_seconds": allreduce_seconds, "gradient_bytes": gradient.nbytes,
                          "n_parameters": n_parameters, "identical": len(set(digests)) == 1}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64, help="samples per rank per step (default: 64)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    results = []
    for ranks in args.ranks:
        command = [mpiexec, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker",
                   "--batch", str(args.batch), "--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if done.returncode:
            sys.exit(done.stderr)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = results[0]["samples_per_second"]
    print(f"U(1) 8x8 default model ({results[0]['n_parameters']} parameters, gradient buffer "
          f"{results[0]['gradient_bytes'] / 1024:.0f} KiB float64), {args.batch} samples per rank per step, "
          f"path gradient, 1 thread per rank\n")
    print("| ranks | step time (ms) | samples/s | speed-up | efficiency | allreduce (ms) | allreduce share | replicas identical |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        speedup = r["samples_per_second"] / base
        print(f"| {r['ranks']} | {1e3 * r['step_seconds']:.1f} | {r['samples_per_second']:.0f} | {speedup:.2f}x | "
              f"{speedup / r['ranks'] * results[0]['ranks']:.0%} | {1e3 * r['allreduce_seconds']:.3f} | "
              f"{r['allreduce_seconds'] / r['step_seconds']:.1%} | {'yes' if r['identical'] else 'NO'} |")
    weak_scaling_model(results[0]["gradient_bytes"])


AURORA = {"ranks_per_node": 12, "nic_gb_per_s": 25.0, "nics_per_node": 8, "latency_s": 3e-6,
          "host_copy_gb_per_s": 50.0, "step_s": 0.344, "batch_per_rank": 1024}


def weak_scaling_model(gradient_bytes: int, nodes=(1, 8, 64, 512, 2048), machine=AURORA) -> None:
    import math

    per_rank = machine["nic_gb_per_s"] * machine["nics_per_node"] / machine["ranks_per_node"] * 1e9
    copy = 2 * gradient_bytes / (machine["host_copy_gb_per_s"] * 1e9)
    print(f"\nWeak-scaling model, Aurora-class nodes ({machine['ranks_per_node']} ranks/node, step "
          f"{1e3 * machine['step_s']:.0f} ms at {machine['batch_per_rank']} samples/rank, gradient "
          f"{gradient_bytes / 1024:.0f} KiB; assumptions in the docstring)\n")
    print("| nodes | ranks | allreduce (ms) | step (ms) | efficiency | global batch | samples/s |")
    print("|---|---|---|---|---|---|---|")
    for n in nodes:
        p = n * machine["ranks_per_node"]
        allreduce = 2 * math.ceil(math.log2(p)) * machine["latency_s"] + 2 * (p - 1) / p * gradient_bytes / per_rank
        step = machine["step_s"] + copy + allreduce
        print(f"| {n} | {p} | {1e3 * allreduce:.3f} | {1e3 * step:.1f} | {machine['step_s'] / step:.2%} | "
              f"{p * machine['batch_per_rank']:,} | {p * machine['batch_per_rank'] / step:,.0f} |")


if __name__ == "__main__":
    main()
