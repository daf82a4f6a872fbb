"""gaugeflow.flows -- normalizing flows for lattice field theory, built on normflows.

Public API::

    architecture(theory, n_layers=..., kernel=..., ...)  # JSON-able, versioned model description
    build_flow(arch)               # -> LatticeFlow (a normflows.NormalizingFlow), untrained = prior
    TrainConfig(...), train_flow(model, config, "model.pt")
    load_flow("model.pt", lattice=None, device=None)     # a trained model, ready to sample
    load_checkpoint(path), transfer_weights(model, state_dict)
    effective_sample_size(log_w), acceptance_rate(log_w)  # flow quality from log p - log q
    plot_training("model.metrics.csv", "curves.png")

Extension points: a coupling layer subclasses :class:`MaskedCoupling` (or
:class:`GaugeCoupling`; single-link gauge maps in the staple sum: :class:`StapleCoupling`); an
element-wise map subclasses :class:`ElementwiseTransform` and is offered as a kernel with
:func:`register_kernel`; layers for a new field type are registered with :func:`register_layers`;
a gradient estimator of the training loss with :func:`register_estimator`.
"""

from .checkpoint import load_checkpoint, load_flow
from .coupling import GaugeCoupling, MaskedCoupling
from .diagnostics import acceptance_rate, effective_sample_size
from .estimators import register_estimator
from .model import LatticeFlow, LayerFamily, architecture, build_flow, register_kernel, register_layers, transfer_weights
from .plotting import plot_training
from .staple_coupling import StapleCoupling, SUNChairs, SUNStapleCoupling, U1Chairs, U1StapleCoupling
from .train import TrainConfig, TrainingError, train_flow
from .transforms import ElementwiseTransform

__all__ = [
    "ElementwiseTransform",
    "GaugeCoupling",
    "LatticeFlow",
    "LayerFamily",
    "MaskedCoupling",
    "StapleCoupling",
    "SUNChairs",
    "SUNStapleCoupling",
    "TrainConfig",
    "TrainingError",
    "U1Chairs",
    "U1StapleCoupling",
    "acceptance_rate",
    "architecture",
    "build_flow",
    "effective_sample_size",
    "load_checkpoint",
    "load_flow",
    "plot_training",
    "register_estimator",
    "register_kernel",
    "register_layers",
    "train_flow",
    "transfer_weights",
]
