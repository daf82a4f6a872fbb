"""Devices, precisions, memory and random-number generators (``cpu``, ``cuda``, ``xpu``)."""

from __future__ import annotations

import numbers
import os

import torch

from .errors import InputError

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


AUTO_DEVICE_ORDER = ("cuda", "xpu")  # what ``auto`` tries, in this order, before the CPU


def _available(device_type: str) -> bool:
    backend = getattr(torch, device_type, None)
    try:
        return bool(backend is not None and backend.is_available())
    except (RuntimeError, AssertionError):  # a build or driver that cannot even tell
        return False


def auto_device() -> str:
    """The device type ``auto`` stands for: ``cuda`` (NVIDIA, and AMD with a ROCm build of
    PyTorch) if a GPU is available, else ``xpu`` (Intel GPUs), else ``cpu``."""
    return next((device_type for device_type in AUTO_DEVICE_ORDER if _available(device_type)), "cpu")


def resolve_device(name: str = "cpu") -> torch.device:
    """``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'xpu'`` (Intel GPUs, e.g. Aurora) -> ``torch.device``.

    ``auto`` is :func:`auto_device`: the first GPU backend available, else the CPU.  Raises
    :class:`InputError` if the device is unknown or not available in this PyTorch build.
    """
    if str(name) == "auto":
        name = auto_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda[:i] or xpu[:i]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available to this PyTorch")
    if device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise InputError("device 'xpu' requested but no Intel GPU is available to this PyTorch")
    if device.type not in ("cpu", "cuda", "xpu"):
        raise InputError(f"unsupported device type {device.type!r}; use auto, cpu, cuda or xpu")
    if device.type != "cpu" and device.index is not None:
        count = getattr(torch, device.type).device_count()
        if device.index >= count:
            raise InputError(f"device {name!r} requested but this machine has {count} {device.type} device(s)")
    return device


def resolve_precision(name: str = "float64") -> torch.dtype:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; choose float32 or float64") from None


MAX_SEED = 2**63 - 2**30  # leaves room for the stream seeds (stream_seed) of 65536 MPI ranks


def check_seed(seed) -> int:
    """``seed`` as an int, if the generators take it (0 <= seed <= :data:`MAX_SEED`)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator living on ``device`` (random numbers are drawn where they are used)."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(int(seed))
    return generator


def stream_seed(seed: int, stream: int) -> int:
    """The seed of random stream ``stream`` (an MPI rank, a stream of chains) of a run seeded
    with ``seed``: stream 0 uses ``seed`` itself, as a single process does."""
    return int(seed) + 7919 * int(stream)


def available_memory(device) -> int | None:
    """Bytes that can still be allocated on ``device`` (``None`` if unknown)."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "xpu":
            return int(torch.xpu.mem_get_info(device)[0])
    except (RuntimeError, AttributeError):
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def check_memory(needed: int, device, what: str) -> None:
    """Refuse, with the figures, a job whose estimated memory exceeds what ``device`` has free."""
    available = available_memory(device)
    if available is not None and needed > available:
        raise InputError(f"{what} would need about {format_bytes(needed)} on {device}, but only {format_bytes(available)} "
                         "is available; use a smaller lattice, fewer chains or a smaller batch")
