"""HDF5 ensembles that survive crashes: immutable, checksummed segments behind a manifest.

An ensemble ``ens.h5`` is a directory of segments, ``ens.h5.segments/segment-NNNNNN.h5``, each
a complete, checksummed HDF5 file of rows plus the sampler state after them, written once
(the rename is the commit); and the manifest ``ens.h5``, the metadata plus virtual datasets
through which plain h5py reads all rows, derived from the segments and rebuilt when it lags.
A distributed ensemble (``--mpi``) has one such ensemble per stream, ``ens.h5.streams/``.

The format -- every attribute, dataset and guarantee -- is specified once, in the
documentation's "HDF5 ensemble format" page (``docs/ensemble-format.md``), and encoded once,
in :mod:`gaugeflow.lattice.ensemble_format`.  This module *reads* every layout
(:class:`Ensemble`: columns, configurations, the resume state, measurements, run records,
:meth:`Ensemble.verify`); :mod:`gaugeflow.lattice.ensemble_writer` writes the current one
(:class:`~gaugeflow.lattice.ensemble_writer.EnsembleWriter`, :func:`create_ensemble`,
:func:`repair_manifest`, :func:`compact_ensemble`, the distributed helpers), whose names are
importable from here too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import h5py
import numpy as np

from .ensemble_format import (_SEGMENT, FORMAT_NAME, FORMAT_VERSION, MEASUREMENT_FORMAT, REQUIRED_METADATA,
                              ROW_DATASETS, EnsembleError, _check_digests, _check_image, _check_required,
                              _manifest_image, _open_h5, _plain, _read_verified, _Segment, _v1_metadata,
                              ensemble_metadata, segment_directory, segment_name, stream_path)
from .errors import InputError
from .storage import StorageError, digest  # noqa: F401 (StorageError re-exported)


class Ensemble:
    """An ensemble opened for reading, any layout (format 1; format 2 single, segmented or
    distributed).  Use :func:`open_ensemble`; :class:`~gaugeflow.lattice.ensemble_writer.EnsembleWriter`
    adds writing."""

    def __init__(self, path, checked: dict | None = None):
        self.path, self.mode = os.fspath(path), "r"
        self._listed_segments, self.n_streams = 0, 1
        # the files whose digest this reader has checked (shared with its streams): see _open_h5
        self._checked = {} if checked is None else checked
        try:
            self.metadata, self.layout = self._read_metadata()
        except EnsembleError as error:
            if os.path.isdir(segment_directory(self.path)) or os.path.isdir(self.path + ".streams"):
                raise EnsembleError(f"{error}; {_REPAIR}") from None
            raise
        self.segments = self._find_segments()

    def _open(self, path):
        """``path`` opened with h5py after its file digest is checked (once per reader)."""
        return _open_h5(path, self._checked)

    # -- metadata ---------------------------------------------------------------------
    def _read_metadata(self):
        with self._open(self.path) as h5file:
            attrs = {key: _plain(value) for key, value in h5file.attrs.items()}
            if attrs.get("format") == FORMAT_NAME and attrs.get("format_version") == 1:
                return _v1_metadata(self.path, h5file, attrs), "v1"
        if attrs.get("format") != FORMAT_NAME:
            raise EnsembleError(f"{self.path} is not a gaugeflow ensemble (format attribute missing or foreign)")
        version = attrs.get("format_version")
        self._listed_segments = int(attrs.get("n_segments", 0))
        if version != FORMAT_VERSION:
            raise EnsembleError(f"{self.path} has ensemble format version {version}; "
                                f"this gaugeflow reads versions 1 and {FORMAT_VERSION}")
        metadata = _check_digests(self.path, attrs)
        _check_required(self.path, metadata, REQUIRED_METADATA)
        self.n_streams = int(metadata.get("n_streams", 1))
        return metadata, attrs.get("layout")

    @property
    def attrs(self) -> dict:
        return {**self.metadata, "n_configs": len(self)}

    @property
    def theory_name(self) -> str:
        return str(self.metadata["theory"])

    @property
    def lattice_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.metadata["lattice_shape"])

    @property
    def couplings(self) -> dict:
        return {n: float(self.metadata[n]) for n in self.metadata.get("coupling_names", [])}

    @property
    def observable_names(self) -> list[str]:
        """Every observable column: those stored with the rows and those measured later on every
        segment (:meth:`measure`)."""
        return sorted([*self.metadata.get("observable_names", []), *self.measured_columns()])

    # -- measurements (observables computed after production) -----------------------------
    def _measurement_path(self, segment: _Segment, name: str) -> str:
        """Where measurement ``name`` of ``segment`` is stored: beside the file that owns the
        segment, ``<owner>.measurements/<name>/segment-NNNNNN.h5``."""
        directory, base = os.path.split(segment.path)
        if directory.endswith(".segments"):
            owner = directory[: -len(".segments")]
        else:  # a single (compacted) file is its own segment 0
            owner, base = segment.path, segment_name(0)
        return os.path.join(owner + ".measurements", name, base)

    def measurements(self) -> dict[str, list[str]]:
        """``{measurement: its columns}`` for every measurement stored for *every* segment."""
        if not self.segments or self.layout == "v1":
            return {}
        found = {}
        first = self._measurement_path(self.segments[0], "x")
        directory = os.path.dirname(os.path.dirname(first))
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            paths = [self._measurement_path(segment, name) for segment in self.segments]
            if all(os.path.exists(p) for p in paths):
                with self._open(paths[0]) as h5file:
                    found[name] = [str(c) for c in _plain(h5file.attrs.get("columns", []))]
        return found

    def measured_columns(self) -> list[str]:
        return [column for columns in self.measurements().values() for column in columns]

    def _measured_column(self, name: str) -> np.ndarray:
        for measurement, columns in self.measurements().items():
            if name in columns:
                return np.concatenate([self._read_measurement(segment, measurement)[name]
                                       for segment in self.segments]) if self.segments else np.zeros(0)
        raise EnsembleError(f"{self.path} has no column {name!r}")

    def _read_measurement(self, segment: _Segment, name: str) -> dict[str, np.ndarray]:
        """The columns of measurement ``name`` for ``segment``, checked: its checksums, and that
        it was computed on this segment's configurations."""
        path = self._measurement_path(segment, name)
        with self._open(path) as h5file:
            attrs = {key: _plain(value) for key, value in h5file.attrs.items()}
            if attrs.get("format") != MEASUREMENT_FORMAT:
                raise EnsembleError(f"{path} is not a gaugeflow measurement")
            if digest({k: v for k, v in attrs.items() if k != "sha256"}) != attrs.get("sha256"):
                raise EnsembleError(f"{path}: attributes: checksum mismatch")
            if attrs.get("configs_sha256") != self._configs_digest(segment) or attrs.get("n_rows") != segment.n_rows:
                raise EnsembleError(f"{path} was measured on other configurations than {segment.path}")
            return {column: _read_verified(path, h5file, f"observables/{column}", shape=(segment.n_rows,))
                    for column in attrs["columns"]}

    def measurement_options(self, segment: _Segment, name: str) -> dict:
        """The options measurement ``name`` of ``segment`` was made with (``{}`` for none)."""
        with self._open(self._measurement_path(segment, name)) as h5file:
            return json.loads(_plain(h5file.attrs.get("options", "{}")))

    def _configs_digest(self, segment: _Segment):
        with self._open(segment.path) as h5file:
            return _plain(h5file["configs"].attrs.get("sha256")) if "configs" in h5file else None

    def __len__(self) -> int:
        return sum(s.n_rows for s in self.segments)

    def check_compatible(self, theory_name: str, lattice_shape, couplings: dict) -> None:
        """Raise :class:`EnsembleError` unless the file holds this theory, lattice and couplings."""
        if self.theory_name != theory_name:
            raise EnsembleError(f"{self.path} holds theory {self.theory_name!r}, not {theory_name!r}")
        if self.lattice_shape != tuple(lattice_shape):
            have = "x".join(map(str, self.lattice_shape))
            want = "x".join(map(str, lattice_shape))
            raise EnsembleError(f"{self.path} holds lattice {have}, not {want}")
        for name, value in couplings.items():
            stored = self.couplings.get(name)
            if stored is None or not np.isclose(stored, value, rtol=0, atol=1e-12):
                raise EnsembleError(f"{self.path} was generated with {name}={stored}, not {name}={value}")

    # -- segments ---------------------------------------------------------------------
    def _find_segments(self) -> list[_Segment]:
        if self.layout == "streams":
            return self._stream_segments()
        if self.layout == "v1":
            with self._open(self.path) as h5file:
                return [_Segment(self.path, 0, 0, int(h5file.attrs["n_configs"]))]
        if self.layout == "single":
            return [self._segment_info(self.path, expected_index=0, first_row=0)]
        directory = segment_directory(self.path)
        names = sorted(n for n in os.listdir(directory) if _SEGMENT.fullmatch(n)) if os.path.isdir(directory) else []
        if len(names) < self._listed_segments:
            raise EnsembleError(f"{self.path} lists {self._listed_segments} segments but {directory} holds "
                                f"{len(names)}: segments are missing")
        segments, first_row = [], 0
        for index, name in enumerate(names):
            segment = self._segment_info(os.path.join(directory, name), index, first_row)
            segments.append(segment)
            first_row += segment.n_rows
        return segments

    def streams(self) -> list[Ensemble]:
        """The streams of a distributed ensemble that have started (opened for reading)."""
        parts = []
        for stream in range(self.n_streams if self.layout == "streams" else 0):
            if os.path.exists(stream_path(self.path, stream)):
                part = Ensemble(stream_path(self.path, stream), self._checked)
                for key in ("theory", "lattice_shape", "coupling_names", "sampler", "config_shape", "config_dtype",
                            *self.metadata["coupling_names"]):
                    if part.metadata.get(key) != self.metadata.get(key):
                        raise EnsembleError(f"{part.path} belongs to another ensemble than {self.path} ({key} differs)")
                if part.metadata.get("stream") != stream:
                    raise EnsembleError(f"{part.path} is stream {part.metadata.get('stream')}, not {stream}")
                parts.append(part)
        return parts

    def _stream_segments(self) -> list[_Segment]:
        """Every stream's segments, stream after stream, numbered as one ensemble."""
        segments, first_row = [], 0
        for part in self.streams():
            for segment in part.segments:
                segments.append(_Segment(segment.path, len(segments), first_row, segment.n_rows))
                first_row += segment.n_rows
        return segments

    def _segment_info(self, path, expected_index: int, first_row: int) -> _Segment:
        with self._open(path) as h5file:
            attrs = {key: _plain(value) for key, value in h5file.attrs.items()}
        if attrs.get("format") != FORMAT_NAME:
            raise EnsembleError(f"{path} is not a gaugeflow ensemble segment")
        if _check_digests(path, attrs) != self.metadata:
            raise EnsembleError(f"{path} belongs to another ensemble than {self.path}")
        if attrs.get("segment") != expected_index or attrs.get("first_row") != first_row:
            raise EnsembleError(f"{path}: segment {attrs.get('segment')} at row {attrs.get('first_row')} where segment "
                                f"{expected_index} at row {first_row} was expected (a segment is missing)")
        return _Segment(os.fspath(path), expected_index, first_row, int(attrs["n_rows"]))

    def _shape(self, segment: _Segment, name: str):
        """The shape a dataset of a (version 2) segment must have; ``None`` for format 1."""
        if self.layout == "v1":
            return None
        return (segment.n_rows, *self.metadata["config_shape"]) if name == "configs" else (segment.n_rows,)

    def _segments_for_reading(self):
        for segment in self.segments:
            if segment.n_rows:
                yield segment

    # -- reading ----------------------------------------------------------------------
    def configs(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = len(self) if stop is None else min(stop, len(self))
        parts = []
        for segment in self._segments_for_reading():
            lo, hi = max(start, segment.first_row), min(stop, segment.first_row + segment.n_rows)
            if lo < hi:
                with self._open(segment.path) as h5file:
                    whole = lo == segment.first_row and hi == segment.first_row + segment.n_rows
                    whole = whole and self.layout != "v1"  # format 1 may hold rows past n_configs
                    selection = None if whole else slice(lo - segment.first_row, hi - segment.first_row)
                    parts.append(_read_verified(segment.path, h5file, "configs", selection, self._shape(segment, "configs")))
        if parts:
            return np.concatenate(parts)
        with self._open(self.path) as h5file:
            return h5file["configs"][0:0] if "configs" in h5file else np.zeros((0,))

    def column(self, name: str) -> np.ndarray:
        """A per-row dataset (``chain``, ``step``, ``accepted``, ``delta_h``) or an observable."""
        if name in ROW_DATASETS:
            key = name
        elif name in self.metadata.get("observable_names", []):
            key = f"observables/{name}"
        else:
            return self._measured_column(name)
        parts = []
        for segment in self._segments_for_reading():
            with self._open(segment.path) as h5file:
                values = _read_verified(segment.path, h5file, key, None if self.layout != "v1" else slice(0, segment.n_rows),
                                        self._shape(segment, key))
            parts.append(values[: segment.n_rows])
        dtype = np.bool_ if name == "accepted" else (np.int64 if name in ("chain", "step") else np.float64)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def observables(self) -> dict[str, np.ndarray]:
        return {name: self.column(name) for name in self.observable_names}

    def per_chain(self, values: np.ndarray) -> list[np.ndarray]:
        """Split a per-row array into one array per chain, each ordered by step."""
        if getattr(self, "_chain_rows", (None,))[0] != len(self):  # read and sorted once per size
            chain, step = self.column("chain"), self.column("step")
            rows = [np.flatnonzero(chain == c) for c in np.unique(chain)]
            self._chain_rows = (len(self), [r[np.argsort(step[r], kind="stable")] for r in rows])
        return [values[rows] for rows in self._chain_rows[1]]

    def resume_state(self) -> dict | None:
        """The sampler state after the last committed row (``None`` before the first commit, and
        for a distributed ensemble, whose streams each have theirs)."""
        if not self.segments or self.layout == "streams":
            return None
        last = self.segments[-1]
        with self._open(last.path) as h5file:
            if "resume" not in h5file:
                if self.layout in ("v1", "single"):  # compacted from a stateless file: legitimately none
                    return None
                raise EnsembleError(f"{last.path}: the resume state is missing (damaged: every segment is written "
                                    f"with one)")
            group = h5file["resume"]
            try:
                state = {name: group[name][()] for name in group}
            except OSError:
                raise EnsembleError(f"{last.path}: dataset resume: checksum mismatch") from None
            state.update({k: _plain(v) for k, v in group.attrs.items() if k != "sha256"})
            expected = _plain(group.attrs.get("sha256"))
        if self.layout != "v1" and digest(state) != expected:
            raise EnsembleError(f"{last.path}: dataset resume: checksum mismatch")
        return state

    def _verify_segment(self, segment: _Segment) -> int:
        names = ["configs", *ROW_DATASETS, *(f"observables/{n}" for n in self.metadata["observable_names"])]
        with self._open(segment.path) as h5file:
            for name in names:
                values = _read_verified(segment.path, h5file, name, shape=self._shape(segment, name))
                if len(values) < segment.n_rows or (self.layout != "v1" and len(values) != segment.n_rows):
                    raise EnsembleError(f"{segment.path}: dataset {name} has {len(values)} rows, not {segment.n_rows}")
        return len(names)

    def verify(self) -> dict:
        """Read and check everything: metadata, every dataset of every segment, the resume
        state; that every chain's rows are unique, in order and without gaps, and that the
        resume state continues them; and the manifest as plain h5py reads it.

        Returns ``{"segments", "rows", "checked_datasets", "manifest_rows"}`` (the rows plain
        h5py sees: fewer than ``rows`` when a writer stopped before updating the manifest);
        raises :class:`EnsembleError` naming the first damaged file and dataset."""
        checked = sum(self._verify_segment(segment) for segment in self.segments)
        checked += self._verify_measurements()
        self.run_records()
        for part in self.streams() if self.layout == "streams" else [self]:
            part._verify_chains(part.resume_state())
        manifest_rows = self._verify_manifest() if self.layout in ("manifest", "streams") else len(self)
        return {"segments": len(self.segments), "rows": len(self), "checked_datasets": checked,
                "manifest_rows": manifest_rows}

    def run_records(self) -> list[tuple[int, dict | None]]:
        """``(segment, run record)`` for every segment (``None`` where none was stored), checked."""
        records = []
        for segment in self.segments if self.layout != "v1" else []:
            with self._open(segment.path) as h5file:
                group = h5file.get("provenance")
                if group is None:
                    records.append((segment.index, None))
                    continue
                record = json.loads(_plain(group.attrs.get("record", "{}")))
                if digest(record) != _plain(group.attrs.get("sha256")):
                    raise EnsembleError(f"{segment.path}: provenance: checksum mismatch")
            records.append((segment.index, record))
        return records

    def _verify_measurements(self) -> int:
        """Check every stored measurement file, also of measurements not yet complete."""
        checked = 0
        for segment in self.segments if self.layout != "v1" else []:
            directory = os.path.dirname(os.path.dirname(self._measurement_path(segment, "x")))
            for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
                if os.path.exists(self._measurement_path(segment, name)):
                    checked += len(self._read_measurement(segment, name))
        return checked

    def _verify_chains(self, state: dict | None) -> None:
        """Every ``(chain, step)`` once; with ``save_every`` recorded (every run records it),
        each chain's steps are ``save_every, 2 save_every, ...`` in the order stored, and the
        resume state continues after the last of them, for the same number of chains."""
        chain, step = self.column("chain"), self.column("step")
        pairs = np.stack([chain, step], axis=1)
        if len(np.unique(pairs, axis=0)) != len(pairs):
            raise EnsembleError(f"{self.path}: some (chain, step) rows are stored twice (damaged or wrongly resumed)")
        every = self.metadata.get("save_every")
        if every is None or self.layout == "v1":
            return
        for c in np.unique(chain):
            steps = step[chain == c]
            if not np.array_equal(steps, every * np.arange(1, len(steps) + 1)):
                raise EnsembleError(f"{self.path}: chain {c} has steps {_describe_gap(steps, every)} (rows are missing "
                                    f"or out of order)")
        if state is None:
            if len(self) and self.layout not in ("single",):
                raise EnsembleError(f"{self.path}: {len(self)} rows but no resume state")
            return
        if "next_trajectory" in state and len(self):
            last, resumes = int(step.max()), int(state["next_trajectory"])
            if not last <= resumes < last + every:
                raise EnsembleError(f"{self.path}: the resume state continues at step {resumes}, not after the last "
                                    f"stored step {last}")
        n_chains = self.metadata.get("n_chains")
        if n_chains is not None and "field" in state and len(state["field"]) != int(n_chains):
            raise EnsembleError(f"{self.path}: the resume state holds {len(state['field'])} chains, not {n_chains}")

    def _verify_manifest(self, tries: int = 3) -> int:
        """Check the manifest as plain h5py reads it; the number of rows it covers.

        An intact manifest is byte for byte what this reader rebuilds from the segments it lists,
        so it is checked without parsing it.  One that is not (damaged, or written by another
        version) is read end to end by h5py in a separate process -- libhdf5 can crash on a
        damaged virtual-dataset heap -- and compared with the segments."""
        with open(self.path, "rb") as f:  # one version of it: a writer may replace it meanwhile
            image = f.read()
        try:
            _check_image(self.path, image)
        except EnsembleError as error:
            raise EnsembleError(f"{error}; {_REPAIR}") from None
        try:
            with h5py.File(io.BytesIO(image), "r") as h5file:
                attrs = {key: _plain(value) for key, value in h5file.attrs.items()}
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            raise EnsembleError(f"{self.path} cannot be read (corrupt HDF5 structure: {error}); {_REPAIR}") from None
        covered, listed = int(attrs.get("n_configs", 0)), int(attrs.get("n_segments", 0))
        if listed > len(self.segments) and self.mode == "r":  # written after we listed the segments
            self.segments = self._find_segments()
        if covered > len(self) or listed > len(self.segments):
            raise EnsembleError(f"{self.path}: the manifest lists {covered} rows in {listed} segments, the segments "
                                f"hold {len(self)} in {len(self.segments)}; {_REPAIR}")
        sources = self.segments[:listed] if self.layout == "manifest" else self.segments
        per_file = dict(layout=self.layout, n_configs=covered, n_segments=listed)
        if self.layout == "manifest":
            per_file["segments"] = [os.path.basename(s.path) for s in sources]
        if image == _manifest_image(self.path, self.metadata, sources, self._measured_sources(sources), **per_file):
            return covered
        child = _read_manifest_elsewhere(self.path)
        if child is None:
            raise EnsembleError(f"{self.path}: the manifest cannot be read by h5py (damaged); {_REPAIR}")
        if child[0] != covered and tries > 1:  # a writer replaced it in between: check the new one
            return self._verify_manifest(tries - 1)
        seen = child[1]
        # a lagging manifest covers a prefix of the rows, except in a distributed ensemble,
        # whose streams all grow: compared there once it is up to date
        if covered == len(self) or self.layout != "streams":
            for name, (rows, value) in seen.items():
                stored = self.configs(0, covered) if name == "configs" else self.column(name.split("/")[-1])[:covered]
                if rows != covered or value != _raw_digest(stored):
                    raise EnsembleError(f"{self.path}: manifest dataset {name} differs from the segments; {_REPAIR}")
        return covered

    def _measured_sources(self, segments) -> dict[str, list[str]]:
        """``{column: the measurement file of each of ``segments``}`` for the manifest."""
        return {column: [self._measurement_path(s, name) for s in segments]
                for name, columns in self.measurements().items() for column in columns}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Nothing to release for a reader (the writer's :meth:`close` releases its lock)."""



_REPAIR = "'gaugeflow verify --repair' rebuilds the manifest from the segments"


# run by _read_manifest_elsewhere: every dataset of a manifest, read by plain h5py
_READ_MANIFEST = """
import hashlib, json, sys
import h5py, numpy as np
out = {}
with h5py.File(sys.argv[1], "r") as f:
    names = [n for n in f if isinstance(f[n], h5py.Dataset)] + ["observables/" + n for n in f.get("observables", {})]
    for name in names:
        values = np.ascontiguousarray(f[name][()])
        out[name] = [len(values), hashlib.sha256(values.tobytes()).hexdigest()]
    n_configs = int(f.attrs.get("n_configs", -1))
print(json.dumps({"n_configs": n_configs, "datasets": out}))
"""


def _raw_digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _read_manifest_elsewhere(path) -> tuple[int, dict] | None:
    """``(n_configs, {dataset: (rows, SHA-256 of its bytes)})`` as plain h5py reads the manifest,
    in a child process; ``None`` if h5py fails or crashes there."""
    try:
        child = subprocess.run([sys.executable, "-c", _READ_MANIFEST, os.fspath(path)], capture_output=True, text=True,
                               timeout=600)
        if child.returncode:
            return None
        seen = json.loads(child.stdout)
        return seen["n_configs"], {name: tuple(entry) for name, entry in seen["datasets"].items()}
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return None


def _describe_gap(steps: np.ndarray, every: int) -> str:
    expected = every * np.arange(1, len(steps) + 1)
    where = int(np.flatnonzero(steps != expected)[0])
    return f"{int(steps[where])} where {int(expected[where])} was expected (row {where} of the chain)"



def open_ensemble(path, mode: str = "r") -> Ensemble:
    """Open an existing ensemble for reading (``'r'``: an :class:`Ensemble`) or appending (``'a'``:
    an :class:`~gaugeflow.lattice.ensemble_writer.EnsembleWriter`, which takes the writer lock)."""
    if mode not in ("r", "a"):
        raise InputError("mode must be 'r' or 'a'")
    if not os.path.exists(path):
        raise EnsembleError(f"{path}: no such file")
    if mode == "a":
        from .ensemble_writer import EnsembleWriter

        return EnsembleWriter(path)
    return Ensemble(path)


# the writing half of the API, here too so that one import serves readers and writers
from .ensemble_writer import (EnsembleWriter, compact_ensemble, create_distributed_ensemble,  # noqa: E402
                              create_ensemble, refresh_distributed_manifest, repair_manifest)

__all__ = ["Ensemble", "EnsembleError", "EnsembleWriter", "StorageError", "compact_ensemble",
           "create_distributed_ensemble", "create_ensemble", "ensemble_metadata", "open_ensemble",
           "refresh_distributed_manifest", "repair_manifest", "segment_directory", "stream_path"]
