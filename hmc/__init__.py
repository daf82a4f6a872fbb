"""gaugeflow.hmc -- Markov chains: HMC on Lie groups, flow Metropolis, and their analysis.

Public API::

    HMCParameters(trajectory_length, n_steps, integrator, jitter)
    hmc_trajectory(theory, field, params, generator)   # one batched HMC update
    generate_ensemble(theory, path, n_configs=..., ...) # the `gaugeflow hmc` job
    run_chains(theory, path, sampler, n_configs=...)    # any Sampler into an ensemble
    Sampler, TrajectoryResult                           # the interface run_chains drives
    HMCSampler, FlowMetropolisSampler                   # the samplers
    HMCTarget                                           # what HMC reads of a theory (or a pulled-back action)
    register_sampler(name, build), sampler_names()      # samplers by name (make_sampler, gaugeflow sample)
    analyze_ensemble(path)                              # Gamma-method means and errors
    gamma_method(chains), jackknife(f, *chains)
"""

from .analysis import analyze_ensemble
from .autocorrelation import GammaResult, gamma_method, jackknife
from .flow_metropolis import FlowMetropolisSampler
from .hmc import HMCParameters, HMCSampler, HMCTarget, hmc_trajectory
from .run import Interrupted, RunSummary, generate_ensemble, run_chains
from .sampler import Sampler, TrajectoryResult
from .samplers import SamplerOptions, register_sampler, sampler_names

__all__ = [
    "FlowMetropolisSampler",
    "GammaResult",
    "HMCParameters",
    "HMCSampler",
    "HMCTarget",
    "Interrupted",
    "RunSummary",
    "Sampler",
    "SamplerOptions",
    "TrajectoryResult",
    "analyze_ensemble",
    "gamma_method",
    "generate_ensemble",
    "hmc_trajectory",
    "jackknife",
    "register_sampler",
    "run_chains",
    "sampler_names",
]
