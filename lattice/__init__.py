"""gaugeflow.lattice -- lattice field theories, observables and HDF5 ensembles.

Public API::

    make_theory(name, lattice, **couplings)   # phi4 (m2, lam), u1 (beta), su2/su3/suN (beta)
    parse_lattice_shape("4x4x4x8")
    open_ensemble(path), create_ensemble(...)  # HDF5 ensembles (see lattice.ensemble)
    exact                                      # exact finite-volume results for validation
"""

from . import exact
from .ensemble import EnsembleError, create_ensemble, open_ensemble
from .geometry import parse_lattice_shape
from .phi4 import two_point_function
from .theories import THEORY_NAMES, make_theory
from .theory import GaugeTheory, Theory

__all__ = [
    "EnsembleError",
    "GaugeTheory",
    "THEORY_NAMES",
    "Theory",
    "create_ensemble",
    "exact",
    "make_theory",
    "open_ensemble",
    "parse_lattice_shape",
    "two_point_function",
]
