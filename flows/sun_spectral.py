"""Spectral (eigenphase) maps for conjugation-equivariant SU(N) flows -- private helpers.

Used by :mod:`gaugeflow.flows.sun_coupling`.  A matrix ``P`` in SU(N) is written
``P = V diag(exp(i theta)) V^dagger``; a conjugation-equivariant map changes the eigenphases
``theta -> theta'`` and keeps ``V``.  For the map to be well defined on SU(N) it must commute
with the Weyl group (permutations of the eigenvalues) and respect the ``2 pi`` periodicity of
each phase, i.e. it must be a bijection of the maximal torus that commutes with the affine Weyl
group.  The simplest way to build one is through a fundamental domain of that group, the
*canonical cell* (Weyl alcove)

    A = { theta_1 >= theta_2 >= ... >= theta_N >= theta_1 - 2 pi,  sum theta = 0 }:

every SU(N) matrix is conjugate to exactly one ``diag(exp(i theta))`` with ``theta`` in ``A``
(uniqueness up to the measure-zero boundary of ``A``).  Any bijection of ``A`` onto itself,
applied to the canonical representative and carried back by the same permutation, is an
equivariant bijection of the torus, hence a conjugation-equivariant bijection of SU(N).

Gap coordinates.  On ``A`` the ``N`` gaps

    g_k = theta_k - theta_{k+1}  (k < N),      g_N = theta_N - theta_1 + 2 pi

are non-negative and sum to ``2 pi``, so ``A`` is the simplex ``{g >= 0, sum g = 2 pi}``;
``theta_1..theta_{N-1}`` and ``g_1..g_{N-1}`` are related by a constant invertible linear
map, so Jacobians with respect to either set agree.  Faces of the simplex (``g_k = 0``) are the
walls where two eigenvalues coincide.

Simplex <-> cube (stick breaking).  ``u_k = g_k / R_k`` with ``R_k = g_k + ... + g_N``
(remaining stick, ``R_1 = 2 pi``), ``k = 1..N-1``, maps the simplex bijectively onto
``[0, 1]^{N-1}`` (up to measure-zero edges); ``g_k = u_k R_k``, ``R_{k+1} = R_k - g_k``.  The
Jacobian ``dg/du`` is triangular with diagonal ``R_k``, so ``log|det dg/du| = sum_k log R_k``.
Applying an increasing bijection ``h_k`` of ``[0, 1]`` (fixing 0 and 1) to every ``u_k`` maps
the simplex onto itself and each face to itself, so the extension to the whole torus is
continuous across the walls.  For SU(2) this is a monotone bijection of ``phi = theta_1``
on ``[0, pi]`` (``u_1 = phi / pi``).

Haar measure.  By the Weyl integration formula the Haar measure of SU(N), pushed to the
eigenphases, has density ``prod_{i<j} |e^{i theta_i} - e^{i theta_j}|^2`` with respect to
``d theta_1 ... d theta_{N-1}``; in the cell ``|e^{i theta_i} - e^{i theta_j}| = 2 sin(G_ij / 2)``
with ``G_ij = g_i + ... + g_{j-1}`` in ``[0, 2 pi]``.
"""

from __future__ import annotations

import math

import torch
from normflows.utils.splines import rational_quadratic_spline

from .transforms import spline_derivative_shift

TWO_PI = 2 * math.pi
_TINY = 1e-300


def spline_param_count(n_bins: int) -> int:
    """Number of unconstrained parameters per rational-quadratic spline (widths, heights, derivatives)."""
    return 3 * n_bins + 1


def identity_spline_params(n_bins: int) -> torch.Tensor:
    """Raw spline parameters (as taken by :func:`cell_transform`) giving the identity spline: zeros.

    Equal widths and heights; every knot derivative 1.
    """
    return torch.zeros(spline_param_count(n_bins))


def canonical_decomposition(matrices: torch.Tensor):
    """Eigendecompose SU(N) matrices and bring the eigenphases into the canonical cell.

    Returns ``(gaps [..., N], vectors [..., N, N])`` with ``matrices = vectors diag(exp(i theta))
    vectors^dagger`` where ``theta`` (the canonical, sorted phases) has gaps ``gaps``; the columns of
    ``vectors`` are ordered like ``theta``.
    """
    n = matrices.shape[-1]
    values, vectors = torch.linalg.eig(matrices)
    theta = torch.angle(values)  # (-pi, pi]
    theta, order = torch.sort(theta, dim=-1, descending=True)
    vectors = torch.gather(vectors, -1, order[..., None, :].expand(vectors.shape))
    # sum theta = 2 pi s; lower the s largest phases by 2 pi (raise the -s smallest for s < 0)
    # and rotate them to the other end: slot j takes sorted entry (j + s) mod N
    s = torch.round(theta.detach().sum(-1, keepdim=True) / TWO_PI).to(torch.long)
    m = torch.arange(n, device=matrices.device) + s
    source = torch.remainder(m, n)
    wraps = torch.div(m - source, n, rounding_mode="floor")
    theta = torch.gather(theta, -1, source) - TWO_PI * wraps.to(theta.dtype)
    vectors = torch.gather(vectors, -1, source[..., None, :].expand(vectors.shape))
    gaps = theta[..., :-1] - theta[..., 1:]
    last = TWO_PI - gaps.sum(-1, keepdim=True)
    return torch.cat([gaps, last], dim=-1).clamp_min(0.0), vectors


def _remaining(gaps: torch.Tensor) -> torch.Tensor:
    """``R_k = g_k + ... + g_N`` for ``k = 1..N-1`` (``[..., N-1]``)."""
    return torch.flip(torch.cumsum(torch.flip(gaps, [-1]), -1), [-1])[..., :-1]


def gaps_to_cube(gaps: torch.Tensor) -> torch.Tensor:
    """Stick breaking: simplex gaps ``[..., N]`` -> ``u`` in ``[0, 1]^{N-1}``."""
    rest = _remaining(gaps)
    u = gaps[..., :-1] / rest.clamp_min(_TINY)
    return u.clamp(0.0, 1.0)


def cube_to_gaps(u: torch.Tensor) -> torch.Tensor:
    """Inverse stick breaking: ``u [..., N-1]`` -> gaps ``[..., N]`` summing to ``2 pi``."""
    gaps = []
    rest = torch.full_like(u[..., 0], TWO_PI)
    for k in range(u.shape[-1]):
        g = u[..., k] * rest
        gaps.append(g)
        rest = rest - g
    gaps.append(rest.clamp_min(0.0))
    return torch.stack(gaps, -1)


def stick_log_jacobian(gaps: torch.Tensor) -> torch.Tensor:
    """``log|det dg/du|`` up to the constant ``log 2 pi``: ``sum_{k=2}^{N-1} log R_k``."""
    rest = _remaining(gaps)[..., 1:]
    return torch.log(rest.clamp_min(_TINY)).sum(-1)


def haar_log_density(gaps: torch.Tensor) -> torch.Tensor:
    """``log prod_{i<j} |e^{i theta_i} - e^{i theta_j}|^2`` up to a constant (``sum_{i<j} 2 log sin(G_ij/2)``)."""
    n = gaps.shape[-1]
    total = torch.zeros_like(gaps[..., 0])
    for i in range(n - 1):
        arc = torch.cumsum(gaps[..., i : n - 1], -1)  # G_ij for j = i+1..N
        total = total + 2 * torch.log(torch.sin(0.5 * arc).clamp_min(_TINY)).sum(-1)
    return total


def phase_shifts(gaps: torch.Tensor, new_gaps: torch.Tensor) -> torch.Tensor:
    """``delta = theta' - theta`` (canonical order) for gaps ``g -> g'`` with ``sum delta = 0``.

    ``theta_k = theta_1 - sum_{j<k} g_j`` and ``theta_1 = mean + sum_j (N - j) g_j / N``.
    """
    n = gaps.shape[-1]
    change = (new_gaps - gaps)[..., :-1]
    weights = torch.arange(n - 1, 0, -1, dtype=gaps.dtype, device=gaps.device) / n
    first = (change * weights).sum(-1, keepdim=True)
    return torch.cat([first, first - torch.cumsum(change, -1)], dim=-1)


def cell_transform(gaps: torch.Tensor, params: torch.Tensor, inverse: bool = False):
    """Bijection of the canonical cell: ``u_k -> h_k(u_k)`` (rational-quadratic splines on [0, 1]).

    ``params`` is ``[..., N-1, 3 K + 1]``: unnormalised widths, heights and knot derivatives
    (the latter shifted so that all-zero parameters give the identity).  Returns the new gaps and
    ``log|det d theta_out / d theta_in|`` (``theta_1..theta_{N-1}`` coordinates).
    """
    n_bins = (params.shape[-1] - 1) // 3
    u = gaps_to_cube(gaps)
    u_out, log_spline = rational_quadratic_spline(
        u,
        params[..., :n_bins],
        params[..., n_bins : 2 * n_bins],
        params[..., 2 * n_bins :] + spline_derivative_shift(params.dtype),
        inverse=inverse,
        left=0.0,
        right=1.0,
        bottom=0.0,
        top=1.0,
    )
    new_gaps = cube_to_gaps(u_out.clamp(0.0, 1.0))
    log_det = log_spline.sum(-1) + stick_log_jacobian(new_gaps) - stick_log_jacobian(gaps)
    return new_gaps, log_det


def spectral_map(matrices: torch.Tensor, params: torch.Tensor, inverse: bool = False):
    """Conjugation-equivariant map ``P -> P'`` of SU(N) matrices, returned as the left factor.

    Returns ``(X, log_det)`` with ``P' = X P``, ``X = V diag(exp(i delta)) V^dagger`` (so
    ``X`` commutes with ``P`` and has unit determinant), and ``log_det`` the log density ratio
    of the map with respect to Haar measure:

        log_det = log|det d theta'/d theta| + log Haar(theta') - log Haar(theta).

    With ``inverse=True`` the inverse map is applied (same parameters) and its log-det returned.

    The eigendecomposition is always done in complex128: PyTorch's ``linalg.eig`` backward
    checks that the loss does not depend on the (arbitrary) eigenvector phases, and in
    complex64 rounding alone fails that check (path-gradient training of SU(3) stopped with
    "eigenvectors ... ill-defined").  The factor is returned in the input's precision.
    """
    input_dtype = matrices.dtype
    matrices = matrices.to(torch.complex128)
    params = params.to(torch.float64)
    gaps, vectors = canonical_decomposition(matrices)
    new_gaps, log_det = cell_transform(gaps, params, inverse=inverse)
    log_det = log_det + haar_log_density(new_gaps) - haar_log_density(gaps)
    delta = phase_shifts(gaps, new_gaps)
    phases = torch.polar(torch.ones_like(delta), delta).to(matrices.dtype)
    factor = (vectors * phases[..., None, :]) @ vectors.transpose(-1, -2).conj()
    return factor.to(input_dtype), log_det
