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
from normflows.utils.splines import DEFAULT_MIN_BIN_HEIGHT, DEFAULT_MIN_BIN_WIDTH, DEFAULT_MIN_DERIVATIVE

from gaugeflow.lattice.errors import InputError

from .kernels import rq_spline_on_interval
from .transforms import spline_derivative_shift

TWO_PI = 2 * math.pi
_SPLINE_MINIMA = (DEFAULT_MIN_BIN_WIDTH, DEFAULT_MIN_BIN_HEIGHT, DEFAULT_MIN_DERIVATIVE)
_TINY = 1e-300


def spline_param_count(n_bins: int) -> int:
    """Number of unconstrained parameters per rational-quadratic spline (widths, heights, derivatives)."""
    return 3 * n_bins + 1


def identity_spline_params(n_bins: int) -> torch.Tensor:
    """Raw spline parameters (as taken by :func:`cell_transform`) giving the identity spline: zeros.

    Equal widths and heights; every knot derivative 1.
    """
    return torch.zeros(spline_param_count(n_bins))


def _canonical_order(theta: torch.Tensor):
    """Canonical phases ``[..., N]`` of eigenphases ``theta`` in ``(-pi, pi]`` and the index that
    reorders per-eigenvalue data like them: sorted descending, then, with ``sum theta = 2 pi s``,
    the ``s`` largest lowered by ``2 pi`` (the ``-s`` smallest raised for ``s < 0``) and rotated
    to the other end, so that slot ``j`` takes sorted entry ``(j + s) mod N``."""
    n = theta.shape[-1]
    theta, order = torch.sort(theta, dim=-1, descending=True)
    s = torch.round(theta.detach().sum(-1, keepdim=True) / TWO_PI).to(torch.long)
    m = torch.arange(n, device=theta.device) + s
    source = torch.remainder(m, n)
    wraps = torch.div(m - source, n, rounding_mode="floor")
    return torch.gather(theta, -1, source) - TWO_PI * wraps.to(theta.dtype), torch.gather(order, -1, source)


def _gaps(theta: torch.Tensor) -> torch.Tensor:
    """Gaps ``[..., N]`` of canonical phases (the last closes the circle)."""
    gaps = theta[..., :-1] - theta[..., 1:]
    return torch.cat([gaps, TWO_PI - gaps.sum(-1, keepdim=True)], dim=-1).clamp_min(0.0)


def canonical_decomposition(matrices: torch.Tensor):
    """Eigendecompose SU(N) matrices and bring the eigenphases into the canonical cell.

    Returns ``(gaps [..., N], vectors [..., N, N])`` with ``matrices = vectors diag(exp(i theta))
    vectors^dagger`` where ``theta`` (the canonical, sorted phases) has gaps ``gaps``; the columns of
    ``vectors`` are ordered like ``theta``.
    """
    values, vectors = torch.linalg.eig(matrices)
    theta, index = _canonical_order(torch.angle(values))  # angle: (-pi, pi]
    return _gaps(theta), torch.gather(vectors, -1, index[..., None, :].expand(vectors.shape))


# Closed-form spectra of SU(2) and SU(3).  LAPACK's batched eig of 3x3 matrices and its backward
# were half the cost of an SU(3) training step; the characteristic polynomial of a unitary matrix
# with unit determinant has the coefficients (1, -t, conj(t), -1), t = tr P (SU(3)), or (1, -t, 1)
# (SU(2)), so the eigenvalues follow from the trace alone.  Gradients are attached by one Newton
# step from detached roots: its value moves by rounding only and its derivative is the implicit
# derivative of the root (exact along the group, where the coefficients are those functions of t).

# eigenvalues closer than this are left to the eigenvector route: interpolating a class function
# divides by eigenvalue differences, which costs about rounding / SEPARATION^2 in accuracy
SEPARATION = 1e-2


def _su3_roots(t: torch.Tensor) -> torch.Tensor:
    """Roots ``[..., 3]`` of ``x^3 - t x^2 + conj(t) x - 1`` by Cardano's formula, polished by two
    Newton steps and put on the unit circle (no autograd)."""
    a, b = -t, t.conj()
    p = b - a * a / 3
    q = 2 * a**3 / 27 - a * b / 3 - 1
    root = torch.sqrt(q * q / 4 + p**3 / 27)
    # the larger of -q/2 +- root: no cancellation in the cube root's argument
    w = torch.where((-q / 2 + root).abs() >= (-q / 2 - root).abs(), -q / 2 + root, -q / 2 - root)
    c = w ** (1 / 3)
    omega = torch.polar(torch.ones((), dtype=t.real.dtype, device=t.device), torch.tensor(TWO_PI / 3, dtype=t.real.dtype))
    c = c[..., None] * torch.stack([torch.ones_like(omega), omega, omega.conj()])
    x = c - p[..., None] / (3 * c) + t[..., None] / 3
    for _ in range(2):
        x = x - _cubic(x, t) / _cubic_slope(x, t)
    return x / x.abs()


def _cubic(x, t):
    return ((x - t[..., None]) * x + t.conj()[..., None]) * x - 1


def _cubic_slope(x, t):
    return (3 * x - 2 * t[..., None]) * x + t.conj()[..., None]


def unitary_eigenvalues(matrices: torch.Tensor, detached: bool = False, roots: torch.Tensor | None = None) -> torch.Tensor:
    """Eigenvalues ``[..., N]`` of SU(2) or SU(3) matrices in closed form (unordered; NaN where
    the formula degenerates, a multiple eigenvalue).  With ``detached`` no graph is built;
    ``roots``, the detached eigenvalues of the same SU(3) matrices when already computed, saves
    solving the cubic again."""
    n = matrices.shape[-1]
    t = torch.diagonal(matrices, dim1=-2, dim2=-1).sum(-1)
    if n == 2:
        # P = c 1 + i a.sigma: cos and sin of the eigenphase from the two parts, so that neither
        # loses accuracy near phase 0 or pi (sqrt(1 - c^2) would)
        c = t.real / 2
        s = torch.linalg.matrix_norm(matrices - matrices.transpose(-1, -2).conj()) / (2 * math.sqrt(2))
        if detached:
            s = s.detach()
        return torch.complex(torch.stack([c, c], -1), torch.stack([s, -s], -1))
    if n != 3:
        raise InputError(f"closed-form eigenvalues exist here for SU(2) and SU(3), not SU({n})")
    if roots is None:
        roots = _su3_roots(t.detach())
    if detached:
        return roots
    return roots - _cubic(roots, t) / _cubic_slope(roots, t)


def separated(values: torch.Tensor) -> torch.Tensor:
    """``[...]``: whether all eigenvalues ``[..., N]`` are finite and at least ``SEPARATION`` apart."""
    n = values.shape[-1]
    gaps = [(values[..., j] - values[..., k]).abs() for j in range(n) for k in range(j + 1, n)]
    smallest = torch.stack(gaps, -1).min(-1).values
    return torch.isfinite(smallest) & (smallest >= SEPARATION)


def class_function_factor(matrices: torch.Tensor, values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``f(P)`` for the class function with ``f(lambda_k) = images_k`` at the eigenvalues ``values``
    ``[..., N]`` of ``P`` (N = 2, 3), by Lagrange interpolation in powers of ``P`` (Cayley-Hamilton):
    ``f(P) = sum_k f_k prod_{j != k} (P - lambda_j) / (lambda_k - lambda_j)``, written as
    ``f_N 1 + sum_{k<N} (f_k - f_N) L_k`` so that equal images cost no accuracy."""
    n = matrices.shape[-1]
    eye = torch.eye(n, dtype=matrices.dtype, device=matrices.device)
    # unbound once: each values[..., k] would cost a zero-filled copy of all values in the backward
    v, f = values.unbind(-1), images.unbind(-1)
    last = f[-1][..., None, None]
    if n == 2:
        slope = (f[0] - f[1]) / (v[0] - v[1])
        return last * eye + slope[..., None, None] * (matrices - v[1][..., None, None] * eye)
    square = matrices @ matrices
    c2 = c1 = c0 = 0
    for k, (j, l) in enumerate(((1, 2), (0, 2))):
        weight = (f[k] - f[2]) / ((v[k] - v[j]) * (v[k] - v[l]))
        c2 = c2 + weight
        c1 = c1 - weight * (v[j] + v[l])
        c0 = c0 + weight * v[j] * v[l]
    return (c2[..., None, None] * square + c1[..., None, None] * matrices + c0[..., None, None] * eye) + last * eye


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
    u = gaps_to_cube(gaps)
    u_out, log_spline = rq_spline_on_interval(u, params, inverse, _SPLINE_MINIMA, spline_derivative_shift(params.dtype))
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

    For SU(2) and SU(3) the eigenvalues come in closed form (:func:`unitary_eigenvalues`) and ``X``
    by interpolation (:func:`class_function_factor`); spectra with eigenvalues closer than
    ``SEPARATION`` and N > 3 go through eigenvectors.  Both routes give the same map.

    The eigendecomposition is always done in complex128: PyTorch's ``linalg.eig`` backward
    checks that the loss does not depend on the (arbitrary) eigenvector phases, and in
    complex64 rounding alone fails that check (path-gradient training of SU(3) stopped with
    "eigenvectors ... ill-defined").  The factor is returned in the input's precision.
    """
    input_dtype = matrices.dtype
    matrices = matrices.to(torch.complex128)
    params = params.to(torch.float64)
    if matrices.shape[-1] > 3:
        return _spectral_map_by_eigenvectors(matrices, params, inverse, input_dtype)
    with torch.no_grad():
        detached = unitary_eigenvalues(matrices, detached=True)
        easy = separated(detached)
    all_easy = bool(easy.all())
    if not all_easy:
        # nearly degenerate spectra (rare in a flow; every cold-start link) go the eigenvector
        # route; the closed form runs on a harmless stand-in there, so no NaN reaches the gradient
        stand_in = torch.diag_embed(torch.polar(torch.ones(matrices.shape[-1], dtype=torch.float64),
                                                torch.linspace(2.0, -2.0, matrices.shape[-1], dtype=torch.float64)))
        matrices_closed = torch.where(easy[..., None, None], matrices, stand_in.to(matrices.device))
    else:
        matrices_closed = matrices
    # the roots found above are those of matrices_closed unless a stand-in replaced some
    values = unitary_eigenvalues(matrices_closed, roots=detached if all_easy else None)
    theta, index = _canonical_order(torch.angle(values))
    values = torch.gather(values, -1, index)
    gaps = _gaps(theta)
    new_gaps, log_det = cell_transform(gaps, params, inverse=inverse)
    log_det = log_det + haar_log_density(new_gaps) - haar_log_density(gaps)
    delta = phase_shifts(gaps, new_gaps)
    # X = f(P) with f(lambda_k) = exp(i delta_k): interpolating the phases themselves, not P' = X P
    # (then X = P' P^dagger), keeps X exactly the identity where delta = 0
    factor = class_function_factor(matrices_closed, values, torch.polar(torch.ones_like(delta), delta))
    if not all_easy:
        hard = (~easy).nonzero(as_tuple=True)
        hard_factor, hard_log_det = _spectral_map_by_eigenvectors(matrices[hard], params[hard], inverse, torch.complex128)
        factor = factor.index_put(hard, hard_factor)
        log_det = log_det.index_put(hard, hard_log_det)
    return factor.to(input_dtype), log_det


def _spectral_map_by_eigenvectors(matrices, params, inverse: bool, output_dtype):
    """:func:`spectral_map` through ``torch.linalg.eig`` (any N; degenerate spectra)."""
    gaps, vectors = canonical_decomposition(matrices)
    new_gaps, log_det = cell_transform(gaps, params, inverse=inverse)
    log_det = log_det + haar_log_density(new_gaps) - haar_log_density(gaps)
    delta = phase_shifts(gaps, new_gaps)
    phases = torch.polar(torch.ones_like(delta), delta).to(matrices.dtype)
    factor = (vectors * phases[..., None, :]) @ vectors.transpose(-1, -2).conj()
    return factor.to(output_dtype), log_det
