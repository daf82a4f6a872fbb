"""Wilson fermions in two dimensions, batched over configurations.

Spinors are ``[batch, spin, x_0, x_1]`` complex (two spin components); U(1) links are angles
``[batch, mu, x_0, x_1]``.  The Wilson Dirac operator in hopping-parameter form,

    D psi(x) = psi(x) - kappa sum_mu [ (1 - gamma_mu) U_mu(x) psi(x + mu)
                                      + (1 + gamma_mu) U_mu(x - mu)^* psi(x - mu) ],

with ``gamma_0 = sigma_1``, ``gamma_1 = sigma_2``, ``gamma_5 = sigma_3`` and antiperiodic
boundary conditions in time (the last axis).  It is gamma5-Hermitian,
``D^dagger = gamma_5 D gamma_5``, and gauge covariant, ``D[U^Omega] = Omega D[U] Omega^dagger``.
Free-field eigenvalues: ``1 - 2 kappa sum_mu cos p_mu +- 2 i kappa sqrt(sum_mu sin^2 p_mu)``
with ``p_0 = 2 pi n / L_0`` and ``p_1 = 2 pi (n + 1/2) / L_1``.

:func:`apply_wilson` is matrix-free; :func:`wilson_matrix` builds the dense ``[B, 2V, 2V]``
matrix by applying it to unit vectors (small lattices; row/column index ``spin * V + site``).
:func:`conjugate_gradient` solves ``D^dagger D x = b`` batched, for pseudofermions.

Even-odd preconditioning (DeGrand and Rossi, Comput. Phys. Commun. 60 (1990) 211): the
hopping term ``H`` (``D = 1 - kappa H``) only connects sites of opposite parity
``(x_0 + x_1) mod 2``, so with the sites ordered (even, odd)

    D = [[1, -kappa H_eo], [-kappa H_oe, 1]],    det D = det(D_ee) det(D_oo - D_oe D_ee^-1 D_eo)
                                                       = det(1 - kappa^2 H_oe H_eo) =: det D_hat,

``D_ee = 1`` being trivial in the hopping form.  :class:`EvenOddWilson` applies the Schur
complement ``D_hat`` on spinors of the odd sites only, stored compressed as ``[B, spin,
V/2]`` (odd sites in lexicographic order, :class:`Checkerboard`); ``D_hat`` is
gamma5-Hermitian like ``D`` and better conditioned, so conjugate gradient on ``D_hat^dagger
D_hat`` needs fewer iterations on half the sites.  It needs even extents.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .errors import InputError
from .geometry import shift

GAMMA = torch.tensor([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]]], dtype=torch.complex128)  # gamma_0, gamma_1
GAMMA5 = torch.tensor([[1, 0], [0, -1]], dtype=torch.complex128)
SPIN_AXIS, SITE_AXIS = 1, 2


def _spin(matrix: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """A 2x2 spin matrix acting on ``psi [B, 2, x...]``."""
    return torch.einsum("st,bt...->bs...", matrix.to(psi.dtype).to(psi.device), psi)


def _boundary_signs(lattice_shape, steps: int, device) -> torch.Tensor:
    """``[x...]``: -1 where a shift by ``steps`` along time wraps around (antiperiodic), else 1."""
    time_extent = lattice_shape[-1]
    t = torch.arange(time_extent, device=device)
    wraps = (t + steps >= time_extent) | (t + steps < 0)
    signs = torch.where(wraps, -1.0, 1.0).to(torch.float64)
    return signs.view(*[1] * (len(lattice_shape) - 1), -1).expand(*lattice_shape)


def _hop(psi: torch.Tensor, mu: int, steps: int) -> torch.Tensor:
    """``psi(x + steps * mu)`` with the fermions' boundary conditions."""
    shifted = shift(psi, mu, steps, SITE_AXIS)
    if mu == psi.dim() - 3:  # time: the last lattice axis
        shifted = shifted * _boundary_signs(psi.shape[SITE_AXIS:], steps, psi.device)
    return shifted


def apply_wilson(theta: torch.Tensor, psi: torch.Tensor, kappa: float) -> torch.Tensor:
    """``D psi`` for U(1) link angles ``theta [B, 2, L0, L1]`` and spinors ``psi [B, 2, L0, L1]``."""
    if theta.dim() != 4 or theta.shape[1] != 2:
        raise InputError(f"Wilson fermions are implemented in two dimensions; got links of shape {list(theta.shape)}")
    links = torch.polar(torch.ones_like(theta), theta).to(psi.dtype)
    eye = torch.eye(2, dtype=psi.dtype, device=psi.device)
    gamma = GAMMA.to(psi.device)
    hopping = torch.zeros_like(psi)
    for mu in range(2):
        forward = links[:, mu, None] * _hop(psi, mu, 1)
        backward = _hop(links[:, mu, None].conj() * psi, mu, -1)  # U_mu(x - mu)^* psi(x - mu)
        hopping = hopping + _spin(eye - gamma[mu], forward) + _spin(eye + gamma[mu], backward)
    return psi - kappa * hopping


def apply_wilson_dagger(theta: torch.Tensor, psi: torch.Tensor, kappa: float) -> torch.Tensor:
    """``D^dagger psi = gamma_5 D gamma_5 psi``."""
    return _spin(GAMMA5, apply_wilson(theta, _spin(GAMMA5, psi), kappa))


def _dense(apply, theta: torch.Tensor, spinor_shape) -> torch.Tensor:
    """The matrix ``[B, n, n]`` of the linear map ``psi -> apply(theta, psi)`` on spinors of shape
    ``spinor_shape`` (row-major index), per configuration: the map applied to every unit vector,
    all configurations in one batch (differentiable in ``theta``)."""
    batch, n = theta.shape[0], math.prod(spinor_shape)
    basis = torch.eye(n, dtype=torch.complex128, device=theta.device).reshape(n, *spinor_shape)
    images = apply(theta.repeat_interleave(n, 0), basis.repeat(batch, *[1] * len(spinor_shape)))
    return images.reshape(batch, n, n).transpose(1, 2)


def wilson_matrix(theta: torch.Tensor, kappa: float) -> torch.Tensor:
    """Dense ``D`` ``[B, 2V, 2V]`` (differentiable in ``theta``), index ``spin * V + site``."""
    return _dense(lambda links, psi: apply_wilson(links, psi, kappa), theta, (2, *theta.shape[2:]))


EVEN, ODD = 0, 1


class Checkerboard:
    """Even and odd sites of a 2D lattice with even extents, and the neighbour tables of hops
    between them.

    ``sites[p]`` are the flat indices ``x_0 * L_1 + x_1`` of the sites of parity ``p`` in
    lexicographic order: a spinor on parity ``p`` is stored as ``[B, spin, V/2]`` in that order.
    ``hops[p]`` lists, for every hop onto parity ``p``, ``(mu, step, source, link, sign)``:
    the compressed indices (on parity ``1 - p``) of ``x + step mu``, the flat sites of the link
    it crosses (``U_mu(x)`` forwards, ``U_mu(x - mu)`` backwards) and the sign of the
    antiperiodic boundary in time.
    """

    def __init__(self, lattice_shape, device=None):
        extents = tuple(int(extent) for extent in lattice_shape)
        if len(extents) != 2 or any(extent % 2 for extent in extents):
            raise InputError(f"even-odd preconditioning needs a 2D lattice with even extents, got {list(extents)}")
        coordinates = torch.cartesian_prod(*(torch.arange(extent) for extent in extents)).T  # [2, V], lexicographic
        parity = coordinates.sum(0) % 2
        self.sites = [torch.nonzero(parity == p).flatten() for p in (EVEN, ODD)]
        position = torch.empty(coordinates.shape[1], dtype=torch.long)
        for sites in self.sites:
            position[sites] = torch.arange(len(sites))

        def flat(x):
            return x[0] * extents[1] + x[1]

        self.hops = []
        for p in (EVEN, ODD):
            here = coordinates[:, self.sites[p]]
            hops = []
            for mu in range(2):
                for step in (1, -1):
                    there = here.clone()
                    there[mu] = (here[mu] + step) % extents[mu]
                    wraps = (here[mu] + step >= extents[mu]) | (here[mu] + step < 0)
                    sign = torch.where(wraps & (mu == 1), -1.0, 1.0).to(torch.float64)  # time: the last axis
                    link = flat(here if step == 1 else there)
                    hops.append((mu, step, position[flat(there)].to(device), link.to(device), sign.to(device)))
            self.hops.append(hops)


@functools.lru_cache(maxsize=16)
def checkerboard(lattice_shape: tuple[int, ...], device=None) -> Checkerboard:
    return Checkerboard(lattice_shape, device)


class EvenOddWilson:
    """The Wilson operator of one batch of gauge fields in the even-odd basis: the hopping
    blocks ``H_eo``, ``H_oe`` and the Schur complement ``D_hat = 1 - kappa^2 H_oe H_eo`` on the
    odd sites (module docstring), with ``D_hat^dagger = gamma_5 D_hat gamma_5``.  The link
    factors are computed once here, so build one per gauge field and solve with it;
    differentiable in ``theta``."""

    def __init__(self, theta: torch.Tensor, kappa: float):
        if theta.dim() != 4 or theta.shape[1] != 2:
            raise InputError(f"Wilson fermions are implemented in two dimensions; got links of shape {list(theta.shape)}")
        self.kappa = kappa
        board = checkerboard(tuple(theta.shape[2:]), theta.device)
        links = torch.polar(torch.ones_like(theta), theta).to(torch.complex128).flatten(2)  # [B, mu, V]
        eye = torch.eye(2, dtype=torch.complex128, device=theta.device)
        gamma = GAMMA.to(theta.device)
        self.hops = []  # per target parity: (projector 1 - step gamma_mu, source indices, link factor [B, V/2])
        for hops in board.hops:
            terms = []
            for mu, step, source, link, sign in hops:
                factor = links[:, mu, link] if step == 1 else links[:, mu, link].conj()
                terms.append((eye - step * gamma[mu], source, factor * sign))
            self.hops.append(terms)

    def hop(self, psi: torch.Tensor, to_parity: int) -> torch.Tensor:
        """``H_{p, 1-p} psi`` for ``psi [B, 2, V/2]`` on parity ``1 - p``, ``p = to_parity``."""
        return sum(_spin(projector, factor[:, None] * psi[:, :, source]) for projector, source, factor in self.hops[to_parity])

    def apply(self, psi: torch.Tensor) -> torch.Tensor:
        """``D_hat psi = psi - kappa^2 H_oe H_eo psi`` for ``psi [B, 2, V/2]`` on the odd sites."""
        return psi - self.kappa**2 * self.hop(self.hop(psi, EVEN), ODD)

    def apply_dagger(self, psi: torch.Tensor) -> torch.Tensor:
        return _spin(GAMMA5, self.apply(_spin(GAMMA5, psi)))

    def apply_normal(self, psi: torch.Tensor) -> torch.Tensor:
        """``D_hat^dagger D_hat psi``, Hermitian positive definite: the operator conjugate gradient inverts."""
        return self.apply_dagger(self.apply(psi))


def schur_matrix(theta: torch.Tensor, kappa: float) -> torch.Tensor:
    """Dense ``D_hat`` ``[B, V, V]`` on the odd sites (differentiable), index ``spin * V/2 + odd site``."""
    return _dense(lambda links, psi: EvenOddWilson(links, kappa).apply(psi), theta, (2, theta[0, 0].numel() // 2))


@dataclass
class SolveReport:
    iterations: int
    residual: float  # largest relative residual |b - M x| / |b| over the batch


def conjugate_gradient(apply_normal, b: torch.Tensor, tolerance: float = 1e-12, max_iterations: int = 5000):
    """Solve ``M x = b`` for Hermitian positive-definite ``M`` (given as ``apply_normal``),
    batched: every configuration iterates until its relative residual is below ``tolerance``
    (Hestenes and Stiefel 1952).  Returns ``(x, SolveReport)``; raises if it does not converge."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    dims = tuple(range(1, b.dim()))
    norm_b = torch.linalg.vector_norm(b, dim=dims).clamp(min=1e-300)
    rr = (r.conj() * r).real.sum(dims)
    for iteration in range(1, max_iterations + 1):
        mp = apply_normal(p)
        alpha = rr / (p.conj() * mp).real.sum(dims)
        shape = (-1, *[1] * (b.dim() - 1))
        x = x + alpha.view(shape) * p
        r = r - alpha.view(shape) * mp
        rr_new = (r.conj() * r).real.sum(dims)
        residual = (torch.sqrt(rr_new) / norm_b).max().item()
        if residual < tolerance:
            return x, SolveReport(iteration, residual)
        p = r + (rr_new / rr).view(shape) * p
        rr = rr_new
    raise InputError(f"conjugate gradient did not converge in {max_iterations} iterations (residual {residual:.1e}); "
                     "kappa is too close to its critical value for these configurations")
