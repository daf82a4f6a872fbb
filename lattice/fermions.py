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
"""

from __future__ import annotations

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


def wilson_matrix(theta: torch.Tensor, kappa: float) -> torch.Tensor:
    """Dense ``D`` ``[B, 2V, 2V]`` (differentiable in ``theta``), index ``spin * V + site``: ``D``
    applied to every unit vector, all configurations in one batch."""
    batch, lattice = theta.shape[0], theta.shape[2:]
    n = 2 * theta[0, 0].numel()
    basis = torch.eye(n, dtype=torch.complex128, device=theta.device).reshape(n, 2, *lattice)
    images = apply_wilson(theta.repeat_interleave(n, 0), basis.repeat(batch, *[1] * (basis.dim() - 1)), kappa)
    return images.reshape(batch, n, n).transpose(1, 2)


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
