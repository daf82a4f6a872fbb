"""gaugeflow.cli -- the ``gaugeflow`` command (installed from the repository's ``scripts/``).

Thin wrappers: every subcommand parses its options, calls the library
(:mod:`gaugeflow.lattice`, :mod:`gaugeflow.flows`, :mod:`gaugeflow.hmc`) and reports.

What the program guarantees, whatever the subcommand (:func:`main`):

* **Stop signals** (SIGTERM, SIGUSR1, Ctrl-C) reaching a long job (``hmc``, ``train``,
  ``sample``, ``measure``) at any moment -- while Python still imports PyTorch, during the run, after the
  final commit -- end it with status 0 (it had finished) or 3 (stopped after saving; rerun with
  ``--resume``), 4 if it stopped before anything could be saved; never with death by the
  signal.  A second Ctrl-C aborts at once with status 130; the atomic writes leave every
  committed row and checkpoint intact (see :mod:`gaugeflow.lattice.jobcontrol`).
* **Ctrl-C** in any other subcommand ends it with one line and status 130, no traceback.
* **A closed pipe** (``gaugeflow analyze ens.h5 | head -1``) ends the output quietly: what is
  left to print is dropped, the job itself goes on, and the status is the job's.
"""

import os
import signal
import sys

LONG_JOBS = ("hmc", "train", "sample", "measure")  # the subcommands that stop cleanly on a signal
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_ABORTED = 130  # gaugeflow.lattice.jobcontrol.EXIT_ABORTED, without importing torch
early_signal = {"signal": None}


def _record(signum, _frame):
    if early_signal["signal"] is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt
    early_signal["signal"] = signal.Signals(signum).name


class _QuietPipe:
    """A text stream that turns a closed pipe into silence: the first ``BrokenPipeError``
    points the file descriptor at /dev/null (so that nothing, not even the interpreter's final
    flush, writes to the dead pipe again) and every later write is dropped."""

    def __init__(self, stream):
        self._stream = stream

    def _silence(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _by_ctrl_c(error: BaseException) -> bool:
    """Whether ``error`` is a Ctrl-C: a KeyboardInterrupt, or an error it caused (a C extension
    interrupted while it initialises fails with ImportError, its cause the KeyboardInterrupt)."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


def main(argv=None) -> int:
    """Run ``gaugeflow ARGV``.  Called without ``argv`` (as the program), the signal handlers
    and the pipe guards stay in place until the process exits, so that a signal after the
    final commit still cannot kill it; called with ``argv`` (from Python), everything is put
    back as it was."""
    as_program = argv is None
    argv = sys.argv[1:] if as_program else list(argv)
    if argv[:1] == ["batch"]:  # batch-system helpers: no torch, no signal recording (they forward signals)
        from .batch import main as batch

        return batch(argv[1:])
    if argv[:1] in (["slurm"], ["pbs"]):
        from .render import main as render

        return render(argv[0], argv[1:])
    if as_program:
        sys.stdout, sys.stderr = _QuietPipe(sys.stdout), _QuietPipe(sys.stderr)
    previous = {}
    long_job = bool(argv) and argv[0] in LONG_JOBS
    if long_job:
        for stop in STOP_SIGNALS:
            previous[stop] = signal.signal(stop, _record)
    try:
        from gaugeflow.lattice.jobcontrol import adopt_early_signals

        from .commands import main as run

        adopt_early_signals(early_signal)
        return run(argv)
    except (KeyboardInterrupt, ImportError) as error:
        if not _by_ctrl_c(error):
            raise
        what = ("aborted by a second Ctrl-C; everything committed before it is intact: rerun with --resume"
                if long_job else "interrupted")
        print(f"gaugeflow {argv[0] if argv else ''}: {what}", file=sys.stderr)
        if as_program and not long_job:
            # A Ctrl-C that lands in Python code run from C (a PyRun call inside an extension's
            # import, PyTorch's among them) marks the interpreter, which then kills itself by
            # SIGINT at exit although the interrupt was handled: status -2, not 130 (3 runs in 40
            # of `analyze` interrupted at random moments).  A short command has nothing left to
            # write, so it leaves now with the status promised.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_ABORTED)
        return EXIT_ABORTED
    finally:
        if as_program:
            # the work is done and its status decided: a Ctrl-C now, during the interpreter's
            # shutdown (PyTorch's teardown takes a while), would raise where nothing catches it
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            for stop, handler in previous.items():
                signal.signal(stop, handler)


__all__ = ["main"]
