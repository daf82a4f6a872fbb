"""gaugeflow -- normalizing-flow and Hybrid Monte Carlo sampling for lattice field theory.

The package has three parts, each with its own public API:

* :mod:`gaugeflow.lattice` -- the physics: theories (``make_theory``, ``register_theory``),
  field types, observables, exact results, HDF5 ensembles;
* :mod:`gaugeflow.flows` -- normalizing flows: priors, coupling layers, training;
* :mod:`gaugeflow.hmc` -- Markov chains: HMC, flow Metropolis, the chain runner, analysis;

and the ``gaugeflow`` command (:mod:`gaugeflow.cli`).  The names most users need are
re-exported here::

    import gaugeflow

    theory = gaugeflow.make_theory("u1", "8x8", beta=2.0)
    gaugeflow.generate_ensemble(theory, "u1.h5", n_configs=1000)
    gaugeflow.analyze_ensemble("u1.h5")["plaquette"]
"""

from .lattice.ensemble import software_version as _software_version

__version__ = _software_version()

from .flows import TrainConfig, architecture, build_flow, load_flow, train_flow  # noqa: E402
from .hmc import analyze_ensemble, generate_ensemble  # noqa: E402
from .lattice import make_theory, open_ensemble, register_theory  # noqa: E402

__all__ = [
    "TrainConfig",
    "__version__",
    "analyze_ensemble",
    "architecture",
    "build_flow",
    "generate_ensemble",
    "load_flow",
    "make_theory",
    "open_ensemble",
    "register_theory",
    "train_flow",
]
