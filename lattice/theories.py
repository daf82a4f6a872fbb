"""Theory registry: build a theory from its name, lattice and couplings.

Names: ``phi4`` (couplings ``m2``, ``lam``), ``u1`` (``beta``), ``su2``, ``su3`` or any
``suN`` (``beta``).
"""

from __future__ import annotations

import re

from .geometry import parse_lattice_shape
from .phi4 import Phi4
from .sun import SUN
from .theory import Theory
from .u1 import U1

THEORY_NAMES = ("phi4", "u1", "su2", "su3")


def coupling_names(name: str) -> tuple[str, ...]:
    """The couplings a theory takes, e.g. ``('m2', 'lam')`` for phi4."""
    return _theory_class(name)[0].coupling_names


def _theory_class(name: str):
    key = str(name).lower()
    if key == "phi4":
        return Phi4, {}
    if key == "u1":
        return U1, {}
    match = re.fullmatch(r"su(\d+)", key)
    if match and int(match.group(1)) >= 2:
        return SUN, {"n_colors": int(match.group(1))}
    raise ValueError(f"unknown theory {name!r}; choose one of {', '.join(THEORY_NAMES)} (or suN for N >= 2)")


def make_theory(name: str, lattice_shape, **couplings) -> Theory:
    """``make_theory('u1', '8x8', beta=2.0)``; couplings given as ``None`` count as missing."""
    cls, extra = _theory_class(name)
    shape = parse_lattice_shape(lattice_shape)
    needed = {c: couplings.get(c) for c in cls.coupling_names}
    unknown = {k: v for k, v in couplings.items() if k not in cls.coupling_names and v is not None}
    if unknown:
        raise ValueError(f"theory {name!r} takes no coupling(s) {', '.join(sorted(unknown))}")
    missing = [c for c, v in needed.items() if v is None]
    if missing:
        raise ValueError(f"theory {name!r} needs coupling(s) {', '.join('--' + m.replace('_', '-') for m in missing)}")
    return cls(shape, **needed, **extra)
