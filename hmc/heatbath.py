"""Heat-bath updates of pure Wilson gauge theories: every link drawn from its exact conditional.

Convention: ``S = -(beta / N) sum_P Re tr U_P`` (U(1): ``N = 1``, ``S = -beta sum_P cos theta_P``),
so that, given every other link, ``U_mu(x)`` has the density ``exp((beta / N) Re tr U_mu(x)
A_mu(x))`` with respect to Haar measure, ``A_mu(x)`` the staple sum
(:func:`gaugeflow.lattice.gauge.staple_sum`; here gathered at the links of one mask only).  The
links of one staple mask (direction ``mu``, one parity of the transverse sites;
:func:`gaugeflow.flows.masks.staple_link_mask`) share no plaquette, so a sweep draws them mask by
mask, all links of a mask at once, in the order of the staple layers (``mu = 0, 1, ...``,
parities 0 and 1).

* **U(1):** ``theta + arg A`` is von Mises with concentration ``beta |A|``, drawn by the
  rejection method of Best and Fisher (Appl. Statist. 28 (1979) 152), or from the uniform
  distribution for small concentrations.
* **SU(N):** the subgroup method of Cabibbo and Marinari (Phys. Lett. B 119 (1982) 387):
  ``U -> r U`` for ``r`` in each SU(2) subgroup of rows and columns ``(i, j)`` in turn (one
  subgroup, the whole group, for SU(2)), ``r`` drawn from ``exp((beta / N) Re tr r w)``, ``w`` the
  ``(i, j)`` block of ``U A``.  Only the quaternion part ``k V`` of ``w`` (``k >= 0``,
  ``V`` in SU(2)) enters ``Re tr r w``, so ``X = r V`` has the density ``sqrt(1 - x_0^2) exp(lambda
  x_0)`` in its real part ``x_0`` and a uniform direction, ``lambda = 2 beta k / N`` (Creutz,
  Phys. Rev. D 21 (1980) 2308).  ``x_0`` is drawn by the method of Kennedy and Pendleton (Phys.
  Lett. B 156 (1985) 393) for ``lambda >= 2`` and by rejection from ``exp(lambda x_0)`` below,
  where Kennedy-Pendleton's acceptance falls to zero.

For U(1) and SU(2) each draw is independent of the link's old value; for SU(N >= 3) each subgroup
step draws from its own conditional.  Either way a sweep leaves ``exp(-S)`` invariant, for any
``beta >= 0``.  Every random number comes from the ``generator`` passed, so chains
are reproducible.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import torch

from gaugeflow.flows.masks import staple_link_mask
from gaugeflow.flows.staple_coupling import staple_neighbours, sun_staples, u1_staples
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.groups import matmul, wrap_angle

from .sampler import TrajectoryResult

# Below this concentration (lambda for SU(2)) the uniform (exponential) proposal accepts more
# than half of its draws, and the Best-Fisher (Kennedy-Pendleton) constants lose precision.
_SMALL_CONCENTRATION = 0.5
_SMALL_LAMBDA = 2.0
# Every proposal here accepts at least about half of its draws, so a million entries finish in
# a few dozen rounds; far more means a broken proposal, not bad luck.
_MAX_ROUNDS = 1000


def _uniform(shape, generator, like: torch.Tensor) -> torch.Tensor:
    # (0, 1]: the logarithms below stay finite
    return 1.0 - torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def rejection_sample(propose: Callable, parameters: torch.Tensor, generator) -> torch.Tensor:
    """One accepted draw per entry of ``parameters`` (1D): ``propose(p, generator) -> (values,
    accepted)`` makes one proposal for each of the parameters ``p`` still pending; the draws are
    repeated for the rejected entries until none is left."""
    if not bool(torch.isfinite(parameters).all()):
        raise InputError("a heat-bath draw got a non-finite concentration: the links or beta are not finite")
    result = torch.empty_like(parameters)
    pending = torch.arange(parameters.numel(), device=parameters.device)
    for _ in range(_MAX_ROUNDS):
        if not pending.numel():
            return result
        values, accepted = propose(parameters[pending], generator)
        result[pending[accepted]] = values[accepted]
        pending = pending[~accepted]
    raise RuntimeError(f"rejection sampling did not finish in {_MAX_ROUNDS} rounds; first pending parameter "
                       f"{parameters[pending[0]].item()}")


def _von_mises_proposal(kappa: torch.Tensor, generator):
    """Best and Fisher (1979) for ``kappa >= _SMALL_CONCENTRATION``, uniform below."""
    u1, u2, u3 = (_uniform(kappa.shape, generator, kappa) for _ in range(3))
    uniform_angle = math.pi * (2 * u1 - 1)
    uniform_ok = u2 <= torch.exp(kappa * (torch.cos(uniform_angle) - 1))
    k = kappa.clamp_min(_SMALL_CONCENTRATION)
    tau = 1 + torch.sqrt(1 + 4 * k ** 2)
    rho = (tau - torch.sqrt(2 * tau)) / (2 * k)
    r = (1 + rho ** 2) / (2 * rho)
    z = torch.cos(math.pi * u1)
    f = ((1 + r * z) / (r + z)).clamp(-1, 1)
    c = k * (r - f)
    best_fisher_ok = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
    best_fisher_angle = torch.where(u3 > 0.5, 1.0, -1.0) * torch.arccos(f)
    small = kappa < _SMALL_CONCENTRATION
    return torch.where(small, uniform_angle, best_fisher_angle), torch.where(small, uniform_ok, best_fisher_ok)


def von_mises(kappa: torch.Tensor, generator=None) -> torch.Tensor:
    """Angles in ``(-pi, pi]`` with density ``exp(kappa cos phi) / (2 pi I_0(kappa))``, one per
    entry of ``kappa >= 0`` (any shape)."""
    flat = kappa.reshape(-1)
    return rejection_sample(_von_mises_proposal, flat, generator).reshape(kappa.shape)


def _su2_real_part_proposal(lam: torch.Tensor, generator):
    """Kennedy and Pendleton (1985) for ``lambda >= _SMALL_LAMBDA``; below, ``x_0`` from
    ``exp(lambda x_0)`` on ``[-1, 1]`` accepted with probability ``sqrt(1 - x_0^2)``."""
    u1, u2, u3, u4 = (_uniform(lam.shape, generator, lam) for _ in range(4))
    # Gamma(3/2, rate lambda): an exponential and half a squared Gaussian (Box-Muller)
    delta = -(torch.log(u1) + torch.cos(2 * math.pi * u2) ** 2 * torch.log(u3)) / lam.clamp_min(_SMALL_LAMBDA)
    kennedy_pendleton_ok = u4 ** 2 <= 1 - delta / 2
    tiny = lam.clamp_min(1e-30)
    exponential = (1 + torch.log1p((1 - u1) * torch.expm1(-2 * tiny)) / tiny).clamp(-1, 1)
    exponential_ok = u4 ** 2 <= 1 - exponential ** 2
    small = lam < _SMALL_LAMBDA
    return torch.where(small, exponential, 1 - delta), torch.where(small, exponential_ok, kennedy_pendleton_ok)


def su2_heat_bath_quaternions(lam: torch.Tensor, generator=None) -> torch.Tensor:
    """Unit quaternions ``[..., 4]`` with density ``proportional to exp(lambda x_0)`` under Haar
    measure on SU(2) (``lambda >= 0``, any shape): ``x_0`` from ``sqrt(1 - x_0^2) exp(lambda
    x_0)``, the rest uniform on the sphere of radius ``sqrt(1 - x_0^2)``."""
    flat = lam.reshape(-1)
    x0 = rejection_sample(_su2_real_part_proposal, flat, generator)
    cos_polar = 2 * _uniform(flat.shape, generator, flat) - 1
    azimuth = 2 * math.pi * _uniform(flat.shape, generator, flat)
    radius = torch.sqrt((1 - x0 ** 2).clamp_min(0))
    sin_polar = torch.sqrt((1 - cos_polar ** 2).clamp_min(0))
    quaternions = torch.stack([x0, radius * sin_polar * torch.cos(azimuth), radius * sin_polar * torch.sin(azimuth),
                               radius * cos_polar], dim=-1)
    return quaternions.reshape(*lam.shape, 4)


def quaternion_to_su2(q: torch.Tensor, dtype) -> torch.Tensor:
    """``[..., 4]`` real -> ``[..., 2, 2]`` complex ``q_0 + i q_k sigma_k`` (rows ``(q_0 + i q_3, q_2 +
    i q_1)`` and ``(-q_2 + i q_1, q_0 - i q_3)``)."""
    a = torch.complex(q[..., 0], q[..., 3]).to(dtype)
    b = torch.complex(q[..., 2], q[..., 1]).to(dtype)
    return torch.stack([torch.stack([a, b], -1), torch.stack([-b.conj(), a.conj()], -1)], -2)


def _quaternion_part(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, V)`` with ``k V`` the quaternion part ``(w + sigma_2 w* sigma_2) / 2`` of the 2x2 blocks
    ``w`` (``k >= 0``, ``V`` in SU(2); ``V = 1`` where the part is 0): ``Re tr r w = k Re tr r V``
    for every ``r`` in SU(2)."""
    a, b, c, d = w[..., 0, 0], w[..., 0, 1], w[..., 1, 0], w[..., 1, 1]
    p, q = (a + d.conj()) / 2, (b - c.conj()) / 2  # rows (p, q), (-q*, p*)
    k = torch.sqrt(p.abs() ** 2 + q.abs() ** 2)
    safe = k.clamp_min(1e-300)
    p, q = torch.where(k > 0, p / safe, 1), q / safe
    return k, torch.stack([torch.stack([p, q], -1), torch.stack([-q.conj(), p.conj()], -1)], -2)


def _su2_heat_bath_factor(w: torch.Tensor, beta_over_n: float, generator) -> torch.Tensor:
    """``r`` in SU(2), ``[..., 2, 2]``, drawn from ``exp(beta_over_n Re tr r w)`` (module docstring)."""
    k, v = _quaternion_part(w)
    x = quaternion_to_su2(su2_heat_bath_quaternions(2 * beta_over_n * k, generator), w.dtype)
    return x @ v.mH  # X = r V


def _su2_reflection_factor(w: torch.Tensor) -> torch.Tensor:
    """``r = (V^dagger)^2``: ``r V = V^dagger`` has the real trace of ``V``, so ``Re tr r w`` is that
    of ``w``; applied twice it is the identity (the next ``V`` is ``V^dagger``)."""
    _, v = _quaternion_part(w)
    return v.mH @ v.mH


def _subgroup_sweep(links: torch.Tensor, staples: torch.Tensor, factor) -> torch.Tensor:
    """``U -> r U`` for ``r = factor(w)`` in each SU(2) subgroup ``(i, j)`` in turn, ``w`` the
    ``(i, j)`` block of ``U A`` (Cabibbo-Marinari)."""
    n = links.shape[-1]
    moved, product = links.clone(), matmul(links, staples)
    for i, j in itertools.combinations(range(n), 2):
        block = torch.stack([torch.stack([product[..., i, i], product[..., i, j]], -1),
                             torch.stack([product[..., j, i], product[..., j, j]], -1)], -2)
        r = factor(block)
        for matrix in (moved, product):  # rows i and j of r M
            row_i, row_j = matrix[..., i, :], matrix[..., j, :]
            matrix[..., i, :], matrix[..., j, :] = (r[..., 0, 0, None] * row_i + r[..., 0, 1, None] * row_j,
                                                    r[..., 1, 0, None] * row_i + r[..., 1, 1, None] * row_j)
    return moved


def sun_heat_bath_links(links: torch.Tensor, staples: torch.Tensor, beta: float, generator=None) -> torch.Tensor:
    """New links ``[..., N, N]`` drawn, independently of ``links`` but for the subgroup sequence,
    from ``exp((beta / N) Re tr U A)`` by Cabibbo-Marinari (module docstring); ``staples`` the
    staple sums ``A`` of the same shape."""
    n = links.shape[-1]
    return _subgroup_sweep(links, staples, lambda w: _su2_heat_bath_factor(w, beta / n, generator))


def sun_overrelaxed_links(links: torch.Tensor, staples: torch.Tensor) -> torch.Tensor:
    """Overrelaxed links: in each SU(2) subgroup the reflection that keeps ``Re tr U A``
    (Creutz, Phys. Rev. D 36 (1987) 515; Brown and Woch, Phys. Rev. Lett. 58 (1987) 2394)."""
    return _subgroup_sweep(links, staples, _su2_reflection_factor)


def check_pure_gauge(theory) -> None:
    """An :class:`InputError` unless ``theory`` is a pure Wilson gauge theory on even extents at
    ``beta >= 0`` (what the heat bath updates)."""
    _check_action(theory)
    staple_link_mask(theory.lattice_shape, 0, 0)  # even extents, or a clear error


def _check_action(theory) -> None:
    """:func:`check_pure_gauge` but the extents, which every sweep checks through its (cached) masks."""
    if not getattr(theory, "is_gauge_theory", False) or theory.name not in ("u1",) and not theory.name.startswith("su"):
        raise InputError(f"the heat bath updates pure Wilson gauge theories (u1, su2, su3, ...); "
                         f"{theory.name} is not one")
    if theory.couplings["beta"] < 0:
        raise InputError(f"the heat bath needs beta >= 0, got {theory.couplings['beta']}")


@functools.lru_cache(maxsize=64)
def _mask_indices(lattice_shape: tuple, mu: int, parity: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The active sites of mask ``(mu, parity)`` (flat indices) and the links of their staples
    (:func:`gaugeflow.flows.staple_coupling.staple_neighbours`, ``[D-1, 6, n_active]``)."""
    active = staple_link_mask(lattice_shape, mu, parity)
    return (active.flatten().nonzero()[:, 0].to(device),
            staple_neighbours(lattice_shape, mu, active).to(device))


def _sweep(theory, field: torch.Tensor, u1_update, sun_update) -> torch.Tensor:
    """Every link updated, mask by mask, by ``u1_update(theta, A)`` (angles ``[n, B]``, staple
    sums ``A``) or ``sun_update(U, A)`` (``[n, B, N, N]``), in float64 (complex128)."""
    _check_action(theory)
    u1 = theory.name == "u1"
    d = theory.dimension
    # site-major [D V, B, ...] for the whole sweep: gathers and writes of links are then rows
    # (indexing, 4 times faster than index_select on complex tensors).  A copy always: the field
    # a sweep returns is a view of this layout, and .contiguous() would write into it
    links = field.flatten(1, d + 1).transpose(0, 1).clone(memory_format=torch.contiguous_format)
    for mu in range(d):
        for parity in (0, 1):
            active, neighbours = _mask_indices(theory.lattice_shape, mu, parity, field.device)
            sites = mu * theory.volume + active
            f = links[neighbours.flatten()].unflatten(0, neighbours.shape)  # [D-1, 6, n, B, ...]
            if u1:
                angles = torch.stack(u1_staples(f.to(torch.float64).unbind(1)))
                staples = torch.polar(torch.ones_like(angles), angles).sum((0, 1))  # A, [n_active, B]
                new = u1_update(links[sites].to(torch.float64), staples)
            else:
                up, down = sun_staples(f.to(torch.complex128).unbind(1))
                new = sun_update(links[sites].to(torch.complex128), (up + down).sum(0))  # A, [n_active, B, N, N]
            links.index_copy_(0, sites, new.to(links.dtype))
    return links.transpose(0, 1).reshape(field.shape)


def heat_bath_sweep(theory, field: torch.Tensor, generator=None) -> torch.Tensor:
    """One sweep: every link of every chain of ``field`` (``[B, D, x...]`` angles for U(1),
    ``[B, D, x..., N, N]`` for SU(N)) drawn from its conditional at the theory's ``beta``, mask by
    mask.  Returns a new tensor of ``field``'s dtype, drawn in float64 (complex128)."""
    beta = theory.couplings["beta"]
    return _sweep(theory, field,
                  lambda theta, a: wrap_angle(von_mises(beta * a.abs(), generator) - torch.angle(a)),
                  lambda links, staples: sun_heat_bath_links(links, staples, beta, generator))


def overrelaxation_sweep(theory, field: torch.Tensor) -> torch.Tensor:
    """One overrelaxation sweep: every link reflected, mask by mask, so that its local action is
    unchanged (U(1): ``theta + arg A -> -(theta + arg A)``; SU(N): :func:`sun_overrelaxed_links`).
    Deterministic and microcanonical (``S`` unchanged to rounding), it leaves ``exp(-S)``
    invariant and moves the links much further than a heat-bath step; interleaved with heat-bath
    sweeps, which change ``S``, it shortens autocorrelations of long-range observables (Adler,
    Phys. Rev. D 23 (1981) 2901; Creutz 1987)."""
    return _sweep(theory, field,
                  lambda theta, a: wrap_angle(-theta - 2 * torch.angle(a)),
                  sun_overrelaxed_links)


class HeatBathSampler:
    """``sweeps`` times, one heat-bath sweep (:func:`heat_bath_sweep`) followed by
    ``overrelaxation`` overrelaxation sweeps (:func:`overrelaxation_sweep`), per update; every
    update is accepted, with ``delta_h = 0``.  For pure Wilson gauge theories only; chains
    decorrelate like a local algorithm (slowly near the continuum), at a fraction of the cost of an
    HMC trajectory."""

    name = "heatbath"

    def __init__(self, theory, sweeps: int = 1, overrelaxation: int = 0):
        check_pure_gauge(theory)
        if int(sweeps) < 1:
            raise InputError(f"sweeps per update must be >= 1, got {sweeps}")
        if int(overrelaxation) < 0:
            raise InputError(f"overrelaxation sweeps must be >= 0, got {overrelaxation}")
        self.theory = theory
        self.sweeps = int(sweeps)
        self.overrelaxation = int(overrelaxation)

    def run_parameters(self) -> dict:
        return {"heat_bath_sweeps": self.sweeps, "overrelaxation_sweeps": self.overrelaxation}

    def _advance(self, field, generator):
        field = heat_bath_sweep(self.theory, field, generator)
        for _ in range(self.overrelaxation):
            field = overrelaxation_sweep(self.theory, field)
        return field

    def thermalise(self, field, n_therm, generator, progress=False, received=None):
        for _ in range(n_therm):
            if received is not None and received.get("signal"):
                break
            field = self._advance(field, generator)
        return field

    def update(self, field, generator) -> TrajectoryResult:
        for _ in range(self.sweeps):
            field = self._advance(field, generator)
        batch = field.shape[0]
        return TrajectoryResult(field, torch.ones(batch, dtype=torch.bool, device=field.device),
                                torch.zeros(batch, dtype=torch.float64, device=field.device))

    def resume_attributes(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass

    def postfix(self) -> dict:
        return {"sweeps": self.sweeps, "overrelaxation": self.overrelaxation}
