"""Generate an ensemble of Markov chains into an HDF5 file, resumably.

This is the logic behind ``gaugeflow hmc`` and ``gaugeflow sample``: thermalise ``n_chains``
independent chains (for HMC, tuning the number of integration steps), then run production
updates (HMC trajectories, or flow independence-Metropolis steps), appending
every ``save_every``-th configuration of every chain to the ensemble together with its
observables, and the complete sampler state (current fields, RNG state, integration steps)
after every append.  Rerunning with ``resume=True`` continues from that state, so an
interrupted run followed by a resumed one stores exactly the rows an uninterrupted run
would have stored.

SIGTERM and SIGUSR1 (what Slurm sends before a time limit or preemption) stop the run
after the trajectory in progress has been stored; :class:`Interrupted` is then raised.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from lattice.backend import make_generator, resolve_device
from lattice.ensemble import EnsembleError, create_ensemble, open_ensemble
from lattice.jobcontrol import EXIT_INTERRUPTED, Interrupted, stop_on_signals  # noqa: F401 (re-exported)

from .hmc import HMCParameters, acceptance_probability, hmc_trajectory, retuned_steps


@dataclass
class RunSummary:
    path: str
    n_configs: int
    n_new: int
    acceptance: float
    postfix: dict  # sampler details, e.g. {"steps": 7} for HMC
    seconds: float


def _rows_from(theory, field, step, result):
    n = field.shape[0]
    observables = {k: v.detach().cpu().numpy() for k, v in theory.observables(field).items()}
    configs = field.detach().to(theory.storage_dtype(torch.float64)).cpu().numpy()
    return dict(
        configs=configs,
        chain=np.arange(n, dtype=np.int64),
        step=np.full(n, step, dtype=np.int64),
        accepted=result.accepted.cpu().numpy(),
        delta_h=result.delta_h.cpu().numpy(),
        observables=observables,
    )


def _check_resumable(ensemble, theory, run_parameters):
    ensemble.check_compatible(theory.name, theory.lattice_shape, theory.couplings)
    for key, value in run_parameters.items():
        stored = ensemble.attrs.get(key)
        if stored is not None and stored != value and not (
            isinstance(value, float) and np.isclose(float(stored), value)
        ):
            raise EnsembleError(f"{ensemble.path} was generated with {key}={stored}; cannot resume with {key}={value}")


class HMCSampler:
    """HMC as the Markov-chain update of :func:`run_chains` (state: the tuned step count)."""

    name = "hmc"

    def __init__(self, theory, params: HMCParameters | None = None, tune: bool = True, target_acceptance: float = 0.8):
        if not 0 < target_acceptance < 1:
            raise ValueError("target acceptance must lie strictly between 0 and 1")
        self.theory, self.params = theory, params or HMCParameters()
        self.tune, self.target_acceptance = tune, target_acceptance

    def run_parameters(self) -> dict:
        return {
            "integrator": self.params.integrator,
            "trajectory_length": float(self.params.trajectory_length),
            "step_size_jitter": float(self.params.jitter),
        }

    def update(self, field, generator):
        return hmc_trajectory(self.theory, field, self.params, generator)

    def thermalise(self, field, n_therm, generator, progress=False, received=None):
        field, self.params = thermalise(
            self.theory, field, self.params, n_therm, generator, self.tune, self.target_acceptance, progress, received
        )
        return field

    def resume_attributes(self) -> dict:
        return {"n_steps": self.params.n_steps}

    def restore(self, state: dict) -> None:
        self.params = replace(self.params, n_steps=int(state["n_steps"]))

    def postfix(self) -> dict:
        return {"steps": self.params.n_steps}


def generate_ensemble(
    theory,
    path,
    *,
    params: HMCParameters | None = None,
    tune: bool = True,
    target_acceptance: float = 0.8,
    **options,
) -> RunSummary:
    """Run HMC and store ``n_configs`` configurations in total (over all chains) in ``path``;
    ``options`` are those of :func:`run_chains`."""
    return run_chains(theory, path, HMCSampler(theory, params, tune, target_acceptance), **options)


def run_chains(
    theory,
    path,
    sampler,
    *,
    n_configs: int,
    n_therm: int = 200,
    n_chains: int = 4,
    seed: int = 1,
    save_every: int = 1,
    start: str = "hot",
    resume: bool = False,
    device: str = "cpu",
    precision: torch.dtype = torch.float64,
    progress: bool = True,
) -> RunSummary:
    """Run ``n_chains`` Markov chains with ``sampler`` (:class:`HMCSampler`,
    :class:`hmc.flow_metropolis.FlowMetropolisSampler`) and store ``n_configs`` configurations
    in total in ``path``.

    ``resume=True`` tops up an existing file to ``n_configs`` (or starts a new file if
    ``path`` does not exist yet); without it an existing ``path`` is an error and is never
    touched.
    """
    if n_chains < 1:
        raise ValueError("need at least one chain")
    if n_configs < 0 or n_configs % n_chains:
        raise ValueError(f"--n-configs ({n_configs}) must be a non-negative multiple of --chains ({n_chains})")
    if save_every < 1:
        raise ValueError("--save-every must be at least 1")
    if n_therm < 0:
        raise ValueError("--therm must be non-negative")
    if start not in ("hot", "cold"):
        raise ValueError("start must be 'hot' or 'cold'")
    device = resolve_device(device)
    run_parameters = {
        "n_chains": n_chains,
        "seed": seed,
        "save_every": save_every,
        "n_therm": n_therm,
        "start": start,
        **sampler.run_parameters(),
    }
    began = time.perf_counter()
    generator = make_generator(seed, device)

    if resume and os.path.exists(path):
        ensemble = open_ensemble(path, "a")
        stored_sampler = ensemble.attrs.get("sampler")
        if stored_sampler != sampler.name:
            ensemble.close()
            raise EnsembleError(f"{path} was generated by sampler {stored_sampler!r}, not {sampler.name!r}")
    else:
        if os.path.exists(path):
            raise EnsembleError(f"{path} already exists; pass --resume to continue it, or choose another output")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise EnsembleError(f"cannot create {path}: directory {directory} does not exist")
        ensemble = create_ensemble(
            path,
            theory=theory,
            observable_names=theory.observable_names(),
            sampler=sampler.name,
            seed=seed,
            parameters=run_parameters,
        )

    with ensemble, stop_on_signals() as received:
        _check_resumable(ensemble, theory, run_parameters)
        state = ensemble.resume_state()
        accept_sum, accept_count = 0.0, 0
        if state is not None:
            field = torch.as_tensor(state["field"]).to(device=device, dtype=theory.storage_dtype(precision))
            generator.set_state(torch.as_tensor(state["rng_state"], dtype=torch.uint8))
            sampler.restore(state)
            step = int(state["next_trajectory"])
        else:
            if start == "hot":
                field = theory.hot_start(n_chains, generator=generator, device=device, precision=precision)
            else:
                field = theory.cold_start(n_chains, device=device, precision=precision)
            field = sampler.thermalise(field, n_therm, generator, progress, received)
            step = 0
            if received["signal"]:
                raise Interrupted(f"stopped by {received['signal']} during thermalisation; rerun with --resume")

        n_start = len(ensemble)
        remaining_rows = max(0, n_configs - n_start) // n_chains
        bar = tqdm(total=remaining_rows * n_chains, disable=None if progress else True, desc=sampler.name, unit="cfg", leave=False)
        try:
            while len(ensemble) < n_configs:
                result = sampler.update(field, generator)
                field = result.field
                step += 1
                accept_sum += result.accepted.double().mean().item()
                accept_count += 1
                if step % save_every == 0:
                    ensemble.append(**_rows_from(theory, field, step, result))
                    bar.update(n_chains)
                    bar.set_postfix(acc=f"{accept_sum / accept_count:.2f}", **sampler.postfix())
                ensemble.write_resume_state(
                    {
                        "field": field.detach().to(theory.storage_dtype(torch.float64)).cpu().numpy(),
                        "rng_state": generator.get_state().numpy(),
                    },
                    {"next_trajectory": step, **sampler.resume_attributes()},
                )
                if received["signal"] and len(ensemble) < n_configs:
                    raise Interrupted(
                        f"stopped by {received['signal']} after {len(ensemble)} of {n_configs} configurations; "
                        "rerun with --resume to continue"
                    )
        finally:
            bar.close()
        return RunSummary(
            path=str(path),
            n_configs=len(ensemble),
            n_new=len(ensemble) - n_start,
            acceptance=accept_sum / accept_count if accept_count else float("nan"),
            postfix=sampler.postfix(),
            seconds=time.perf_counter() - began,
        )


def thermalise(theory, field, params, n_therm, generator, tune, target, progress=False, received=None):
    """Run ``n_therm`` trajectories (not stored), retuning the step count every window."""
    window = max(5, min(20, n_therm // 10))
    probabilities = []
    for t in tqdm(range(n_therm), disable=None if progress else True, desc="thermalise", unit="traj", leave=False):
        result = hmc_trajectory(theory, field, params, generator)
        field = result.field
        probabilities.append(acceptance_probability(result.delta_h).mean().item())
        if tune and len(probabilities) == window:
            steps = retuned_steps(params, float(np.mean(probabilities)), target)
            params = replace(params, n_steps=steps)
            probabilities = []
        if received is not None and received["signal"]:
            break
    return field, params
