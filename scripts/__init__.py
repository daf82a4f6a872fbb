"""gaugeflow.cli -- the ``gaugeflow`` command (installed from the repository's ``scripts/``).

Thin wrappers: every subcommand parses its options, calls the library
(:mod:`gaugeflow.lattice`, :mod:`gaugeflow.flows`, :mod:`gaugeflow.hmc`) and reports.

:func:`main` records SIGTERM/SIGUSR1 before anything slow is imported: a batch system may
signal a job at any moment, also in the second it takes to import PyTorch, and a long job must
then still save what it has and exit with status 3 (see :mod:`gaugeflow.lattice.jobcontrol`).
"""

import signal
import sys

LONG_JOBS = ("hmc", "train", "sample")  # the subcommands that stop cleanly on a signal
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
early_signal = {"signal": None}


def _record(signum, _frame):
    early_signal["signal"] = signal.Signals(signum).name


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["batch"]:  # batch-system helpers: no torch, no signal recording (they forward signals)
        from .batch import main as batch

        return batch(argv[1:])
    if argv[:1] in (["slurm"], ["pbs"]):
        from .render import main as render

        return render(argv[0], argv[1:])
    previous = {}
    if argv and argv[0] in LONG_JOBS:
        for stop in STOP_SIGNALS:
            previous[stop] = signal.signal(stop, _record)
    try:
        from gaugeflow.lattice.jobcontrol import adopt_early_signals

        from .commands import main as run

        adopt_early_signals(early_signal)
        return run(argv)
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


__all__ = ["main"]
