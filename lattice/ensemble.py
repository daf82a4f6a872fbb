"""HDF5 ensembles: a documented, versioned schema readable with plain h5py.

Layout (``format = "gaugeflow-ensemble"``, ``format_version = 1``)::

    /                         attrs: format, format_version, theory, lattice_shape (int array),
                                     one attribute per coupling (beta, m2, lam, ...), sampler,
                                     seed, created (ISO 8601), software_version, n_configs
                                     (number of complete rows), plus sampler parameters
    /configs      [N, ...]    phi4: [N, L0, ..., L_{D-1}] float64
                              u1:   [N, D, L0, ..., L_{D-1}] float64 link angles in (-pi, pi]
                              suN:  [N, D, L0, ..., L_{D-1}, N, N] complex128
    /chain        [N] int64   which Markov chain a row belongs to
    /step         [N] int64   Monte Carlo step (trajectory number after thermalisation) in its chain
    /accepted     [N] bool    whether the update that produced the row was accepted
    /delta_h      [N] float64 energy violation of that update (HMC); <exp(-dH)> = 1 is a check
    /observables/<name> [N] float64, one per observable
    /resume/                  sampler state for ``--resume``: ``field`` [chains, ...] (current
                              state of every chain), ``rng_state`` (uint8) and attributes
                              ``next_step``, ``n_steps`` (integration steps), ...

Rows are appended in chunks and the file is flushed after each append; ``n_configs`` is
updated last, so a run killed mid-write loses at most the rows being written and a reader
ignores anything past ``n_configs``.  Datasets are chunked, gzip-compressed and appendable
(``maxshape=(None, ...)``).
"""

from __future__ import annotations

import datetime
import os

import h5py
import numpy as np

from .errors import InputError

FORMAT_NAME = "gaugeflow-ensemble"
FORMAT_VERSION = 1
ROW_DATASETS = ("chain", "step", "accepted", "delta_h")


class EnsembleError(InputError):
    """A file that is not a gaugeflow ensemble, or one that does not match the request."""


def software_version() -> str:
    try:
        from importlib.metadata import version

        return version("gaugeflow")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def _chunk_rows(row_bytes: int) -> int:
    return int(max(1, min(256, (64 * 1024) // max(row_bytes, 1))))


def _open_h5(path, mode):
    try:
        return h5py.File(path, mode)
    except FileNotFoundError:
        raise EnsembleError(f"{path}: no such file") from None
    except FileExistsError:
        raise EnsembleError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as error:
        if os.path.exists(path) and not h5py.is_hdf5(path):
            raise EnsembleError(f"{path} is not an HDF5 file (corrupt or foreign)") from None
        raise EnsembleError(f"cannot open {path}: {error}") from None


class Ensemble:
    """An open ensemble file.  Use :func:`create_ensemble` or :func:`open_ensemble`."""

    def __init__(self, h5file: h5py.File):
        self.file = h5file
        attrs, name = h5file.attrs, h5file.filename
        problem = None
        if attrs.get("format") != FORMAT_NAME:
            problem = f"{name} is not a gaugeflow ensemble (format attribute missing or foreign)"
        elif int(attrs.get("format_version", -1)) != FORMAT_VERSION:
            version = attrs.get("format_version")
            problem = f"{name} has ensemble format version {version}; this gaugeflow reads version {FORMAT_VERSION}"
        else:
            missing = [d for d in ("configs", "observables", *ROW_DATASETS) if d not in h5file]
            if missing or "n_configs" not in attrs:
                problem = f"{name} is damaged: missing {', '.join(missing) or 'n_configs'}"
        if problem:
            h5file.close()
            raise EnsembleError(problem)

    # -- metadata ---------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.file.filename

    @property
    def attrs(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.file.attrs.items()}

    @property
    def theory_name(self) -> str:
        return str(self.file.attrs["theory"])

    @property
    def lattice_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.file.attrs["lattice_shape"])

    @property
    def couplings(self) -> dict:
        names = [str(n) for n in self.file.attrs.get("coupling_names", [])]
        return {n: float(self.file.attrs[n]) for n in names}

    def __len__(self) -> int:
        return int(self.file.attrs["n_configs"])

    @property
    def observable_names(self) -> list[str]:
        return sorted(self.file["observables"].keys())

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

    # -- reading ----------------------------------------------------------------------
    def configs(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = len(self) if stop is None else min(stop, len(self))
        return self.file["configs"][start:stop]

    def column(self, name: str) -> np.ndarray:
        """A per-row dataset (``chain``, ``step``, ``accepted``, ``delta_h``) or an observable."""
        n = len(self)
        if name in ROW_DATASETS:
            return self.file[name][:n]
        if name in self.file["observables"]:
            return self.file["observables"][name][:n]
        raise KeyError(f"{self.path} has no column {name!r}")

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
        if "resume" not in self.file:
            return None
        group = self.file["resume"]
        state = {name: group[name][()] for name in group}
        state.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in group.attrs.items()})
        return state

    # -- writing ----------------------------------------------------------------------
    def append(self, configs, chain, step, accepted, delta_h, observables: dict) -> None:
        """Append rows; ``n_configs`` is advanced only after every dataset holds them."""
        n_old, k = len(self), len(chain)
        columns = {"configs": configs, "chain": chain, "step": step, "accepted": accepted, "delta_h": delta_h}
        columns.update({f"observables/{name}": value for name, value in observables.items()})
        expected = set(self.file["observables"].keys())
        if set(observables) != expected:
            raise EnsembleError(f"observables {sorted(observables)} do not match the file's {sorted(expected)}")
        for name, value in columns.items():
            dataset = self.file[name]
            dataset.resize(n_old + k, axis=0)  # also drops rows of an interrupted write
            dataset[n_old:] = np.asarray(value)
        self.file.flush()
        self.file.attrs["n_configs"] = n_old + k
        self.file.flush()

    def write_resume_state(self, arrays: dict, attributes: dict) -> None:
        group = self.file.require_group("resume")
        for name, value in arrays.items():
            value = np.asarray(value)
            if name in group and (group[name].shape != value.shape or group[name].dtype != value.dtype):
                del group[name]
            if name in group:
                group[name][...] = value
            else:
                group.create_dataset(name, data=value)
        for key, value in attributes.items():
            group.attrs[key] = value
        self.file.flush()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_ensemble(path, mode: str = "r") -> Ensemble:
    """Open an existing ensemble for reading (``'r'``) or appending (``'a'``; the file must exist)."""
    if mode not in ("r", "a"):
        raise InputError("mode must be 'r' or 'a'")
    if not os.path.exists(path):
        raise EnsembleError(f"{path}: no such file")
    return Ensemble(_open_h5(path, "r+" if mode == "a" else "r"))


def create_ensemble(
    path,
    *,
    theory,
    observable_names,
    sampler: str,
    seed: int,
    parameters: dict | None = None,
) -> Ensemble:
    """Create a new, empty ensemble for ``theory``; never overwrites an existing file."""
    config_dtype = np.complex128 if theory.storage_dtype().is_complex else np.float64
    h5file = _open_h5(path, "x")
    try:
        attrs = h5file.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["theory"] = theory.name
        attrs["lattice_shape"] = np.asarray(theory.lattice_shape, dtype=np.int64)
        attrs["coupling_names"] = list(theory.couplings)
        for name, value in theory.couplings.items():
            attrs[name] = value
        attrs["sampler"] = sampler
        attrs["seed"] = int(seed)
        attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        attrs["software_version"] = software_version()
        for key, value in (parameters or {}).items():
            attrs[key] = value
        row_bytes = int(np.prod(theory.config_shape)) * np.dtype(config_dtype).itemsize
        rows = _chunk_rows(row_bytes)

        def appendable(name, shape, dtype, compress=True):
            h5file.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=(rows if shape else 1024, *shape),
                **({"compression": "gzip", "compression_opts": 1, "shuffle": True} if compress else {}),
            )

        appendable("configs", theory.config_shape, config_dtype)
        appendable("chain", (), np.int64)
        appendable("step", (), np.int64)
        appendable("accepted", (), np.bool_)
        appendable("delta_h", (), np.float64)
        h5file.create_group("observables")
        for name in observable_names:
            appendable(f"observables/{name}", (), np.float64)
        attrs["n_configs"] = 0
        h5file.flush()
    except Exception:
        h5file.close()
        os.remove(path)
        raise
    return Ensemble(h5file)
