"""Symplectic, time-reversible molecular-dynamics integrators.

Each integrator evolves ``(field, momenta)`` for ``n_steps`` steps of size ``step_size``
under ``H = K(p) + S(field)`` by alternating momentum kicks with ``force(field)``, the
tangent-space gradient of ``S``, and drifts ``drift(field, momenta, dt)``.  The plain drift
(:func:`free_drift`) moves the field along the momenta (the field type's ``evolve``, see
:mod:`gaugeflow.lattice.fields`).  Both are second order: the energy violation of a
trajectory of fixed length scales as ``dH ~ step_size^2`` (and ``<dH> ~ step_size^4``).

* ``leapfrog``: kick-drift-kick (one force evaluation per step).
* ``omelyan``: the second-order minimum-norm scheme of Omelyan, Mryglod and Folk,
  Comput. Phys. Commun. 151 (2003) 272, with ``lambda = 0.1931833275037836``
  (Takaishi and de Forcrand, hep-lat/0505020); two force evaluations per step and a
  roughly 10x smaller error coefficient.

Multiple time scales (Sexton and Weingarten, Nucl. Phys. B 380 (1992) 665;
:func:`nested_drift`): for ``S = S_1 + ... + S_n`` ordered from the finest scale to the
coarsest, the outermost integrator kicks with the force of ``S_n`` and its drift is
``substeps`` steps of the same integrator for ``S_1 + ... + S_{n-1}`` over the drift's time,
and so on down to the free drift.  Cheap, stiff forces (the gauge force) then run on small
steps while an expensive, smooth one (the fermion force) is evaluated once per outer step;
the scheme stays symplectic, reversible and second order.
"""

from __future__ import annotations

from gaugeflow.lattice.errors import InputError

OMELYAN_LAMBDA = 0.1931833275037836


def leapfrog(drift, force, field, momenta, step_size: float, n_steps: int):
    momenta = momenta - 0.5 * step_size * force(field)
    for step in range(n_steps):
        field, momenta = drift(field, momenta, step_size)
        kick = step_size if step < n_steps - 1 else 0.5 * step_size
        momenta = momenta - kick * force(field)
    return field, momenta


def omelyan(drift, force, field, momenta, step_size: float, n_steps: int):
    lam = OMELYAN_LAMBDA
    momenta = momenta - lam * step_size * force(field)
    for step in range(n_steps):
        field, momenta = drift(field, momenta, 0.5 * step_size)
        momenta = momenta - (1 - 2 * lam) * step_size * force(field)
        field, momenta = drift(field, momenta, 0.5 * step_size)
        kick = 2 * lam * step_size if step < n_steps - 1 else lam * step_size
        momenta = momenta - kick * force(field)
    return field, momenta


INTEGRATORS = {"leapfrog": leapfrog, "omelyan": omelyan}


def get_integrator(name: str):
    try:
        return INTEGRATORS[name]
    except KeyError:
        raise InputError(f"unknown integrator {name!r}; choose one of {', '.join(INTEGRATORS)}") from None


def free_drift(field_type):
    """The drift of the field along the momenta for time ``dt`` (momenta unchanged)."""
    return lambda field, momenta, dt: (field_type.evolve(field, momenta, dt), momenta)


def nested_drift(integrate, field_type, forces, substeps: int):
    """The drift of the outermost time scale for ``forces`` ordered finest first (all but the
    last, whose force the outer integrator kicks with): each scale's drift over ``dt`` is
    ``substeps`` steps of ``integrate`` of size ``dt / substeps`` on the next finer scale."""
    drift = free_drift(field_type)
    for force in forces[:-1]:
        drift = _finer_scale(integrate, drift, force, substeps)
    return drift


def _finer_scale(integrate, drift, force, substeps):
    return lambda field, momenta, dt: integrate(drift, force, field, momenta, dt / substeps, substeps)
