"""``gaugeflow batch``: run a gaugeflow job inside a Slurm or PBS batch job, and bring it back.

    gaugeflow batch [options] -- hmc|train|sample [gaugeflow options]

What every batch template needs, written once:

* **launch**: with several tasks (Slurm ``SLURM_NTASKS > 1``) the job runs under ``srun``
  (plus ``--srun-mpi``, e.g. ``--mpi=pmix``, where the site's default does not fit); under PBS
  with ``--ranks-per-node P`` under ``mpiexec -n N --ppn P --hostfile $PBS_NODEFILE``; and it
  gets ``--mpi``.  ``--resume`` is always added, so the first run and every rerun are the same
  command.
* **signals**: SIGUSR1 (Slurm's ``--signal=B:USR1@T`` warning) and SIGTERM (the time limit,
  preemption, ``scancel``, PBS) are passed to the job, which saves its state and exits with
  status 3.  PBS gives no early warning, so with ``--walltime`` (or what ``qstat -f`` says)
  the job is sent SIGUSR1 itself ``--margin`` seconds before the end.
* **requeue**: after status 3, Slurm jobs requeue themselves (``scontrol requeue``; the rerun
  waits about two minutes, Slurm's requeue delay); PBS jobs, where ``qrerun`` needs operator
  privilege, submit their own follow-up (``qsub -W depend=afterany:$PBS_JOBID``), which an
  ordinary user may.  At most ``--max-restarts`` times, and never after status 4 (stopped
  before anything was saved, e.g. a thermalisation longer than the time limit: rerunning
  would stop at the same place forever).

The batch system's view stays simple: the job's exit status is the gaugeflow command's.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import threading

EXIT_INTERRUPTED, EXIT_NOTHING_SAVED = 3, 4  # gaugeflow.lattice.jobcontrol's, without importing torch
RESUMABLE = ("hmc", "train", "sample")
FORWARDED = (signal.SIGUSR1, signal.SIGTERM)


def seconds(text: str) -> int:
    """``[[D-]HH:]MM:SS``, ``HH:MM:SS`` or plain seconds (Slurm's and PBS's time formats)."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(?:(\d+):)?(\d+)", text.strip())
    if not match:
        raise ValueError(f"not a time: {text!r} (use HH:MM:SS)")
    days, *parts = match.groups()
    values = [int(p) for p in parts if p is not None]
    while len(values) < 3:
        values.insert(0, 0)
    return int(days or 0) * 86400 + values[0] * 3600 + values[1] * 60 + values[2]


def scheduler() -> str | None:
    if os.environ.get("SLURM_JOB_ID"):
        return "slurm"
    if os.environ.get("PBS_JOBID"):
        return "pbs"
    return None


def launch_command(job: list[str], *, srun_mpi: str = "", ranks_per_node: int | None = None) -> list[str]:
    """The command line that runs ``gaugeflow JOB`` with this job's ranks (see module docstring)."""
    program = [sys.executable, "-m", "gaugeflow.cli", *job]
    if job and job[0] in RESUMABLE and "--resume" not in job:
        program.append("--resume")
    ntasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if scheduler() == "slurm" and ntasks > 1:
        return ["srun", *shlex.split(srun_mpi), *program, "--mpi"]
    if scheduler() == "pbs" and ranks_per_node:
        with open(os.environ["PBS_NODEFILE"]) as nodefile:
            nodes = len({line.strip() for line in nodefile if line.strip()})
        ranks = nodes * ranks_per_node
        launcher = ["mpiexec", "-n", str(ranks), "--ppn", str(ranks_per_node), "--hostfile", os.environ["PBS_NODEFILE"]]
        return [*launcher, *program, *(["--mpi"] if ranks > 1 else [])]
    return program


def pbs_walltime() -> int | None:
    """The job's walltime in seconds, as ``qstat -f`` reports it (``None`` if unknown)."""
    try:
        report = subprocess.run(["qstat", "-f", os.environ["PBS_JOBID"]], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError, KeyError):
        return None
    match = re.search(r"Resource_List\.walltime\s*=\s*(\S+)", report.stdout)
    return seconds(match.group(1)) if match else None


def restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or os.environ.get("GAUGEFLOW_RESTART") or 0)


def requeue(max_restarts: int) -> bool:
    """Bring the job back for another run; ``False`` (with the reason on stderr) if it cannot."""
    done = restarts()
    if done >= max_restarts:
        note(f"not requeueing: {done} restarts reached --max-restarts {max_restarts}; resubmit to continue")
        return False
    if scheduler() == "slurm":
        command = ["scontrol", "requeue", os.environ["SLURM_JOB_ID"]]
    elif scheduler() == "pbs":
        script = os.environ.get("GAUGEFLOW_JOB_SCRIPT")
        if not script or not os.path.isfile(script):
            note("not resubmitting: set GAUGEFLOW_JOB_SCRIPT to this job script's path (gaugeflow pbs render does)")
            return False
        command = ["qsub", "-W", f"depend=afterany:{os.environ['PBS_JOBID']}",
                   "-v", f"GAUGEFLOW_RESTART={done + 1},GAUGEFLOW_JOB_SCRIPT={script}", script]
    else:
        note("stopped outside a batch job: rerun the same command to resume")
        return False
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        note(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return False
    note(f"restart {done + 1} of at most {max_restarts} queued: {' '.join(command)} {result.stdout.strip()}")
    return True


def note(message: str) -> None:
    print(f"gaugeflow batch: {message}", file=sys.stderr, flush=True)


def run(command: list[str], warn_after: float | None) -> int:
    """Run ``command``, passing on SIGUSR1/SIGTERM, and SIGUSR1 itself after ``warn_after`` s.

    The handlers stay after the job has ended (a signal then is noted and ignored), so the
    wrapper's status is always the job's, never death by a late signal.  Ctrl-C is not passed
    on: a terminal sends it to the job as well, and a second one would abort the job."""
    child = subprocess.Popen(command)

    def forward(signum, _frame):
        if child.poll() is None:
            note(f"passing {signal.Signals(signum).name} on to the job")
            child.send_signal(signum)
        else:
            note(f"{signal.Signals(signum).name} after the job ended: ignored")

    for s in FORWARDED:
        signal.signal(s, forward)
    signal.signal(signal.SIGINT, lambda *_: None)
    timer = None
    if warn_after is not None:
        timer = threading.Timer(max(0.0, warn_after), lambda: forward(signal.SIGUSR1, None))
        timer.daemon = True
        timer.start()
    try:
        return child.wait()  # interrupted by our handlers, wait() resumes by itself (PEP 475)
    finally:
        if timer is not None:
            timer.cancel()


def build_parser() -> argparse.ArgumentParser:
    examples = ["gaugeflow batch -- hmc --theory u1 --lattice 16x16 --beta 4.0 --n-configs 10000 --out ens.h5",
                "gaugeflow batch --srun-mpi=--mpi=pmix -- train --theory u1 --lattice 32x32 --beta 4.0 --out u1.pt",
                "gaugeflow batch --ranks-per-node 4 -- train --theory u1 --lattice 32x32 --beta 4.0 --out u1.pt  # PBS",
                "gaugeflow slurm render hmc ...   # a batch script that calls gaugeflow batch"]
    parser = argparse.ArgumentParser(prog="gaugeflow batch", description=__doc__.split("\n\n")[1],
                                     epilog="examples:\n" + "\n".join("  " + line for line in examples),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-restarts", type=int, default=int(os.environ.get("GAUGEFLOW_MAX_RESTARTS", 20)),
                        help="requeue at most this many times (default: 20, or $GAUGEFLOW_MAX_RESTARTS)")
    parser.add_argument("--srun-mpi", default=os.environ.get("GAUGEFLOW_SRUN_MPI", ""),
                        help="srun's MPI option for multi-task Slurm jobs, e.g. --mpi=pmix or --mpi=pmi2 "
                             "(default: none, the site's MpiDefault; or $GAUGEFLOW_SRUN_MPI)")
    parser.add_argument("--ranks-per-node", type=int,
                        help="PBS: MPI ranks per node, launched with mpiexec over $PBS_NODEFILE (Aurora 12, Polaris 4)")
    parser.add_argument("--walltime", help="the job's time limit (PBS: read from qstat -f when not given)")
    parser.add_argument("--margin", type=float, default=300,
                        help="send the job SIGUSR1 this many seconds before --walltime ends (default: 300)")
    parser.add_argument("job", nargs=argparse.REMAINDER, help="-- hmc|train|sample [options]")
    return parser


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not job or job[0] not in RESUMABLE:
        print("gaugeflow batch: error: give the job after --: hmc, train or sample and its options", file=sys.stderr)
        return 2
    command = launch_command(job, srun_mpi=args.srun_mpi, ranks_per_node=args.ranks_per_node)
    limit = seconds(args.walltime) if args.walltime else (pbs_walltime() if scheduler() == "pbs" else None)
    warn_after = None if limit is None else limit - args.margin  # counted from now: the job has just started
    note(f"{scheduler() or 'no batch system'}, restart {restarts()}: {shlex.join(command)}")
    status = run(command, warn_after)
    if status == EXIT_INTERRUPTED:
        requeue(args.max_restarts)
    elif status == EXIT_NOTHING_SAVED:
        note("stopped before anything was saved (a thermalisation longer than the time limit?): not requeueing; "
             "give the job more time")
    return status
