"""``gaugeflow`` command line: one program, one subcommand per job.

    gaugeflow hmc --theory u1 --lattice 8x8 --beta 2.0 --n-configs 1000 --out ens.h5
    gaugeflow analyze ens.h5 [--json]
    gaugeflow train --theory u1 --lattice 8x8 --beta 2.0 --steps 2000 --out model.pt
    gaugeflow sample --model model.pt --n-configs 1000 --out flow.h5
    gaugeflow plot model.metrics.csv --out curves.png
    gaugeflow batch -- hmc ...              # inside a Slurm/PBS job: signals, MPI launch, requeue
    gaugeflow slurm render hmc --time 04:00:00 --account A -- --theory u1 ...   # a ready batch script

Errors in the input (the library's :class:`~gaugeflow.lattice.errors.GaugeflowError` and the
``OSError`` of a path) exit with status 2 and a one-line message, in which the library's
parameter names are translated to this program's options; anything else is a bug and shows
its traceback.  A run stopped by SIGTERM/SIGUSR1 exits with status 3 after saving everything
(rerun with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from gaugeflow.lattice.errors import GaugeflowError, InputError
from gaugeflow.lattice.jobcontrol import EXIT_INTERRUPTED, EXIT_NOTHING_SAVED, Interrupted
from gaugeflow.lattice.theories import declared_couplings, declared_options, theories_with_coupling, theory_names

# library parameter -> option of this program, where the two differ
OPTION_FOR_PARAMETER = {
    "n_configs": "--n-configs", "n_chains": "--chains", "n_therm": "--therm", "save_every": "--save-every",
    "n_steps": "--steps", "trajectory_length": "--trajectory-length", "jitter": "--jitter", "md_substeps": "--md-substeps",
    "target_acceptance": "--target-acceptance", "learning_rate": "--lr", "batch_size": "--batch-size",
    "grad_clip": "--grad-clip", "log_every": "--log-every", "checkpoint_every": "--checkpoint-every",
    "eval_batches": "--eval-batches", "hidden_channels": "--hidden", "n_layers": "--layers", "n_bins": "--bins",
    "n_mixture": "--mixture", "kernel_size": "--kernel-size", "rectangles": "--rectangles", "prior": "--prior",
    "symmetrise": "--symmetrise", "momentum_scaling": "--momentum-scaling", "layer_kind": "--layer-kind",
    "staple_centres": "--staple-centres", "chairs": "--chairs",
    "resume=True": "--resume", "recompute=True": "--recompute", "micro_batch": "--micro-batch",
    "commit_every": "--commit-every", "seed": "--seed",
    "flow_time": "--flow-time", "flow_step": "--flow-step", "n_times": "--flow-times",
}


class CommandError(InputError):
    """Bad command-line input that the library never sees (e.g. a malformed option value)."""


def in_option_names(message: str) -> str:
    """A library message with parameter and coupling names replaced by this program's options."""
    names = {**OPTION_FOR_PARAMETER, **{c: "--" + c.replace("_", "-") for c in declared_couplings()}}
    pattern = r"(?<![\w/.-])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")(?![\w/-]|\.\w)"
    return re.sub(pattern, lambda match: names[match.group(1)], message)


def _add_theory_options(parser):
    group = parser.add_argument_group("theory")
    group.add_argument("--theory", required=True, help=f"one of {', '.join(theory_names())} (suN: su2, su3, ...)")
    group.add_argument("--lattice", required=True, help="lattice extents, e.g. 8x8 or 4x4x4x8 (time is last)")
    for name, coupling in declared_couplings().items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=float,
                           help=f"{coupling.description} ({', '.join(theories_with_coupling(name))})")
    for name, option in declared_options().items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, choices=option.choices,
                           help=f"{option.description} ({', '.join(theories_with_coupling(name))}; default: {option.default})")


def _add_hmc_options(group):
    group.add_argument("--trajectory-length", type=float, default=1.0, help="molecular-dynamics time per trajectory (default: 1.0)")
    group.add_argument("--steps", type=int, default=10, help="initial integration steps per trajectory (default: 10)")
    group.add_argument("--integrator", default="omelyan", choices=("omelyan", "leapfrog"), help="(default: omelyan)")
    group.add_argument("--jitter", type=float, default=0.2,
                       help="each trajectory's step size is drawn from step*[1-j, 1+j]; keeps HMC ergodic (default: 0.2)")
    group.add_argument("--no-tune", dest="tune", action="store_false",
                       help="keep --steps fixed instead of tuning it during thermalisation")
    group.add_argument("--target-acceptance", type=float, default=0.8, help="tuning target (default: 0.8)")
    group.add_argument("--md-substeps", type=int, default=1, metavar="K",
                       help="multiple time scales: K finer steps (gauge force) per step of the coarser part of the action "
                            "(fermion force) where the theory splits its action (schwinger) (default: 1: one time scale)")


def _observable_list(text):
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def _add_commit_option(group):
    group.add_argument("--observables", metavar="NAME[,NAME]",
                       help="what to store with every configuration: the theory's standard observables (default: all "
                            "of them) and registered ones (gaugeflow measure --help lists them); leave expensive ones "
                            "out and measure them later with gaugeflow measure")
    group.add_argument("--commit-every", type=float, default=30.0, metavar="S",
                       help="commit stored rows and the chain state to disk at least every S seconds; a crash redoes at most "
                            "that much work (default: 30; 0: after every update)")
    group.add_argument("--mpi", action="store_true",
                       help="independent chains on every MPI rank this was launched with (mpiexec/srun), written as one "
                            "distributed ensemble: --chains per rank, --n-configs in total; resume with any rank count")


def _hmc_parameters(args):
    from gaugeflow.hmc.hmc import HMCParameters

    return dict(params=HMCParameters(args.trajectory_length, args.steps, args.integrator, args.jitter, args.md_substeps),
                tune=args.tune, target_acceptance=args.target_acceptance)


def _seed(text: str) -> int:
    from gaugeflow.lattice.backend import check_seed

    try:
        return check_seed(int(text))
    except (ValueError, InputError) as error:
        raise argparse.ArgumentTypeError(str(error) if isinstance(error, InputError) else f"not an integer: {text!r}")


def _add_run_options(parser, precision="float64"):
    group = parser.add_argument_group("execution")
    group.add_argument("--seed", type=_seed, default=1, help="random seed, 0 to 2^63 - 2^30 (default: 1)")
    def device(text: str) -> str:
        from gaugeflow.lattice.backend import auto_device

        return auto_device() if text == "auto" else text  # a device type: with --mpi, each rank takes its own GPU

    group.add_argument("--device", type=device, default="auto",
                       help="auto (cuda if a GPU is available, else xpu, else cpu), cpu, cuda[:i] or xpu[:i] "
                            "(default: auto)")
    group.add_argument("--dtype", default=precision, choices=("float32", "float64"),
                       help=f"working precision; energies and accept/reject are always float64 (default: {precision})")
    group.add_argument("--threads", type=int, default=1,
                       help="CPU threads for torch (default: 1; one per MPI rank is best on shared nodes)")
    group.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gaugeflow", description="Flow-based and HMC sampling for lattice field theory.")
    from gaugeflow import __version__

    parser.add_argument("--version", action="version", version=f"gaugeflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    hmc = sub.add_parser("hmc", help="generate an ensemble with Hybrid Monte Carlo (or another sampler without a flow)",
                         description="Generate an HMC ensemble and store it in an HDF5 file.  Pure Wilson gauge "
                                     "theories (u1, suN) also take --sampler heatbath (heat-bath sweeps) and "
                                     "--sampler annealed (independence Metropolis over annealed proposals: "
                                     "--anneal-steps heat-bath sweeps up a ladder of beta from Haar measure, or from "
                                     "a flow trained at a lower beta with --anneal-from, exact weights; no "
                                     "topological freezing).")
    _add_theory_options(hmc)
    group = hmc.add_argument_group("Monte Carlo")
    from gaugeflow.hmc.samplers import sampler_kind, sampler_names  # filled by register_sampler

    group.add_argument("--sampler", default="hmc", choices=sampler_names(needs_model=False),
                       help="; ".join(f"{name}: {sampler_kind(name).description}"
                                      for name in sampler_names(needs_model=False)) + " (default: hmc)")
    group.add_argument("--anneal-steps", type=int, default=100,
                       help="annealed: heat-bath sweeps per proposal, the rungs of the beta ladder (default: 100)")
    group.add_argument("--particles", type=int, default=1, metavar="K",
                       help="annealed: every proposal from K paths resampled along the ladder (sequential Monte "
                            "Carlo; particle independent Metropolis-Hastings, exact): K times the sweeps, far smaller "
                            "weight spreads across a phase transition (default: 1, single paths)")
    group.add_argument("--anneal-from", metavar="MODEL.pt",
                       help="annealed: start every proposal from this flow (same theory; --lattice may differ from "
                            "its training lattice) at its own beta instead of from Haar measure")
    group.add_argument("--overrelaxation", type=int, default=0,
                       help="heatbath: overrelaxation sweeps after each heat-bath sweep (default: 0)")
    group.add_argument("--n-configs", type=int, default=1000,
                       help="configurations stored in total, over all chains, after thermalisation (default: 1000)")
    group.add_argument("--therm", type=int, default=200, help="thermalisation trajectories per chain, not stored (default: 200)")
    group.add_argument("--chains", type=int, default=4, help="independent chains run as one batch (default: 4)")
    _add_hmc_options(group)
    group.add_argument("--save-every", type=int, default=1, help="store every k-th trajectory (default: 1)")
    group.add_argument("--start", default="hot", metavar="{hot,cold,PATH}",
                       help="initial configuration: hot (random), cold (unit links), or the ILDG file PATH, from which "
                            "every chain starts (checksum, lattice and group checked against --theory and --lattice) "
                            "(default: hot)")
    group.add_argument("--out", required=True, help="output HDF5 file; never overwritten")
    group.add_argument("--resume", action="store_true",
                       help="continue the chains stored in --out and top it up to --n-configs (starts anew if --out is absent)")
    _add_commit_option(group)
    _add_run_options(hmc)

    verify = sub.add_parser("verify", help="check every checksum of an ensemble",
                            description="Read every segment of an ensemble and check the checksums of its metadata, "
                                        "every dataset and the resume state; that every chain's (chain, step) rows "
                                        "are unique and without gaps and the resume state continues them; and that "
                                        "the manifest reads, with plain h5py, as the segments.  Exit 0 if all is "
                                        "intact, 2 otherwise (one line naming the file and what is wrong).")
    verify.add_argument("ensemble", help="HDF5 ensemble file")
    verify.add_argument("--repair", action="store_true",
                        help="rebuild the manifest (what plain h5py reads) from the segments, which are checked and "
                             "never changed; then verify")
    compact = sub.add_parser("compact", help="join an ensemble's segments into one self-contained file",
                             description="Verify an ensemble and write all its rows and its resume state into one "
                                         "self-contained HDF5 file (also converts format-1 files).")
    compact.add_argument("ensemble", help="HDF5 ensemble file")
    compact.add_argument("--out", required=True, help="the compacted file; never overwritten")
    export = sub.add_parser("export", help="write configurations as ILDG files for other lattice codes",
                            description="Write configurations of a gauge ensemble (U(1), SU(2), SU(3)) as ILDG files, "
                                        "one per configuration, DIR/<ensemble name>.<row>.ildg: LIME records "
                                        "ildg-format, ildg-binary-data (big-endian, x fastest, links mu = 0..D-1 per "
                                        "site), scidac-checksum and ildg-data-lfn, as Chroma, Grid, openQCD and MILC "
                                        "tools read them (field names su3gauge, su2gauge, u1gauge).  Existing files are "
                                        "never overwritten.  'gaugeflow hmc --start FILE' continues from one.")
    export.add_argument("ensemble", help="HDF5 ensemble file")
    export.add_argument("--format", default="ildg", choices=("ildg",), help="(default: ildg)")
    export.add_argument("--out", required=True, metavar="DIR", help="directory for the files (created if needed)")
    export.add_argument("--configs", metavar="SELECTION",
                        help="rows to export: start:stop:step (e.g. 0:100:10) or a list (e.g. 5,7,9) (default: all)")
    export.add_argument("--precision", type=int, default=64, choices=(64, 32), help="bits per real number (default: 64)")
    export.add_argument("--lfn", metavar="PREFIX",
                        help="logical file names PREFIX/<file name> (default: lfn://gaugeflow/<ensemble name>)")

    from gaugeflow.lattice.observables import _REGISTRY as observables_registered

    measure = sub.add_parser(
        "measure", help="compute observables on the stored configurations of an ensemble",
        description="Compute registered observables on every stored configuration and store them in the ensemble, "
                    "beside its segments (checksummed, bound to the configurations they were computed on).  "
                    "Resumable: rerun after an interruption and only what is missing is computed; rerun after "
                    "'hmc --resume' and the new configurations are measured.  analyze, plot and plain h5py (through "
                    "the manifest) then see the new columns.  Registered observables: "
                    + "; ".join(f"{o.name}: {o.description}" for o in observables_registered.values()) + ".",
    )
    measure.add_argument("ensemble", help="HDF5 ensemble file")
    measure.add_argument("--observables", required=True, metavar="NAME[,NAME]",
                         help=f"registered observables ({', '.join(observables_registered)})")
    measure.add_argument("--batch-size", type=int, default=64, help="configurations per batch (default: 64)")
    flow = measure.add_argument_group("wilson_flow")
    flow.add_argument("--flow-time", type=float, metavar="T",
                      help="flow to t = T (lattice units; default L^2/32, where sqrt(8t) reaches L/2)")
    flow.add_argument("--flow-step", type=float, metavar="EPS", help="Runge-Kutta step (default: 0.01)")
    flow.add_argument("--flow-times", type=int, metavar="N", dest="n_times",
                      help="measure at N equal intervals of the flow time and at its start (default: 20)")
    _add_run_options(measure)

    analyze = sub.add_parser("analyze", help="observable means, errors and autocorrelation times",
                             description="Gamma-method analysis of every observable in an ensemble.")
    analyze.add_argument("ensemble", help="HDF5 ensemble file")
    analyze.add_argument("--json", action="store_true", help="print {name: {mean, error, tau_int, tau_int_error, exact, pull}} as JSON, "
                                                               "full precision")
    analyze.add_argument("--stau", type=float, default=1.5, help="Wolff's S_tau for automatic windowing (default: 1.5)")
    analyze.add_argument("--pyerrors", metavar="OUT.json.gz",
                         help="also write every primary observable as a pyerrors Obs (one replica per chain) in "
                              "pyerrors' JSON format, to continue the analysis there")
    info = sub.add_parser("info", help="what an ensemble holds and what produced it",
                          description="Print an ensemble's theory, couplings, sampler and its parameters, observables, "
                                      "and every run that wrote it: command line, host, device, versions (gaugeflow "
                                      "and its git commit, Python, PyTorch), start and last commit times.")
    info.add_argument("ensemble", help="HDF5 ensemble file")
    train = sub.add_parser("train", help="train a flow model by reverse-KL self-training",
                           description="Train a (gauge-equivariant) normalizing flow for a lattice theory "
                                       "by minimising the reverse Kullback-Leibler divergence to exp(-S).")
    _add_theory_options(train)
    group = train.add_argument_group("model (defaults depend on the theory; see README)")
    group.add_argument("--layers", type=int, help="coupling layers (default: 8 for phi4, 16 for gauge theories: "
                                                  "plaquette couplings, or 2 sweeps of 2D staple couplings)")
    group.add_argument("--layer-kind", choices=("plaquette", "staple", "both"),
                       help="U(1), SU(N): plaquette couplings with CNN conditioners (2D default), staple couplings "
                            "(single-link maps in the staple sum, cheap in any dimension; default in 3D and 4D), "
                            "or both, alternating")
    group.add_argument("--staple-centres", choices=("sum", "each"),
                       help="SU(N) staple couplings: map U W once (W the projected staple sum; the SU(2) default), "
                            "or then U C_k for every staple C_k in turn (the conditional's product form; 7 maps a layer "
                            "in 4D; the default for N >= 3, with one sweep of layers)")
    from gaugeflow.flows.model import _FAMILIES as layer_families  # filled by register_layers/register_kernel
    from gaugeflow.flows.priors import _PRIORS as prior_registry  # filled by register_prior

    def by_field(offered: dict) -> str:
        """``label: name (default), name; ...`` from ``{field type: (names, default)}``, each
        label the first words of the field type's docstring ("flat real field", "SU(N) links")."""
        parts = []
        for field_type, (names, default) in offered.items():
            label = (field_type.__doc__ or field_type.__name__).split("``")[0].split(";")[0].split(".")[0].strip()
            label = label[0].lower() + label[1:] if label[1:2].islower() else label
            parts.append(f"{label}: " + ", ".join(f"{name} (default)" if name == default else name for name in names))
        return "; ".join(parts)

    kernels = {field_type: (list(family.kernels), family.defaults.get("kernel"))
               for field_type, family in layer_families.items()}
    priors = {field_type: (list(names), None) for field_type, names in prior_registry.items()}
    group.add_argument("--kernel", choices=sorted({name for names, _ in kernels.values() for name in names}),
                       help="element-wise transform of the coupling layers, by field: " + by_field(kernels))
    group.add_argument("--hidden", help="hidden widths of each conditioner, comma separated (default: 16,16 for CNNs, "
                                        "32,32 for the staple couplings' per-link networks)")
    group.add_argument("--kernel-size", type=int, help="convolution kernel size, odd (default: 3)")
    group.add_argument("--bins", type=int, help="spline bins (default: 8)")
    group.add_argument("--mixture", type=int, help="NCP mixture components (default: 6)")
    group.add_argument("--rectangles", action=argparse.BooleanOptionalAction,
                       help="U(1), Schwinger: the conditioners also see the 1x2 loops through the active links "
                            "(default: on)")
    group.add_argument("--chairs", action=argparse.BooleanOptionalAction,
                       help="staple couplings in 3D and 4D: the conditioners also see the chairs through the "
                            "active links, six-link loops bent out of the link's planes (default: on for U(1) and SU(2), "
                            "off for SU(N >= 3))")
    group.add_argument("--symmetrise", action=argparse.BooleanOptionalAction,
                       help="phi4: average the model's density over the sign flip phi -> -phi, "
                            "q(phi)/2 + q(-phi)/2 (default: on where the action is even in the field)")
    group.add_argument("--momentum-scaling", action=argparse.BooleanOptionalAction,
                       help="phi4: start the flow with a learned propagator, each momentum mode scaled by its own "
                            "factor (default: on)")
    group.add_argument("--prior", choices=sorted({name for names, _ in priors.values() for name in names}),
                       help="base distribution, by field: " + by_field(priors) + ". Default: plaquette "
                            "(independent von Mises plaquettes at beta) for 2D U(1) and Schwinger at beta > 0, "
                            "otherwise the first listed for the field; haar is the only one for gauge fields in D > 2")
    group.add_argument("--init-from", metavar="CHECKPOINT",
                       help="start from the weights of a model of the same architecture trained on another volume or at "
                            "other couplings (train at 8x8, fine-tune at 16x16; beta=4, then beta=6)")
    group.add_argument("--condition", metavar="NAME:LOW:HIGH",
                       help="one model for a range of a coupling, e.g. beta:1.5:2.5 (trained on values drawn uniformly)")
    group = train.add_argument_group("training")
    group.add_argument("--steps", type=int, help="optimizer steps in total (default: 2000; with --minutes, no cap)")
    group.add_argument("--minutes", type=float,
                       help="train for this wall-clock budget (summed over --resume runs), the learning-rate schedule "
                            "stretched over it")
    group.add_argument("--batch-size", type=int, default=64,
                       help="samples per step, over all MPI ranks (default: 64, best per CPU minute; use 1024+ on GPUs)")
    group.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: 2e-3)")
    group.add_argument("--schedule", default="cosine", choices=("cosine", "constant"),
                       help="learning-rate schedule (default: cosine decay to 1%%)")
    group.add_argument("--warmup", type=float, default=0.1, metavar="FRACTION",
                       help="cosine: raise the learning rate linearly over this fraction of the training (default: 0.1)")
    group.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clipping (default: 1.0)")
    from gaugeflow.flows.estimators import estimator_names, get_estimator  # filled by register_estimator

    group.add_argument("--estimator", choices=estimator_names(),
                       help="gradient estimator: " + "; ".join(f"{name}: {get_estimator(name).description}"
                                                               for name in estimator_names())
                            + " (default: the one the model's prior prefers, else path; reparam for plaquette-prior "
                              "models conditioned on beta)")
    group.add_argument("--log-every", type=int, default=50, help="metrics every N steps (default: 50)")
    group.add_argument("--checkpoint-every", type=int, default=250, help="checkpoint every N steps (default: 250)")
    group.add_argument("--eval-batches", type=int, default=4, help="batches in the evaluation sample for ESS/acceptance (default: 4)")
    group.add_argument("--compile", action="store_true",
                       help="run the flow layers as torch.compile'd graphs (CUDA graphs on GPUs): far fewer kernel "
                            "launches per step, after minutes of compiling")
    group.add_argument("--recompute", action="store_true",
                       help="keep only each layer's input for the backward pass and recompute the layer there: the "
                            "same training in a fraction of the memory (about 2x less for 4D SU(3) staple models), "
                            "20-60%% more time per step")
    group.add_argument("--micro-batch", type=int, default=None, metavar="N",
                       help="draw each step's batch in parts of at most N samples, each part's backward pass run "
                            "before the next is drawn: the same training, one part's graph held at a time, more time "
                            "per step (SU(3) 4^4, batch 64 in parts of 16: 2.4x less memory, about 35%% more time)")
    group.add_argument("--out", required=True,
                       help="checkpoint file, e.g. model.pt; the training log goes to <out without its extension>"
                            ".metrics.csv (model.metrics.csv)")
    group.add_argument("--resume", action="store_true", help="continue training from --out (starts anew if absent)")
    group.add_argument("--plot", action="store_true",
                       help="also draw the training curves to <out without its extension>.png (model.png), as "
                            "'gaugeflow plot model.metrics.csv' does")
    group.add_argument("--mpi", action="store_true",
                       help="data-parallel training over the MPI ranks this was launched with (mpiexec/srun); "
                            "--batch-size is the global batch; --device auto/cuda/xpu picks the GPU of the local rank")
    _add_run_options(train, precision="float32")

    sample = sub.add_parser("sample", help="generate an ensemble with a trained flow (exact Markov chains)",
                            description="Generate an exact ensemble with a trained flow.  'flow': every chain proposes "
                                        "flow samples and accepts them with probability min(1, w'/w), w = exp(-S)/q; "
                                        "'composite' (default): each step is such a proposal followed by K HMC "
                                        "trajectories, K chosen during thermalisation unless given (--hmc-per-step); "
                                        "'flow-hmc': HMC in the flow's latent variables.  Same HDF5 format and resume "
                                        "semantics as 'gaugeflow hmc'.")
    sample.add_argument("--model", required=True, help="checkpoint written by 'gaugeflow train'")
    sample.add_argument("--lattice", help="run the model on another lattice of the same dimension (default: its own)")
    from gaugeflow.hmc.samplers import sampler_kind, sampler_names  # filled by register_sampler

    sample.add_argument("--sampler", default="composite", choices=sampler_names(needs_model=True),
                        help="; ".join(f"{name}: {sampler_kind(name).description}"
                                       for name in sampler_names(needs_model=True)) + " (default: composite)")
    policy = sample.add_mutually_exclusive_group()
    def per_step(text: str):
        if text == "auto":
            return None  # the composite sampler chooses
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"give auto or a number of trajectories >= 0, not {text!r}")
        return value

    policy.add_argument("--hmc-per-step", type=per_step, default="auto", metavar="{auto,K}",
                        help="composite: HMC trajectories after each flow proposal; auto: chosen during "
                             "thermalisation from the measured acceptance and costs (pure flow, K of 1-16, or pure "
                             "HMC); 0: flow proposals alone (default: auto)")
    policy.add_argument("--fallback", choices=("auto",), help=argparse.SUPPRESS)  # old spelling of --hmc-per-step auto
    sample.add_argument("--n-configs", type=int, default=1000, help="configurations stored in total (default: 1000)")
    sample.add_argument("--therm", type=int, default=40, help="updates per chain before storing (default: 40)")
    sample.add_argument("--chains", type=int, default=4, help="independent chains (default: 4)")
    sample.add_argument("--save-every", type=int, default=1, help="store every k-th step (default: 1)")
    sample.add_argument("--out", required=True, help="output HDF5 file; never overwritten")
    sample.add_argument("--resume", action="store_true", help="top --out up to --n-configs")
    _add_commit_option(sample)
    _add_hmc_options(sample.add_argument_group("HMC (composite and flow-hmc)"))
    _add_run_options(sample)

    reweight = sub.add_parser("reweight", help="observables and log Z from independent flow samples",
                              description="Self-normalised importance sampling of every observable and the estimate "
                                          "log Z = log mean(exp(-S)/q) with errors, from independent flow samples "
                                          "(Nicoli et al. arXiv:2007.07115); also the ESS.")
    reweight.add_argument("--model", required=True, help="checkpoint written by 'gaugeflow train'")
    reweight.add_argument("--lattice", help="run the model on another lattice of the same dimension (default: its own)")
    reweight.add_argument("--n-samples", type=int, default=4096, help="flow samples (default: 4096)")
    reweight.add_argument("--batch-size", type=int, default=256, help="samples per batch (default: 256)")
    reweight.add_argument("--json", action="store_true", help="print {name: {mean, error, exact, pull}} and the ess as JSON, full "
                                                                "precision")
    _add_run_options(reweight)

    # handled before this parser (scripts/__init__.py): listed here for --help
    sub.add_parser("batch", help="run hmc/train/sample inside a Slurm or PBS job: signals, MPI launch, requeue "
                                 "(gaugeflow batch --help)", add_help=False)
    for system in ("slurm", "pbs"):
        sub.add_parser(system, help=f"'{system} render TEMPLATE ... -- OPTIONS': a ready {system} batch script",
                       add_help=False)
    plot = sub.add_parser("plot", help="draw training curves or an ensemble's histories and autocorrelations to PNG",
                          description="A training log <model>.metrics.csv (or its checkpoint <model>.pt): the KL "
                                      "divergence on a log axis where log Z is known exactly (the loss otherwise), "
                                      "ESS and acceptance with their target, the learning rate; written to "
                                      "<model>.png, as 'gaugeflow train --plot' does.\n\n"
                                      "An ensemble (.h5): for every observable its Monte Carlo history in every "
                                      "chain, its histogram (integer bins for the topological charge) and its "
                                      "autocorrelation function with the Gamma method's tau_int window; exact values "
                                      "where known; written to <ensemble without .h5>.png.")
    plot.add_argument("file", metavar="FILE",
                      help="<model>.metrics.csv (or <model>.pt) written by 'gaugeflow train', or an ensemble .h5")
    plot.add_argument("--out", metavar="PNG", help="the PNG to write (default: FILE's name with .png for .metrics.csv, "
                                                    ".pt or .h5: <model>.png, <ensemble>.png)")
    plot.add_argument("--stau", type=float, default=1.5,
                      help="ensembles: Wolff's S_tau for the automatic tau_int window (default: 1.5)")

    examples = {
        None: ["gaugeflow hmc --theory u1 --lattice 8x8 --beta 2.0 --n-configs 1000 --out ens.h5",
               "gaugeflow analyze ens.h5",
               "gaugeflow plot ens.h5                # histories, Q histogram, autocorrelations: ens.png",
               "gaugeflow train --theory u1 --lattice 8x8 --beta 2.0 --minutes 5 --out u1.pt --plot",
               "gaugeflow sample --model u1.pt --n-configs 1000 --out flow.h5",
               "gaugeflow COMMAND --help             # what each command does, its options and examples"],
        "hmc": ["gaugeflow hmc --theory u1 --lattice 8x8 --beta 2.0 --n-configs 1000 --out ens.h5",
                "gaugeflow hmc --theory u1 --lattice 8x8 --beta 2.0 --n-configs 4000 --out ens.h5 --resume",
                "gaugeflow hmc --theory phi4 --lattice 8x8 --m2 -4 --lam 8 --save-every 2 --out phi4.h5",
                "gaugeflow hmc --theory schwinger --lattice 8x8 --beta 2.0 --kappa 0.24 --out schwinger.h5",
                "gaugeflow hmc --theory su3 --lattice 4x4x4x8 --beta 5.7 --n-configs 200 --out su3.h5",
                "mpiexec -n 4 gaugeflow hmc --mpi --theory u1 --lattice 16x16 --beta 4.0 --out big.h5"],
        "verify": ["gaugeflow verify ens.h5", "gaugeflow verify ens.h5 --repair"],
        "compact": ["gaugeflow compact ens.h5 --out ens-single.h5"],
        "export": ["gaugeflow export su3.h5 --format ildg --out ildg/ --configs 0:100:10",
                   "gaugeflow export su3.h5 --format ildg --out ildg/ --configs 5,7,9 --precision 32"],
        "analyze": ["gaugeflow analyze ens.h5", "gaugeflow analyze ens.h5 --json",
                    "gaugeflow analyze ens.h5 --stau 2",
                    "gaugeflow analyze ens.h5 --pyerrors ens.json.gz   # continue in pyerrors"],
        "measure": ["gaugeflow measure ens.h5 --observables wilson_loops",
                    "gaugeflow measure su3.h5 --observables wilson_flow --flow-time 2 --flow-step 0.02   # then "
                    "analyze: t0, w0",
                    "gaugeflow hmc --theory u1 --lattice 8x8 --beta 2.0 --observables plaquette,topological_charge "
                    "--out ens.h5   # cheap ones in production, the rest measured later"],
        "info": ["gaugeflow info ens.h5"],
        "train": ["gaugeflow train --theory u1 --lattice 8x8 --beta 2.0 --steps 2000 --out u1.pt --plot",
                  "gaugeflow train --theory u1 --lattice 8x8 --beta 2.0 --steps 4000 --out u1.pt --resume",
                  "gaugeflow train --theory phi4 --lattice 8x8 --m2 -4 --lam 8 --minutes 10 --out phi4.pt",
                  "gaugeflow train --theory u1 --lattice 16x16 --beta 2.0 --init-from u1.pt --minutes 10 --out u1-16.pt",
                  "gaugeflow train --theory u1 --lattice 8x8 --beta 2.0 --condition beta:1.5:2.5 --out u1-range.pt",
                  "gaugeflow train --theory su2 --lattice 4x4x4x4 --beta 2.0 --batch-size 1024 --device cuda --out su2.pt"],
        "sample": ["gaugeflow sample --model u1.pt --n-configs 1000 --out flow.h5",
                   "gaugeflow sample --model u1.pt --sampler flow --n-configs 1000 --out flow-only.h5",
                   "gaugeflow sample --model u1.pt --hmc-per-step 4 --n-configs 1000 --out composite.h5",
                   "gaugeflow sample --model u1.pt --lattice 16x16 --n-configs 1000 --out flow-16.h5"],
        "reweight": ["gaugeflow reweight --model u1.pt", "gaugeflow reweight --model u1.pt --n-samples 65536 --json"],
        "plot": ["gaugeflow plot u1.metrics.csv        # -> u1.png (also: gaugeflow plot u1.pt)",
                 "gaugeflow plot ens.h5                # -> ens.png",
                 "gaugeflow plot ens.h5 --out figures/ens.png"],
    }
    import shutil
    import textwrap

    width = max(40, min(shutil.get_terminal_size().columns - 2, 98))
    for name, command in [(None, parser), *sub.choices.items()]:
        if name not in examples:  # batch, slurm, pbs: their own --help (scripts/batch.py, scripts/render.py)
            continue
        paragraphs = (command.description or "").split("\n\n")
        command.description = "\n\n".join(textwrap.fill(p, width) for p in paragraphs)
        command.epilog = "examples:\n" + "\n".join("  " + line for line in examples[name])
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _set_threads(args) -> None:
    import torch

    if args.threads < 1:
        raise CommandError("--threads must be at least 1")
    torch.set_num_threads(args.threads)


def run_hmc(args) -> int:
    from gaugeflow.lattice.backend import resolve_precision
    from gaugeflow.lattice.theories import make_theory

    _set_threads(args)
    theory = make_theory(args.theory, args.lattice, **_couplings(args))
    model = None
    if args.particles != 1 and args.sampler != "annealed":
        raise CommandError(f"--particles is the size of the particle system of annealed proposals; --sampler is "
                           f"{args.sampler}")
    if args.anneal_from is not None:
        from gaugeflow.hmc.samplers import sampler_kind

        if not sampler_kind(args.sampler).takes_model:  # before loading the flow
            raise CommandError(f"--anneal-from is the start of annealed proposals; --sampler is {args.sampler}")
        from gaugeflow.flows import load_flow
        from gaugeflow.lattice.backend import resolve_device

        model = load_flow(args.anneal_from, lattice=args.lattice, device=resolve_device(args.device))
    summary = _generate(args, theory, sampler=args.sampler, model=model, source=args.anneal_from or "",
                        save_every=args.save_every, start=args.start, precision=resolve_precision(args.dtype),
                        sampler_options={"anneal_steps": args.anneal_steps, "anneal_particles": args.particles,
                                         "overrelaxation": args.overrelaxation})
    if not args.quiet and summary is not None:
        per_update = {"hmc": f"{summary.postfix.get('steps', '?')} steps/trajectory",
                      "heatbath": f"{summary.postfix.get('sweeps', '?')} heat-bath + "
                                  f"{summary.postfix.get('overrelaxation', 0)} overrelaxation sweep(s)/update",
                      "annealed": f"{summary.postfix.get('steps', '?')} sweeps/proposal"
                                  + (f" x {summary.postfix['particles']} particles"
                                     if summary.postfix.get("particles", 1) > 1 else "")}.get(args.sampler, args.sampler)
        print(
            f"{summary.path}: {summary.n_configs} configurations ({summary.n_new} new), "
            f"acceptance {summary.acceptance:.3f}, {per_update}, {summary.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0


def _communicator(args):
    from gaugeflow.flows.distributed import Communicator

    return Communicator() if args.mpi else None


def _generate(args, theory, *, sampler: str, model=None, hmc_per_step=None, source="", communicator=None, device=None,
              sampler_options: dict | None = None, **options):
    """Run ``gaugeflow hmc`` / ``sample``: one process, or (``--mpi``) one distributed ensemble
    over the MPI ranks.  ``None`` on the ranks that do not report."""
    from gaugeflow.flows.distributed import local_device
    from gaugeflow.hmc.distributed import generate_distributed
    from gaugeflow.hmc.run import make_sampler, run_chains

    communicator = communicator or _communicator(args)
    device = device or local_device(communicator, args.device)
    hmc = _hmc_parameters(args)

    def new_sampler():
        return make_sampler(theory, sampler, model=model, hmc_per_step=hmc_per_step, source=source,
                            **(sampler_options or {}), **hmc)

    common = dict(n_configs=args.n_configs, n_therm=args.therm, n_chains=args.chains, seed=args.seed,
                  resume=args.resume, progress=not args.quiet, commit_every=args.commit_every, device=device,
                  observables=_observable_list(args.observables), **options)
    if communicator is None:
        return run_chains(theory, args.out, new_sampler(), **common)
    summary = generate_distributed(theory, args.out, new_sampler, communicator, **common)
    return summary if communicator.is_root else None


def run_train(args) -> int:
    import os

    import torch

    from gaugeflow.flows import TrainConfig, architecture, plot_training, train_flow
    from gaugeflow.flows.contract import build_model, model_architecture
    from gaugeflow.flows.checkpoint import load_checkpoint, warm_start
    from gaugeflow.flows.distributed import local_device
    from gaugeflow.lattice.backend import resolve_device, resolve_precision
    from gaugeflow.lattice.theories import make_theory

    _set_threads(args)
    if args.plot:
        _require_matplotlib()
    theory = make_theory(args.theory, args.lattice, **_couplings(args))
    try:
        hidden = [int(c) for c in args.hidden.split(",")] if args.hidden else None
    except ValueError:
        raise CommandError(f"--hidden must be comma-separated integers, got {args.hidden!r}") from None
    condition = None
    if args.condition:
        parts = args.condition.split(":")
        try:
            condition = (parts[0], float(parts[1]), float(parts[2])) if len(parts) == 3 else None
        except ValueError:
            condition = None
        if condition is None:
            raise CommandError(f"--condition must look like beta:1.5:2.5, got {args.condition!r}")
    given = dict(n_layers=args.layers, kernel=args.kernel, hidden_channels=hidden, kernel_size=args.kernel_size,
                 n_bins=args.bins, n_mixture=args.mixture, rectangles=args.rectangles, prior=args.prior,
                 symmetrise=args.symmetrise, momentum_scaling=args.momentum_scaling, layer_kind=args.layer_kind,
                 staple_centres=args.staple_centres, chairs=args.chairs)
    resuming = args.resume and os.path.exists(args.out)
    continued = args.out if resuming else args.init_from
    if continued:  # the model being continued or grown fixes the architecture options not given here
        start = load_checkpoint(continued)["architecture"]
        given = {key: start.get(key) if value is None else value for key, value in given.items()}
        stored = start.get("condition")
        condition = condition or (stored and (stored["coupling"], stored["low"], stored["high"]))
    arch = model_architecture(theory, architecture(theory, condition=condition, **given))  # joint with pseudofermions
    steps = args.steps if args.steps is not None else (10**9 if args.minutes else 2000)
    config = TrainConfig(steps=steps, minutes=args.minutes, batch_size=args.batch_size, learning_rate=args.lr, schedule=args.schedule,
                         warmup=args.warmup,
                         grad_clip=args.grad_clip, estimator=args.estimator, log_every=args.log_every,
                         checkpoint_every=args.checkpoint_every, eval_batches=args.eval_batches, seed=args.seed,
                         compile=args.compile, recompute=args.recompute, micro_batch=args.micro_batch)
    communicator = _communicator(args)
    root = communicator is None or communicator.is_root
    device = resolve_device(local_device(communicator, args.device))
    torch.manual_seed(args.seed)  # initial weights
    model = build_model(arch).to(device=device, dtype=resolve_precision(args.dtype))
    if args.init_from and not resuming:
        warm_start(model, args.init_from)
    summary = train_flow(model, config, args.out, resume=args.resume, progress=not args.quiet and root,
                         communicator=communicator)
    if not root:
        return 0
    if not args.quiet:
        m = summary.metrics
        print(f"{args.out}: step {summary.step}, loss {m.get('loss', float('nan')):.4f}, ESS {m.get('ess', float('nan')):.3f}, "
              f"acceptance {m.get('acceptance', float('nan')):.3f}, {summary.seconds:.1f} s; metrics in {summary.log_path}",
              file=sys.stderr)
    if args.plot:
        png = plot_training(summary.log_path)
        if not args.quiet:
            print(f"curves: {png}", file=sys.stderr)
    return 0


def run_sample(args) -> int:
    from gaugeflow.flows import load_flow
    from gaugeflow.flows.distributed import local_device
    from gaugeflow.lattice.backend import resolve_device

    _set_threads(args)
    communicator = _communicator(args)
    device = resolve_device(local_device(communicator, args.device))
    model = load_flow(args.model, lattice=args.lattice, device=device)
    summary = _generate(args, model.theory, sampler=args.sampler, model=model, hmc_per_step=args.hmc_per_step,
                        source=args.model, save_every=args.save_every, communicator=communicator, device=device)
    if not args.quiet and summary is not None:
        from gaugeflow.hmc.composite import describe_run

        if args.sampler == "composite":
            ran = describe_run(summary.postfix, summary.acceptance, chosen=args.hmc_per_step is None)
        else:
            from gaugeflow.hmc.samplers import sampler_kind

            what = {"flow": "flow proposals (independence Metropolis)"}.get(args.sampler) or \
                sampler_kind(args.sampler).description or args.sampler
            steps = f", {summary.postfix['steps']} steps per trajectory" if "steps" in summary.postfix else ""
            ran = f"ran {what}: acceptance {summary.acceptance:.3f}{steps}"
        print(f"{summary.path}: {summary.n_configs} configurations ({summary.n_new} new) in {summary.seconds:.1f} s; "
              f"{ran}", file=sys.stderr)
    return 0


def run_reweight(args) -> int:
    import torch

    from gaugeflow.flows import load_flow
    from gaugeflow.flows.reweighting import reweighted_estimates
    from gaugeflow.hmc.analysis import format_table, with_exact_values
    from gaugeflow.lattice.backend import resolve_device
    from gaugeflow.lattice.exact import expectation_values

    _set_threads(args)
    torch.manual_seed(args.seed)
    model = load_flow(args.model, lattice=args.lattice, device=resolve_device(args.device))
    estimates = reweighted_estimates(model, args.n_samples, args.batch_size)
    ess = estimates.pop("ess")["mean"]
    theory = model.theory
    exact = expectation_values(theory.name, theory.lattice_shape, theory.couplings, estimates)
    log_z = theory.exact_log_partition_function()
    if log_z is not None:
        exact["log_partition_function"] = log_z
    results = with_exact_values(estimates, exact)
    if args.json:
        print(json.dumps({**results, "ess": {"mean": ess, "error": 0.0}}, indent=2))
    else:
        print(f"{args.n_samples} independent flow samples, effective sample size {ess:.3f} "
              f"(worth about {ess * args.n_samples:.0f} samples of the target)")
        print(format_table(results))
    return 0


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("plots need matplotlib: pip install 'gaugeflow[plot]' (or pip install matplotlib)") from None


def run_plot(args) -> int:
    """Draw what ``args.file`` holds: an ensemble (HDF5), a training log, or a checkpoint's log."""
    import os

    from gaugeflow.flows.plotting import is_training_log, plot_training
    from gaugeflow.flows.train import metrics_log_path
    from gaugeflow.hmc.plotting import plot_ensemble
    from gaugeflow.lattice.ensemble_format import looks_like_hdf5

    _require_matplotlib()
    path = args.file
    if not os.path.isfile(path):
        raise CommandError(f"{path}: {'not a file' if os.path.exists(path) else 'no such file'}")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    if looks_like_hdf5(path):  # not h5py.is_hdf5: libhdf5 parses nothing before its digest is checked
        png = plot_ensemble(path, args.out, S=args.stau)
    elif zipped:  # a checkpoint <model>.pt: the log its training wrote next to it
        png = plot_training(metrics_log_path(path), args.out)
    elif is_training_log(path):
        png = plot_training(path, args.out)
    else:
        raise CommandError(f"{path} is neither a training log (<model>.metrics.csv, written by gaugeflow train) nor "
                           "an ensemble (HDF5, written by gaugeflow hmc or sample)")
    print(png)
    return 0


def _couplings(args) -> dict:
    """The couplings and theory options given on the command line."""
    names = [*declared_couplings(), *declared_options()]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_analyze(args) -> int:
    from gaugeflow.hmc.analysis import analyze_with_warnings, format_table

    results, warnings = analyze_with_warnings(args.ensemble, S=args.stau)
    if args.pyerrors:
        from gaugeflow.hmc.pyerrors_export import export_pyerrors

        names = export_pyerrors(args.ensemble, args.pyerrors)
        print(f"{args.pyerrors}: {len(names)} observables as pyerrors Obs (one replica per chain); "
              f"pyerrors.input.json.load_json_dict reads them", file=sys.stderr)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    return 0


def run_info(args) -> int:
    from gaugeflow.lattice.provenance import describe_ensemble

    print(describe_ensemble(args.ensemble))
    return 0


def run_verify(args) -> int:
    from gaugeflow.lattice.ensemble import open_ensemble, repair_manifest

    if args.repair:
        report = repair_manifest(args.ensemble)
    else:
        with open_ensemble(args.ensemble) as ensemble:
            report = ensemble.verify()
    print(f"{args.ensemble}: intact: {report['rows']} rows in {report['segments']} segment(s), "
          f"{report['checked_datasets']} datasets, the chains and the resume state checked"
          f"{'; manifest rebuilt' if args.repair else ''}")
    if report["manifest_rows"] < report["rows"]:
        print(f"{args.ensemble}: note: the manifest (what plain h5py reads) covers {report['manifest_rows']} of the "
              f"{report['rows']} rows, as a writer stopped before updating it; 'gaugeflow verify --repair' or the "
              f"next --resume brings it up to date")
    return 0


def run_compact(args) -> int:
    from gaugeflow.lattice.ensemble import compact_ensemble

    report = compact_ensemble(args.ensemble, args.out)
    print(f"{args.out}: {report['rows']} rows in one file")
    return 0


def run_measure(args) -> int:
    from gaugeflow.lattice.observables import measure_ensemble

    _set_threads(args)
    options = {"flow_time": args.flow_time, "flow_step": args.flow_step, "n_times": args.n_times}
    done = measure_ensemble(args.ensemble, _observable_list(args.observables), device=args.device,
                            batch_size=args.batch_size, progress=not args.quiet, options=options)
    if not args.quiet:
        print(f"{args.ensemble}: " + ", ".join(f"{name} measured on {n} new segment(s)" for name, n in done.items()),
              file=sys.stderr)
    return 0


def run_export(args) -> int:
    import os

    from gaugeflow.lattice.ildg import export_ensemble

    paths = export_ensemble(args.ensemble, args.out, selection=args.configs, precision=args.precision,
                            lfn_prefix=args.lfn)
    print(f"{args.out}: {len(paths)} ILDG file(s), {os.path.basename(paths[0])} ... {os.path.basename(paths[-1])}"
          if len(paths) > 1 else f"{paths[0]}: 1 ILDG file")
    return 0


COMMANDS = {"hmc": run_hmc, "analyze": run_analyze, "train": run_train, "sample": run_sample, "plot": run_plot,
            "verify": run_verify, "compact": run_compact, "reweight": run_reweight, "measure": run_measure,
            "info": run_info, "export": run_export}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except Interrupted as stop:
        print(f"gaugeflow {args.command}: {in_option_names(str(stop))}", file=sys.stderr)
        return EXIT_INTERRUPTED if stop.saved else EXIT_NOTHING_SAVED
    except GaugeflowError as error:
        print(f"gaugeflow {args.command}: error: {in_option_names(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.filename is None:  # not about a path the user gave: a bug or a system fault
            raise
        print(f"gaugeflow {args.command}: error: {error.filename}: {error.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
