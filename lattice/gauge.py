"""Gauge-link geometry shared by all gauge groups.

Links are matrices ``U_mu(x)`` stored as ``[batch, mu, x_0, ..., x_{D-1}, N, N]`` (U(1) links
become ``1 x 1`` complex matrices through :func:`u1_links_to_matrices`).  ``U_mu(x)`` is the
parallel transporter from ``x + mu_hat`` to ``x``, so under a gauge transformation
``Omega(x)``

    U_mu(x) -> Omega(x) U_mu(x) Omega(x + mu_hat)^dagger,

and the plaquette ``U_{mu nu}(x) = U_mu(x) U_nu(x+mu) U_mu(x+nu)^dagger U_nu(x)^dagger``
transforms by conjugation, so its trace is gauge invariant.
"""

from __future__ import annotations

import itertools
import math

import torch

from .errors import InputError
from .geometry import shift
from .groups import dagger, matmul

SITE_AXIS = 1  # after selecting a direction, sites start at axis 1


def u1_links_to_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``[B, D, x...]`` angles -> ``[B, D, x..., 1, 1]`` complex U(1) matrices."""
    return torch.polar(torch.ones_like(angles), angles)[..., None, None]


def _dimension(links: torch.Tensor) -> int:
    return links.shape[1]


def _site_mean(values: torch.Tensor, n_site_axes: int) -> torch.Tensor:
    return values.reshape(*values.shape[: values.dim() - n_site_axes], -1).mean(-1) if n_site_axes else values


def plaquettes(links: torch.Tensor, mu: int, nu: int) -> torch.Tensor:
    """Plaquette matrices ``U_{mu nu}(x)``, shape ``[B, x..., N, N]``."""
    u_mu, u_nu = links[:, mu], links[:, nu]
    forward = matmul(u_mu, shift(u_nu, mu, 1, SITE_AXIS))
    return matmul(forward, dagger(matmul(u_nu, shift(u_mu, nu, 1, SITE_AXIS))))


def staple_sum(links: torch.Tensor, mu: int) -> torch.Tensor:
    """Sum of the ``2 (D-1)`` staples ``A_mu(x)``, ``[B, x..., N, N]``: ``U_mu(x) A_mu(x)`` is the
    sum of the plaquettes through ``U_mu(x)``, oriented to start with it, so the Wilson action
    holds the link through ``-(beta / N) Re tr U_mu(x) A_mu(x)`` alone."""
    total = torch.zeros_like(links[:, mu])
    for nu in range(_dimension(links)):
        if nu == mu:
            continue
        u_mu, u_nu = links[:, mu], links[:, nu]
        up = matmul(matmul(shift(u_nu, mu, 1, SITE_AXIS), dagger(shift(u_mu, nu, 1, SITE_AXIS))), dagger(u_nu))
        u_nu_down = shift(u_nu, nu, -1, SITE_AXIS)
        down = matmul(matmul(dagger(shift(u_nu_down, mu, 1, SITE_AXIS)), dagger(shift(u_mu, nu, -1, SITE_AXIS))), u_nu_down)
        total = total + up + down
    return total


def planes(dimension: int):
    """All ordered pairs ``mu < nu``."""
    return list(itertools.combinations(range(dimension), 2))


def average_plaquette(links: torch.Tensor) -> torch.Tensor:
    """``(1 / (N * n_planes * V)) sum_{x, mu<nu} Re tr U_{mu nu}(x)``, 1 at unit links; ``[B]``."""
    d, n = _dimension(links), links.shape[-1]
    total = 0.0
    for mu, nu in planes(d):
        total = total + _site_mean(torch.diagonal(plaquettes(links, mu, nu), dim1=-2, dim2=-1).real.sum(-1), d)
    return total / (n * len(planes(d)))


def _line(links: torch.Tensor, mu: int, length: int) -> torch.Tensor:
    """Straight Wilson line ``U_mu(x) U_mu(x+mu) ... U_mu(x+(length-1) mu)``."""
    line = links[:, mu]
    for k in range(1, length):
        line = line @ shift(links[:, mu], mu, k, SITE_AXIS)
    return line


def wilson_loop(links: torch.Tensor, extent_r: int, extent_t: int) -> torch.Tensor:
    """Rectangular ``R x T`` Wilson loop ``(1/N) Re tr W``, averaged over sites, planes and
    both orientations of the rectangle in each plane; ``[B]``."""
    d, n = _dimension(links), links.shape[-1]
    values = []
    for mu, nu in planes(d):
        orientations = {(extent_r, extent_t), (extent_t, extent_r)}
        for r, t in orientations:
            bottom, right = _line(links, mu, r), shift(_line(links, nu, t), mu, r, SITE_AXIS)
            top, left = shift(_line(links, mu, r), nu, t, SITE_AXIS), _line(links, nu, t)
            loop = bottom @ right @ dagger(top) @ dagger(left)
            values.append(_site_mean(torch.diagonal(loop, dim1=-2, dim2=-1).real.sum(-1), d) / n)
    return torch.stack(values).mean(0)


def polyakov_loop(links: torch.Tensor) -> torch.Tensor:
    """Spatially averaged Polyakov loop ``(1/N) tr prod_t U_{D-1}(x, t)`` (complex, ``[B]``).

    Time is the last lattice axis.
    """
    d, n = _dimension(links), links.shape[-1]
    extent = links.shape[1 + d]
    line = _line(links, d - 1, extent)
    trace = torch.diagonal(line, dim1=-2, dim2=-1).sum(-1) / n
    return _site_mean(trace, d)  # every time slice carries the same trace up to conjugation


def clover_field_strength(links: torch.Tensor, mu: int, nu: int) -> torch.Tensor:
    """Hermitian, traceless clover field strength ``F_{mu nu}(x)``, ``[B, x..., N, N]``.

    ``Q_{mu nu}`` is the sum of the four plaquettes in the ``mu nu`` plane that start and end
    at ``x`` (same orientation); ``F = (Q - Q^dagger) / (8 i)`` minus its trace.
    """
    u_mu, u_nu = links[:, mu], links[:, nu]

    def at(field, **offsets):
        for axis, steps in offsets.items():
            field = shift(field, {"mu": mu, "nu": nu}[axis], steps, SITE_AXIS)
        return field

    leaves = (
        u_mu @ at(u_nu, mu=1) @ dagger(at(u_mu, nu=1)) @ dagger(u_nu),
        u_nu @ dagger(at(u_mu, mu=-1, nu=1)) @ dagger(at(u_nu, mu=-1)) @ at(u_mu, mu=-1),
        dagger(at(u_mu, mu=-1)) @ dagger(at(u_nu, mu=-1, nu=-1)) @ at(u_mu, mu=-1, nu=-1) @ at(u_nu, nu=-1),
        dagger(at(u_nu, nu=-1)) @ at(u_mu, nu=-1) @ at(u_nu, mu=1, nu=-1) @ dagger(u_mu),
    )
    clover = sum(leaves)
    field_strength = (clover - dagger(clover)) / 8j
    n = links.shape[-1]
    trace = torch.diagonal(field_strength, dim1=-2, dim2=-1).sum(-1)
    eye = torch.eye(n, dtype=links.dtype, device=links.device)
    return field_strength - (trace / n)[..., None, None] * eye


def clover_topological_charge(links: torch.Tensor) -> torch.Tensor:
    """4D clover topological charge ``Q = (1/32 pi^2) sum_x eps_{mu nu rho sigma} tr F_{mu nu} F_{rho sigma}``.

    With the 8 equivalent orderings of the epsilon sum collected this is
    ``(1/4 pi^2) sum_x tr(F01 F23 - F02 F13 + F03 F12)``; ``[B]`` float64.
    A constant abelian field with flux ``2 pi n / (L0 L1)`` in the 01 plane and
    ``2 pi m / (L2 L3)`` in the 23 plane gives ``Q -> 2 n m`` for SU(2) as fluxes shrink.
    """
    if _dimension(links) != 4:
        raise InputError("the clover topological charge is defined for 4-dimensional lattices")

    def tr(a, b):
        return torch.diagonal(a @ b, dim1=-2, dim2=-1).real.sum(-1)

    f = {(mu, nu): clover_field_strength(links, mu, nu) for mu, nu in planes(4)}
    density = tr(f[0, 1], f[2, 3]) - tr(f[0, 2], f[1, 3]) + tr(f[0, 3], f[1, 2])
    return density.reshape(density.shape[0], -1).to(torch.float64).sum(-1) / (4 * math.pi**2)


def gauge_transform(links: torch.Tensor, transformation: torch.Tensor) -> torch.Tensor:
    """``U_mu(x) -> Omega(x) U_mu(x) Omega(x + mu)^dagger`` for ``Omega`` of shape ``[B, x..., N, N]``."""
    d = _dimension(links)
    return torch.stack(
        [transformation @ links[:, mu] @ dagger(shift(transformation, mu, 1, SITE_AXIS)) for mu in range(d)], dim=1
    )
