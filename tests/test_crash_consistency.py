"""Crashes made routine: SIGKILL at every write step and at random moments, I/O errors, bit
rot, truncation and concurrent writers -- against real ``gaugeflow`` processes where it
matters.  Every resumed ensemble must hold exactly the rows of an uninterrupted run."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from fault_classes import flip, reseal
from gaugeflow.hmc.hmc import HMCParameters
from gaugeflow.hmc.run import generate_ensemble
from gaugeflow.lattice.ensemble import EnsembleError, open_ensemble, segment_directory
from gaugeflow.lattice.storage import StorageError, WriterLock
from gaugeflow.lattice.theories import make_theory

HMC = ["hmc", "--theory", "u1", "--beta", "2", "--lattice", "4x4", "--chains", "2", "--therm", "3", "--seed", "3",
       "--quiet", "--commit-every", "0"]
COLUMNS = ("configs", "chain", "step", "accepted", "delta_h", "observables/plaquette", "observables/topological_charge")


def gaugeflow(*args, fault=None, env=None, **kwargs):
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    environment.pop("GAUGEFLOW_FAULT", None)
    if fault:
        environment["GAUGEFLOW_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "gaugeflow.cli", *map(str, args)], capture_output=True, text=True,
                          env=environment, **kwargs)


def rows(path):
    with h5py.File(path, "r") as f:  # through the manifest's virtual datasets, as a plain h5py user
        return {name: f[name][:] for name in COLUMNS}


def assert_same_rows(path, reference):
    got, want = rows(path), rows(reference)
    for name in COLUMNS:
        assert np.array_equal(got[name], want[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "ref.h5"
    result = gaugeflow(*HMC, "--n-configs", 12, "--out", path)
    assert result.returncode == 0, result.stderr
    return path


# the writes of creating the file (3 steps), of the first commit (segment and manifest, 3 steps
# each), of the next six commits (a segment each: the manifest is rewritten at most every
# MANIFEST_INTERVAL seconds) and the final manifest (steps 28-30)
@pytest.mark.parametrize("step", list(range(1, 22)) + [27, 28, 30])
def test_sigkill_at_any_write_step_then_resume_gives_the_uninterrupted_rows(tmp_path, reference, step):
    out = tmp_path / "ens.h5"
    killed = gaugeflow(*HMC, "--n-configs", 12, "--out", out, fault=f"kill:{step}")
    assert killed.returncode == -signal.SIGKILL
    resumed = gaugeflow(*HMC, "--n-configs", 12, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_rows(out, reference)
    assert open_ensemble(out).verify()["rows"] == 12
    assert not [n for n in os.listdir(segment_directory(out)) if n.startswith(".")]  # no temporary files left


def test_sigkill_at_random_moments(tmp_path):
    reference = tmp_path / "ref.h5"
    long_run = [*HMC, "--n-configs", 120]
    assert gaugeflow(*long_run, "--out", reference).returncode == 0
    rng = random.Random(11)
    for trial in range(4):
        out = tmp_path / f"killed{trial}.h5"
        process = subprocess.Popen([sys.executable, "-m", "gaugeflow.cli", *map(str, long_run), "--out", str(out)],
                                   env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not os.path.exists(segment_directory(out)) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        resumed = gaugeflow(*long_run, "--out", out, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert_same_rows(out, reference)


@pytest.mark.parametrize("step", [4, 5, 6, 8, 12])
def test_io_error_is_one_line_and_resume_works_once_it_is_gone(tmp_path, reference, step):
    out = tmp_path / "ens.h5"
    failed = gaugeflow(*HMC, "--n-configs", 12, "--out", out, fault=f"enospc:{step}")
    assert failed.returncode == 2, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device (ENOSPC)" in lines[0] and str(tmp_path) in lines[0]
    assert "Traceback" not in failed.stderr and "Exception ignored" not in failed.stderr
    open_ensemble(out).verify()  # what was committed is intact
    assert gaugeflow(*HMC, "--n-configs", 12, "--out", out, "--resume").returncode == 0
    assert_same_rows(out, reference)


def test_sample_survives_sigkill_too(tmp_path):
    from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow

    model = tmp_path / "m.pt"
    torch.manual_seed(0)
    flow = build_flow(architecture(make_theory("u1", "4x4", beta=1.0), n_layers=2, hidden_channels=[4]))
    train_flow(flow, TrainConfig(steps=2, batch_size=8, log_every=2, checkpoint_every=2), model, progress=False)
    # a fixed K: the auto policy's choice rests on timings (flow and HMC are both useful here)
    sample = ["sample", "--model", model, "--n-configs", 8, "--chains", 2, "--therm", 2, "--quiet", "--commit-every", 0,
              "--hmc-per-step", 1]
    assert gaugeflow(*sample, "--out", tmp_path / "ref.h5").returncode == 0
    for step in (4, 7, 9, 13):
        out = tmp_path / f"s{step}.h5"
        assert gaugeflow(*sample, "--out", out, fault=f"kill:{step}").returncode == -signal.SIGKILL
        resumed = gaugeflow(*sample, "--out", out, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert_same_rows(out, tmp_path / "ref.h5")


# -- bit rot and truncation (in process) ------------------------------------------------

def small_ensemble(path):
    generate_ensemble(make_theory("u1", "4x4", beta=2.0), path, n_configs=6, n_chains=2, n_therm=2, seed=1,
                      params=HMCParameters(1.0, 4), progress=False)
    return os.path.join(segment_directory(path), sorted(os.listdir(segment_directory(path)))[-1])  # the rows


def everything(path):
    with open_ensemble(path) as ensemble:
        ensemble.verify()
        return {"rows": {n: ensemble.column(n) for n in ("chain", "step", "accepted", "delta_h", "plaquette")},
                "configs": ensemble.configs(), "state": ensemble.resume_state(), "meta": ensemble.metadata}


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_a_flipped_byte_in_any_dataset_is_a_checksum_mismatch_naming_it(tmp_path):
    """Refused by the file digest, naming the file; behind it (a file written before digests,
    or damaged before its digest was taken: :func:`reseal`), by the dataset's own checksum."""
    path = tmp_path / "ens.h5"
    segment = small_ensemble(path)
    original = open(segment, "rb").read()
    with h5py.File(segment, "r") as f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        offsets = {}
        for name in datasets:
            d = f[name]
            offsets[name] = d.id.get_chunk_info(0).byte_offset if d.chunks else d.id.get_offset()
    assert {"configs", "chain", "observables/plaquette", "resume/field", "resume/rng_state"} <= set(offsets)
    for name, offset in offsets.items():
        open(segment, "wb").write(original)
        flip(segment, offset + 3, 0x10)
        with pytest.raises(EnsembleError, match=f"{os.path.basename(segment)}: file: checksum mismatch"):
            everything(path)
        if name == "configs":  # the command line says the same in one line (once: each run costs a second)
            result = gaugeflow("verify", path)
            assert result.returncode == 2 and f"{os.path.basename(segment)}: file: checksum mismatch" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        reseal(segment)
        shown = "resume" if name.startswith("resume/") else name
        with pytest.raises(EnsembleError, match=f"{os.path.basename(segment)}: dataset {shown}: checksum mismatch"):
            everything(path)
        with pytest.raises(EnsembleError):  # and a resume refuses to continue from it
            generate_ensemble(make_theory("u1", "4x4", beta=2.0), path, n_configs=8, n_chains=2, n_therm=2, seed=1,
                              params=HMCParameters(1.0, 4), progress=False, resume=True)


def test_random_byte_flips_are_refused_or_harmless_never_silent(tmp_path):
    """Flip single bytes all over a segment and the manifest: every read either refuses with an
    EnsembleError or returns exactly the original data (the byte was unused)."""
    path = tmp_path / "ens.h5"
    segment = small_ensemble(path)
    originals = {segment: open(segment, "rb").read(), str(path): open(path, "rb").read()}
    reference = everything(path)
    rng = random.Random(5)
    refused = 0
    for trial in range(240):  # the structural fault campaign is tests/test_integrity.py
        target = segment if trial % 8 else str(path)  # a damaged manifest costs a child process to judge
        offset = rng.randrange(len(originals[target]))
        flip(target, offset, 0x10)
        try:
            got = everything(path)
        except EnsembleError:
            refused += 1
        else:
            assert same(got, reference), f"a flip at byte {offset} of {target} changed the data silently"
        open(target, "wb").write(originals[target])
    assert same(everything(path), reference)
    assert refused > 50


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_segments_are_refused(tmp_path, fraction):
    path = tmp_path / "ens.h5"
    segment = small_ensemble(path)
    data = open(segment, "rb").read()
    open(segment, "wb").write(data[: int(len(data) * fraction)])
    with pytest.raises(EnsembleError, match=os.path.basename(segment)):
        everything(path)


def test_a_missing_segment_is_reported(tmp_path):
    path = tmp_path / "ens.h5"
    generate_ensemble(make_theory("u1", "4x4", beta=2.0), path, n_configs=6, n_chains=2, n_therm=2, seed=1,
                      params=HMCParameters(1.0, 4), progress=False, commit_every=0)
    os.remove(os.path.join(segment_directory(path), "segment-000001.h5"))
    with pytest.raises(EnsembleError, match="segments are missing|a segment is missing"):
        everything(path)


def test_tampered_metadata_and_header_are_refused(tmp_path):
    path = tmp_path / "ens.h5"
    segment = small_ensemble(path)
    original = open(segment, "rb").read()
    for key, value in (("beta", 2.5), ("n_rows", 8), ("first_row", 2)):
        open(segment, "wb").write(original)
        with h5py.File(segment, "r+") as f:
            f.attrs[key] = value
        with pytest.raises(EnsembleError, match="file: checksum mismatch"):
            everything(path)
        reseal(segment)  # behind the file digest: the metadata's and the header's
        with pytest.raises(EnsembleError, match="(metadata|header): checksum mismatch"):
            everything(path)


# -- one writer at a time ---------------------------------------------------------------

@pytest.mark.parametrize("file_locking", ["TRUE", "FALSE"])
def test_a_second_writer_is_refused_and_a_reader_can_follow_the_first(tmp_path, file_locking):
    out = tmp_path / "ens.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1", HDF5_USE_FILE_LOCKING=file_locking)
    writer = subprocess.Popen([sys.executable, "-m", "gaugeflow.cli", *HMC, "--n-configs", "100000", "--out", str(out)],
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(os.listdir(segment_directory(out)) if out.exists() else []) < 2:
            time.sleep(0.05)
        second = gaugeflow(*HMC, "--n-configs", 100000, "--out", out, "--resume",
                           env={"HDF5_USE_FILE_LOCKING": file_locking})
        assert second.returncode == 2 and "being written by another process" in second.stderr
        assert f"pid {writer.pid}" in second.stderr
        reader = gaugeflow("analyze", out, "--json")  # default HDF5 file locking: reading a running job works
        assert reader.returncode == 0, reader.stderr
        assert gaugeflow("verify", out).returncode == 0
    finally:
        writer.send_signal(signal.SIGTERM)
        _, stderr = writer.communicate(timeout=60)
    assert writer.returncode == 3, stderr
    assert gaugeflow(*HMC, "--n-configs", len(open_ensemble(out)) + 2, "--out", out, "--resume").returncode == 0


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path):
    import json
    import socket

    target = tmp_path / "ens.h5"
    gone = subprocess.run(["sleep", "0"])  # noqa: F841 -- a process that has finished
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "ens.h5.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "start": "1"}))
    with WriterLock(target):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text(json.dumps({"host": "another-node", "pid": 1, "since": "then"}))
    with pytest.raises(StorageError, match="host another-node, pid 1, since then"):
        WriterLock(target).acquire()
    live = subprocess.Popen(["sleep", "30"])
    try:
        with open(f"/proc/{live.pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": live.pid, "start": start}))
        with pytest.raises(StorageError, match="being written by another process"):
            WriterLock(target).acquire()
    finally:
        live.kill()
        live.wait()


def test_full_disk_on_a_small_filesystem(tmp_path, reference):
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs privileges)")
    try:
        out = mount / "ens.h5"
        full = gaugeflow(*HMC, "--n-configs", 12, "--out", out)
        assert full.returncode == 2, full.stderr
        assert "No space left on device (ENOSPC)" in full.stderr and len(full.stderr.strip().splitlines()) == 1
        assert "Exception ignored" not in full.stderr
        committed = len(open_ensemble(out))
        assert gaugeflow("verify", out).returncode == 0
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
        assert gaugeflow(*HMC, "--n-configs", 12, "--out", out, "--resume").returncode == 0
        assert len(open_ensemble(out)) == 12 > committed
        assert_same_rows(out, reference)
    finally:
        subprocess.run(["umount", str(mount)])
