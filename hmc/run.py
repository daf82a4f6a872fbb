"""Generate an ensemble of Markov chains into an HDF5 file, resumably.

This is the logic behind ``gaugeflow hmc`` and ``gaugeflow sample``, for any
:class:`gaugeflow.hmc.sampler.Sampler`: thermalise ``n_chains`` independent chains (the
sampler may tune itself there), then run production updates, queueing every
``save_every``-th configuration of every chain with its observables, and commit the queued
rows together with the complete sampler state after them (current fields, RNG state, what the
sampler adapted) as one segment of the ensemble (:mod:`gaugeflow.lattice.ensemble`) every
``commit_every`` seconds, at the end and on a stop signal.  Rerunning with ``resume=True``
continues from the last committed state, so an interrupted run -- however it was
interrupted, SIGKILL included -- followed by a resumed one stores exactly the rows an
uninterrupted run would have stored; at most ``commit_every`` seconds of work are redone.

SIGTERM and SIGUSR1 (what Slurm sends before a time limit or preemption) stop the run
after the update in progress has been committed; :class:`Interrupted` is then raised.

:func:`run_chains` reads as its steps: check the options, open or create the file, restore
or thermalise the chains, then the production loop of update, append and save.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from gaugeflow.lattice.backend import check_memory, check_seed, make_generator, resolve_device
from gaugeflow.lattice.ensemble import EnsembleError, create_ensemble, open_ensemble
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.observables import compute as compute_observables
from gaugeflow.lattice.observables import production_names
from gaugeflow.lattice.provenance import run_provenance
from gaugeflow.lattice.jobcontrol import EXIT_INTERRUPTED, Interrupted, stop_on_signals  # noqa: F401 (re-exported)

from .hmc import HMCParameters, HMCSampler, thermalise  # noqa: F401 (HMCSampler, thermalise re-exported)
from .sampler import Sampler
from .samplers import SAMPLER_ONLY_OPTIONS, SamplerOptions, sampler_kind

# a field of every chain, its momenta, force, proposal and the action's temporaries
WORKING_COPIES = 10


@dataclass
class RunSummary:
    path: str
    n_configs: int
    n_new: int
    acceptance: float
    postfix: dict  # sampler details, e.g. {"steps": 7} for HMC
    seconds: float


def make_sampler(theory, sampler: str = "hmc", *, model=None, hmc_per_step: int | None = None,
                 params: HMCParameters | None = None, tune: bool = True, target_acceptance: float = 0.8,
                 source: str = "", **sampler_options) -> Sampler:
    """The sampler registered as ``sampler`` (:mod:`gaugeflow.hmc.samplers`) for ``theory``;
    samplers that need a flow take ``model``, whose theory must be ``theory`` (the annealed
    sampler takes one optionally, as its start: same theory and lattice, another ``beta``);
    ``hmc_per_step=None`` lets the composite chain choose (fallback policy); ``sampler_options``
    are further fields of :class:`gaugeflow.hmc.samplers.SamplerOptions` (``anneal_steps``,
    ``anneal_particles``, ``overrelaxation``)."""
    kind = sampler_kind(sampler)
    if model is not None and not kind.takes_model:
        raise InputError(f"sampler {sampler!r} takes no flow model")
    if kind.needs_model:
        if model is None:
            raise InputError(f"sampler {sampler!r} needs a trained flow model")
        flow_theory = model.theory
        if (flow_theory.name, flow_theory.lattice_shape, flow_theory.couplings) != (theory.name, theory.lattice_shape,
                                                                                    theory.couplings):
            raise InputError(f"the model is for {flow_theory!r}, not {theory!r}; load it with that lattice (load_flow)")
    return kind.build(theory, model, SamplerOptions(params, tune, target_acceptance, hmc_per_step, source,
                                                    **sampler_options))


def generate_ensemble(theory, path, *, sampler: str = "hmc", model=None, hmc_per_step: int | None = None,
                      params: HMCParameters | None = None, tune: bool = True, target_acceptance: float = 0.8,
                      **options) -> RunSummary:
    """Store ``n_configs`` configurations in total (over all chains) of ``theory`` in ``path``.

    ``sampler``: ``"hmc"``, ``"heatbath"`` or ``"annealed"`` (``anneal_steps`` heat-bath sweeps
    a proposal, of ``anneal_particles`` resampled paths; the last two for pure Wilson gauge theories); or, with a trained flow ``model``,
    ``"flow"`` (independence Metropolis), ``"composite"`` (flow step + ``hmc_per_step`` HMC trajectories; ``None``: the
    fallback policy chooses) or ``"flow-hmc"`` (HMC in the flow's latent variables).  ``params``,
    ``tune`` and ``target_acceptance`` configure the HMC parts; ``anneal_steps``,
    ``anneal_particles`` and ``overrelaxation`` (:class:`gaugeflow.hmc.samplers.SamplerOptions`) the heat-bath ones; the other
    ``options`` are those of :func:`run_chains`."""
    sampler_options = {name: options.pop(name) for name in SAMPLER_ONLY_OPTIONS if name in options}
    chosen = make_sampler(theory, sampler, model=model, hmc_per_step=hmc_per_step, params=params, tune=tune,
                          target_acceptance=target_acceptance, source=options.pop("source", ""), **sampler_options)
    return run_chains(theory, path, chosen, **options)


def _check_options(n_configs, n_therm, n_chains, save_every, start) -> None:
    if n_chains < 1:
        raise InputError(f"n_chains must be at least 1, got {n_chains}")
    if n_configs < 0 or n_configs % n_chains:
        raise InputError(f"n_configs ({n_configs}) must be a non-negative multiple of n_chains ({n_chains})")
    if save_every < 1:
        raise InputError(f"save_every must be at least 1, got {save_every}")
    if n_therm < 0:
        raise InputError(f"n_therm must be non-negative, got {n_therm}")
    if not isinstance(start, str) or (start not in ("hot", "cold") and not os.path.isfile(start)):
        problem = "not a file" if isinstance(start, str) and os.path.exists(start) else "no such file"
        raise InputError(f"start must be 'hot', 'cold' or the path of an ILDG file (str), got {start!r}"
                         f"{f': {problem}' if isinstance(start, str) else ''}")


def _check_new_output(path) -> None:
    if os.path.exists(path):
        raise EnsembleError(f"{path} already exists; pass resume=True to continue it, or choose another output")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise EnsembleError(f"cannot create {path}: directory {directory} does not exist")


def _open_for_resume(path, sampler: Sampler):
    ensemble = open_ensemble(path, "a")
    stored_sampler = ensemble.attrs.get("sampler")
    if stored_sampler != sampler.name:
        ensemble.close()
        raise EnsembleError(f"{path} was generated by sampler {stored_sampler!r}, not {sampler.name!r}")
    return ensemble


def _check_resumable(ensemble, theory, run_parameters):
    ensemble.check_compatible(theory.name, theory.lattice_shape, theory.couplings)
    for key, value in run_parameters.items():
        stored = ensemble.attrs.get(key)
        if stored is not None and stored != value and not (
            isinstance(value, float) and np.isclose(float(stored), value)
        ):
            raise EnsembleError(f"{ensemble.path} was generated with {key}={stored}; cannot resume with {key}={value}")


def _restore(state: dict, theory, generator, device, precision):
    """``(field, step)`` of stored chains; the generator continues where it was."""
    field = torch.as_tensor(state["field"]).to(device=device, dtype=theory.storage_dtype(precision))
    generator.set_state(torch.as_tensor(state["rng_state"], dtype=torch.uint8))
    return field, int(state["next_trajectory"])


def _thermalised(theory, sampler: Sampler, generator, *, n_chains, n_therm, start, device, precision, progress,
                 received):
    """New chains, after ``n_therm`` unstored updates (in which the sampler may tune itself)."""
    if start == "hot":
        field = theory.hot_start(n_chains, generator=generator, device=device, precision=precision)
    elif start == "cold":
        field = theory.cold_start(n_chains, device=device, precision=precision)
    else:  # an ILDG file (gaugeflow export, or another lattice code): every chain starts from it
        from gaugeflow.lattice.ildg import start_configuration

        field = start_configuration(theory, start, n_chains, device=device, precision=precision)
    _refuse_nonfinite(theory, theory.action(field), "the action of the start configuration")
    field = sampler.thermalise(field, n_therm, generator, progress, received)
    if received["signal"]:
        raise Interrupted(f"stopped by {received['signal']} during thermalisation, which stores nothing; rerun with "
                          f"resume=True and time for all n_therm ({n_therm}) updates", saved=False)
    return field


def _refuse_nonfinite(theory, values: torch.Tensor, what: str) -> None:
    """A non-finite action, a NaN energy violation or an infinite one in every chain means
    couplings outside what float64 can represent, not bad luck: refuse at once, naming the
    couplings, rather than store chains in which every update is rejected."""
    bad = ~torch.isfinite(values)
    if what.startswith("the energy") and not bad.all():  # one infinite dH can be a wild trajectory
        bad = torch.isnan(values)
    if bool(bad.any()):
        couplings = ", ".join(f"{name}={value:g}" for name, value in theory.couplings.items())
        raise InputError(f"{what} is {values[bad][0].item()} in {int(bad.sum())} of {values.numel()} chains of "
                         f"{theory.name} at {couplings}: a coupling is out of range (float64 overflows)")


def _rows(theory, step, result, first_chain, columns) -> dict:
    field = result.field if result.configs is None else result.configs  # what is stored: the physical fields
    n = field.shape[0]
    return dict(
        configs=field.detach().to(theory.storage_dtype(torch.float64)).cpu().numpy(),
        chain=np.arange(first_chain, first_chain + n, dtype=np.int64),
        step=np.full(n, step, dtype=np.int64),
        accepted=result.accepted.cpu().numpy(),
        delta_h=result.delta_h.cpu().numpy(),
        observables={k: v.detach().cpu().numpy() for k, v in compute_observables(theory, field, columns).items()},
    )


def _commit(ensemble, theory, sampler: Sampler, field, generator, step) -> None:
    """Commit the queued rows with the state that continues the chains after them."""
    ensemble.commit(
        {
            "field": field.detach().to(theory.storage_dtype(torch.float64)).cpu().numpy(),
            "rng_state": generator.get_state().numpy(),
        },
        {"next_trajectory": step, **sampler.resume_attributes()},
    )


def run_chains(
    theory,
    path,
    sampler: Sampler,
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
    commit_every: float = 30.0,
    stream: int | None = None,
    n_streams: int = 1,
    observables=None,
    created: str | None = None,
) -> RunSummary:
    """Run ``n_chains`` Markov chains with ``sampler`` and store ``n_configs`` configurations in
    total in ``path``, committing at least every ``commit_every`` seconds (0: after every update).

    ``resume=True`` tops up an existing file to ``n_configs`` (or starts a new file if
    ``path`` does not exist yet); without it an existing ``path`` is an error and is never
    touched.  ``stream`` of ``n_streams`` (a part of a distributed ensemble, see
    :mod:`gaugeflow.hmc.distributed`) numbers the chains from ``stream * n_chains``.
    ``observables``: what a new file stores with every configuration (names of the theory's
    standard columns and of registered observables, :mod:`gaugeflow.lattice.observables`;
    default: the theory's standard ones); a resumed file keeps its own.  ``created``: the
    creation time a new file records instead of now (a stream records its distributed ensemble's).
    """
    _check_options(n_configs, n_therm, n_chains, save_every, start)
    check_seed(seed)
    if not commit_every >= 0:
        raise InputError(f"commit_every must be a non-negative number of seconds, got {commit_every}")
    device = resolve_device(device)
    field_bytes = math.prod(theory.config_shape) * torch.empty((), dtype=theory.storage_dtype(precision)).element_size()
    check_memory(WORKING_COPIES * n_chains * field_bytes, device,
                 f"{n_chains} chains of {theory.name} on {'x'.join(map(str, theory.lattice_shape))}")
    fixed = {"n_chains": n_chains, "seed": seed, "save_every": save_every, "n_therm": n_therm, "start": start}
    if stream is not None:
        fixed.update(stream=stream, n_streams=n_streams)
    began = time.perf_counter()
    generator = make_generator(seed, device)
    record = run_provenance(device)
    with stop_on_signals() as received, contextlib.ExitStack() as cleanup:
        ensemble, state = None, None
        if resume and os.path.exists(path):
            ensemble = cleanup.enter_context(_open_for_resume(path, sampler))
            state = ensemble.resume_state()
            if state is None and len(ensemble):  # thermalising anew would store every (chain, step) twice
                raise EnsembleError(f"{path} holds {len(ensemble)} rows but no resume state, so its chains cannot be "
                                    f"continued; start a new ensemble")
            # what an earlier run chose is kept, also if it died before its first commit
            sampler.restore(dict(ensemble.metadata, **(state or {})))
        else:
            _check_new_output(path)
        if state is not None:
            field, step = _restore(state, theory, generator, device, precision)
        else:
            field, step = _thermalised(theory, sampler, generator, n_chains=n_chains, n_therm=n_therm, start=start,
                                       device=device, precision=precision, progress=progress, received=received), 0
            if ensemble is None:  # created now, so that what thermalisation chose is in its attributes
                ensemble = cleanup.enter_context(create_ensemble(
                    path, theory=theory, observable_names=production_names(theory, observables), sampler=sampler.name,
                    seed=seed, parameters={**fixed, **sampler.run_parameters(),
                                           **({"created": created} if created else {})}))
            ensemble.provenance = record
            _commit(ensemble, theory, sampler, field, generator, step)  # a crash never thermalises again
        _check_resumable(ensemble, theory, {**fixed, **sampler.run_parameters()})
        ensemble.provenance = record
        stored = list(ensemble.metadata["observable_names"])
        if observables is not None and production_names(theory, observables) != stored:
            raise EnsembleError(f"{path} stores the observables {', '.join(stored)} with every configuration; resume "
                                f"it with those (or without observables) and add others with 'gaugeflow measure'")
        return _production(ensemble, theory, sampler, field, step, generator, n_configs=n_configs, n_chains=n_chains,
                           first_chain=(stream or 0) * n_chains, save_every=save_every, commit_every=commit_every,
                           progress=progress, received=received, began=began)


def _production(ensemble, theory, sampler: Sampler, field, step, generator, *, n_configs, n_chains, first_chain,
                save_every, commit_every, progress, received, began) -> RunSummary:
    """Update, queue every ``save_every``-th row, commit; until ``n_configs`` rows or a signal."""
    n_start, accepted = len(ensemble), []
    bar = tqdm(total=max(0, n_configs - n_start), disable=None if progress else True, desc=sampler.name,
               unit="cfg", leave=False)
    last_commit = time.monotonic()
    with bar:
        while len(ensemble) + ensemble.n_pending < n_configs:
            result = sampler.update(field, generator)
            if not accepted:
                _refuse_nonfinite(theory, result.delta_h, "the energy violation delta_h of the first update")
            field, step = result.field, step + 1
            accepted.append(result.accepted.double().mean().item())
            if step % save_every == 0:
                ensemble.append(**_rows(theory, step, result, first_chain, ensemble.metadata["observable_names"]))
                bar.update(n_chains)
                bar.set_postfix(acc=f"{np.mean(accepted):.2f}", **sampler.postfix())
            done = len(ensemble) + ensemble.n_pending >= n_configs
            if done or received["signal"] or time.monotonic() - last_commit >= commit_every:
                _commit(ensemble, theory, sampler, field, generator, step)
                last_commit = time.monotonic()
            if received["signal"] and not done:
                raise Interrupted(f"stopped by {received['signal']} after {len(ensemble)} of {n_configs} "
                                  "configurations; rerun with resume=True to continue")
    return RunSummary(path=ensemble.path, n_configs=len(ensemble), n_new=len(ensemble) - n_start,
                      acceptance=float(np.mean(accepted)) if accepted else float("nan"),
                      postfix=sampler.postfix(), seconds=time.perf_counter() - began)
