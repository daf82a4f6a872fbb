"""Devices, precisions and random-number generators (``cpu``, ``cuda``, ``xpu``)."""

from __future__ import annotations

import torch

from .errors import InputError

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str = "cpu") -> torch.device:
    """``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'xpu'`` (Intel GPUs, e.g. Aurora) -> ``torch.device``.

    Raises ``ValueError`` if the backend is not available in this PyTorch build.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu, cuda[:i] or xpu[:i]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available to this PyTorch")
    if device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise InputError("device 'xpu' requested but no Intel GPU is available to this PyTorch")
    if device.type not in ("cpu", "cuda", "xpu"):
        raise InputError(f"unsupported device type {device.type!r}; use cpu, cuda or xpu")
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


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator living on ``device`` (random numbers are drawn where they are used)."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(int(seed))
    return generator
