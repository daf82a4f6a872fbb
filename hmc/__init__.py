"""gaugeflow.hmc -- Markov chains: HMC on Lie groups and the analysis of their output.

Public API::

    HMCParameters(trajectory_length, n_steps, integrator, jitter)
    hmc_trajectory(theory, field, params, generator)   # one batched HMC update
    generate_ensemble(theory, path, n_configs=..., ...) # the `gaugeflow hmc` job
    analyze_ensemble(path)                              # Gamma-method means and errors
    gamma_method(chains), jackknife(f, *chains)
"""

from .analysis import analyze_ensemble
from .autocorrelation import GammaResult, gamma_method, jackknife
from .hmc import HMCParameters, hmc_trajectory
from .run import Interrupted, generate_ensemble

__all__ = [
    "GammaResult",
    "HMCParameters",
    "Interrupted",
    "analyze_ensemble",
    "gamma_method",
    "generate_ensemble",
    "hmc_trajectory",
    "jackknife",
]
