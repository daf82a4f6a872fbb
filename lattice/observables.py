"""Observables as registered objects: what can be measured on configurations, and by whom.

Two kinds of names meet here:

* the **standard columns** a theory computes with :meth:`Theory.observables` (``plaquette``,
  ``topological_charge``, ``magnetization``, ...): cheap, stored with every configuration by
  default;
* **registered observables** (:func:`register_observable`): a name, the theories it applies
  to and how to compute it on a batch, giving one or more columns (``wilson_loops`` gives
  ``wilson_loop_RxT`` for every loop up to half the lattice).  Expensive ones are left out of
  production and measured later on the stored configurations with ``gaugeflow measure``
  (:func:`gaugeflow.lattice.ensemble.Ensemble.measure`), which stores them beside the
  ensemble's segments, checksummed and resumable.

:func:`compute` evaluates any mix of both kinds; ``gaugeflow hmc/sample --observables``
choose what production stores.  Derived estimators (``chi_t = <Q^2>/V``, ``chi_2pt``,
effective masses) live with the analysis, :mod:`gaugeflow.hmc.analysis`.

Every column is ``[B]`` float64, one number per configuration.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import gauge
from .errors import InputError


@dataclass(frozen=True)
class Observable:
    """A measurement: ``compute(theory, field, **options) -> {column: [B] float64}`` for the
    theories where ``applies_to(theory)`` holds.  ``options`` names the measurement's parameters
    and their defaults (a value, or a function of the theory); a stored measurement records the
    values it was made with."""

    name: str
    compute: Callable[..., dict[str, torch.Tensor]]
    applies_to: Callable[..., bool] = lambda theory: True
    description: str = ""
    options: dict = field(default_factory=dict)

    def resolve(self, theory, given: dict | None = None) -> dict:
        """The option values for ``theory``: the defaults, overridden by ``given``."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise InputError(f"observable {self.name!r} takes no option(s) {', '.join(unknown)}; its options: "
                             f"{', '.join(self.options) or 'none'}")
        return {k: given[k] if k in given else (v(theory) if callable(v) else v) for k, v in self.options.items()}


_REGISTRY: dict[str, Observable] = {}


def register_observable(observable: Observable) -> Observable:
    """Make ``observable`` measurable by name (``gaugeflow measure --observables NAME``)."""
    if observable.name in _REGISTRY and _REGISTRY[observable.name] != observable:
        raise InputError(f"an observable named {observable.name!r} is already registered")
    _REGISTRY[observable.name] = observable
    return observable


def observable_names(theory=None) -> list[str]:
    """The registered observables (that apply to ``theory``, if given)."""
    return [name for name, o in _REGISTRY.items() if theory is None or o.applies_to(theory)]


def get_observable(name: str, theory=None) -> Observable:
    if name not in _REGISTRY:
        raise InputError(f"unknown observable {name!r}; registered: {', '.join(_REGISTRY) or 'none'}")
    observable = _REGISTRY[name]
    if theory is not None and not observable.applies_to(theory):
        raise InputError(f"observable {name!r} does not apply to {theory.name} on "
                         f"{'x'.join(map(str, theory.lattice_shape))}")
    return observable


def production_names(theory, requested=None) -> list[str]:
    """The columns production stores: the theory's standard ones, or those ``requested`` (standard
    column names and registered observable names, expanded to their columns); checked."""
    standard = theory.observable_names()
    if requested is None:
        return standard
    columns = []
    for name in requested:
        if name in standard:
            columns.append(name)
        else:
            columns += list(_columns_of(theory, get_observable(name, theory)))
    if len(set(columns)) != len(columns):
        raise InputError(f"observables {', '.join(requested)} name some columns twice")
    return columns


def compute(theory, field: torch.Tensor, columns) -> dict[str, torch.Tensor]:
    """The ``columns`` (standard or of registered observables) on a batch of configurations."""
    columns = list(columns)
    standard = set(theory.observable_names())
    result = {}
    if standard & set(columns):
        result.update({k: v for k, v in theory.observables(field).items() if k in columns})
    for observable in _registered_for(theory, [c for c in columns if c not in result]):
        result.update({k: v for k, v in observable.compute(theory, field, **observable.resolve(theory)).items()
                       if k in columns})
    missing = [c for c in columns if c not in result]
    if missing:
        raise InputError(f"no observable of {theory.name} gives the column(s) {', '.join(missing)}")
    return {c: result[c].to(torch.float64) for c in columns}


def _probe(theory, observable: Observable, options: dict | None = None) -> dict[str, torch.Tensor]:
    return observable.compute(theory, theory.cold_start(1), **observable.resolve(theory, options))


_COLUMNS: dict[tuple, tuple[Observable, tuple[str, ...]]] = {}


def _columns_of(theory, observable: Observable) -> tuple[str, ...]:
    """The columns ``observable`` gives on ``theory`` with its default options: probed once (a
    probe computes the observable, e.g. a whole Wilson flow, on a cold start), not per update."""
    key = (observable.name, theory.name, tuple(theory.lattice_shape))
    if key not in _COLUMNS or _COLUMNS[key][0] is not observable:  # a re-registered observable is probed anew
        _COLUMNS[key] = (observable, tuple(_probe(theory, observable)))
    return _COLUMNS[key][1]


def _registered_for(theory, columns: list[str]) -> list[Observable]:
    """The registered observables that give ``columns`` (each once)."""
    chosen = []
    for column in columns:
        for observable in _REGISTRY.values():
            if observable not in chosen and observable.applies_to(theory) and column in _columns_of(theory, observable):
                chosen.append(observable)
                break
    return chosen


def _wilson_loops(theory, field):
    links = theory.links_as_matrices(field)
    largest = min(theory.lattice_shape) // 2
    return {f"wilson_loop_{r}x{t}": gauge.wilson_loop(links, r, t).to(torch.float64)
            for r in range(1, largest + 1) for t in range(r, largest + 1)}


register_observable(Observable(
    "wilson_loops", _wilson_loops, lambda theory: getattr(theory, "is_gauge_theory", False),
    "every R x T Wilson loop (1/N) Re tr W with R <= T <= L/2, averaged over sites, planes and both "
    "orientations; columns wilson_loop_RxT"))


def measure_ensemble(path, names, *, device="cpu", batch_size: int = 64, progress: bool = False,
                     options: dict | None = None) -> dict[str, int]:
    """Compute the registered observables ``names`` on every stored configuration of the
    ensemble at ``path`` and store them in it (:meth:`~gaugeflow.lattice.ensemble.Ensemble.measure`;
    a distributed ensemble stream by stream).  Resumable: what is stored is never computed
    again.  ``options`` (e.g. ``{"flow_time": 2.0}``) go to the observables that take them; a
    measurement is continued only with the options it was begun with.  A stop signal (SIGTERM, SIGUSR1, Ctrl-C) stops after the segment in progress
    (:class:`~gaugeflow.lattice.jobcontrol.Interrupted`).  Returns ``{name: segments measured now}``."""
    from .backend import resolve_device
    from .ensemble import open_ensemble, refresh_distributed_manifest, stream_path
    from .jobcontrol import Interrupted, stop_on_signals
    from .theories import make_theory

    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    device = resolve_device(device)
    with open_ensemble(path) as ensemble:
        theory = make_theory(ensemble.theory_name, ensemble.lattice_shape, **ensemble.couplings)
        parts = [stream_path(path, s) for s in range(ensemble.n_streams) if os.path.exists(stream_path(path, s))] \
            if ensemble.layout == "streams" else [path]
    observables = [get_observable(name, theory) for name in names]
    options = options or {}
    known = {k for o in observables for k in o.options}
    unused = sorted(k for k, v in options.items() if v is not None and k not in known)
    if unused:
        raise InputError(f"option(s) {', '.join(unused)} apply to none of the observables {', '.join(names)}")
    settings = {o.name: o.resolve(theory, {k: v for k, v in options.items() if k in o.options}) for o in observables}
    done = {o.name: 0 for o in observables}
    with stop_on_signals() as received:
        def columns_of(observable):
            def on(configs):
                if received["signal"]:
                    raise Interrupted(f"stopped by {received['signal']} while measuring {observable.name}; what was "
                                      f"measured is stored: rerun to continue")
                field = torch.as_tensor(configs).to(device=device, dtype=theory.storage_dtype(torch.float64))
                parts = [observable.compute(theory, field[i:i + batch_size], **settings[observable.name])
                         for i in range(0, len(field), batch_size)]
                if not parts:
                    return {c: torch.zeros(0) for c in _probe(theory, observable, settings[observable.name])}
                return {c: torch.cat([p[c] for p in parts]).to(torch.float64).cpu().numpy() for c in parts[0]}
            return on

        for part in parts:
            with open_ensemble(part, "a") as writer:
                for observable in observables:
                    done[observable.name] += writer.measure(observable.name, columns_of(observable),
                                                            options=settings[observable.name])
    if len(parts) > 1 or parts[0] != path:
        refresh_distributed_manifest(path)
    return done
