"""The sampler registry: build a :class:`gaugeflow.hmc.sampler.Sampler` by name.

Built in: ``hmc`` (:class:`gaugeflow.hmc.hmc.HMCSampler`), ``heatbath``
(:class:`gaugeflow.hmc.heatbath.HeatBathSampler`), ``annealed``
(:class:`gaugeflow.hmc.annealing.AnnealedMetropolisSampler`; both for pure Wilson gauge theories)
and, with a trained flow model,
``flow`` (independence Metropolis), ``composite`` (a flow step and HMC trajectories) and
``flow-hmc`` (HMC in the flow's latent variables).  A new sampler is a class implementing the
``Sampler`` protocol plus one line::

    register_sampler("mine", lambda theory, model, options: MySampler(theory), description="...")

after which ``make_sampler(theory, "mine")`` and ``generate_ensemble(theory, path,
sampler="mine", ...)`` run it; a sampler registered with ``needs_model=True`` is offered by
``gaugeflow sample --sampler``, with the trained flow as ``model`` (whose theory
:func:`gaugeflow.hmc.run.make_sampler` has checked).  The builder gets the options of the
run as a :class:`SamplerOptions` and takes what it needs of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gaugeflow.lattice.errors import InputError

from .annealing import AnnealedMetropolisSampler
from .composite import CompositeSampler
from .flow_hmc import FlowHMCSampler
from .heatbath import HeatBathSampler
from .hmc import HMCSampler
from .pseudofermion_metropolis import flow_metropolis_sampler

if TYPE_CHECKING:
    from .hmc import HMCParameters

__all__ = ["SamplerKind", "SamplerOptions", "register_sampler", "sampler_kind", "sampler_names"]


@dataclass(frozen=True)
class SamplerOptions:
    """What every builder is given besides the theory and the model: the settings of HMC parts
    (``params``; ``None``: the defaults), whether they tune their step count during
    thermalisation and to what acceptance, the composite chain's ``hmc_per_step`` (``None``: its
    fallback policy chooses), the model's checkpoint (``source``, stored with the ensemble) and the
    heat-bath sweeps of an annealed proposal (``anneal_steps``), the particles of its resampled
    particle system (``anneal_particles``; 1: a single path) and the overrelaxation sweeps after
    each heat-bath sweep (``overrelaxation``)."""

    params: HMCParameters | None = None
    tune: bool = True
    target_acceptance: float = 0.8
    hmc_per_step: int | None = None
    source: str = ""
    anneal_steps: int = 100
    anneal_particles: int = 1
    overrelaxation: int = 0


# The fields above that only samplers take (not run_chains, nor the HMC settings)
SAMPLER_ONLY_OPTIONS = ("anneal_steps", "anneal_particles", "overrelaxation")


@dataclass(frozen=True)
class SamplerKind:
    """A registered sampler: ``build(theory, model, options) -> Sampler``, whether it needs a
    trained flow of the run's theory (``needs_model``), or takes one optionally, of the same
    theory and lattice at other couplings (``takes_model``: the annealed sampler's start); ``model``
    is ``None`` otherwise.  A few words for help texts."""

    name: str
    build: Callable
    needs_model: bool = False
    description: str = ""
    takes_model: bool = False


_REGISTRY: dict[str, SamplerKind] = {}


def register_sampler(name: str, build: Callable, *, needs_model: bool = False, description: str = "",
                     takes_model: bool = False) -> SamplerKind:
    """Make ``build(theory, model, options)`` available as sampler ``name`` (module docstring)."""
    kind = SamplerKind(str(name), build, bool(needs_model), description, bool(takes_model or needs_model))
    if name in _REGISTRY and _REGISTRY[name].build is not build:
        raise InputError(f"a different sampler is already registered as {name!r}")
    _REGISTRY[name] = kind
    return kind


def sampler_names(needs_model: bool | None = None) -> tuple[str, ...]:
    """Registered names, in the order of registration (only those that need a model, or only
    those that do not, if ``needs_model`` is given)."""
    return tuple(name for name, kind in _REGISTRY.items() if needs_model is None or kind.needs_model == needs_model)


def sampler_kind(name: str) -> SamplerKind:
    if name not in _REGISTRY:
        raise InputError(f"unknown sampler {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


register_sampler("hmc", lambda theory, model, o: HMCSampler(theory, o.params, o.tune, o.target_acceptance),
                 description="Hybrid Monte Carlo")
register_sampler("heatbath", lambda theory, model, o: HeatBathSampler(theory, overrelaxation=o.overrelaxation),
                 description="a heat-bath sweep (and --overrelaxation sweeps) per update (pure Wilson gauge "
                             "theories: u1, suN)")
register_sampler("annealed", lambda theory, model, o: AnnealedMetropolisSampler(theory, o.anneal_steps, start=model,
                                                                                  source=o.source,
                                                                                  particles=o.anneal_particles),
                 takes_model=True,
                 description="independence Metropolis over annealed proposals: heat-bath sweeps from Haar measure "
                             "(or a flow at a lower beta) up a ladder of beta, with exact weights (pure Wilson gauge "
                             "theories)")
register_sampler("flow", lambda theory, model, o: flow_metropolis_sampler(model, o.source), needs_model=True,
                 description="independence Metropolis with flow proposals (of (U, phi) for a pseudofermion flow)")
register_sampler("composite", lambda theory, model, o: CompositeSampler(model, o.hmc_per_step, o.params, o.tune,
                                                                          o.target_acceptance, o.source),
                 needs_model=True, description="a flow proposal followed by K HMC trajectories")
register_sampler("flow-hmc", lambda theory, model, o: FlowHMCSampler(model, o.params, o.tune, o.target_acceptance,
                                                                      o.source),
                 needs_model=True, description="HMC in the flow's latent variables")
