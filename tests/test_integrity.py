"""A file either checks out or is refused: resume state, chains and manifest verified; every
write safe on a full disk; bad input refused by name; and a seeded fault campaign of byte flips
at every structural position class of ensembles (segmented and distributed) and checkpoints,
and ENOSPC at every write step of hmc, sample and train."""

import datetime
import errno
import os
import random
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from fault_classes import flip, hdf5_position_classes, occurrences, reseal
from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow
from gaugeflow.flows.checkpoint import load_checkpoint
from gaugeflow.flows.distributed import SingleProcess
from gaugeflow.hmc.distributed import generate_distributed
from gaugeflow.hmc.hmc import HMCParameters, HMCSampler
from gaugeflow.hmc.run import make_sampler, run_chains
from gaugeflow.lattice import ensemble_format, storage
from gaugeflow.lattice.ensemble import (EnsembleError, create_ensemble, open_ensemble, repair_manifest,
                                        segment_directory, stream_path)
from gaugeflow.lattice.errors import GaugeflowError
from gaugeflow.lattice.storage import StorageError, WriterLock
from gaugeflow.lattice.theories import make_theory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THEORY = make_theory("u1", "4x4", beta=2.0)
PARAMS = HMCParameters(1.0, 4)


def hmc(path, n_configs=6, resume=False, **options):
    return run_chains(THEORY, path, HMCSampler(THEORY, PARAMS, False), n_configs=n_configs, n_chains=2, n_therm=2,
                      seed=1, progress=False, commit_every=0, resume=resume, **options)


def snapshot(path) -> dict:
    """Everything a reader gets, after a full verify."""
    with open_ensemble(path) as ensemble:
        ensemble.verify()
        rows = {name: ensemble.column(name) for name in ("chain", "step", "accepted", "delta_h", "plaquette")}
        return {"rows": rows, "configs": ensemble.configs(), "meta": ensemble.metadata,
                "state": [part.resume_state() for part in (ensemble.streams() or [ensemble])]}


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------------------------
# 1. nothing silently restarts


def test_a_renamed_resume_group_is_refused_not_restarted(tmp_path, monkeypatch):
    path = tmp_path / "ens.h5"
    # the provenance record stores the command line; pytest's (say `-k resume`) must not add
    # occurrences of the group's name to the bytes searched below
    monkeypatch.setattr(sys, "argv", ["pytest"])
    hmc(path)
    last = sorted(os.listdir(segment_directory(path)))[-1]
    segment = os.path.join(segment_directory(path), last)
    data = open(segment, "rb").read()
    offsets = [i for i in range(len(data)) if data.startswith(b"resume", i)]
    assert offsets
    for offset in offsets:
        flip(segment, offset + 5, 0x03)  # "resume" -> "resumf"
    reseal(segment)  # as if written so: the check behind the file digest (and for older files)
    with h5py.File(segment, "r") as f:
        assert "resume" not in f
    with pytest.raises(EnsembleError, match="resume state is missing"):
        open_ensemble(path).verify()
    with pytest.raises(EnsembleError, match="resume state is missing"):
        hmc(path, n_configs=8, resume=True)
    assert len(os.listdir(segment_directory(path))) == 4  # nothing appended


def test_rows_without_a_resume_state_cannot_be_continued(tmp_path):
    path = tmp_path / "ens.h5"
    with create_ensemble(path, theory=THEORY, observable_names=THEORY.observable_names(), sampler="hmc", seed=1,
                         parameters={"n_chains": 2, "seed": 1, "save_every": 1, "n_therm": 2, "start": "hot"}) as ens:
        field = THEORY.hot_start(2, generator=torch.Generator().manual_seed(0))
        observables = {k: v.numpy() for k, v in THEORY.observables(field).items()}
        ens.append(field.numpy(), [0, 1], [1, 1], [True, True], [0.0, 0.0], observables)
        ens.commit({"field": field.numpy()}, {"next_trajectory": 1})
    single = tmp_path / "single.h5"
    from gaugeflow.lattice.ensemble import compact_ensemble

    compact_ensemble(path, single)
    with h5py.File(single, "r+") as f:  # a compacted file whose resume state was never there
        del f["resume"]
    reseal(single)
    with pytest.raises(EnsembleError, match="no resume state"):
        hmc(single, n_configs=4, resume=True)


def test_duplicated_or_missing_steps_and_a_resume_state_out_of_step_are_refused(tmp_path):
    parameters = {"n_chains": 2, "seed": 1, "save_every": 1, "n_therm": 2, "start": "hot"}
    field = THEORY.hot_start(2, generator=torch.Generator().manual_seed(0))
    observables = {k: v.numpy() for k, v in THEORY.observables(field).items()}
    cases = {"twice": ([1, 1], 2, "stored twice"), "gap": ([1, 3], 4, "chain 0 has steps 3 where 2"),
             "state": ([1, 2], 7, "continues at step 7")}
    for name, (steps, next_trajectory, message) in cases.items():
        path = tmp_path / f"{name}.h5"
        with create_ensemble(path, theory=THEORY, observable_names=THEORY.observable_names(), sampler="hmc", seed=1,
                             parameters=parameters) as ens:
            for step in steps:
                ens.append(field.numpy(), [0, 1], [step, step], [True, True], [0.0, 0.0], observables)
                ens.commit({"field": field.numpy()}, {"next_trajectory": step})
            ens.commit({"field": field.numpy()}, {"next_trajectory": next_trajectory})
        with pytest.raises(EnsembleError, match=message):
            open_ensemble(path).verify()


# ---------------------------------------------------------------------------------------------
# 2. the manifest, as a reader sees it


def test_a_damaged_manifest_heap_is_reported_and_repaired_without_touching_segments(tmp_path):
    path = tmp_path / "ens.h5"
    hmc(path)
    reference = snapshot(path)
    segments = {n: open(os.path.join(segment_directory(path), n), "rb").read() for n in os.listdir(segment_directory(path))}
    data = open(path, "rb").read()
    heap = data.index(b"GCOL")  # the global heap that holds the virtual datasets' mappings
    for offset in range(heap + 16, heap + 48):
        flip(path, offset, 0xFF)
    with pytest.raises(EnsembleError, match="verify --repair"):
        open_ensemble(path).verify()
    result = subprocess.run([sys.executable, "-m", "gaugeflow.cli", "verify", str(path)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert repair_manifest(path)["rows"] == 6
    assert same(snapshot(path), reference)
    with h5py.File(path, "r") as f:  # plain h5py reads it again
        np.testing.assert_array_equal(f["configs"][()], reference["configs"])
    assert {n: open(os.path.join(segment_directory(path), n), "rb").read() for n in segments} == segments


class TickingClock(datetime.datetime):
    """A clock a minute later at every reading: the manifest of a distributed ensemble and its
    streams are created at different times, which only sometimes fall in different seconds."""

    minutes = 0

    @classmethod
    def now(cls, tz=None):
        cls.minutes += 1
        return datetime.datetime(2026, 1, 1, tzinfo=tz) + datetime.timedelta(minutes=cls.minutes)


def test_a_manifest_with_unreadable_metadata_is_rebuilt_from_the_segments(tmp_path, monkeypatch):
    monkeypatch.setattr(ensemble_format.datetime, "datetime", TickingClock)
    for layout in ("manifest", "streams"):
        path = tmp_path / f"{layout}.h5"
        if layout == "manifest":
            hmc(path)
        else:
            generate_distributed(THEORY, path, lambda: HMCSampler(THEORY, PARAMS, False), SingleProcess(), n_configs=4,
                                 n_chains=2, n_therm=2, progress=False, commit_every=0)
        reference = snapshot(path)
        open(path, "wb").write(b"\0" * 2048)
        with pytest.raises(EnsembleError):
            open_ensemble(path)
        repair_manifest(path)
        assert same(snapshot(path), reference)


def test_a_lagging_manifest_is_noted_not_refused(tmp_path):
    path = tmp_path / "ens.h5"
    hmc(path)
    state = open(path, "rb").read()
    hmc(path, n_configs=10, resume=True)
    open(path, "wb").write(state)  # as if the writer died before its last manifest rewrite
    result = subprocess.run([sys.executable, "-m", "gaugeflow.cli", "verify", str(path)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0 and "covers 6 of the 10 rows" in result.stdout, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# 3. writes on a full disk, and what dead writers leave behind


def test_what_dead_writers_leave_is_swept_by_the_next_lock_holder_only(tmp_path):
    path = tmp_path / "ens.h5"
    hmc(path)
    dead = 2**22 + 12345  # above any pid_max on this machine's kernels' defaults
    leftovers = [tmp_path / f".ens.h5.tmp{dead}", tmp_path / f"ens.h5.lock.new{dead}"]
    alive = tmp_path / f"ens.h5.lock.new{os.getppid()}"  # a live process taking the lock right now
    for leftover in [*leftovers, alive]:
        leftover.write_bytes(b"x")
    with open_ensemble(path):  # a reader takes no lock and removes nothing
        assert all(leftover.exists() for leftover in leftovers)
    hmc(path, n_configs=8, resume=True)
    assert not any(leftover.exists() for leftover in leftovers) and alive.exists()


def test_a_full_disk_while_taking_a_lock_leaves_nothing(tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.json, "dump", full)
    with pytest.raises(StorageError, match="ENOSPC"):
        WriterLock(tmp_path / "ens.h5").acquire()
    assert os.listdir(tmp_path) == []


def test_a_plot_on_a_full_disk_is_one_line_and_keeps_the_old_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    monkeypatch.setenv("GAUGEFLOW_FAULT", "enospc:1")
    monkeypatch.setitem(storage._fault, "steps", 0)
    with pytest.raises(StorageError, match="ENOSPC"):
        storage.save_figure(plt.figure(), target)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["curves.png"]


def write_steps_of(run) -> int:
    """How many write steps ``run()`` makes (counted by the fault-injection hook)."""
    os.environ["GAUGEFLOW_FAULT"] = "enospc:1000000000"
    storage._fault["steps"] = 0
    try:
        run()
    finally:
        del os.environ["GAUGEFLOW_FAULT"]
    return storage._fault["steps"]


def every_write_step_fails_cleanly(tmp_path, run, read, n_steps):
    """ENOSPC at each write step in turn: one-line :class:`StorageError` (or nothing to fail),
    then a rerun (resume) gives exactly what an undisturbed run gives.  Returns how many steps
    failed the run (the others are writes whose failure costs nothing, like a final manifest
    rewrite that the next run redoes)."""
    failed = 0
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir(parents=True)
    run(reference_dir, False)
    reference = read(reference_dir)
    for step in range(1, n_steps + 1):
        trial = tmp_path / f"trial{step}"
        trial.mkdir(parents=True)
        os.environ["GAUGEFLOW_FAULT"] = f"enospc:{step}"
        storage._fault["steps"] = 0
        try:
            run(trial, False)
        except StorageError as error:
            assert "No space left on device (ENOSPC)" in str(error) and "\n" not in str(error)
            failed += 1
        finally:
            del os.environ["GAUGEFLOW_FAULT"]
        run(trial, True)
        assert same(read(trial), reference), f"ENOSPC at write step {step}"
        assert not [n for _, _, names in os.walk(trial) for n in names if ".tmp" in n or ".lock" in n]
    return failed


def without_time(path) -> dict:
    """:func:`snapshot` without the creation time, which a run recreating the file sets anew."""
    everything = snapshot(path)
    everything["meta"].pop("created")
    return everything


def test_enospc_at_every_write_step_of_hmc_and_sample(tmp_path):
    model = build_flow(architecture(THEORY, n_layers=2, hidden_channels=[4])).double()
    samplers = {"hmc": lambda: HMCSampler(THEORY, PARAMS, False),
                "sample": lambda: make_sampler(THEORY, "composite", model=model, hmc_per_step=1, params=PARAMS,
                                               tune=False)}
    for name, new_sampler in samplers.items():
        def run(folder, resume):
            torch.manual_seed(0)  # the flow samples
            run_chains(THEORY, folder / "ens.h5", new_sampler(), n_configs=4, n_chains=2, n_therm=1, seed=1,
                       progress=False, commit_every=0, resume=resume)

        probe = tmp_path / f"{name}-probe"
        probe.mkdir()
        n_steps = write_steps_of(lambda: run(probe, False))
        assert n_steps >= 12
        failed = every_write_step_fails_cleanly(tmp_path / name, lambda f, r: run(f, r),
                                                lambda f: without_time(f / "ens.h5"), n_steps)
        assert failed >= n_steps - 3  # all but the final manifest rewrite's three steps


def test_enospc_at_every_write_step_of_training(tmp_path):
    config = TrainConfig(steps=3, batch_size=4, log_every=1, checkpoint_every=2, eval_batches=1, seed=1)

    def run(folder, resume):
        torch.manual_seed(0)
        model = build_flow(architecture(make_theory("u1", "4x4", beta=1.0), n_layers=2, hidden_channels=[4]))
        train_flow(model, config, folder / "m.pt", resume=resume and (folder / "m.pt").exists(), progress=False)

    def read(folder):
        payload = load_checkpoint(folder / "m.pt")
        return {"model": payload["model"], "step": payload["step"],
                "log": [line.split(",")[:3] for line in (folder / "m.metrics.csv").read_text().splitlines()]}

    probe = tmp_path / "probe"
    probe.mkdir()
    n_steps = write_steps_of(lambda: run(probe, False))
    assert n_steps >= 10
    assert every_write_step_fails_cleanly(tmp_path, run, read, n_steps) == n_steps


# ---------------------------------------------------------------------------------------------
# 4.-5. bad input, refused by name


def cli(capsys, *args) -> tuple[int, str]:
    """``gaugeflow ARGS`` in this process (fast): its status and its stderr."""
    from gaugeflow.cli import main

    try:
        status = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--seed", 1180591620717411303424], "argument --seed: seed must be an integer from 0 to"),
    (["--seed", -1], "argument --seed"),
    (["--commit-every", -1], "--commit-every must be a non-negative number"),
    (["--beta", 1e308], "at --beta=1e+308: a coupling is out of range"),
])
def test_bad_run_options_are_refused_naming_the_option(tmp_path, capsys, options, message):
    base = ["hmc", "--theory", "u1", "--beta", 2, "--lattice", "4x4", "--n-configs", 4, "--chains", 2, "--therm", 1,
            "--quiet", "--device", "cpu", "--out", tmp_path / "ens.h5"]
    status, stderr = cli(capsys, *base, *options)
    assert status == 2 and message in stderr.strip().splitlines()[-1], stderr


def test_couplings_that_make_every_update_fail_are_refused(tmp_path):
    theory = make_theory("u1", "4x4", beta=1e300)
    with pytest.raises(GaugeflowError, match="delta_h of the first update is inf in 2 of 2 chains of u1 at beta=1e"):
        run_chains(theory, tmp_path / "e.h5", HMCSampler(theory, PARAMS, False), n_configs=2, n_chains=2, n_therm=0,
                   progress=False)


@pytest.mark.parametrize("attributes", [
    {"format": "gaugeflow-ensemble", "format_version": 1},
    {"format": "gaugeflow-ensemble", "format_version": 2},
    {"format": "something-else"},
    {},
])
def test_minimal_foreign_files_are_refused_in_one_line(tmp_path, capsys, attributes):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        for key, value in attributes.items():
            f.attrs[key] = value
        if attributes.get("format_version") == 1:
            f["configs"] = np.zeros((2, 2, 4, 4))
            f.create_group("observables")
            f.attrs["n_configs"] = 2
    for command in ("analyze", "verify", "plot"):
        status, stderr = cli(capsys, command, path)
        assert status == 2 and len(stderr.strip().splitlines()) == 1, (command, stderr)


# ---------------------------------------------------------------------------------------------
# 6. the fault campaign: byte flips at every structural position class


def judge_ensemble(path, reference) -> str:
    """``refused`` (one line) or ``unchanged``; anything else fails the test."""
    try:
        got = snapshot(path)
    except EnsembleError as error:
        assert "\n" not in str(error)
        return "refused"
    assert same(got, reference), "a flipped byte changed the data silently"
    return "unchanged"


def flip_campaign(path, files, per_class, rng, resume=None):
    reference = snapshot(path)
    outcomes = {}
    for target in files:
        original = open(target, "rb").read()
        for kind, offsets in hdf5_position_classes(target).items():
            for offset in rng.sample(offsets, min(per_class, len(offsets))):
                flip(target, offset, rng.choice([0x01, 0x10, 0x80, 0xFF]))
                outcome = judge_ensemble(path, reference)
                outcomes.setdefault(kind, []).append(outcome)
                if resume is not None and offset == offsets[0]:
                    resume(target, outcome)
                open(target, "wb").write(original)
    return outcomes


def test_byte_flips_in_a_segmented_ensemble_are_refused_or_harmless(tmp_path):
    path = tmp_path / "ens.h5"
    hmc(path)
    pristine = tmp_path / "pristine"
    shutil.copytree(tmp_path, pristine, ignore=shutil.ignore_patterns("pristine"))
    segments = sorted(os.listdir(segment_directory(path)))

    def resume(target, outcome):
        """A resume from a flipped last segment or manifest: refused, or it continues exactly."""
        try:
            hmc(path, n_configs=8, resume=True)
        except EnsembleError:
            pass
        else:
            with open_ensemble(path) as ensemble:
                assert ensemble.verify()["rows"] == 8  # no duplicate or missing (chain, step)
        for name in os.listdir(pristine):  # back to the start, segments included
            source = os.path.join(pristine, name)
            shutil.rmtree(tmp_path / name, ignore_errors=True)
            (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, tmp_path / name)
        for extra in set(os.listdir(segment_directory(path))) - set(segments):
            os.remove(os.path.join(segment_directory(path), extra))

    outcomes = flip_campaign(path, [os.path.join(segment_directory(path), segments[-1]), str(path)], 5,
                             random.Random(26), resume)
    assert {"superblock", "object header", "name", "heap", "attribute", "checksum", "chunk"} <= set(outcomes)
    assert sum(o == "refused" for v in outcomes.values() for o in v) >= 10


def test_byte_flips_in_a_distributed_ensemble_are_refused_or_harmless(tmp_path):
    path = tmp_path / "ens.h5"
    generate_distributed(THEORY, path, lambda: HMCSampler(THEORY, PARAMS, False), SingleProcess(), n_configs=4,
                         n_chains=2, n_therm=2, progress=False, commit_every=0)
    stream = stream_path(path, 0)
    last_segment = os.path.join(segment_directory(stream), sorted(os.listdir(segment_directory(stream)))[-1])
    outcomes = flip_campaign(path, [last_segment, stream, str(path)], 3, random.Random(27))
    assert sum(o == "refused" for v in outcomes.values() for o in v) >= 5


def test_byte_flips_in_a_checkpoint_are_refused_or_harmless(tmp_path):
    path = tmp_path / "m.pt"
    model = build_flow(architecture(make_theory("u1", "4x4", beta=1.0), n_layers=2, hidden_channels=[4]))
    train_flow(model, TrainConfig(steps=1, batch_size=4, eval_batches=1), path, progress=False)
    reference = load_checkpoint(path)
    data = open(path, "rb").read()
    classes = {"local header": occurrences(data, b"PK\x03\x04", 26),
               "central directory": occurrences(data, b"PK\x01\x02", 42),
               "end record": occurrences(data, b"PK\x05\x06", 18),
               "record names": occurrences(data, b"data.pkl", 0) + occurrences(data, b"/data/", 4)}
    classes["data"] = sorted(set(range(len(data))) - {i for v in classes.values() for i in v})
    rng, refused = random.Random(28), 0
    for kind, offsets in classes.items():
        assert offsets, kind
        for offset in rng.sample(offsets, min(8, len(offsets))):
            flip(path, offset, rng.choice([0x01, 0x10, 0x80, 0xFF]))
            try:
                got = load_checkpoint(path)
            except GaugeflowError as error:
                assert "\n" not in str(error)
                refused += 1
            else:
                assert same({k: got[k] for k in ("model", "step", "architecture")},
                            {k: reference[k] for k in ("model", "step", "architecture")}), (kind, offset)
            open(path, "wb").write(data)
    assert refused >= 10
