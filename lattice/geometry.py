"""Periodic hypercubic lattices.

Index order everywhere in gaugeflow is ``[batch, (mu,) x_0, x_1, ..., x_{D-1}, (colour, colour)]``:
a leading batch axis, then the link direction ``mu`` for gauge fields, then the D lattice
axes, then (for SU(N)) the two colour indices.  Direction ``mu`` moves along lattice axis
``x_mu``; the last axis ``x_{D-1}`` is Euclidean time (used by the Polyakov loop).
"""

from __future__ import annotations

import torch

from .errors import InputError

SUPPORTED_DIMENSIONS = (1, 2, 3, 4)


def parse_lattice_shape(text) -> tuple[int, ...]:
    """Turn ``"8x8"`` / ``"4x4x4x8"`` / ``(8, 8)`` into a tuple of extents.

    Raises ``ValueError`` naming the problem for anything that is not 1 to 4 positive
    integers separated by ``x``.
    """
    if isinstance(text, str):
        parts = text.lower().strip().split("x")
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(
                f"malformed lattice shape {text!r}: expected extents separated by 'x', e.g. 8x8 or 4x4x4x8"
            ) from None
    else:
        try:
            shape = tuple(int(p) for p in text)
        except (TypeError, ValueError):
            raise InputError(f"malformed lattice shape {text!r}: expected a sequence of integers") from None
    if len(shape) not in SUPPORTED_DIMENSIONS:
        raise InputError(f"lattice shape {text!r} has {len(shape)} dimensions; supported: 1 to 4")
    if any(extent < 1 for extent in shape):
        raise InputError(f"lattice shape {text!r} has a non-positive extent")
    return shape


def format_lattice_shape(shape) -> str:
    return "x".join(str(int(extent)) for extent in shape)


def shift(field: torch.Tensor, mu: int, steps: int, first_site_axis: int) -> torch.Tensor:
    """Periodic shift: ``shift(f, mu, +1)[x] = f[x + mu_hat]``.

    ``first_site_axis`` is the tensor axis holding ``x_0`` (1 for scalar fields
    ``[batch, x...]``, 2 for link fields ``[batch, mu, x...]``, or 1 after a direction
    has been selected from a link field).
    """
    return torch.roll(field, shifts=-steps, dims=first_site_axis + mu)


def sum_per_config(values: torch.Tensor) -> torch.Tensor:
    """Sum everything but the batch axis, in float64."""
    return values.reshape(values.shape[0], -1).to(torch.float64).sum(-1)


def check_field_shape(field: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` if ``field`` is not ``[batch, *expected]``."""
    if tuple(field.shape[1:]) != tuple(expected):
        raise InputError(
            f"{what}: expected a field of shape [batch, {', '.join(map(str, expected))}], got {list(field.shape)}"
        )
