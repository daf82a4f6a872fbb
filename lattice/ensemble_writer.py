"""Writing gaugeflow ensembles: the one writer of the current layout (segments behind a
manifest), creating, appending and committing, measuring, and rebuilding manifests.

Every file is built in memory, with the SHA-256 of its bytes in its HDF5 user block (readers
check it before libhdf5 parses the file: :func:`~gaugeflow.lattice.ensemble_format._open_h5`),
and committed by :func:`~gaugeflow.lattice.storage.write_atomically` (the rename is the commit,
of the digest and the bytes together), under the writer lock
(:class:`~gaugeflow.lattice.storage.WriterLock`);
the layout is :mod:`gaugeflow.lattice.ensemble_format`'s and is specified in
``docs/ensemble-format.md``.  Reading any layout is :mod:`gaugeflow.lattice.ensemble`'s job.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable

import numpy as np

from .ensemble import Ensemble, open_ensemble
from .ensemble_format import (_DISTRIBUTED_KEYS, _SEGMENT, FORMAT_NAME, FORMAT_VERSION, ROW_DATASETS,
                              EnsembleError, _check_digests, _file_image, _manifest_image, _open_h5, _plain,
                              _read_verified, _Segment, _write_attrs, _write_measurement, _write_provenance,
                              _write_resume, _write_rows, ensemble_metadata, segment_directory, segment_name,
                              stream_path)
from .provenance import committed
from .storage import StorageError, WriterLock, write_atomically

# seconds between manifest rewrites while commits follow each other faster (commit_every=0):
# each rewrite lists every segment, so rewriting it at every commit would cost O(segments^2)
MANIFEST_INTERVAL = 10.0


class EnsembleWriter(Ensemble):
    """An ensemble opened for appending, holding the writer lock: queue rows (:meth:`append`),
    commit them with the sampler state (:meth:`commit`), add measurements (:meth:`measure`).
    Use :func:`create_ensemble` or :func:`~gaugeflow.lattice.ensemble.open_ensemble` ``(path, "a")``."""

    def __init__(self, path):
        path = os.fspath(path)
        self._lock = WriterLock(path).acquire()
        self._manifest_written = -math.inf
        try:
            super().__init__(path)
            self.mode = "a"
            if self.layout == "v1":
                raise EnsembleError(f"{self.path} has ensemble format version 1; convert it with "
                                    f"'gaugeflow compact {self.path} --out NEW' and continue NEW")
            if self.layout == "streams":
                raise EnsembleError(f"{self.path} is a distributed ensemble: its streams are written one by one "
                                    f"({stream_path(self.path, 0)}, ...)")
            if self.layout == "single":
                self._make_segmented()
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
        self._pending_rows = 0  # kept, not summed: the production loop asks after every update
        # the record of the run writing (gaugeflow.lattice.provenance), stored with every segment
        self.provenance: dict | None = None

    def measure(self, name: str, columns_of: Callable[[np.ndarray], dict[str, np.ndarray]], progress=None,
                options: dict | None = None) -> int:
        """Store measurement ``name`` -- ``columns_of(configs)`` gives ``{column: [n] float64}``
        for a segment's configurations, made with ``options`` -- for every segment that lacks it;
        returns how many were measured now.  Each segment's measurement is one file written
        atomically, so an interrupted measurement resumes where it stopped (with the same options
        only); the manifest then shows the columns."""
        options = dict(options or {})
        taken = set(self.metadata["observable_names"]) | {c for m, cs in self.measurements().items() if m != name
                                                          for c in cs}
        done = 0
        for segment in self.segments:
            path = self._measurement_path(segment, name)
            if os.path.exists(path):
                self._read_measurement(segment, name)  # a damaged one is refused, never built upon
                stored = self.measurement_options(segment, name)
                if stored != json.loads(json.dumps(options)):
                    raise EnsembleError(f"{path} was measured with {stored}, not {options}; continue {name!r} with "
                                        f"those options (or move {os.path.dirname(path)} away to measure anew)")
                continue
            with self._open(segment.path) as h5file:
                configs = _read_verified(segment.path, h5file, "configs", shape=self._shape(segment, "configs"))
            columns = {column: np.asarray(values, dtype=np.float64) for column, values in columns_of(configs).items()}
            clash = sorted(taken & set(columns))
            if clash:
                raise EnsembleError(f"measurement {name!r} gives column(s) {', '.join(clash)}, which {self.path} "
                                    f"already has")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomically(path, _file_image(lambda h5file: _write_measurement(
                h5file, name, columns, self._configs_digest(segment), segment.n_rows, options)))
            done += 1
            if progress is not None:
                progress(done)
        self._write_manifest()
        return done

    @property
    def n_pending(self) -> int:
        """Rows appended but not committed yet."""
        return self._pending_rows

    # -- writing ----------------------------------------------------------------------
    def append(self, configs, chain, step, accepted, delta_h, observables: dict) -> None:
        """Queue rows for the next :meth:`commit`."""
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
        write_atomically(path, _file_image(build))
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

    def _write_manifest(self) -> None:
        self._manifest_written = time.monotonic()
        _write_manifest_file(self.path, self.metadata, self.segments, self._measured_sources(self.segments),
                             layout="manifest", n_configs=len(self),
                             n_segments=len(self.segments), segments=[os.path.basename(s.path) for s in self.segments])

    def _manifest_lags(self) -> bool:
        with self._open(self.path) as h5file:
            return int(h5file.attrs.get("n_segments", -1)) != len(self.segments)

    def _remove_temporary_files(self) -> None:
        directory = segment_directory(self.path)
        for name in os.listdir(directory):
            if name.startswith(".segment-") and ".tmp" in name:  # left by a killed writer (we hold the lock)
                os.remove(os.path.join(directory, name))

    def _make_segmented(self) -> None:
        """Continue a single (compacted) file: it becomes segment 0 of a new manifest."""
        with self._open(self.path) as h5file:
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


def _write_manifest_file(path, metadata: dict, sources: list[_Segment], measured: dict, **per_file) -> None:
    """Write the manifest ``path``: the attributes, and virtual datasets that join the rows of
    the segments ``sources`` and the ``measured`` columns (``{column: file per segment}``), by
    paths relative to the manifest, so a moved ensemble stays readable."""
    write_atomically(path, _manifest_image(path, metadata, sources, measured, **per_file))


def create_ensemble(path, *, theory, observable_names, sampler: str, seed: int,
                    parameters: dict | None = None) -> EnsembleWriter:
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
        write_atomically(path, _file_image(lambda h5file: _write_attrs(
            h5file, metadata, layout="manifest", n_configs=0, n_segments=0, segments=[])))
    finally:
        lock.release()
    return EnsembleWriter(path)


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
        write_atomically(path, _file_image(lambda h5file: _write_attrs(
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
        write_atomically(path, _file_image(lambda h5file: _write_attrs(
            h5file, metadata, layout=layout, n_configs=0, n_segments=0,
            **({"segments": []} if layout == "manifest" else {}))))
    finally:
        lock.release()
    if layout == "streams":
        refresh_distributed_manifest(path)
    else:
        EnsembleWriter(path).close()
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
    file with the layout of a segment (``layout="single"``), readable and resumable.  Complete
    measurements become observables of the file like those stored in production."""
    out = os.fspath(out)
    if os.path.exists(out):
        raise EnsembleError(f"{out} already exists; refusing to overwrite it")
    with open_ensemble(path) as ensemble:
        ensemble.verify()
        metadata = dict(ensemble.metadata, observable_names=[*ensemble.metadata["observable_names"],
                                                             *ensemble.measured_columns()])
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
        write_atomically(out, _file_image(build))
    finally:
        lock.release()
    return {"rows": len(rows["chain"]), "path": out}


__all__ = ["EnsembleWriter", "compact_ensemble", "create_distributed_ensemble", "create_ensemble",
           "refresh_distributed_manifest", "repair_manifest"]
