r"""The gradient flow (Wilson flow) of lattice gauge fields, observables along it, and the scales t0, w0.

Flow equation (Lüscher, arXiv:1006.4518, eqs. 1.3 and 2.x; Narayanan and Neuberger, hep-th/0601210)::

    dV_mu(x)/dt = Z_mu(x) V_mu(x),   Z = -g0^2 [d_{x,mu} S_W(V)],   V|_{t=0} = U,

with Wilson's plaquette action.  In gaugeflow's conventions (links ``[batch, mu, x..., N, N]``,
staples ``A_mu(x)`` of :meth:`gaugeflow.lattice.sun.SUN.staples`, with ``Re tr U_mu(x) A_mu(x)`` the
sum of the plaquettes that contain the link):

* **SU(N)**: ``Z_mu(x) = -P_su(N)(V_mu(x) A_mu(x))``, ``P_su(N)`` the traceless anti-Hermitian part.
  This is minus the molecular-dynamics force of the Wilson action at ``beta = N``
  (:meth:`SUN.force <gaugeflow.lattice.sun.SUN.force>`), so the flow does not depend on the
  ensemble's ``beta``.  It decreases the action: ``d/dt sum_p Re tr V_p = sum |Z|^2 >= 0``.
* **U(1)** (angles ``theta``, ``V = exp(i theta)``)::

      d theta_mu(x)/dt = -d/d theta_mu(x) sum_p (1 - cos theta_p),

  minus the force of the U(1) Wilson action at ``beta = 1``
  (:meth:`U1.force <gaugeflow.lattice.u1.U1.force>`).  It is the SU(2) flow of the embedding
  ``diag(e^{i theta}, e^{-i theta})``.  For the Schwinger model only the gauge field flows.

Integrator: Lüscher's third-order Runge-Kutta scheme for Lie groups (arXiv:1006.4518,
appendix C), with ``Z_i = eps Z(W_i)``::

    W_1 = exp(Z_0 / 4) W_0
    W_2 = exp(8/9 Z_1 - 17/36 Z_0) W_1
    V_{t+eps} = exp(3/4 Z_2 - 8/9 Z_1 + 17/36 Z_0) W_2,

local error ``O(eps^4)``, global ``O(eps^3)``; three force evaluations per step.  With
``adaptive=True`` the step size is controlled by the distance ``d = max |V - V'|`` to the
embedded second-order solution ``V' = exp(2 Z_1 - Z_0) W_0`` (which shares ``Z_0, Z_1``; the
same pair as Fritzsch and Ramos, arXiv:1301.4388): a step is accepted when ``d <= tolerance``
and the next step is ``eps (tolerance / d)^{1/3}`` times a safety factor.  One step size serves
the whole batch (the largest ``d`` decides), and steps are shortened to land on the requested
measurement times, so every configuration is measured at the same flow times.

Observables (per configuration, float64):

* ``E(t)``, the action density ``E = -1/2 tr G_{mu nu} G_{mu nu} = 1/4 G^a G^a`` (SU(N),
  ``tr T^a T^b = -delta^{ab}/2``; U(1): ``E = F_{mu nu} F_{mu nu} / 4``), averaged over sites, in
  two discretisations (Lüscher, eqs. 3.1-3.3):

  - ``plaquette``: SU(N) ``E = 2 sum_{mu<nu} Re tr(1 - V_{mu nu}(x))``; U(1)
    ``E = sum_{mu<nu} (1 - cos theta_{mu nu}(x))``.  Its flow-time derivative is exact:
    ``dE/dt = -(c / V) sum_{x,mu} |Z_mu(x)|^2`` (``c = 2`` for SU(N), 1 for U(1)), because the
    plaquette energy is ``c / V`` times the flowing action.
  - ``clover``: ``E = sum_{mu<nu} tr F_{mu nu}(x)^2`` with the Hermitian clover field strength
    ``F`` of :func:`gaugeflow.lattice.gauge.clover_field_strength` (U(1): ``1/2 sum F^2`` with
    ``F = 1/4 sum_leaves sin theta``).  Its derivative is taken by finite differences on the
    measured times (``numpy.gradient``, second order), so measure densely for ``w0``.

* ``t^2 E(t)`` (:func:`t2_energy`) and ``t d/dt [t^2 E(t)] = 2 t^2 E + t^3 dE/dt``
  (:func:`t_derivative_t2_energy`).
* ``Q(t)``: in 4D the clover charge ``Q = (1/32 pi^2) sum_x eps_{mu nu rho sigma} tr F_{mu nu}
  F_{rho sigma}`` (:func:`gaugeflow.lattice.gauge.clover_topological_charge`; for U(1) the
  abelian ``(1/32 pi^2) sum eps F F``, half the SU(2) value of the embedding, so a constant field
  with ``n`` flux quanta through the 01 planes and ``m`` through the 23 planes has ``Q -> n m``);
  in 2D U(1) the geometric charge ``(1/2 pi) sum_x arg V_{01}(x)``, an integer on every
  configuration.  Elsewhere there is none.

Scales (in lattice units, errors by the Gamma method with the interpolation inside the error
propagation; :func:`scale_t0`, :func:`scale_w0`):

* ``t0``: ``t^2 <E(t)> = 0.3`` at ``t = t0`` (Lüscher; 0.3 is the SU(3) convention, other groups
  scale it, e.g. by ``(N^2 - 1) / (8 N)`` relative to SU(3), so it is a parameter).
* ``w0``: ``t d/dt [t^2 <E(t)>] = 0.3`` at ``t = w0^2`` (Borsanyi et al., arXiv:1203.4469).

Example::

    theory = make_theory("su3", "4x4x4x4", beta=6.0)
    result = wilson_flow(links, theory, t_max=2.0, eps=0.02)   # links [B, 4, 4, 4, 4, 4, 3, 3]
    t0 = scale_t0(result.times, t2_energy(result))             # the B configurations as one chain
    print(t0.value, t0.error)

References: M. Lüscher, JHEP 08 (2010) 071, arXiv:1006.4518; S. Borsanyi et al., JHEP 09 (2012)
010, arXiv:1203.4469; U. Wolff, hep-lat/0306017 (Gamma method).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import gauge
from .errors import InputError
from .geometry import sum_per_config
from .observables import Observable, register_observable
from .sun import SUN
from .theories import make_theory, theory_class
from .theory import GaugeTheory
from .u1 import U1

__all__ = [
    "FlowMeasurements",
    "FlowScale",
    "flow_observables",
    "flow_velocity",
    "rk3_step",
    "scale_t0",
    "scale_w0",
    "t2_energy",
    "t_derivative_t2_energy",
    "wilson_flow",
    "wilson_flow_steps",
]

# RK3 coefficients (Lüscher, arXiv:1006.4518, eq. C.1-C.3)
_STAGE_1 = 1 / 4
_STAGE_2 = (8 / 9, -17 / 36)  # (Z1, Z0)
_STAGE_3 = (3 / 4, -8 / 9, 17 / 36)  # (Z2, Z1, Z0)
_SAFETY = 0.95  # adaptive step: fraction of the predicted optimal step
_GROWTH_LIMITS = (0.2, 2.0)  # adaptive step: the most a step may shrink / grow at once


# -- what differs between U(1) and SU(N) -------------------------------------------------------
def _u1_as_su2(theta: torch.Tensor) -> torch.Tensor:
    """U(1) angles as SU(2) matrices ``diag(e^{i theta}, e^{-i theta})``, ``[..., 2, 2]``."""
    phase = torch.polar(torch.ones_like(theta), theta)
    return torch.diag_embed(torch.stack([phase, phase.conj()], dim=-1))


@dataclass(frozen=True)
class _GroupRules:
    """How the flow and its observables treat one family of gauge theories.

    ``flowing_theory(theory)`` gives the pure-gauge theory whose force is ``-Z``;
    ``lattice_shape(field)`` reads the lattice off a field; ``matrices`` gives SU(N) matrices for
    the clover quantities; ``energy_factor`` is ``c`` of the module docstring; ``clover_factor``
    and ``charge_factor`` convert the clover formulas on ``matrices`` to the group's
    normalisation."""

    flowing_theory: Callable[..., GaugeTheory]
    lattice_shape: Callable[[torch.Tensor], tuple[int, ...]]
    matrices: Callable[[GaugeTheory, torch.Tensor], torch.Tensor]
    energy_factor: float
    clover_factor: float
    charge_factor: float


_RULES: dict[type, _GroupRules] = {
    SUN: _GroupRules(
        flowing_theory=lambda theory: SUN(theory.lattice_shape, beta=float(theory.n_colors), n_colors=theory.n_colors),
        lattice_shape=lambda field: tuple(field.shape[2:-2]),
        matrices=lambda theory, field: theory.links_as_matrices(field),
        energy_factor=2.0,
        clover_factor=1.0,
        charge_factor=1.0,
    ),
    U1: _GroupRules(
        flowing_theory=lambda theory: U1(theory.lattice_shape, beta=1.0),
        lattice_shape=lambda field: tuple(field.shape[2:]),
        matrices=lambda theory, field: _u1_as_su2(field),
        energy_factor=1.0,
        clover_factor=0.25,  # tr F^2 of diag(f, -f) is 2 f^2; E = f^2 / 2
        charge_factor=0.5,  # the embedding doubles tr F F
    ),
}


def _rules_for(cls: type) -> _GroupRules:
    for base in cls.__mro__:
        if base in _RULES:
            return _RULES[base]
    raise InputError(f"the gradient flow is defined for U(1) and SU(N) gauge theories, not {cls.__name__}")


@dataclass(frozen=True)
class _Flowing:
    """A resolved flow: the pure-gauge theory at unit coupling and its rules."""

    theory: GaugeTheory
    rules: _GroupRules


def _resolve(theory_or_group, field: torch.Tensor) -> _Flowing:
    """The theory that flows ``field``: from a theory instance (U1, SUN or a subclass, e.g. the
    Schwinger model, whose gauge field flows) or a group name (``"u1"``, ``"su2"``, ``"su3"``, ...)."""
    if isinstance(theory_or_group, _Flowing):
        return theory_or_group
    if isinstance(theory_or_group, str):
        cls, _ = theory_class(theory_or_group)
        rules = _rules_for(cls)
        theory = make_theory(theory_or_group, "x".join(map(str, rules.lattice_shape(field))), beta=1.0)
    elif isinstance(theory_or_group, GaugeTheory):
        theory, rules = theory_or_group, _rules_for(type(theory_or_group))
    else:
        raise InputError(f"expected a gauge theory or a group name such as 'su3', got {theory_or_group!r}")
    flowing = rules.flowing_theory(theory)
    flowing.check_field(field)
    return _Flowing(flowing, rules)


# -- the flow -----------------------------------------------------------------------------------
def _velocity(flowing: _Flowing, field: torch.Tensor) -> torch.Tensor:
    return -flowing.theory.force(field)


def flow_velocity(field: torch.Tensor, theory_or_group) -> torch.Tensor:
    """``Z(V) = -g0^2 d S_W(V)``, the flow's tangent vector: su(N) matrices ``[B, D, x..., N, N]``
    (``dV/dt = Z V``) or, for U(1), angle velocities ``[B, D, x...]``."""
    return _velocity(_resolve(theory_or_group, field), field)


def _rk3(flowing: _Flowing, field: torch.Tensor, eps: float, with_estimate: bool = False):
    """One RK3 step; with ``with_estimate`` also the distance to the embedded second-order step."""
    move = flowing.theory.field.evolve
    z0 = eps * _velocity(flowing, field)
    w1 = move(field, z0, _STAGE_1)
    z1 = eps * _velocity(flowing, w1)
    w2 = move(w1, _STAGE_2[0] * z1 + _STAGE_2[1] * z0, 1.0)
    z2 = eps * _velocity(flowing, w2)
    new = flowing.theory.field.project(move(w2, _STAGE_3[0] * z2 + _STAGE_3[1] * z1 + _STAGE_3[2] * z0, 1.0))
    if not with_estimate:
        return new
    lower = move(field, 2 * z1 - z0, 1.0)
    as_matrices = flowing.theory.links_as_matrices
    return new, float((as_matrices(new) - as_matrices(lower)).abs().max())


def rk3_step(field: torch.Tensor, theory_or_group, eps: float) -> torch.Tensor:
    """One step of Lüscher's third-order Runge-Kutta integrator (module docstring), ``V_t -> V_{t+eps}``."""
    return _rk3(_resolve(theory_or_group, field), field, float(eps))


def _check_times(times) -> np.ndarray:
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if times.size == 0 or not np.all(np.isfinite(times)) or times[0] < 0 or np.any(np.diff(times) < 0):
        raise InputError("flow times must be finite, non-negative and non-decreasing")
    return times


def wilson_flow_steps(field: torch.Tensor, theory_or_group, times, eps: float = 0.01, *, adaptive: bool = False,
                      tolerance: float = 1e-6) -> Iterator[tuple[float, torch.Tensor]]:
    """Flow ``field`` and yield ``(t, V_t)`` at each of the non-decreasing flow ``times`` (``t = 0``
    allowed, giving the field itself).

    Fixed step (default): each interval between consecutive times is cut into the fewest equal
    steps no longer than ``eps``.  ``adaptive``: steps start at ``eps`` and are controlled so that
    the local distance to the embedded second-order solution stays below ``tolerance`` (module
    docstring).  The field is never modified in place.
    """
    if not eps > 0 or not math.isfinite(eps):
        raise InputError(f"eps must be a positive number, got {eps}")
    if adaptive and not tolerance > 0:
        raise InputError(f"tolerance must be positive, got {tolerance}")
    flowing = _resolve(theory_or_group, field)
    current, t, step = field, 0.0, float(eps)
    for target in _check_times(times):
        target = float(target)
        if not adaptive:
            n_steps = math.ceil((target - t) / eps - 1e-9) if target > t else 0
            for _ in range(n_steps):
                current = _rk3(flowing, current, (target - t) / n_steps)
        else:
            while target - t > 1e-12 * max(1.0, target):
                h = min(step, target - t)
                candidate, distance = _rk3(flowing, current, h, with_estimate=True)
                low, high = _GROWTH_LIMITS
                factor = high if distance == 0 else min(high, max(low, _SAFETY * (tolerance / distance) ** (1 / 3)))
                if distance <= tolerance:
                    current, t = candidate, (target if h >= target - t else t + h)
                    step = max(step, h * factor) if h < step else h * factor
                else:
                    step = h * factor
        t = target
        yield target, current


# -- observables -------------------------------------------------------------------------------
def _observables(flowing: _Flowing, field: torch.Tensor) -> dict[str, torch.Tensor]:
    theory, rules = flowing.theory, flowing.rules
    links = theory.links_as_matrices(field)
    n_planes = len(gauge.planes(theory.dimension))
    plaquette = gauge.average_plaquette(links).to(torch.float64)
    result = {"energy_plaquette": rules.energy_factor * n_planes * links.shape[-1] * (1 - plaquette)}
    matrices = rules.matrices(theory, field)
    clover = 0.0
    for mu, nu in gauge.planes(theory.dimension):
        f = gauge.clover_field_strength(matrices, mu, nu)
        clover = clover + sum_per_config(torch.diagonal(f @ f, dim1=-2, dim2=-1).real.sum(-1))
    result["energy_clover"] = rules.clover_factor * clover / theory.volume
    velocity = _velocity(flowing, field)
    result["energy_derivative_plaquette"] = -rules.energy_factor * sum_per_config(velocity.abs() ** 2) / theory.volume
    if theory.has_topological_charge:
        result["topological_charge"] = theory.topological_charge(field).to(torch.float64)
    elif theory.dimension == 4:
        result["topological_charge"] = rules.charge_factor * gauge.clover_topological_charge(matrices)
    return result


def flow_observables(field: torch.Tensor, theory_or_group) -> dict[str, torch.Tensor]:
    """The flow observables of a (flowed) field, each ``[B]`` float64: ``energy_plaquette``,
    ``energy_clover``, ``energy_derivative_plaquette`` (exact ``dE/dt`` along the flow) and, where
    defined, ``topological_charge`` (normalisations in the module docstring)."""
    return _observables(_resolve(theory_or_group, field), field)


@dataclass(frozen=True)
class FlowMeasurements:
    """Observables along the flow of a batch of ``B`` configurations at ``T`` flow times.

    times:              ``[T]`` flow times in lattice units (``t / a^2``)
    energy:             ``{"plaquette": [B, T], "clover": [B, T]}`` action densities ``E(t)``
    energy_derivative:  the same keys, ``dE/dt``: exact for the plaquette, finite differences
                        on ``times`` for the clover
    topological_charge: ``[B, T]`` or ``None`` where no charge is defined
    field:              the field flowed to ``times[-1]``
    """

    times: np.ndarray
    energy: dict[str, np.ndarray]
    energy_derivative: dict[str, np.ndarray]
    topological_charge: np.ndarray | None
    field: torch.Tensor


def _measurement_times(t_max: float, interval: float) -> np.ndarray:
    n = int(math.floor(t_max / interval + 1e-9))
    times = interval * np.arange(n + 1)
    return times if t_max - times[-1] <= 1e-9 * max(1.0, t_max) else np.append(times, t_max)


def wilson_flow(field: torch.Tensor, theory_or_group, t_max: float, eps: float = 0.01, *,
                measure_interval: float | None = None, adaptive: bool = False, tolerance: float = 1e-6,
                ) -> FlowMeasurements:
    """Flow a batch of configurations to ``t_max`` and measure along the way.

    ``theory_or_group``: a U(1) or SU(N) theory (its couplings do not matter) or a group name
    (``"u1"``, ``"su3"``).  Measurements every ``measure_interval`` in flow time (default ``eps``)
    and at ``t_max``; integration as in :func:`wilson_flow_steps`.
    """
    if not t_max > 0:
        raise InputError(f"t_max must be positive, got {t_max}")
    interval = float(eps if measure_interval is None else measure_interval)
    if not interval > 0:
        raise InputError(f"measure_interval must be positive, got {measure_interval}")
    flowing = _resolve(theory_or_group, field)
    times = _measurement_times(float(t_max), interval)
    columns: dict[str, list[np.ndarray]] = {}
    final = field
    for _, final in wilson_flow_steps(field, flowing, times, eps, adaptive=adaptive, tolerance=tolerance):
        for name, values in _observables(flowing, final).items():
            columns.setdefault(name, []).append(values.detach().cpu().numpy())
    data = {name: np.stack(values, axis=-1) for name, values in columns.items()}
    clover = data["energy_clover"]
    clover_derivative = np.gradient(clover, times, axis=-1) if times.size > 2 else np.full_like(clover, np.nan)
    return FlowMeasurements(
        times=times,
        energy={"plaquette": data["energy_plaquette"], "clover": clover},
        energy_derivative={"plaquette": data["energy_derivative_plaquette"], "clover": clover_derivative},
        topological_charge=data.get("topological_charge"),
        field=final,
    )


def t2_energy(measurements: FlowMeasurements, definition: str = "clover") -> np.ndarray:
    """``t^2 E(t)``, ``[B, T]``, with ``E`` from ``definition`` (``"clover"`` or ``"plaquette"``)."""
    return measurements.times**2 * _energy(measurements.energy, definition)


def t_derivative_t2_energy(measurements: FlowMeasurements, definition: str = "clover") -> np.ndarray:
    """``t d/dt [t^2 E(t)] = 2 t^2 E + t^3 dE/dt``, ``[B, T]`` (the ``w0`` observable)."""
    t = measurements.times
    energy, derivative = _energy(measurements.energy, definition), _energy(measurements.energy_derivative, definition)
    return 2 * t**2 * energy + t**3 * derivative


def _energy(table: dict[str, np.ndarray], definition: str) -> np.ndarray:
    if definition not in table:
        raise InputError(f"unknown energy definition {definition!r}; choose one of {', '.join(table)}")
    return table[definition]


# -- scales ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowScale:
    """A flow scale in lattice units with its errors.

    value:          the scale from the ensemble means (``t0 / a^2`` or ``w0 / a``)
    error:          Gamma-method error (Wolff's method for a derived quantity: the fluctuations
                    projected on the gradient of the whole map means -> scale, interpolation
                    included, then :func:`gaugeflow.hmc.autocorrelation.gamma_method`)
    tau_int:        integrated autocorrelation time of that projection (configurations)
    tau_int_error:  its error
    jackknife_error: binned jackknife (:func:`gaugeflow.hmc.autocorrelation.jackknife`), the
                    interpolation redone in every jackknife sample; a cross-check
    reference:      the reference value that defines the scale (0.3)
    """

    value: float
    error: float
    tau_int: float
    tau_int_error: float
    jackknife_error: float
    reference: float


def _as_replica(data, n_times: int) -> list[np.ndarray]:
    """``[n, T]`` (one chain), ``[R, n, T]`` or a list of ``[n_r, T]`` -> list of ``[n_r, T]`` float64."""
    if isinstance(data, np.ndarray) and data.ndim in (2, 3):
        chains = [data] if data.ndim == 2 else list(data)
    elif isinstance(data, Sequence) and not isinstance(data, np.ndarray):
        chains = [np.asarray(c) for c in data]
    else:
        raise InputError("flow data must be an array [n_configs, n_times], [n_chains, n_configs, n_times] "
                         "or a list of [n_configs, n_times] arrays")
    out = []
    for r, chain in enumerate(chains):
        chain = np.asarray(chain, dtype=np.float64)
        if chain.ndim != 2 or chain.shape[1] != n_times:
            raise InputError(f"chain {r} has shape {chain.shape}; expected [n_configs, {n_times}] "
                             "(one column per flow time)")
        if not np.all(np.isfinite(chain)):
            raise InputError(f"chain {r} holds non-finite values")
        out.append(chain)
    return out


def _crossing(times: np.ndarray, values: np.ndarray, reference: float) -> float:
    """The first ``t`` where ``values(t)`` reaches ``reference`` from below: the cubic through the
    four points around the crossing (fewer near the ends), solved in the bracketing interval."""
    above = np.flatnonzero(values >= reference)
    if above.size == 0 or above[0] == 0:
        where = "never reaches" if above.size == 0 else "starts at or above"
        raise InputError(f"the flow observable {where} the reference value {reference} on the measured flow times "
                         f"(0 to {times[-1]:g}); flow longer or measure from t = 0")
    k = int(above[0])
    lo, hi = max(0, k - 2), min(times.size, k + 2)
    t0, t1 = times[k - 1], times[k]
    s = (times[lo:hi] - t0) / (t1 - t0)
    roots = np.roots(np.polyfit(s, values[lo:hi] - reference, hi - lo - 1))
    inside = [r.real for r in roots if abs(r.imag) < 1e-9 and -1e-9 <= r.real <= 1 + 1e-9]
    if inside:
        return float(t0 + min(inside) * (t1 - t0))
    y0, y1 = values[k - 1], values[k]
    return float(t0 + (reference - y0) / (y1 - y0) * (t1 - t0))


def _flow_scale(times, data, reference: float, transform: Callable[[float], float], S: float,
                bin_size: int | None) -> FlowScale:
    from gaugeflow.hmc.autocorrelation import gamma_method, jackknife  # hmc builds on lattice: import late

    times = _check_times(times)
    chains = _as_replica(data, times.size)
    reference = float(reference)

    def scale(means: np.ndarray) -> float:
        return transform(_crossing(times, np.asarray(means, dtype=np.float64), reference))

    pooled = np.concatenate(chains)
    means = pooled.mean(axis=0)
    value = scale(means)
    # gradient of the whole map (interpolation included) by central differences, steps a small
    # fraction of each mean's statistical error
    steps = 1e-3 * pooled.std(axis=0) / math.sqrt(pooled.shape[0])
    gradient = np.zeros(times.size)
    for k in np.flatnonzero(steps > 0):
        shifted = means.copy()
        shifted[k] += steps[k]
        up = scale(shifted)
        shifted[k] -= 2 * steps[k]
        gradient[k] = (up - scale(shifted)) / (2 * steps[k])
    gamma = gamma_method([chain @ gradient for chain in chains], S=S)
    per_time = [[chain[:, k] for chain in chains] for k in range(times.size)]
    _, jackknife_error = jackknife(lambda *m: scale(np.array(m)), *per_time, bin_size=bin_size)
    return FlowScale(value, gamma.error, gamma.tau_int, gamma.tau_int_error, jackknife_error, reference)


def scale_t0(times, t2e, reference: float = 0.3, *, S: float = 1.5, bin_size: int | None = None) -> FlowScale:
    """``t0 / a^2`` from ``t^2 <E(t)> = reference`` (Lüscher, arXiv:1006.4518).

    ``t2e``: per-configuration ``t^2 E(t)`` on the flow ``times`` (e.g. :func:`t2_energy`): an
    array ``[n_configs, T]`` for one Markov chain, ``[n_chains, n_configs, T]``, or a list of
    ``[n_configs, T]`` arrays (chains of any length, each a replica).  Configurations must be in
    Monte Carlo order within a chain.  ``S``: the Gamma method's windowing parameter; ``bin_size``:
    the jackknife's (default: from the autocorrelation time).  See :class:`FlowScale`.
    """
    return _flow_scale(times, t2e, reference, lambda t: t, S, bin_size)


def scale_w0(times, t_d_t2e, reference: float = 0.3, *, S: float = 1.5, bin_size: int | None = None) -> FlowScale:
    """``w0 / a`` from ``t d/dt [t^2 <E(t)>] = reference`` at ``t = w0^2`` (Borsanyi et al.,
    arXiv:1203.4469).  ``t_d_t2e`` as in :func:`scale_t0`, e.g. from :func:`t_derivative_t2_energy`."""
    return _flow_scale(times, t_d_t2e, reference, math.sqrt, S, bin_size)


# -- as a measurement: `gaugeflow measure ENSEMBLE --observables wilson_flow` ----------------

FLOW_COLUMN = re.compile(r"flow_(E_plaquette|E_clover|dE_plaquette|Q)_t(\d+\.\d+)$")


def flow_column(quantity: str, t: float) -> str:
    """The stored column of ``quantity`` (``E_plaquette``, ``E_clover``, ``dE_plaquette``, ``Q``)
    at flow time ``t``: ``flow_E_clover_t0.2500``."""
    return f"flow_{quantity}_t{t:.4f}"


def flow_columns(columns) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``{quantity: (times, column names)}`` of the flow columns among ``columns``, by time."""
    found: dict[str, list[tuple[float, str]]] = {}
    for column in columns:
        match = FLOW_COLUMN.match(column)
        if match:
            found.setdefault(match.group(1), []).append((float(match.group(2)), column))
    return {q: (np.array([t for t, _ in sorted(v)]), [c for _, c in sorted(v)]) for q, v in found.items()}


def _default_flow_time(theory) -> float:
    # the flow radius sqrt(8 t) reaches half the smallest extent: beyond, finite-volume effects rule
    return min(theory.lattice_shape) ** 2 / 32


def _measured_flow(theory, field, flow_time: float, flow_step: float, n_times: int) -> dict[str, torch.Tensor]:
    measured = wilson_flow(field, theory, flow_time, flow_step, measure_interval=flow_time / n_times)
    columns = {}
    for k, t in enumerate(measured.times):
        columns[flow_column("E_plaquette", t)] = measured.energy["plaquette"][:, k]
        columns[flow_column("E_clover", t)] = measured.energy["clover"][:, k]
        columns[flow_column("dE_plaquette", t)] = measured.energy_derivative["plaquette"][:, k]
        if measured.topological_charge is not None:
            columns[flow_column("Q", t)] = measured.topological_charge[:, k]
    return {name: torch.as_tensor(np.asarray(values), dtype=torch.float64) for name, values in columns.items()}


def _flows(theory) -> bool:
    try:
        _resolve(theory, theory.cold_start(1))
    except (InputError, NotImplementedError, KeyError, AttributeError, TypeError):
        return False
    return True


register_observable(Observable(
    "wilson_flow", _measured_flow, _flows,
    "the Wilson flow to --flow-time (default L^2/32) in steps --flow-step (0.01), measured at 20 equal "
    "intervals and the start: E(t) from the plaquette and the clover, the exact dE/dt of the plaquette one and the "
    "flowed charge, columns flow_<quantity>_t<time>; analyze then gives t0 and w0",
    options={"flow_time": _default_flow_time, "flow_step": 0.01, "n_times": 20}))
