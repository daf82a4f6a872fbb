"""HDF5 ensembles that survive crashes: immutable, checksummed segments behind a manifest.

An ensemble ``ens.h5`` is a directory of segments, ``ens.h5.segments/segment-NNNNNN.h5``, each
a complete, checksummed HDF5 file of rows plus the sampler state after them, written once
(the rename is the commit); and the manifest ``ens.h5``, the metadata plus virtual datasets
through which plain h5py reads all rows, derived from the segments and rebuilt when it lags.
A distributed ensemble (``--mpi``) has one such ensemble per stream, ``ens.h5.streams/``.

The format -- every attribute, dataset and guarantee -- is specified once, in the
documentation's "HDF5 ensemble format" page (``docs/ensemble-format.md``).  This module reads
and writes it: :func:`create_ensemble`, :func:`open_ensemble` (:class:`Ensemble`: columns,
configurations, the resume state, :meth:`Ensemble.verify`), :func:`repair_manifest`,
:func:`compact_ensemble` and the distributed helpers.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import h5py
import numpy as np

from .errors import InputError
from .provenance import committed
from .storage import StorageError, WriterLock, digest, hdf5_image, write_atomically

FORMAT_NAME = "gaugeflow-ensemble"
MEASUREMENT_FORMAT = "gaugeflow-measurement"
FORMAT_VERSION = 2
ROW_DATASETS = ("chain", "step", "accepted", "delta_h")
_SEGMENT = re.compile(r"segment-(\d{6})\.h5")
_PER_FILE = ("format", "format_version", "layout", "segment", "first_row", "n_rows", "n_configs", "n_segments",
             "metadata_sha256", "segments", "header_sha256")
_NOT_IN_HEADER = ("format", "format_version", "metadata_sha256", "header_sha256")
# what every reader relies on; a file without one of them is foreign or damaged
REQUIRED_METADATA = ("theory", "lattice_shape", "coupling_names", "sampler", "observable_names", "config_shape",
                     "config_dtype", "config_row_bytes")
# the metadata of a distributed ensemble's manifest: ensemble_metadata's keys and the run's fixed
# parameters (gaugeflow.hmc.distributed), but none of a stream's own
_DISTRIBUTED_KEYS = ("theory", "lattice_shape", "coupling_names", "sampler", "seed", "created", "software_version",
                     "observable_names", "config_shape", "config_dtype", "config_row_bytes", "n_chains", "save_every",
                     "n_therm", "start", "n_streams")
# seconds between manifest rewrites while commits follow each other faster (commit_every=0):
# each rewrite lists every segment, so rewriting it at every commit would cost O(segments^2)
MANIFEST_INTERVAL = 10.0


class EnsembleError(InputError):
    """A file that is not a gaugeflow ensemble, is damaged, or does not match the request."""


def software_version() -> str:
    from gaugeflow import __version__

    return __version__


def segment_directory(path) -> str:
    return os.fspath(path) + ".segments"


def segment_name(index: int) -> str:
    return f"segment-{index:06d}.h5"


def stream_path(path, stream: int) -> str:
    """The ensemble that stream ``stream`` of the distributed ensemble ``path`` writes."""
    return os.path.join(os.fspath(path) + ".streams", f"stream-{stream:04d}.h5")


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def _chunk_rows(row_bytes: int) -> int:
    return int(max(1, min(256, (64 * 1024) // max(row_bytes, 1))))


@dataclass
class _Segment:
    path: str
    index: int
    first_row: int
    n_rows: int


@contextlib.contextmanager
def _open_h5(path):
    """Read ``path``; whatever a damaged file makes h5py raise becomes one :class:`EnsembleError`."""
    try:
        h5file = h5py.File(path, "r")
    except FileNotFoundError:
        raise EnsembleError(f"{path}: no such file") from None
    except (OSError, RuntimeError, ValueError) as error:
        if os.path.exists(path) and not h5py.is_hdf5(path):
            raise EnsembleError(f"{path} is not an HDF5 file (corrupt or foreign)") from None
        raise EnsembleError(f"{path} cannot be read (corrupt HDF5 structure: {error})") from None
    try:
        with h5file:
            yield h5file
    except EnsembleError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, IndexError, MemoryError) as error:
        raise EnsembleError(f"{path} cannot be read (corrupt HDF5 structure: {type(error).__name__}: {error})") from None


def _check_required(path, metadata: dict, names) -> None:
    missing = [name for name in names if name not in metadata]
    if missing:
        raise EnsembleError(f"{path} is not a complete gaugeflow ensemble: attribute(s) {', '.join(missing)} missing "
                            f"(foreign or damaged file)")


def _check_digests(path, attrs: dict) -> dict:
    """The ensemble metadata of a file's attributes, after checking both of its digests."""
    metadata = {k: v for k, v in attrs.items() if k not in _PER_FILE}
    header = {k: v for k, v in attrs.items() if k in _PER_FILE and k not in _NOT_IN_HEADER}
    if digest(metadata) != attrs.get("metadata_sha256"):
        raise EnsembleError(f"{path}: metadata: checksum mismatch")
    if digest(header) != attrs.get("header_sha256"):
        raise EnsembleError(f"{path}: header: checksum mismatch")
    return metadata


def _read_verified(path, h5file, name: str, selection=None, shape=None):
    """Dataset ``name`` (all of it, checked against its SHA-256; or a slice, checked by fletcher32).

    ``shape``, where given (format 2), is checked before anything is read: a damaged dimension
    must not make h5py allocate terabytes; and the SHA-256 must be there."""
    try:
        dataset = h5file[name]
        if shape is not None and tuple(dataset.shape) != tuple(shape):
            raise EnsembleError(f"{path}: dataset {name} has shape {dataset.shape}, not {tuple(shape)} (damaged)")
        values = dataset[()] if selection is None else dataset[selection]
        expected = dataset.attrs.get("sha256")
    except KeyError:
        raise EnsembleError(f"{path}: dataset {name} is missing (damaged file)") from None
    except OSError:  # a fletcher32 failure, or a damaged chunk index
        raise EnsembleError(f"{path}: dataset {name}: checksum mismatch") from None
    if selection is None and (expected is not None or shape is not None) and digest(values) != _plain(expected):
        raise EnsembleError(f"{path}: dataset {name}: checksum mismatch")
    return values


class Ensemble:
    """An ensemble opened for reading (``mode="r"``) or for appending (``mode="a"``, holding
    the writer lock).  Use :func:`create_ensemble` or :func:`open_ensemble`."""

    def __init__(self, path, mode: str = "r"):
        self.path, self.mode = os.fspath(path), mode
        self._listed_segments, self.n_streams = 0, 1
        self._manifest_written = -math.inf
        self._lock = WriterLock(self.path).acquire() if mode == "a" else None
        try:
            try:
                self.metadata, self.layout = self._read_metadata()
            except EnsembleError as error:
                if os.path.isdir(segment_directory(self.path)) or os.path.isdir(self.path + ".streams"):
                    raise EnsembleError(f"{error}; {_REPAIR}") from None
                raise
            if mode == "a" and self.layout == "v1":
                raise EnsembleError(f"{self.path} has ensemble format version 1; convert it with "
                                    f"'gaugeflow compact {self.path} --out NEW' and continue NEW")
            if mode == "a" and self.layout == "streams":
                raise EnsembleError(f"{self.path} is a distributed ensemble: its streams are written one by one "
                                    f"({stream_path(self.path, 0)}, ...)")
            if mode == "a" and self.layout == "single":
                self._make_segmented()
            self.segments = self._find_segments()
            if mode == "a":
                self._remove_temporary_files()
                if self.segments:  # the segment a resume continues from is checked in full
                    self._verify_segment(self.segments[-1])
                    self.resume_state()
                if self._manifest_lags():
                    self._write_manifest()
        except BaseException:
            self.close()
            raise
        self._pending: list[dict] = []
        self._pending_rows = 0
        # the record of the run writing (gaugeflow.lattice.provenance), stored with every segment
        self.provenance: dict | None = None  # kept, not summed: the production loop asks after every update

    # -- metadata ---------------------------------------------------------------------
    def _read_metadata(self):
        with _open_h5(self.path) as h5file:
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
                with _open_h5(paths[0]) as h5file:
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
        with _open_h5(path) as h5file:
            attrs = {key: _plain(value) for key, value in h5file.attrs.items()}
            if attrs.get("format") != MEASUREMENT_FORMAT:
                raise EnsembleError(f"{path} is not a gaugeflow measurement")
            if digest({k: v for k, v in attrs.items() if k != "sha256"}) != attrs.get("sha256"):
                raise EnsembleError(f"{path}: attributes: checksum mismatch")
            if attrs.get("configs_sha256") != self._configs_digest(segment) or attrs.get("n_rows") != segment.n_rows:
                raise EnsembleError(f"{path} was measured on other configurations than {segment.path}")
            return {column: _read_verified(path, h5file, f"observables/{column}", shape=(segment.n_rows,))
                    for column in attrs["columns"]}

    def _configs_digest(self, segment: _Segment):
        with _open_h5(segment.path) as h5file:
            return _plain(h5file["configs"].attrs.get("sha256")) if "configs" in h5file else None

    def measure(self, name: str, columns_of: Callable[[np.ndarray], dict[str, np.ndarray]], progress=None) -> int:
        """Store measurement ``name`` -- ``columns_of(configs)`` gives ``{column: [n] float64}``
        for a segment's configurations -- for every segment that lacks it; returns how many were
        measured now.  Each segment's measurement is one file written atomically, so an
        interrupted measurement resumes where it stopped; the manifest then shows the columns."""
        if self.mode != "a":
            raise EnsembleError(f"{self.path} is open for reading only")
        taken = set(self.metadata["observable_names"]) | {c for m, cs in self.measurements().items() if m != name
                                                          for c in cs}
        done = 0
        for segment in self.segments:
            path = self._measurement_path(segment, name)
            if os.path.exists(path):
                self._read_measurement(segment, name)  # a damaged one is refused, never built upon
                continue
            with _open_h5(segment.path) as h5file:
                configs = _read_verified(segment.path, h5file, "configs", shape=self._shape(segment, "configs"))
            columns = {column: np.asarray(values, dtype=np.float64) for column, values in columns_of(configs).items()}
            clash = sorted(taken & set(columns))
            if clash:
                raise EnsembleError(f"measurement {name!r} gives column(s) {', '.join(clash)}, which {self.path} "
                                    f"already has")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomically(path, hdf5_image(lambda h5file: _write_measurement(
                h5file, name, columns, self._configs_digest(segment), segment.n_rows)))
            done += 1
            if progress is not None:
                progress(done)
        self._write_manifest()
        return done

    def __len__(self) -> int:
        return sum(s.n_rows for s in self.segments)

    @property
    def n_pending(self) -> int:
        """Rows appended but not committed yet."""
        return self._pending_rows

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
            with _open_h5(self.path) as h5file:
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
                part = Ensemble(stream_path(self.path, stream), "r")
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
        with _open_h5(path) as h5file:
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
                with _open_h5(segment.path) as h5file:
                    whole = lo == segment.first_row and hi == segment.first_row + segment.n_rows
                    whole = whole and self.layout != "v1"  # format 1 may hold rows past n_configs
                    selection = None if whole else slice(lo - segment.first_row, hi - segment.first_row)
                    parts.append(_read_verified(segment.path, h5file, "configs", selection, self._shape(segment, "configs")))
        if parts:
            return np.concatenate(parts)
        with _open_h5(self.path) as h5file:
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
            with _open_h5(segment.path) as h5file:
                values = _read_verified(segment.path, h5file, key, None if self.layout != "v1" else slice(0, segment.n_rows),
                                        self._shape(segment, key))
            parts.append(values[: segment.n_rows])
        dtype = np.bool_ if name == "accepted" else (np.int64 if name in ("chain", "step") else np.float64)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def observables(self) -> dict[str, np.ndarray]:
        return {name: self.column(name) for name in self.observable_names}

    def per_chain(self, values: np.ndarray) -> list[np.ndarray]:
        """Split a per-row array into one array per chain, each ordered by step."""
        chain, step = self.column("chain"), self.column("step")
        out = []
        for c in np.unique(chain):
            rows = np.flatnonzero(chain == c)
            out.append(values[rows[np.argsort(step[rows], kind="stable")]])
        return out

    def resume_state(self) -> dict | None:
        """The sampler state after the last committed row (``None`` before the first commit, and
        for a distributed ensemble, whose streams each have theirs)."""
        if not self.segments or self.layout == "streams":
            return None
        last = self.segments[-1]
        with _open_h5(last.path) as h5file:
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
        with _open_h5(segment.path) as h5file:
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
            with _open_h5(segment.path) as h5file:
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

    # -- writing ----------------------------------------------------------------------
    def append(self, configs, chain, step, accepted, delta_h, observables: dict) -> None:
        """Queue rows for the next :meth:`commit`."""
        if self.mode != "a":
            raise EnsembleError(f"{self.path} is open for reading only")
        expected = set(self.metadata["observable_names"])
        if set(observables) != expected:
            raise EnsembleError(f"observables {sorted(observables)} do not match the file's {sorted(expected)}")
        self._pending.append({
            "configs": np.array(configs), "chain": np.array(chain, dtype=np.int64),
            "step": np.array(step, dtype=np.int64), "accepted": np.array(accepted, dtype=np.bool_),
            "delta_h": np.array(delta_h, dtype=np.float64),
            **{f"observables/{k}": np.array(v, dtype=np.float64) for k, v in observables.items()},
        })
        self._pending_rows += len(chain)

    def commit(self, resume_arrays: dict, resume_attributes: dict) -> None:
        """Write the queued rows and the sampler state after them as the next segment.

        Either the whole segment is committed or nothing is; the manifest follows."""
        if self.mode != "a":
            raise EnsembleError(f"{self.path} is open for reading only")
        index, first_row = len(self.segments), len(self)
        rows = {key: np.concatenate([block[key] for block in self._pending]) for key in self._pending[0]} \
            if self._pending else self._empty_rows()
        n_rows = len(rows["chain"])
        metadata = self.metadata

        record = None if self.provenance is None else committed(self.provenance)

        def build(h5file):
            _write_attrs(h5file, metadata, layout="segment", segment=index, first_row=first_row, n_rows=n_rows)
            _write_rows(h5file, rows, int(metadata["config_row_bytes"]))
            _write_resume(h5file, resume_arrays, resume_attributes)
            if record is not None:
                _write_provenance(h5file, record)

        path = os.path.join(segment_directory(self.path), segment_name(index))
        write_atomically(path, hdf5_image(build))
        self.segments.append(_Segment(path, index, first_row, n_rows))
        self._pending, self._pending_rows = [], 0
        if time.monotonic() - self._manifest_written >= MANIFEST_INTERVAL:
            self._write_manifest()

    def _empty_rows(self) -> dict:
        shape = tuple(self.metadata["config_shape"])
        rows = {"configs": np.zeros((0, *shape), dtype=self.metadata["config_dtype"]),
                "chain": np.zeros(0, np.int64), "step": np.zeros(0, np.int64),
                "accepted": np.zeros(0, np.bool_), "delta_h": np.zeros(0, np.float64)}
        rows.update({f"observables/{n}": np.zeros(0, np.float64) for n in self.metadata["observable_names"]})
        return rows

    def _measured_sources(self, segments) -> dict[str, list[str]]:
        """``{column: the measurement file of each of ``segments``}`` for the manifest."""
        return {column: [self._measurement_path(s, name) for s in segments]
                for name, columns in self.measurements().items() for column in columns}

    def _write_manifest(self) -> None:
        self._manifest_written = time.monotonic()
        _write_manifest_file(self.path, self.metadata, self.segments, self._measured_sources(self.segments),
                             layout="manifest", n_configs=len(self),
                             n_segments=len(self.segments), segments=[os.path.basename(s.path) for s in self.segments])

    def _manifest_lags(self) -> bool:
        with _open_h5(self.path) as h5file:
            return int(h5file.attrs.get("n_segments", -1)) != len(self.segments)

    def _remove_temporary_files(self) -> None:
        directory = segment_directory(self.path)
        for name in os.listdir(directory):
            if name.startswith(".segment-") and ".tmp" in name:  # left by a killed writer (we hold the lock)
                os.remove(os.path.join(directory, name))

    def _make_segmented(self) -> None:
        """Continue a single (compacted) file: it becomes segment 0 of a new manifest."""
        with _open_h5(self.path) as h5file:
            if "resume" not in h5file and int(h5file.attrs.get("n_rows", 0)):
                raise EnsembleError(f"{self.path} holds {int(h5file.attrs['n_rows'])} rows but no resume state, so its "
                                    f"chains cannot be continued; start a new ensemble")
        directory = segment_directory(self.path)
        os.makedirs(directory, exist_ok=True)
        first = os.path.join(directory, segment_name(0))
        if not os.path.exists(first):
            with open(self.path, "rb") as f:
                write_atomically(first, f.read())
        self.layout = "manifest"
        self.segments = self._find_segments()
        self._write_manifest()

    def close(self) -> None:
        """Bring the manifest up to date (if it lags behind the commits) and release the lock.
        A manifest that cannot be written now lags; the next writer or ``verify --repair``
        rebuilds it: nothing committed depends on it."""
        if self._lock is not None:
            try:
                if getattr(self, "layout", None) == "manifest" and hasattr(self, "segments") and self._manifest_lags():
                    self._write_manifest()
            except (StorageError, EnsembleError):
                pass
            finally:
                self._lock.release()
                self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


def _write_manifest_file(path, metadata: dict, sources: list[_Segment], measured: dict, **per_file) -> None:
    """Write the manifest ``path``: the attributes, and virtual datasets that join the rows of
    the segments ``sources`` and the ``measured`` columns (``{column: file per segment}``), by
    paths relative to the manifest, so a moved ensemble stays readable."""
    write_atomically(path, _manifest_image(path, metadata, sources, measured, **per_file))


def _manifest_image(path, metadata: dict, sources: list[_Segment], measured: dict, **per_file) -> bytes:
    """The bytes of the manifest, the same for the same segments (no timestamps), so that
    :meth:`Ensemble.verify` can check a manifest by rebuilding it, never parsing a damaged one."""
    n_rows = sum(s.n_rows for s in sources)
    names = ["configs", *ROW_DATASETS, *(f"observables/{n}" for n in metadata["observable_names"]),
             *(f"observables/{n}" for n in measured)]
    shapes = {"configs": tuple(metadata["config_shape"])}
    dtypes = {"configs": metadata["config_dtype"], "chain": "i8", "step": "i8", "accepted": "?"}
    home = os.path.dirname(os.path.abspath(path))

    def build(h5file):
        _write_attrs(h5file, metadata, **per_file)
        for name in names:
            shape, dtype = shapes.get(name, ()), np.dtype(dtypes.get(name, "f8"))
            layout = h5py.VirtualLayout(shape=(n_rows, *shape), dtype=dtype, maxshape=(None, *shape))
            files = measured.get(name.split("/")[-1], [s.path for s in sources]) if name.startswith("observables/") \
                else [s.path for s in sources]
            for s, file in zip(sources, files):
                if s.n_rows:
                    source = os.path.relpath(os.path.abspath(file), home).replace(os.sep, "/")
                    layout[s.first_row : s.first_row + s.n_rows] = h5py.VirtualSource(source, name, shape=(s.n_rows, *shape))
            with contextlib.suppress(AttributeError):  # h5py keeps the creation properties here
                layout.dcpl.set_obj_track_times(False)
            h5file.create_virtual_dataset(name, layout)

    return hdf5_image(build)


def _write_attrs(h5file, metadata: dict, **per_file) -> None:
    for key, value in metadata.items():
        h5file.attrs[key] = value
    h5file.attrs["format"] = FORMAT_NAME
    h5file.attrs["format_version"] = FORMAT_VERSION
    h5file.attrs["metadata_sha256"] = digest(metadata)
    h5file.attrs["header_sha256"] = digest(per_file)
    for key, value in per_file.items():
        h5file.attrs[key] = value


def _write_rows(h5file, rows: dict, row_bytes: int) -> None:
    h5file.create_group("observables")
    for name, values in rows.items():
        chunk = (max(1, min(len(values), _chunk_rows(row_bytes) if name == "configs" else 4096)), *values.shape[1:])
        options = {"chunks": chunk, "fletcher32": True}
        if name != "configs":  # field values barely compress (-11% for U(1) angles) at 20x the write time
            options.update(compression="gzip", compression_opts=1, shuffle=True)
        dataset = h5file.create_dataset(name, data=values, maxshape=(None, *values.shape[1:]), **options)
        dataset.attrs["sha256"] = digest(values)


def _write_provenance(h5file, record: dict) -> None:
    group = h5file.create_group("provenance")
    group.attrs["record"] = json.dumps(record, sort_keys=True)
    group.attrs["sha256"] = digest(record)


def _write_measurement(h5file, name: str, columns: dict, configs_sha256, n_rows: int) -> None:
    """A measurement file: the columns (``observables/<column>``, with SHA-256 and fletcher32)
    and attributes binding it to the configurations it was computed on."""
    attrs = {"format": MEASUREMENT_FORMAT, "format_version": 1, "measurement": name, "columns": list(columns),
             "configs_sha256": configs_sha256, "n_rows": int(n_rows), "software_version": software_version()}
    for key, value in attrs.items():
        h5file.attrs[key] = value
    h5file.attrs["sha256"] = digest(attrs)
    _write_rows(h5file, {f"observables/{column}": values for column, values in columns.items()}, 8)


def _write_resume(h5file, arrays: dict, attributes: dict) -> None:
    """The ``/resume`` group: the sampler state's arrays and scalars, with their SHA-256 (the
    digest :meth:`Ensemble.resume_state` checks)."""
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    group = h5file.create_group("resume")
    for name, value in arrays.items():
        group.create_dataset(name, data=value)
    for key, value in attributes.items():
        group.attrs[key] = value
    group.attrs["sha256"] = digest({**arrays, **attributes})


def open_ensemble(path, mode: str = "r") -> Ensemble:
    """Open an existing ensemble for reading (``'r'``) or appending (``'a'``; takes the writer lock)."""
    if mode not in ("r", "a"):
        raise InputError("mode must be 'r' or 'a'")
    if not os.path.exists(path):
        raise EnsembleError(f"{path}: no such file")
    return Ensemble(path, mode)


def ensemble_metadata(theory, observable_names, sampler: str, seed: int, parameters: dict | None = None) -> dict:
    config_dtype = np.dtype(np.complex128 if theory.storage_dtype().is_complex else np.float64)
    metadata = {
        "theory": theory.name,
        "lattice_shape": [int(v) for v in theory.lattice_shape],
        "coupling_names": list(theory.couplings),
        **{name: float(value) for name, value in theory.couplings.items()},
        "sampler": sampler,
        "seed": int(seed),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software_version": software_version(),
        "observable_names": list(observable_names),
        "config_shape": [int(v) for v in theory.config_shape],
        "config_dtype": config_dtype.str,
        "config_row_bytes": int(np.prod(theory.config_shape)) * config_dtype.itemsize,
    }
    for key, value in (parameters or {}).items():
        metadata[key] = _plain(value)
    return metadata


def create_ensemble(path, *, theory, observable_names, sampler: str, seed: int, parameters: dict | None = None) -> Ensemble:
    """Create a new, empty ensemble for ``theory`` and open it for appending; never overwrites."""
    path = os.fspath(path)
    lock = WriterLock(path).acquire()
    try:
        if os.path.exists(path):
            raise EnsembleError(f"{path} already exists; refusing to overwrite it")
        directory = segment_directory(path)
        if os.path.isdir(directory) and any(_SEGMENT.fullmatch(n) for n in os.listdir(directory)):
            raise EnsembleError(f"{directory} holds segments of another ensemble; move it away first")
        metadata = ensemble_metadata(theory, observable_names, sampler, seed, parameters)
        os.makedirs(directory, exist_ok=True)
        write_atomically(path, hdf5_image(lambda h5file: _write_attrs(
            h5file, metadata, layout="manifest", n_configs=0, n_segments=0, segments=[])))
    finally:
        lock.release()
    return Ensemble(path, "a")


def create_distributed_ensemble(path, *, theory, observable_names, sampler: str, seed: int, n_streams: int,
                                parameters: dict | None = None) -> None:
    """Create the manifest of a distributed ensemble of ``n_streams`` streams; never overwrites.

    Each stream is an ensemble of its own (:func:`stream_path`), created and written by one
    process -- an MPI rank -- with its own writer lock, segments and resume state, so ranks
    never wait for each other and a killed rank loses only its own uncommitted rows.  Opened
    for reading, ``path`` is one ensemble: the streams' rows, stream after stream."""
    path = os.fspath(path)
    lock = WriterLock(path).acquire()
    try:
        if os.path.exists(path):
            raise EnsembleError(f"{path} already exists; refusing to overwrite it")
        os.makedirs(os.path.dirname(stream_path(path, 0)), exist_ok=True)
        metadata = ensemble_metadata(theory, observable_names, sampler, seed, {**(parameters or {}), "n_streams": n_streams})
        write_atomically(path, hdf5_image(lambda h5file: _write_attrs(
            h5file, metadata, layout="streams", n_configs=0, n_segments=0)))
    finally:
        lock.release()


def refresh_distributed_manifest(path) -> int:
    """Rewrite a distributed ensemble's manifest so that plain h5py sees every committed row of
    every stream (gaugeflow's reader never needs it: it lists the streams' segments itself).
    Returns the number of rows."""
    lock = WriterLock(path).acquire()
    try:
        with open_ensemble(path) as ensemble:
            if ensemble.layout != "streams":
                raise EnsembleError(f"{path} is not a distributed ensemble")
            _write_manifest_file(path, ensemble.metadata, ensemble.segments,
                                 ensemble._measured_sources(ensemble.segments), layout="streams",
                                 n_configs=len(ensemble), n_segments=len(ensemble.segments))
            return len(ensemble)
    finally:
        lock.release()


def repair_manifest(path) -> dict:
    """Rebuild the manifest of an ensemble (segmented or distributed) from its segments, which
    are checked and never changed; also when the manifest itself is unreadable, taking the
    metadata from the first segment (or stream).  Returns :meth:`Ensemble.verify`'s report."""
    path = os.fspath(path)
    try:
        with open_ensemble(path) as ensemble:
            layout, metadata = ensemble.layout, ensemble.metadata
    except EnsembleError:
        layout, metadata = _metadata_from_parts(path)
    if layout not in ("manifest", "streams"):
        raise EnsembleError(f"{path} is a single file ({layout}), not an ensemble with a manifest; nothing to repair")
    lock = WriterLock(path).acquire()
    try:  # the metadata of the parts, with an empty list: the writer below fills it in
        write_atomically(path, hdf5_image(lambda h5file: _write_attrs(
            h5file, metadata, layout=layout, n_configs=0, n_segments=0,
            **({"segments": []} if layout == "manifest" else {}))))
    finally:
        lock.release()
    if layout == "streams":
        refresh_distributed_manifest(path)
    else:
        Ensemble(path, "a").close()
    with open_ensemble(path) as ensemble:
        return ensemble.verify()


def _metadata_from_parts(path) -> tuple[str, dict]:
    """``(layout, metadata)`` of an ensemble whose manifest is unreadable, from its first
    segment (whose metadata is the manifest's) or its first stream (the manifest's, plus the
    stream's number and what its sampler records)."""
    first_segment = os.path.join(segment_directory(path), segment_name(0))
    first_stream = stream_path(path, 0)
    source, layout = (first_segment, "manifest") if os.path.exists(first_segment) else (first_stream, "streams")
    if not os.path.exists(source):
        raise EnsembleError(f"{path}: the manifest is unreadable and there are no segments or streams to rebuild it from")
    with _open_h5(source) as h5file:
        attrs = {key: _plain(value) for key, value in h5file.attrs.items()}
    if attrs.get("format") != FORMAT_NAME or attrs.get("format_version") != FORMAT_VERSION:
        raise EnsembleError(f"{source} is not a gaugeflow ensemble segment")
    metadata = _check_digests(source, attrs)
    if layout == "streams":  # what a stream adds to the manifest's metadata: its number, its sampler's
        keep = {*_DISTRIBUTED_KEYS, *metadata.get("coupling_names", [])}
        metadata = {key: value for key, value in metadata.items() if key in keep}
    return layout, metadata


def compact_ensemble(path, out) -> dict:
    """Join all segments (or a format-1 file) into ``out``: one self-contained, checksummed
    file with the layout of a segment (``layout="single"``), readable and resumable."""
    out = os.fspath(out)
    if os.path.exists(out):
        raise EnsembleError(f"{out} already exists; refusing to overwrite it")
    with open_ensemble(path) as ensemble:
        ensemble.verify()
        metadata = dict(ensemble.metadata)
        rows = {"configs": ensemble.configs(), **{name: ensemble.column(name) for name in ROW_DATASETS}}
        rows.update({f"observables/{n}": ensemble.column(n) for n in metadata["observable_names"]})
        state = ensemble.resume_state()
    arrays = {k: v for k, v in (state or {}).items() if isinstance(v, np.ndarray)}
    attributes = {k: v for k, v in (state or {}).items() if not isinstance(v, np.ndarray)}

    def build(h5file):
        _write_attrs(h5file, metadata, layout="single", segment=0, first_row=0, n_rows=len(rows["chain"]))
        _write_rows(h5file, rows, int(metadata["config_row_bytes"]))
        if state is not None:
            _write_resume(h5file, arrays, attributes)

    lock = WriterLock(out).acquire()
    try:
        write_atomically(out, hdf5_image(build))
    finally:
        lock.release()
    return {"rows": len(rows["chain"]), "path": out}


def _v1_metadata(path, h5file, attrs: dict) -> dict:
    """Format-1 attributes plus what version 2 records about the configurations."""
    if "configs" not in h5file or "observables" not in h5file or "n_configs" not in attrs:
        raise EnsembleError(f"{path} is damaged: a format-1 ensemble without configs, observables or n_configs")
    configs = h5file["configs"]
    metadata = {k: v for k, v in attrs.items() if k not in _PER_FILE}
    _check_required(path, metadata, ("theory", "lattice_shape"))
    metadata.setdefault("coupling_names", [])
    metadata.setdefault("sampler", "hmc")
    metadata.update(observable_names=sorted(h5file["observables"].keys()), config_shape=list(configs.shape[1:]),
                    config_dtype=configs.dtype.str, config_row_bytes=int(np.prod(configs.shape[1:])) * configs.dtype.itemsize)
    return metadata


__all__ = ["Ensemble", "EnsembleError", "StorageError", "compact_ensemble", "create_distributed_ensemble",
           "create_ensemble", "open_ensemble", "refresh_distributed_manifest", "repair_manifest", "segment_directory",
           "stream_path"]
