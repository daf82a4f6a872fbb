"""gaugeflow.hmc -- Markov chains: HMC on Lie groups, flow Metropolis, and their analysis.

Public API::

    HMCParameters(trajectory_length, n_steps, integrator, jitter)
    hmc_trajectory(theory, field, params, generator)   # one batched HMC update
    generate_ensemble(theory, path, n_configs=..., ...) # the `gaugeflow hmc` job
    run_chains(theory, path, sampler, n_configs=...)    # any Sampler into an ensemble
    Sampler, TrajectoryResult                           # the interface run_chains drives
    HMCSampler, FlowMetropolisSampler                   # the samplers
    analyze_ensemble(path)                              # Gamma-method means and errors
    gamma_method(chains), jackknife(f, *chains)
"""

from .analysis import analyze_ensemble
from .autocorrelation import GammaResult, gamma_method, jackknife
from .flow_metropolis import FlowMetropolisSampler
from .hmc import HMCParameters, HMCSampler, hmc_trajectory
from .run import Interrupted, RunSummary, generate_ensemble, run_chains
from .sampler import Sampler, TrajectoryResult

__all__ = [
    "FlowMetropolisSampler",
    "GammaResult",
    "HMCParameters",
    "HMCSampler",
    "Interrupted",
    "RunSummary",
    "Sampler",
    "TrajectoryResult",
    "analyze_ensemble",
    "gamma_method",
    "generate_ensemble",
    "hmc_trajectory",
    "jackknife",
    "run_chains",
]
