"""``gaugeflow`` command line: one program, one subcommand per job.

    gaugeflow hmc --theory u1 --lattice 8x8 --beta 2.0 --n-configs 1000 --out ens.h5
    gaugeflow analyze ens.h5 [--json]

Errors in the input exit with status 2 and a one-line message; a run stopped by
SIGTERM/SIGUSR1 exits with status 3 after saving everything (rerun with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys


class CommandError(Exception):
    pass


def _add_theory_options(parser):
    group = parser.add_argument_group("theory")
    group.add_argument("--theory", required=True, help="phi4, u1, su2, su3 (or suN)")
    group.add_argument("--lattice", required=True, help="lattice extents, e.g. 8x8 or 4x4x4x8 (time is last)")
    group.add_argument("--beta", type=float, help="gauge coupling (u1, suN)")
    group.add_argument("--m2", type=float, help="bare mass squared (phi4)")
    group.add_argument("--lam", type=float, help="quartic coupling (phi4)")


def _add_run_options(parser):
    group = parser.add_argument_group("execution")
    group.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    group.add_argument("--device", default="cpu", help="cpu, cuda[:i] or xpu[:i] (default: cpu)")
    group.add_argument("--dtype", default="float64", choices=("float32", "float64"),
                       help="field precision; energies and accept/reject are always float64 (default: float64)")
    group.add_argument("--threads", type=int, default=1,
                       help="CPU threads for torch (default: 1; one per MPI rank is best on shared nodes)")
    group.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gaugeflow", description="Flow-based and HMC sampling for lattice field theory.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    hmc = sub.add_parser("hmc", help="generate an ensemble with Hybrid Monte Carlo",
                         description="Generate an HMC ensemble and store it in an HDF5 file.")
    _add_theory_options(hmc)
    group = hmc.add_argument_group("Monte Carlo")
    group.add_argument("--n-configs", type=int, default=1000,
                       help="configurations stored in total, over all chains, after thermalisation (default: 1000)")
    group.add_argument("--therm", type=int, default=200, help="thermalisation trajectories per chain, not stored (default: 200)")
    group.add_argument("--chains", type=int, default=4, help="independent chains run as one batch (default: 4)")
    group.add_argument("--trajectory-length", type=float, default=1.0, help="molecular-dynamics time per trajectory (default: 1.0)")
    group.add_argument("--steps", type=int, default=10, help="initial integration steps per trajectory (default: 10)")
    group.add_argument("--integrator", default="omelyan", choices=("omelyan", "leapfrog"), help="(default: omelyan)")
    group.add_argument("--jitter", type=float, default=0.2,
                       help="each trajectory's step size is drawn from step*[1-j, 1+j]; keeps HMC ergodic (default: 0.2)")
    group.add_argument("--no-tune", dest="tune", action="store_false",
                       help="keep --steps fixed instead of tuning it during thermalisation")
    group.add_argument("--target-acceptance", type=float, default=0.8, help="tuning target (default: 0.8)")
    group.add_argument("--save-every", type=int, default=1, help="store every k-th trajectory (default: 1)")
    group.add_argument("--start", default="hot", choices=("hot", "cold"), help="initial configuration (default: hot)")
    group.add_argument("--out", required=True, help="output HDF5 file; never overwritten")
    group.add_argument("--resume", action="store_true",
                       help="continue the chains stored in --out and top it up to --n-configs (starts anew if --out is absent)")
    _add_run_options(hmc)

    analyze = sub.add_parser("analyze", help="observable means, errors and autocorrelation times",
                             description="Gamma-method analysis of every observable in an ensemble.")
    analyze.add_argument("ensemble", help="HDF5 ensemble file")
    analyze.add_argument("--json", action="store_true", help="print {name: {mean, error, tau_int}} as JSON")
    analyze.add_argument("--stau", type=float, default=1.5, help="Wolff's S_tau for automatic windowing (default: 1.5)")
    return parser


def run_hmc(args) -> int:
    import torch

    from hmc.hmc import HMCParameters
    from hmc.run import generate_ensemble
    from lattice.backend import resolve_precision
    from lattice.theories import make_theory

    if args.threads < 1:
        raise CommandError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    theory = make_theory(args.theory, args.lattice, **_couplings(args))
    params = HMCParameters(args.trajectory_length, args.steps, args.integrator, args.jitter)
    summary = generate_ensemble(
        theory,
        args.out,
        n_configs=args.n_configs,
        n_therm=args.therm,
        n_chains=args.chains,
        seed=args.seed,
        params=params,
        tune=args.tune,
        target_acceptance=args.target_acceptance,
        save_every=args.save_every,
        start=args.start,
        resume=args.resume,
        device=args.device,
        precision=resolve_precision(args.dtype),
        progress=not args.quiet,
    )
    if not args.quiet:
        print(
            f"{summary.path}: {summary.n_configs} configurations ({summary.n_new} new), "
            f"acceptance {summary.acceptance:.3f}, {summary.n_steps} steps/trajectory, {summary.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0


def _couplings(args) -> dict:
    return {name: getattr(args, name) for name in ("beta", "m2", "lam") if getattr(args, name) is not None}


def run_analyze(args) -> int:
    from hmc.analysis import analyze_ensemble, format_table

    results = analyze_ensemble(args.ensemble, S=args.stau)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0


COMMANDS = {"hmc": run_hmc, "analyze": run_analyze}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from hmc.run import EXIT_INTERRUPTED, Interrupted

    try:
        return COMMANDS[args.command](args)
    except Interrupted as stop:
        print(f"gaugeflow {args.command}: {stop}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CommandError, ValueError, KeyError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"gaugeflow {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
