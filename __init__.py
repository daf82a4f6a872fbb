"""gaugeflow -- normalizing-flow and Hybrid Monte Carlo sampling for lattice field theory.

The package has three parts, each with its own public API:

* :mod:`gaugeflow.lattice` -- the physics: theories (``make_theory``, ``register_theory``),
  field types, observables, exact results, HDF5 ensembles;
* :mod:`gaugeflow.flows` -- normalizing flows: priors, coupling layers, training;
* :mod:`gaugeflow.hmc` -- Markov chains: HMC, flow Metropolis, the chain runner, analysis;

and the ``gaugeflow`` command (:mod:`gaugeflow.cli`).  The names most users need are
available here (imported on first use, so that ``import gaugeflow`` -- and the command line --
start fast)::

    import gaugeflow

    theory = gaugeflow.make_theory("u1", "8x8", beta=2.0)
    gaugeflow.generate_ensemble(theory, "u1.h5", n_configs=1000)
    gaugeflow.analyze_ensemble("u1.h5")["plaquette"]
"""

import importlib


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gaugeflow")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


__version__ = _version()

_PUBLIC = {
    "TrainConfig": "flows",
    "architecture": "flows",
    "build_flow": "flows",
    "load_flow": "flows",
    "train_flow": "flows",
    "analyze_ensemble": "hmc",
    "generate_ensemble": "hmc",
    "make_theory": "lattice",
    "open_ensemble": "lattice",
    "register_theory": "lattice",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gaugeflow' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
