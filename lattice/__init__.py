"""gaugeflow.lattice -- lattice field theories, observables and HDF5 ensembles.

Public API::

    make_theory(name, lattice, **couplings)   # phi4 (m2, lam), u1 (beta), su2/su3/suN (beta)
    register_theory(cls)                      # add a Theory subclass under cls.name
    theory_names()                            # what make_theory and --theory accept
    Theory, GaugeTheory, Coupling             # the interface a theory implements
    RealField, AngleField, SUNField           # field types (HMC moves, flow priors/layers)
    parse_lattice_shape("4x4x4x8")
    open_ensemble(path), create_ensemble(...)  # HDF5 ensembles (see gaugeflow.lattice.ensemble)
    exact                                      # exact finite-volume results for validation
    GaugeflowError, InputError                 # the project's error types
    wilson_flow(links, theory, t_max, eps)     # gradient flow + E(t), Q(t); scale_t0, scale_w0 (gradient_flow)
"""

from . import exact
from .ensemble import EnsembleError, create_ensemble, open_ensemble
from .errors import GaugeflowError, InputError
from .fields import AngleField, FieldType, RealField, SUNField
from .geometry import parse_lattice_shape
from .gradient_flow import (
    FlowMeasurements,
    FlowScale,
    flow_observables,
    scale_t0,
    scale_w0,
    t2_energy,
    t_derivative_t2_energy,
    wilson_flow,
    wilson_flow_steps,
)
from .phi4 import two_point_function
from .theories import make_theory, register_theory, theory_class, theory_names
from .theory import ActionPart, Coupling, GaugeTheory, Option, Theory

__all__ = [
    "ActionPart",
    "AngleField",
    "Coupling",
    "EnsembleError",
    "FieldType",
    "FlowMeasurements",
    "FlowScale",
    "GaugeTheory",
    "GaugeflowError",
    "InputError",
    "Option",
    "RealField",
    "SUNField",
    "Theory",
    "create_ensemble",
    "exact",
    "flow_observables",
    "make_theory",
    "open_ensemble",
    "parse_lattice_shape",
    "register_theory",
    "scale_t0",
    "scale_w0",
    "t2_energy",
    "t_derivative_t2_energy",
    "theory_class",
    "theory_names",
    "two_point_function",
    "wilson_flow",
    "wilson_flow_steps",
]
