"""HDF5 ensembles: schema, round trip, append, resume (bit for bit), interruption, bad files."""

import hashlib
import os
import signal

import h5py
import numpy as np
import pytest
import torch

from fault_classes import reseal
from gaugeflow.hmc.hmc import HMCParameters
from gaugeflow.hmc.run import Interrupted, generate_ensemble
from gaugeflow.lattice.ensemble import FORMAT_NAME, EnsembleError, compact_ensemble, open_ensemble, segment_directory
from gaugeflow.lattice.theories import make_theory


def u1_theory():
    return make_theory("u1", "4x4", beta=2.0)


def run(path, n_configs, theory=None, **kwargs):
    options = dict(n_therm=6, n_chains=2, seed=7, params=HMCParameters(1.0, 4), progress=False)
    options.update(kwargs)
    return generate_ensemble(theory or u1_theory(), path, n_configs=n_configs, **options)


def digest(path):
    """Of the manifest and every segment."""
    hasher = hashlib.sha256(open(path, "rb").read())
    directory = segment_directory(path)
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        hasher.update(name.encode() + open(os.path.join(directory, name), "rb").read())
    return hasher.hexdigest()


def test_schema_and_round_trip(tmp_path):
    path = tmp_path / "ens.h5"
    summary = run(path, 10)
    assert summary.n_configs == 10 and summary.n_new == 10
    with h5py.File(path, "r") as f:  # plain h5py reads everything
        assert f.attrs["format"] == FORMAT_NAME and f.attrs["format_version"] == 2 and f.attrs["layout"] == "manifest"
        assert f.attrs["theory"] == "u1" and list(f.attrs["lattice_shape"]) == [4, 4]
        assert f.attrs["beta"] == 2.0 and f.attrs["sampler"] == "hmc" and f.attrs["seed"] == 7
        assert "created" in f.attrs and "software_version" in f.attrs
        assert f["configs"].shape == (10, 2, 4, 4) and f["configs"].dtype == np.float64
        assert f["configs"].is_virtual and f["configs"].maxshape == (None, 2, 4, 4)
        assert list(f["chain"][:]) == [0, 1] * 5
        assert list(f["step"][:]) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        assert f["accepted"].dtype == np.bool_
        configs = f["configs"][:]
        assert configs.min() > -np.pi and configs.max() <= np.pi
        stored_plaquette = f["observables/plaquette"][:]
    segments = sorted(os.listdir(segment_directory(path)))
    # a short run commits twice: the thermalised state, then the rows at the end
    assert segments == ["segment-000000.h5", "segment-000001.h5"]
    with h5py.File(os.path.join(segment_directory(path), segments[0]), "r") as f:
        assert f.attrs["n_rows"] == 0 and f["resume"].attrs["next_trajectory"] == 0
    with h5py.File(os.path.join(segment_directory(path), segments[1]), "r") as f:
        assert f["configs"].chunks is not None and f["configs"].fletcher32
        assert len(f["configs"].attrs["sha256"]) == 64 and len(f["resume"].attrs["sha256"]) == 64
        assert f.attrs["layout"] == "segment" and f.attrs["first_row"] == 0 and f.attrs["n_rows"] == 10
    recomputed = u1_theory().observables(torch.as_tensor(configs))["plaquette"].numpy()
    assert np.allclose(stored_plaquette, recomputed, atol=1e-14)
    with open_ensemble(path) as ensemble:
        assert len(ensemble) == 10 and ensemble.couplings == {"beta": 2.0}
        chains = ensemble.per_chain(ensemble.column("step"))
        assert [list(c) for c in chains] == [[1, 2, 3, 4, 5]] * 2


def test_sun_configurations_are_complex128(tmp_path):
    path = tmp_path / "su2.h5"
    run(path, 4, theory=make_theory("su2", "2x2", beta=1.0), precision=torch.float32)
    with h5py.File(path, "r") as f:
        assert f["configs"].shape == (4, 2, 2, 2, 2, 2) and f["configs"].dtype == np.complex128
        u = f["configs"][:]
    assert np.allclose(u @ np.conj(np.swapaxes(u, -1, -2)), np.eye(2), atol=1e-5)


def test_resume_continues_bit_for_bit(tmp_path):
    whole, split = tmp_path / "whole.h5", tmp_path / "split.h5"
    run(whole, 12)
    run(split, 4)
    summary = run(split, 12, resume=True)
    assert summary.n_new == 8
    with h5py.File(whole, "r") as a, h5py.File(split, "r") as b:
        for name in ("configs", "chain", "step", "accepted", "delta_h", "observables/topological_charge"):
            assert np.array_equal(a[name][:], b[name][:]), name


def test_resume_of_a_complete_file_adds_nothing(tmp_path):
    path = tmp_path / "ens.h5"
    run(path, 4)
    assert run(path, 4, resume=True).n_new == 0
    assert len(open_ensemble(path)) == 4


def test_resume_without_file_starts_a_new_run(tmp_path):
    path = tmp_path / "new.h5"
    assert run(path, 4, resume=True).n_configs == 4


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    """SIGUSR1 mid-run: everything stored so far survives, and resuming matches an uninterrupted run."""
    whole, interrupted = tmp_path / "whole.h5", tmp_path / "interrupted.h5"
    run(whole, 12)

    theory = u1_theory()
    original, calls = theory.observables, {"n": 0}

    def observables_then_signal(field):
        calls["n"] += 1
        if calls["n"] == 3:  # the first call lists observable names; then one per stored row
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(field)

    monkeypatch.setattr(theory, "observables", observables_then_signal)
    with pytest.raises(Interrupted, match="SIGUSR1"):
        run(interrupted, 12, theory=theory)
    assert 0 < len(open_ensemble(interrupted)) < 12
    run(interrupted, 12, resume=True)
    with h5py.File(whole, "r") as a, h5py.File(interrupted, "r") as b:
        assert np.array_equal(a["configs"][:], b["configs"][:])
        assert np.array_equal(a["step"][:], b["step"][:])


def write_format_1(path, ensemble, n_rows, extra_rows):
    """What the previous gaugeflow wrote: one file, rows past ``n_configs`` from a cut-short write."""
    rows = {"configs": ensemble.configs(), **{n: ensemble.column(n) for n in ("chain", "step", "accepted", "delta_h")}}
    with h5py.File(path, "w") as f:
        for key, value in ensemble.metadata.items():
            if key not in ("observable_names", "config_shape", "config_dtype", "config_row_bytes"):
                f.attrs[key] = value
        f.attrs["format_version"], f.attrs["format"], f.attrs["n_configs"] = 1, FORMAT_NAME, n_rows
        for name, values in rows.items():
            f.create_dataset(name, data=np.concatenate([values[:n_rows], values[: extra_rows]]), maxshape=(None,) + values.shape[1:])
        for name in ensemble.observable_names:
            f.create_dataset(f"observables/{name}", data=ensemble.column(name)[: n_rows + extra_rows])
        state = ensemble.resume_state()
        group = f.create_group("resume")
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                group.create_dataset(key, data=value)
            else:
                group.attrs[key] = value


def test_format_1_is_read_and_compacted_into_a_resumable_file(tmp_path):
    whole, short = tmp_path / "whole.h5", tmp_path / "short.h5"
    run(whole, 8)
    run(short, 4)
    legacy = tmp_path / "legacy.h5"
    with open_ensemble(short) as ensemble:
        write_format_1(legacy, ensemble, 4, extra_rows=2)
    with open_ensemble(legacy) as old:
        assert len(old) == 4 and old.configs().shape[0] == 4 and len(old.column("plaquette")) == 4
    with pytest.raises(EnsembleError, match="format version 1; convert it with 'gaugeflow compact"):
        run(legacy, 8, resume=True)
    compact = tmp_path / "compact.h5"
    compact_ensemble(legacy, compact)
    with h5py.File(compact, "r") as f:
        assert f.attrs["layout"] == "single" and f["configs"].shape[0] == 4 and not f["configs"].is_virtual
    run(compact, 8, resume=True)  # the single file becomes segment 0 of a manifest and grows
    with h5py.File(whole, "r") as a, h5py.File(compact, "r") as b:
        assert np.array_equal(a["configs"][:], b["configs"][:]) and np.array_equal(a["step"][:], b["step"][:])


def test_existing_file_is_never_overwritten(tmp_path):
    path = tmp_path / "ens.h5"
    run(path, 4)
    before = digest(path)
    with pytest.raises(EnsembleError, match="already exists"):
        run(path, 8)
    assert digest(path) == before


@pytest.mark.parametrize(
    "theory, kwargs, message",
    [
        (make_theory("u1", "4x4", beta=2.5), {}, "beta=2.0, not beta=2.5"),
        (make_theory("u1", "6x6", beta=2.0), {}, "lattice 4x4, not 6x6"),
        (make_theory("su2", "4x4", beta=2.0), {}, "theory 'u1', not 'su2'"),
        (None, {"n_chains": 4}, "n_chains=2"),
        (None, {"seed": 8}, "seed=7"),
    ],
)
def test_resume_with_other_parameters_is_rejected_and_loses_nothing(tmp_path, theory, kwargs, message):
    path = tmp_path / "ens.h5"
    run(path, 4)
    before = digest(path)
    with pytest.raises(EnsembleError, match=message):
        run(path, 8, theory=theory, resume=True, **kwargs)
    assert digest(path) == before


def test_foreign_files_are_rejected(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all")
    with pytest.raises(EnsembleError, match="not an HDF5 file"):
        open_ensemble(text)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(EnsembleError, match="not a gaugeflow ensemble"):
        open_ensemble(foreign)
    future = tmp_path / "future.h5"
    run(future, 2)
    with h5py.File(future, "r+") as f:
        f.attrs["format_version"] = 99
    reseal(future)  # as a later gaugeflow would write it
    with pytest.raises(EnsembleError, match="format version 99"):
        open_ensemble(future)
    with pytest.raises(EnsembleError, match="no such file"):
        open_ensemble(tmp_path / "missing.h5")


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "ens.h5"
    run(path, 4)
    data = open(path, "rb").read()
    broken = tmp_path / "broken.h5"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(EnsembleError):
        open_ensemble(broken).configs()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"n_chains": 3}, "multiple of n_chains"), ({"save_every": 0}, "save_every"), ({"start": "warm"}, "start")],
)
def test_bad_run_parameters(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path / "x.h5", 4, **kwargs)
    assert not (tmp_path / "x.h5").exists()


def test_save_every_stores_every_kth_trajectory(tmp_path):
    path = tmp_path / "ens.h5"
    run(path, 6, save_every=3)
    assert list(open_ensemble(path).column("step")) == [3, 3, 6, 6, 9, 9]


def test_analysis_of_a_just_started_run_names_the_problem(tmp_path):
    from gaugeflow.hmc.analysis import analyze_ensemble

    path = tmp_path / "young.h5"
    run(path, 2)  # one configuration in each of the two chains
    with pytest.raises(ValueError, match="holds 1 configuration in its shortest chain so far; .* at least 2 per chain"):
        analyze_ensemble(path)
    run(path, 4, resume=True)
    assert 0.0 < analyze_ensemble(path)["plaquette"]["mean"] < 1.0
