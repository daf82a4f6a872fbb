"""Crash-consistent file primitives: atomic writes, digests, exclusive writers.

Everything gaugeflow commits to disk goes through :func:`write_atomically`: the bytes are
written to a temporary name in the target's directory, flushed to the device (``fsync``), and
renamed over the target, and the directory is synced.  A crash at any instruction leaves
either the old file or the new one, never a torn one; an I/O error (a full disk, ``EIO``)
removes the temporary file and raises :class:`StorageError` naming the path and the error,
with nothing already committed touched.  HDF5 files are built in memory first
(:func:`hdf5_image`), so HDF5 itself never writes to a disk that can fill up.

:func:`digest` gives a SHA-256 of arrays and plain containers, independent of how they were
stored, so data can be verified after a round trip through any format.

:class:`WriterLock` makes one process the only writer of an output, without relying on
HDF5's file locking (often off on Lustre): a lock file created exclusively, holding the
writer's host, PID, process start time and Slurm job id.  A lock whose writer is gone (same
host, no such process; or the same Slurm job, requeued) is stale and taken over.  Taking a lock also removes what dead writers of the target left
behind: temporary files of interrupted writes and lock candidates of gone processes.

Fault injection, for tests only: with ``GAUGEFLOW_FAULT=kill:K`` the process kills itself with
SIGKILL at the K-th write step (each write, fsync and rename is one step), with
``GAUGEFLOW_FAULT=enospc:K`` that step fails with ``ENOSPC``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import signal
import socket
import time

import numpy as np
import torch

from .errors import GaugeflowError

_fault = {"steps": 0}


class StorageError(GaugeflowError):
    """Writing or reading stored data failed (I/O error, full disk, corruption, a busy output)."""


def _fault_point() -> None:
    spec = os.environ.get("GAUGEFLOW_FAULT")
    if not spec:
        return
    _fault["steps"] += 1
    kind, _, step = spec.partition(":")
    if _fault["steps"] == int(step):
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def describe_os_error(error: OSError) -> str:
    name = errno.errorcode.get(error.errno, "") if error.errno else ""
    return f"{error.strerror or error}{f' ({name})' if name else ''}"


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path, data: bytes) -> None:
    """Replace ``path`` by ``data``: temporary file, fsync, rename, fsync of the directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                _fault_point()
                written = os.write(fd, view[: 1 << 24])
                view = view[written:]
            _fault_point()
            os.fsync(fd)
        finally:
            os.close(fd)
        _fault_point()
        os.replace(temporary, path)
    except BaseException as error:  # an I/O error, or an abort (second Ctrl-C) mid-write
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError):
            raise StorageError(f"cannot write {path}: {describe_os_error(error)}; nothing committed was changed") from None
        raise
    _fsync_directory(directory)


def save_figure(figure, path, dpi: int = 110) -> str:
    """Write a matplotlib figure as PNG through :func:`write_atomically` (a full disk leaves the
    previous plot, or none, and a one-line :class:`StorageError`) and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    write_atomically(path, buffer.getvalue())
    return os.fspath(path)


def hdf5_image(build, user_block: int = 0) -> bytes:
    """The bytes of an HDF5 file that ``build(h5file)`` fills, built entirely in memory.

    ``user_block`` (0, or a power of two from 512 on) reserves that many bytes, zeros, at the
    start of the file for the caller: an HDF5 *user block*, which libhdf5 skips when it reads
    the file (it looks for its superblock at 0, 512, 1024, ...)."""
    import h5py

    with h5py.File(io.BytesIO(), "w", libver=("earliest", "v110"), userblock_size=user_block) as h5file:
        build(h5file)
        h5file.flush()
        return bytes(user_block) + h5file.id.get_file_image()  # the image starts at the superblock


def _update(hasher, value) -> None:
    if isinstance(value, dict):
        hasher.update(b"{")
        for key in sorted(value, key=str):
            hasher.update(json.dumps(str(key)).encode())
            _update(hasher, value[key])
        hasher.update(b"}")
    elif isinstance(value, (list, tuple)):
        hasher.update(b"[")
        for item in value:
            _update(hasher, item)
        hasher.update(b"]")
    elif isinstance(value, torch.Tensor):
        raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        hasher.update(str(value.dtype).encode() + str(tuple(value.shape)).encode() + raw.tobytes())
    elif isinstance(value, (np.ndarray, np.generic)):
        array = np.ascontiguousarray(value)
        if array.dtype.kind in "OUS":
            _update(hasher, array.tolist())
        else:
            hasher.update(array.dtype.str.encode() + str(array.shape).encode())
            hasher.update(array.tobytes())
    elif isinstance(value, bytes):
        hasher.update(b"b" + value)
    else:
        hasher.update(json.dumps(value).encode())


def digest(value) -> str:
    """SHA-256 (hex) of arrays, tensors and plain containers (dicts in key order)."""
    hasher = hashlib.sha256()
    _update(hasher, value)
    return hasher.hexdigest()


def _process_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": _process_start_time(os.getpid()),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _is_stale(holder: dict) -> bool:
    """Whether the process that holds a lock is certainly gone."""
    me = _me()
    if holder.get("slurm_job") and holder.get("slurm_job") == me["slurm_job"]:
        return True  # our own job, requeued: the old incarnation is gone
    if holder.get("host") != me["host"]:
        return False  # cannot look at another machine's processes
    pid = int(holder.get("pid", -1))
    if pid == me["pid"]:
        return False
    start = _process_start_time(pid)
    if start is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return holder.get("start") is not None and start != holder.get("start")  # the PID was reused


class WriterLock:
    """Exclusive right to write ``target``, held in ``target + ".lock"`` (context manager)."""

    def __init__(self, target):
        self.target = os.fspath(target)
        self.path = self.target + ".lock"
        self.held = False

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "WriterLock":
        # the lock appears with its content or not at all: written aside, then hard-linked
        # into place (link fails if the name exists), so no reader ever sees an empty lock
        candidate = f"{self.path}.new{os.getpid()}"
        try:
            try:
                with open(candidate, "w") as f:
                    json.dump(_me(), f)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as error:
                raise StorageError(f"cannot create {self.path}: {describe_os_error(error)}") from None
            self._link(candidate)
        finally:
            with contextlib.suppress(OSError):
                os.remove(candidate)
        self._sweep()
        return self

    def _link(self, candidate: str) -> "WriterLock":
        for _ in range(5):
            try:
                os.link(candidate, self.path)
            except FileExistsError:
                holder = self._read()
                if holder and not _is_stale(holder):
                    raise StorageError(
                        f"{self.target} is being written by another process (host {holder.get('host')}, "
                        f"pid {holder.get('pid')}, since {holder.get('since')}); if that process is gone, "
                        f"delete {self.path}"
                    ) from None
                self._take_over_stale(holder)
                continue
            except OSError as error:
                raise StorageError(f"cannot create {self.path}: {describe_os_error(error)}") from None
            self.held = True
            return self
        raise StorageError(f"could not take the lock {self.path}; another writer keeps taking it")

    def _take_over_stale(self, holder: dict) -> None:
        # rename first (atomic, only one process succeeds), then check that what was moved is
        # the stale lock we judged and not a fresh one taken meanwhile; put a fresh one back
        moved = f"{self.path}.stale{os.getpid()}"
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        try:
            with open(moved) as f:
                content = json.load(f)
        except (OSError, ValueError):
            content = {}
        if content != holder and content:
            try:
                os.link(moved, self.path)
            except OSError:
                pass
        os.remove(moved)

    def _sweep(self) -> None:
        """Remove what dead writers of the target left: temporary files of
        :func:`write_atomically` (``.NAME.tmpPID``; only the lock holder writes the target, and
        that is us now) and lock candidates of processes that no longer exist."""
        directory, name = os.path.split(os.path.abspath(self.target))
        leftovers = glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.tmp*"))
        for suffix in (".new", ".stale"):
            for candidate in glob.glob(glob.escape(self.path + suffix) + "*"):
                pid = candidate[len(self.path + suffix):]
                if pid.isdigit() and int(pid) != os.getpid() and _is_stale({"host": _me()["host"], "pid": pid}):
                    leftovers.append(candidate)
        for leftover in leftovers:
            if not leftover.endswith(f".tmp{os.getpid()}"):
                with contextlib.suppress(OSError):
                    os.remove(leftover)

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._read().get("pid") == os.getpid():
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
