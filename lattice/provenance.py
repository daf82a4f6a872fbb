"""What produced an ensemble: one record per run, stored with every segment it committed.

A record (``run_provenance``) holds the gaugeflow version and, where gaugeflow runs from a git
checkout, its commit; the command line (or, from Python, the calling script); host, process
and device, with the CPU code path PyTorch chose and ``MKL_CBWR`` (what decides whether a run
repeated elsewhere with the same seed repeats bit for bit); the Python, PyTorch, NumPy and
h5py versions; and when the run started.  Every segment stores its run's record with the time of its commit (group ``/provenance``,
checksummed); the theory, couplings, sampler and its parameters -- the flow's architecture
and weights checksum for flow samplers -- are the ensemble's metadata.  ``gaugeflow info``
(:func:`describe_ensemble`) prints both.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import sys
import uuid


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit(directory=None) -> str | None:
    """The commit checked out where gaugeflow's source lives (``None`` outside a git checkout),
    read from ``.git`` directly: no git program needed."""
    directory = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = os.path.join(directory, ".git")
    try:
        with open(os.path.join(git, "HEAD")) as f:
            head = f.read().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if os.path.exists(os.path.join(git, ref)):
            with open(os.path.join(git, ref)) as f:
                return f.read().strip()
        with open(os.path.join(git, "packed-refs")) as f:
            for line in f:
                if line.strip().endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        return None
    return None


def run_provenance(device="cpu", command=None) -> dict:
    """The record of this run (see the module docstring)."""
    import h5py
    import numpy
    import torch

    from gaugeflow import __version__

    return {
        "run": uuid.uuid4().hex[:12],
        "gaugeflow_version": __version__,
        "git_commit": git_commit(),
        "command": command or " ".join([os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python",
                                        *sys.argv[1:]]),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": str(device),
        # the same seed gives the same chain bit for bit only on the same code paths: PyTorch's
        # and MKL's kernels are chosen by the CPU (MKL_CBWR=COMPATIBLE pins MKL's)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "slurm_job": os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "h5py": h5py.__version__,
        "started": _now(),
    }


def _in_parentheses(text) -> str:
    return f" ({text})" if text else ""


def committed(record: dict) -> dict:
    """``record`` with the time of a commit."""
    return {**record, "committed": _now()}


def describe_ensemble(path) -> str:
    """What ``gaugeflow info`` prints: the ensemble's metadata, then its runs (each with the
    segments it committed, first and last commit time)."""
    from .ensemble import open_ensemble

    lines = []
    with open_ensemble(path) as ensemble:
        meta = ensemble.metadata
        shape = "x".join(map(str, ensemble.lattice_shape))
        couplings = ", ".join(f"{k}={v:g}" for k, v in ensemble.couplings.items())
        lines.append(f"{path}: {ensemble.theory_name} on {shape} at {couplings}; {len(ensemble)} configurations in "
                     f"{len(ensemble.segments)} segment(s) ({ensemble.layout})")
        lines.append(f"  created {meta.get('created')} by gaugeflow {meta.get('software_version')}; sampler "
                     f"{meta.get('sampler')}, seed {meta.get('seed')}")
        skip = {"theory", "lattice_shape", "coupling_names", "sampler", "seed", "created", "software_version",
                "config_shape", "config_dtype", "config_row_bytes", *ensemble.couplings}
        for key in sorted(k for k in meta if k not in skip):
            value = meta[key]
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            lines.append(f"  {key}: {text if len(text) <= 200 else text[:197] + '...'}")
        runs: dict[str, dict] = {}
        for index, record in ensemble.run_records():
            if record is None:
                continue
            run = runs.setdefault(record.get("run"), {**record, "segments": []})
            run["segments"].append(index)
            run["last"] = record.get("committed")
        for run in runs.values():
            first, last = run["segments"][0], run["segments"][-1]
            lines.append(f"  run {run.get('run')}: segments {first}-{last}, started {run.get('started')}, last commit "
                         f"{run.get('last')}")
            lines.append(f"    {run.get('command')}")
            lines.append(f"    host {run.get('host')} (pid {run.get('pid')}{', job ' + run['slurm_job'] if run.get('slurm_job') else ''}), "
                         f"device {run.get('device')}{_in_parentheses(run.get('cpu_capability'))}; "
                         f"gaugeflow {run.get('gaugeflow_version')}"
                         f"{' (git ' + run['git_commit'][:12] + ')' if run.get('git_commit') else ''}, python "
                         f"{run.get('python')}, torch {run.get('torch')}, numpy {run.get('numpy')}, h5py {run.get('h5py')}")
        if not runs:
            lines.append("  no run records (written before gaugeflow recorded provenance)")
    return "\n".join(lines)
