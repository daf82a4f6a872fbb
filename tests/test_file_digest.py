"""libhdf5 never parses bytes that are not verified: every file gaugeflow writes carries the
SHA-256 of its bytes in its HDF5 user block, and every read checks it first
(``gaugeflow.lattice.ensemble_format._open_h5``).  A flipped byte anywhere -- the digest line
included -- is refused in one line naming the file, by every reader path, before h5py opens the
file; files written before digests (the stored layouts) are read as before."""

import os
import random
import shutil

import h5py
import pytest

from fault_classes import flip, hdf5_position_classes
from gaugeflow.flows.distributed import SingleProcess
from gaugeflow.hmc.distributed import generate_distributed
from gaugeflow.hmc.hmc import HMCParameters, HMCSampler
from gaugeflow.hmc.run import run_chains
from gaugeflow.lattice import ensemble_format
from gaugeflow.lattice.ensemble import (EnsembleError, compact_ensemble, open_ensemble, repair_manifest,
                                        segment_directory, stream_path)
from gaugeflow.lattice.observables import measure_ensemble
from gaugeflow.lattice.theories import make_theory

THEORY = make_theory("u1", "4x4", beta=2.0)
PARAMS = HMCParameters(1.0, 4)
LAYOUTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "layouts")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def hmc(path, n_configs=6, resume=False):
    run_chains(THEORY, path, HMCSampler(THEORY, PARAMS, False), n_configs=n_configs, n_chains=2, n_therm=2, seed=1,
               progress=False, commit_every=0, resume=resume, observables=["plaquette", "topological_charge"])


def segments_of(path) -> list[str]:
    directory = segment_directory(path)
    return [os.path.join(directory, name) for name in sorted(os.listdir(directory)) if name.endswith(".h5")]


@pytest.fixture
def opened_by_h5py(monkeypatch):
    """The files h5py is asked to open from now on (absolute paths; in-memory images left out)."""
    opened, real = [], h5py.File

    def spy(name, *args, **kwargs):
        shown = getattr(name, "name", name)  # _open_h5 hands h5py the file object it checked
        if isinstance(shown, (str, os.PathLike)):
            opened.append(os.path.abspath(shown))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    return opened


def refused_unparsed(damaged, opened, action) -> str:
    """``action()`` refuses ``damaged`` in one line naming it, and h5py never opened it."""
    opened.clear()
    with pytest.raises(EnsembleError) as error:
        action()
    message = str(error.value)
    assert os.path.basename(damaged) in message and "\n" not in message, message
    assert os.path.abspath(damaged) not in opened, f"h5py opened {damaged} before its digest was checked"
    return message


def test_every_file_an_ensemble_writes_carries_the_digest_of_its_bytes(tmp_path):
    path = tmp_path / "ens.h5"
    hmc(path)
    measure_ensemble(path, ["wilson_loops"])
    compact_ensemble(path, tmp_path / "single.h5")
    measurements = str(path) + ".measurements/wilson_loops"
    files = [str(path), *segments_of(path), str(tmp_path / "single.h5"),
             *(os.path.join(measurements, n) for n in os.listdir(measurements))]
    for file in files:
        data = open(file, "rb").read()
        assert data.startswith(b"gaugeflow-sha256 ") and data[512:520] == HDF5_SIGNATURE, file
        with h5py.File(file, "r") as f:  # plain h5py reads it as before: HDF5 skips its user block
            assert f.userblock_size == 512 and f.attrs["format"].startswith("gaugeflow-")


def test_a_flipped_byte_anywhere_in_a_segment_is_refused_before_h5py_opens_it(tmp_path, opened_by_h5py):
    path = tmp_path / "ens.h5"
    hmc(path)
    last = segments_of(path)[-1]
    original = open(last, "rb").read()
    classes = hdf5_position_classes(last)
    assert {"user block", "superblock", "object header", "attribute", "chunk"} <= set(classes)
    rng = random.Random(3)
    for kind, offsets in classes.items():
        for offset in rng.sample(offsets, min(6, len(offsets))):
            flip(last, offset, rng.choice([0x01, 0x04, 0x80, 0xFF]))
            message = refused_unparsed(last, opened_by_h5py, lambda: open_ensemble(path).verify())
            assert "checksum mismatch" in message or "not an HDF5 file" in message, (kind, message)
            open(last, "wb").write(original)
    assert open_ensemble(path).verify()["rows"] == 6


def test_every_byte_of_the_digest_line_is_checked(tmp_path, opened_by_h5py):
    """A damaged digest line is refused, never taken for a file written before digests."""
    path = tmp_path / "ens.h5"
    hmc(path)
    last = segments_of(path)[-1]
    original = open(last, "rb").read()
    for offset in range(ensemble_format._DIGEST_LINE):
        for mask in (0x01, 0x80):
            flip(last, offset, mask)
            refused_unparsed(last, opened_by_h5py, lambda: open_ensemble(path))
            open(last, "wb").write(original)
    open(last, "wb").write(bytes(512) + original[512:])  # the digest wiped: a valid HDF5 file, but refused
    assert "neither HDF5's signature nor a gaugeflow file digest" in refused_unparsed(
        last, opened_by_h5py, lambda: open_ensemble(path))


@pytest.mark.parametrize("reader", ["open", "verify", "resume", "repair", "compact", "measure"])
def test_every_reader_path_checks_the_digest_first(tmp_path, opened_by_h5py, reader):
    path = tmp_path / "ens.h5"
    hmc(path)
    if reader == "verify":  # a damaged first segment: also the one repair takes the metadata from
        damaged = segments_of(path)[0]
    else:
        damaged = segments_of(path)[-1]
    flip(damaged, os.path.getsize(damaged) // 2, 0x04)
    actions = {"open": lambda: open_ensemble(path), "verify": lambda: open_ensemble(path).verify(),
               "resume": lambda: hmc(path, n_configs=8, resume=True), "repair": lambda: repair_manifest(path),
               "compact": lambda: compact_ensemble(path, tmp_path / "single.h5"),
               "measure": lambda: measure_ensemble(path, ["wilson_loops"])}
    refused_unparsed(damaged, opened_by_h5py, actions[reader])
    assert len(segments_of(path)) == 4 and not (tmp_path / "single.h5").exists()  # nothing built on it


def test_a_damaged_manifest_or_measurement_is_refused_unparsed(tmp_path, opened_by_h5py):
    path = tmp_path / "ens.h5"
    hmc(path)
    measure_ensemble(path, ["wilson_loops"])
    measurement = os.path.join(str(path) + ".measurements", "wilson_loops", "segment-000002.h5")
    for damaged in (measurement, str(path)):
        original = open(damaged, "rb").read()
        flip(damaged, len(original) - 100, 0x04)
        message = refused_unparsed(damaged, opened_by_h5py, lambda: open_ensemble(path).verify())
        assert "file: checksum mismatch" in message
        open(damaged, "wb").write(original)
    flip(str(path), 1000, 0x04)
    assert repair_manifest(path)["rows"] == 6  # the manifest is rebuilt from the (intact) segments


def test_a_distributed_ensemble_checks_its_streams_files(tmp_path, opened_by_h5py):
    path = tmp_path / "ens.h5"
    generate_distributed(THEORY, path, lambda: HMCSampler(THEORY, PARAMS, False), SingleProcess(), n_configs=4,
                         n_chains=2, n_therm=2, progress=False, commit_every=0)
    stream = stream_path(path, 0)
    for damaged in (segments_of(stream)[-1], stream):
        original = open(damaged, "rb").read()
        flip(damaged, len(original) // 2, 0x04)
        refused_unparsed(damaged, opened_by_h5py, lambda: open_ensemble(path).verify())
        open(damaged, "wb").write(original)


def test_each_file_is_hashed_once_per_reader(tmp_path, monkeypatch):
    path = tmp_path / "ens.h5"
    generate_distributed(THEORY, path, lambda: HMCSampler(THEORY, PARAMS, False), SingleProcess(), n_configs=4,
                         n_chains=2, n_therm=2, progress=False, commit_every=0)
    hashed, real = [], ensemble_format._check_file_digest
    monkeypatch.setattr(ensemble_format, "_check_file_digest",
                        lambda name, stream: (hashed.append(os.fspath(name)), real(name, stream))[1])
    with open_ensemble(path) as ensemble:
        ensemble.verify()
        for name in ensemble.observable_names:
            ensemble.column(name)
        ensemble.configs()
    files = [stream_path(path, 0), *segments_of(stream_path(path, 0))]
    assert [hashed.count(file) for file in files] == [1] * len(files)  # verify reads the manifest once more


def test_stored_layouts_without_digests_read_and_continue_with_digests(tmp_path, opened_by_h5py):
    for entry in os.listdir(LAYOUTS):
        if entry.startswith("ens-segmented.h5"):
            source = os.path.join(LAYOUTS, entry)
            (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, tmp_path / entry)
    path = tmp_path / "ens-segmented.h5"
    old = segments_of(path)
    assert all(open(segment, "rb").read(8) == HDF5_SIGNATURE for segment in old)  # written before digests
    theory = make_theory("u1", "4x4", beta=1.0)
    run_chains(theory, path, HMCSampler(theory, PARAMS, False), n_configs=8, n_chains=2, n_therm=2, seed=1,
               progress=False, commit_every=0, resume=True)
    new = [segment for segment in segments_of(path) if segment not in old]
    assert new and all(open(segment, "rb").read(17) == b"gaugeflow-sha256 " for segment in new)
    with open_ensemble(path) as ensemble:
        assert ensemble.verify()["rows"] == 8
    with h5py.File(old[-1], "r") as f:  # an old segment is left to HDF5's and the datasets' checksums
        chunk = f["configs"].id.get_chunk_info(0)
    flip(old[-1], chunk.byte_offset + 5, 0x04)
    with pytest.raises(EnsembleError, match="dataset configs: checksum mismatch"):
        open_ensemble(path).verify()
