"""Ctrl-C, late signals, closed pipes and --version: the command line never loses work and never
prints a traceback (sent to real processes, as a terminal or a batch system would)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from gaugeflow.lattice.ensemble import open_ensemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
HMC = ["hmc", "--theory", "u1", "--beta", "2", "--lattice", "8x8", "--chains", "2", "--therm", "2", "--quiet"]
TRAIN = ["train", "--theory", "u1", "--beta", "1", "--lattice", "4x4", "--layers", "2", "--hidden", "4",
         "--batch-size", "8", "--quiet"]


def start(args, **kwargs):
    """A gaugeflow process that, like one started from a terminal, takes SIGINT as Ctrl-C (a
    child of a non-interactive shell would ignore it)."""
    return subprocess.Popen([sys.executable, "-m", "gaugeflow.cli", *map(str, args)], cwd=ROOT, env=ENV,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def gaugeflow(*args):
    return subprocess.run([sys.executable, "-m", "gaugeflow.cli", *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)


def wait_for(condition, seconds=90):
    deadline = time.time() + seconds
    while time.time() < deadline and not condition():
        time.sleep(0.1)
    assert condition()


def test_ctrl_c_during_hmc_commits_and_resume_completes(tmp_path):
    out = tmp_path / "ens.h5"
    process = start([*HMC, "--n-configs", 400000, "--out", out])
    wait_for(lambda: len(os.listdir(f"{out}.segments")) >= 1 if out.exists() else False)  # thermalised
    time.sleep(1.5)  # rows queued, not yet committed (--commit-every 30)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    assert "stopped by SIGINT" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    with open_ensemble(out) as ensemble:
        stored = ensemble.verify()["rows"]
    assert stored > 0  # what was queued when Ctrl-C came was committed
    resumed = gaugeflow(*HMC, "--n-configs", stored + 4, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    with open_ensemble(out) as ensemble:
        assert ensemble.verify()["rows"] == stored + 4


def test_a_second_ctrl_c_aborts_at_once_and_loses_nothing_committed(tmp_path):
    out = tmp_path / "ens.h5"
    process = start([*HMC, "--n-configs", 400000, "--out", out, "--commit-every", 0.2])
    wait_for(lambda: len(os.listdir(f"{out}.segments")) >= 3 if out.exists() else False)
    os.kill(process.pid, signal.SIGINT)
    os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (3, 130), stderr  # the first stop may already be done
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    if process.returncode == 130:
        assert "aborted by a second Ctrl-C" in stderr
    with open_ensemble(out) as ensemble:
        stored = ensemble.verify()["rows"]
    resumed = gaugeflow(*HMC, "--n-configs", stored + 2, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    # an abort in the middle of a write leaves no temporary file for good: the next writer sweeps
    assert not [n for n in os.listdir(tmp_path) + os.listdir(f"{out}.segments") if ".tmp" in n or ".new" in n]


def test_ctrl_c_during_training_checkpoints_whatever_checkpoint_every_says(tmp_path):
    out = tmp_path / "m.pt"
    process = start([*TRAIN, "--steps", 100000, "--checkpoint-every", 100000, "--log-every", 1, "--out", out])
    log = tmp_path / "m.metrics.csv"
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 4)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    assert "stopped by SIGINT" in stderr and "checkpoint saved" in stderr and "Traceback" not in stderr
    from gaugeflow.flows.checkpoint import load_checkpoint

    step = load_checkpoint(out)["step"]
    assert step >= 3
    resumed = gaugeflow(*TRAIN, "--steps", step + 2, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out)["step"] == step + 2


def _catches_sigint(process) -> bool:
    """Whether the interpreter of ``process`` catches SIGINT yet (``SigCgt`` in /proc)."""
    try:
        with open(f"/proc/{process.pid}/status") as handle:
            caught = next(int(line.split()[1], 16) for line in handle if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught & (1 << (signal.SIGINT - 1)))


def _wait_for_sigint_handler(process):
    """Until the interpreter catches SIGINT (or has exited): before that no program can answer
    Ctrl-C, and on a loaded machine start-up alone can outlast a fixed sleep."""
    wait_for(lambda: process.poll() is not None or _catches_sigint(process), 60)
    time.sleep(0.3)  # past the interpreter's own start-up (site), which no program can guard


def test_ctrl_c_in_a_short_command_is_one_line(tmp_path):
    # analyze of a large ensemble takes long enough to be interrupted; importing PyTorch does too.
    # At several moments: a Ctrl-C inside an extension's import (Python code run from C) used to
    # end a handled interrupt with death by SIGINT (status -2), a few runs in 40
    for delay in (0.0, 0.15, 0.3, 0.45, 0.6, 0.9):
        process = start(["analyze", tmp_path / "missing.h5"])
        _wait_for_sigint_handler(process)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, (delay, stderr)
        assert process.returncode in (2, 130), (delay, process.returncode)  # interrupted, or finished first


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_signal_after_the_job_is_done_does_not_change_its_status(tmp_path, name):
    """The handlers stay until the process exits: a signal after the final commit (while the
    interpreter shuts down) is recorded and ignored, never death by the signal."""
    program = ("import os, signal, sys\n"
               "from gaugeflow.cli import main\n"
               f"sys.argv = ['gaugeflow', *{[*HMC, '--lattice', '4x4', '--n-configs', '4', '--out', str(tmp_path / 'e.h5')]!r}]\n"
               "status = main()\n"
               f"os.kill(os.getpid(), signal.{name})\n"
               "sys.exit(status)\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    out = tmp_path / "ens.h5"
    assert gaugeflow(*HMC, "--lattice", "4x4", "--n-configs", 8, "--out", out).returncode == 0
    for extra in ([], ["--json"]):
        reader = subprocess.Popen([sys.executable, "-m", "gaugeflow.cli", "analyze", str(out), *extra], cwd=ROOT,
                                  env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        reader.stdout.close()  # `| head -0`: the pipe is closed before anything is read
        stderr = reader.stderr.read().decode()
        reader.wait(timeout=60)
        assert reader.returncode in (0, 141), stderr
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    head = subprocess.run(f"{sys.executable} -m gaugeflow.cli analyze {out} | head -1", shell=True, cwd=ROOT,
                          env=ENV, capture_output=True, text=True)
    assert head.stdout.count("\n") == 1 and head.stderr == ""


def test_version():
    from gaugeflow import __version__

    result = gaugeflow("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gaugeflow {__version__}"


def test_the_second_stop_signal_handler_call_aborts():
    from gaugeflow.lattice.jobcontrol import record_signal

    received = {"signal": None}
    record_signal(received, signal.SIGTERM)
    record_signal(received, signal.SIGUSR1)  # further batch signals: still a clean stop
    assert received["signal"] == "SIGUSR1"
    with pytest.raises(KeyboardInterrupt):
        record_signal(received, signal.SIGINT)


def test_an_abort_in_the_middle_of_a_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from gaugeflow.lattice import storage

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def impatient(_fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.os, "fsync", impatient)
    with pytest.raises(KeyboardInterrupt):
        storage.write_atomically(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_an_abort_is_one_line_with_status_130(monkeypatch, capsys):
    import gaugeflow.cli.commands as commands
    from gaugeflow.cli import main

    def aborted(_args):
        raise KeyboardInterrupt

    monkeypatch.setitem(commands.COMMANDS, "verify", aborted)
    assert main(["verify", "x.h5"]) == 130
    assert capsys.readouterr().err == "gaugeflow verify: interrupted\n"
    monkeypatch.setitem(commands.COMMANDS, "hmc", aborted)
    assert main(["hmc", "--theory", "u1", "--beta", "1", "--lattice", "4x4", "--out", "x.h5"]) == 130
    assert "aborted by a second Ctrl-C" in capsys.readouterr().err
