"""Clean stops for long jobs under batch schedulers.

Slurm sends SIGTERM (and, with ``--signal``, SIGUSR1) before killing a job.  Long loops run
inside :func:`stop_on_signals` and poll the returned dict; when a signal has arrived they
save their state and raise :class:`Interrupted`, which the command line turns into exit
status :data:`EXIT_INTERRUPTED` so that batch scripts can requeue and rerun with ``--resume``.
"""

from __future__ import annotations

import contextlib
import signal

EXIT_INTERRUPTED = 3
# stopped before anything was saved (e.g. during an HMC thermalisation, which stores nothing):
# requeueing the same job under the same time limit would stop at the same place forever
EXIT_NOTHING_SAVED = 4


class Interrupted(RuntimeError):
    """A job stopped on a signal after saving everything done so far (``saved``: whether that
    was anything; the command line exits with :data:`EXIT_INTERRUPTED` or :data:`EXIT_NOTHING_SAVED`)."""

    def __init__(self, message: str, saved: bool = True):
        super().__init__(message)
        self.saved = saved

    def __reduce__(self):  # keeps ``saved`` when an MPI rank sends it to another
        return type(self), (str(self), self.saved)


_early = {"signal": None}


def adopt_early_signals(record: dict) -> None:
    """Use ``record`` (``{"signal": name or None}``), which a program filled before it imported
    the library, as signals received before the first :func:`stop_on_signals`: the command line
    records SIGTERM/SIGUSR1 from its first instruction, and a job signalled while it was still
    starting stops at its first chance, after saving, with :data:`EXIT_INTERRUPTED`."""
    global _early
    _early = record


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGUSR1)):
    """Yield a dict whose ``'signal'`` entry becomes the signal's name when one arrives."""
    received = {"signal": None}

    def handler(signum, _frame):
        received["signal"] = signal.Signals(signum).name

    previous = {}
    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not in the main thread: no signal handling
        pass
    if _early["signal"]:  # arrived before any handler of ours: it counts now, once
        received["signal"], _early["signal"] = _early["signal"], None
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
