"""gaugeflow.flows -- normalizing flows for lattice field theory, built on normflows.

Public API::

    architecture(theory, n_layers=..., kernel=..., ...)  # JSON-able model description
    build_flow(arch)               # -> LatticeFlow (a normflows.NormalizingFlow), untrained = prior
    TrainConfig(...), train_flow(model, config, "model.pt")
    load_checkpoint(path), transfer_weights(model, state_dict)
    plot_training("model.metrics.csv", "curves.png")
"""

from .model import LatticeFlow, architecture, build_flow, transfer_weights
from .plotting import plot_training
from .train import TrainConfig, TrainingError, load_checkpoint, train_flow

__all__ = [
    "LatticeFlow",
    "TrainConfig",
    "TrainingError",
    "architecture",
    "build_flow",
    "load_checkpoint",
    "plot_training",
    "train_flow",
    "transfer_weights",
]
