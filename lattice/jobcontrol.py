"""Clean stops for long jobs: batch-scheduler signals and Ctrl-C.

Slurm sends SIGTERM (and, with ``--signal``, SIGUSR1) before killing a job; a user at a
terminal presses Ctrl-C (SIGINT).  All three mean the same: long loops run inside
:func:`stop_on_signals` and poll the returned dict; when a signal has arrived they finish the
update or step in progress, save their state and raise :class:`Interrupted`, which the command
line turns into exit status :data:`EXIT_INTERRUPTED` so that batch scripts can requeue and
rerun with ``--resume``.

A *second* Ctrl-C while the first stop is under way aborts at once (:class:`KeyboardInterrupt`,
exit status 130 on the command line).  That never corrupts anything: every write is atomic
(:func:`gaugeflow.lattice.storage.write_atomically`), so an abort is no worse than a kill, and
``--resume`` continues from the last commit.
"""

from __future__ import annotations

import contextlib
import signal

EXIT_INTERRUPTED = 3
# stopped before anything was saved (e.g. during an HMC thermalisation, which stores nothing):
# requeueing the same job under the same time limit would stop at the same place forever
EXIT_NOTHING_SAVED = 4
EXIT_ABORTED = 128 + signal.SIGINT  # a second Ctrl-C, as shells report a SIGINT death
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


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
    records stop signals from its first instruction, and a job signalled while it was still
    starting stops at its first chance, after saving, with :data:`EXIT_INTERRUPTED`."""
    global _early
    _early = record


def record_signal(received: dict, signum: int) -> None:
    """What every stop-signal handler does: note the first signal; a SIGINT after any stop
    signal (the impatient second Ctrl-C) raises :class:`KeyboardInterrupt` at once."""
    if received["signal"] is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt
    received["signal"] = signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
    """Yield a dict whose ``'signal'`` entry becomes the signal's name when one arrives."""
    received = {"signal": None}
    previous = {}
    try:
        for s in signals:
            previous[s] = signal.signal(s, lambda signum, _frame: record_signal(received, signum))
    except ValueError:  # not in the main thread: no signal handling
        pass
    if _early["signal"]:  # arrived before any handler of ours: it counts now, once
        received["signal"], _early["signal"] = _early["signal"], None
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
