"""SU(3) HMC against the memory-bandwidth bound: closed-form exponentials, cheap reunitarisation.

For SU(3) on 8^4 and 16^4 (one chain, float64/complex128, leapfrog, 10 steps): milliseconds per
trajectory and per part (force, link update ``exp(dt P) U``, reunitarisation), the same parts
the way they were done before (``torch.linalg.matrix_exp`` and an SVD projection of every
link), and the ratio of the trajectory time to a bytes-moved bound:

    bound = (n_steps * 4 + (n_steps + 1) * 2) * field_bytes / bandwidth

(each step reads and writes links and momenta; each force evaluation reads the links and
writes a force), with the bandwidth of a large ``torch`` copy measured on the same device.

    python benchmarks/sun_hmc_benchmark.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gaugeflow.hmc.hmc import HMCParameters, hmc_trajectory
from gaugeflow.lattice.backend import resolve_device
from gaugeflow.lattice.groups import project_to_sun
from gaugeflow.lattice.theories import make_theory


def timed(function, device, repeats):
    function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times)


def bandwidth(device, megabytes=256):
    """Bytes per second of a large copy (read + write counted)."""
    source = torch.empty(megabytes * 2**20 // 8, dtype=torch.float64, device=device)
    target = torch.empty_like(source)
    milliseconds = timed(lambda: target.copy_(source), device, 5)
    return 2 * source.numel() * 8 / (milliseconds / 1e3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8^4 only, fewer repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    repeats = 2 if args.quick else 3
    rate = bandwidth(device)
    print(f"device {device}, {args.threads} thread(s), copy bandwidth {rate / 1e9:.1f} GB/s\n")
    print("| lattice | field MB | trajectory ms | force ms | exp(dt P) U ms (before: matrix_exp) | "
          "reunitarise ms (before: SVD) | bound ms | trajectory / bound |")
    print("|---|---|---|---|---|---|---|---|")
    for lattice in ("8x8x8x8",) if args.quick else ("8x8x8x8", "16x16x16x16"):
        theory = make_theory("su3", lattice, beta=5.5)
        generator = torch.Generator(device=device).manual_seed(1)
        links = theory.hot_start(1, generator=generator, device=device)
        momenta = theory.field.random_momenta(links, generator)
        params = HMCParameters(1.0, 10, "leapfrog", 0.0)
        field_bytes = links.numel() * links.element_size()
        trajectory = timed(lambda: hmc_trajectory(theory, links, params, generator), device, repeats)
        force = timed(lambda: theory.force(links), device, repeats)
        evolve = timed(lambda: theory.field.evolve(links, momenta, 0.1), device, repeats)
        before_evolve = timed(lambda: torch.linalg.matrix_exp(0.1 * momenta) @ links, device, repeats)
        drifted = links * (1 + 1e-9)
        project = timed(lambda: theory.field.project(drifted), device, repeats)
        before_project = timed(lambda: project_to_sun(links), device, repeats)
        bound = (params.n_steps * 4 + (params.n_steps + 1) * 2) * field_bytes / rate * 1e3
        print(f"| SU(3) {lattice} | {field_bytes / 1e6:.1f} | {trajectory:.0f} | {force:.1f} | {evolve:.1f} "
              f"({before_evolve:.1f}) | {project:.1f} ({before_project:.1f}) | {bound:.2f} | {trajectory / bound:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
