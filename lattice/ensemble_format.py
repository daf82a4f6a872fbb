"""The gaugeflow ensemble format, written once: its constants, paths, the checks every read
makes, and the builders of every kind of file (segments, manifests, measurements).

The format itself -- every attribute, dataset and guarantee -- is specified in the
documentation's "HDF5 ensemble format" page (``docs/ensemble-format.md``).  Reading lives in
:mod:`gaugeflow.lattice.ensemble` and writing in :mod:`gaugeflow.lattice.ensemble_writer`;
both go through the functions here, so the two can never disagree about the layout.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass

import h5py
import numpy as np

from .errors import InputError
from .storage import describe_os_error, digest, hdf5_image

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


# -- the file digest ------------------------------------------------------------------------
# Every file written here (segments, manifests, measurements, single files) starts with a
# 512-byte HDF5 *user block* -- bytes that libhdf5 skips and never interprets -- holding
#     b"gaugeflow-sha256 " + 64 hex digits + b"\n", then zeros,
# the hex digits being the SHA-256 of every byte of the file after that line.  _open_h5 checks
# it before libhdf5 sees a byte of the file: libhdf5 trusts the structures it parses, and one
# flipped byte in an attribute message made it crash (SIGSEGV), which no handler turns into a
# refusal.  Why there:
# - not in an HDF5 attribute: finding one means letting libhdf5 parse the file first;
# - not in a file of its own beside it: the digest is committed by the same rename as the
#   bytes it covers (no crash leaves one without the other, no reader meets a file whose
#   digest is missing or stale), and a file copied or moved alone -- a compacted single
#   file, a segment -- keeps it;
# - plain h5py and earlier gaugeflow versions read the files as before.
# A file that starts with HDF5's own signature has no user block: written before file digests
# (format 1, and format 2 until 2026-12-06), it is left to HDF5's and the datasets' checksums.
# The two starts differ in every byte, so a damaged digest line is refused, never taken for
# an old file.
_USER_BLOCK = 512
_DIGEST_TAG = b"gaugeflow-sha256 "
_DIGEST_LINE = len(_DIGEST_TAG) + 64 + 1
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _file_image(build) -> bytes:
    """The bytes of a gaugeflow file that ``build(h5file)`` fills: an HDF5 image whose user
    block holds the digest of the rest (:func:`_with_digest`)."""
    return _with_digest(hdf5_image(build, user_block=_USER_BLOCK))


def _with_digest(image: bytes) -> bytes:
    """``image`` (a file with a user block) with the digest line written over its first bytes."""
    rest = memoryview(image)[_DIGEST_LINE:]  # not copied: segments may be hundreds of MB
    return b"".join((_DIGEST_TAG, hashlib.sha256(rest).hexdigest().encode(), b"\n", rest))


def _recorded_digest(path, head: bytes) -> str | None:
    """The digest that a file's first bytes ``head`` record; ``None`` for a file written before
    digests (it starts with HDF5's signature)."""
    if head.startswith(_HDF5_SIGNATURE):
        return None
    recorded = head[len(_DIGEST_TAG):-1]
    if len(head) != _DIGEST_LINE or not head.startswith(_DIGEST_TAG) or not head.endswith(b"\n") \
            or re.fullmatch(rb"[0-9a-f]{64}", recorded) is None:
        raise EnsembleError(f"{path} is not an HDF5 file (corrupt or foreign): it starts with neither HDF5's "
                            f"signature nor a gaugeflow file digest")
    return recorded.decode()


def _check_file_digest(path, stream) -> None:
    """Check the bytes of ``stream`` (``path``, read from its start) against the digest in
    their user block, reading 1 MiB at a time; a file without one passes (see above)."""
    recorded = _recorded_digest(path, stream.read(_DIGEST_LINE))
    if recorded is None:
        return
    hasher = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        hasher.update(chunk)
    if hasher.hexdigest() != recorded:
        raise EnsembleError(f"{path}: file: checksum mismatch (its bytes do not match the SHA-256 in its user block; "
                            f"damaged, so not read)")


def looks_like_hdf5(path) -> bool:
    """Whether ``path`` starts like an HDF5 file gaugeflow reads (HDF5's signature, or a file
    digest), told without libhdf5, which must not parse a file before its digest is checked."""
    with open(path, "rb") as f:
        head = f.read(len(_DIGEST_TAG))
    return head.startswith(_HDF5_SIGNATURE) or head == _DIGEST_TAG


def _check_image(path, image: bytes) -> None:
    """:func:`_check_file_digest` for a file already read into memory."""
    _check_file_digest(path, io.BytesIO(image))


def _identity(raw) -> tuple:
    """What tells an open file from another, or from itself changed: device, inode, size, times."""
    stat = os.fstat(raw.fileno())
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


@contextlib.contextmanager
def _open_h5(path, checked: dict | None = None):
    """Read ``path`` with h5py once its file digest checks out; whatever a damaged file makes
    h5py raise becomes one :class:`EnsembleError`.

    libhdf5 reads through the very file object whose bytes were checked, so a file replaced
    meanwhile (a manifest is rewritten by a rename) is never parsed unchecked.  ``checked``, a
    dict its owner keeps (an :class:`~gaugeflow.lattice.ensemble.Ensemble` has one), remembers
    the files checked, so that reading ten columns of a segment hashes it once; a file that has
    changed since (another inode, size or time) is checked again."""
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise EnsembleError(f"{path}: no such file") from None
    except OSError as error:
        raise EnsembleError(f"{path} cannot be read: {describe_os_error(error)}") from None
    with raw:
        identity, key = _identity(raw), os.fspath(path)
        if checked is None or checked.get(key) != identity:
            _check_file_digest(path, raw)
            raw.seek(0)
            if checked is not None:
                checked[key] = identity
        try:
            h5file = h5py.File(raw, "r")
        except (OSError, RuntimeError, ValueError) as error:
            raise EnsembleError(f"{path} cannot be read (corrupt HDF5 structure: {error})") from None
        try:
            with h5file:
                yield h5file
        except EnsembleError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, IndexError, MemoryError, TypeError, OverflowError,
                SystemError) as error:  # whatever h5py raises on damaged bytes (TypeError: a flipped string encoding)
            raise EnsembleError(f"{path} cannot be read (corrupt HDF5 structure: {type(error).__name__}: "
                                f"{error})") from None


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

    return _file_image(build)


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


def _write_measurement(h5file, name: str, columns: dict, configs_sha256, n_rows: int, options: dict) -> None:
    """A measurement file: the columns (``observables/<column>``, with SHA-256 and fletcher32)
    and attributes binding it to the configurations it was computed on, with the options it was
    made with (JSON)."""
    attrs = {"format": MEASUREMENT_FORMAT, "format_version": 1, "measurement": name, "columns": list(columns),
             "configs_sha256": configs_sha256, "n_rows": int(n_rows), "software_version": software_version(),
             "options": json.dumps(options, sort_keys=True)}
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

