r"""Exact finite-volume results used to validate Monte Carlo (numpy / scipy only).

Everything here is evaluated in double precision in a way that stays stable for large
volumes and couplings (tested up to ``V = 64 * 64 = 4096`` plaquettes and ``beta = 10``):
modified Bessel functions are only ever used exponentially scaled
(:func:`scipy.special.ive`), ``I_n(beta)^V`` is never formed, and every sum over
representations is written in logarithms relative to its dominant term.  Representation
sums are truncated adaptively: the range is doubled until the terms at its edge are below
``1e-17`` relative to the largest term (sums beyond the peak are monotone, so the neglected
tail is at that level too), with a hard cap of ``2**16`` (a :class:`RuntimeError` is raised
if the cap is reached, which does not happen for any sensible input).

Conventions (fixed by the project; ``lattice/u1.py``, ``lattice/sun.py``, ``lattice/phi4.py``)
-------------------------------------------------------------------------------------------------
Gauge theories live on a periodic ``L0 x L1`` lattice with ``V = L0 * L1`` plaquettes, the
plaquette is ``U_P = U_mu(x) U_nu(x+mu) U_mu(x+nu)^dagger U_nu(x)^dagger`` and the
measure is the normalised Haar measure on every link.

* **2D U(1)**, ``U_mu(x) = exp(i theta_mu(x))``, ``S = -beta sum_P cos theta_P``.  On the
  torus the character (Fourier) expansion ``exp(beta cos t) = sum_n I_n(beta) e^{i n t}``
  gives (Wiese; Rusakov, Mod. Phys. Lett. A5 (1990) 693; see also Bonati & Rossi,
  arXiv:1901.09830)

      Z = sum_{n in Z} I_n(beta)^V.

  A 1x1 torus has ``U_P = U_0 U_1 U_0^* U_1^* = 1`` identically: ``Z = e^beta`` and
  ``<cos theta_P> = 1``, which the formula reproduces (``sum_n I_n(beta) = e^beta``).

* **Topological charge** ``Q = (1/2pi) sum_x arg U_01(x)``, ``arg`` in (-pi, pi].
  Integrating out the links leaves the wrapped plaquette angles ``phi_P`` in (-pi, pi],
  independent with density ``e^{beta cos phi}`` except for the constraint
  ``sum_P phi_P in 2 pi Z``; ``Q`` is the integer ``sum_P phi_P / 2pi``.  Writing the
  constraint as ``sum_n e^{i n sum phi}`` and adding ``e^{i theta Q}`` gives
  (Bonati & Rossi, arXiv:1901.09830; Kanwar et al., arXiv:2003.06413, appendix)

      Z(theta) = sum_n J(n + theta/2pi)^V,
      J(nu)    = (1/2pi) int_{-pi}^{pi} e^{beta cos t} cos(nu t) dt,     J(n) = I_n(beta),

  and ``<Q^2> = -d^2 log Z / d theta^2 |_{theta=0}``.  With ``' = d/dnu``,
  ``J'(n) = -(1/2pi) int t sin(n t) e^{beta cos t} dt`` (odd in n, ``J'(0) = 0``) and
  ``J''(n) = -(1/2pi) int t^2 cos(n t) e^{beta cos t} dt`` (even in n), the first
  derivative of ``Z`` vanishes at ``theta = 0`` and

      <Q^2> = V/(4 pi^2) * sum_n I_n^{V-2} [ -I_n J''(n) - (V-1) J'(n)^2 ] / sum_n I_n^V.

  As ``V -> oo`` only ``n = 0`` survives and ``<Q^2>/V -> -J''(0)/(4 pi^2 I_0)``, the
  variance of ``t/2pi`` under the density ``e^{beta cos t}`` on (-pi, pi]
  (:func:`u1_topological_susceptibility_infinite_volume`).  For ``V <= 2`` the exact
  answer is ``<Q^2> = 0``: since ``|sum_P phi_P| <= V pi``, ``Q != 0`` requires all
  ``phi_P = pi`` (a null set) when ``V <= 2`` (for ``V = 1`` the plaquette is even
  identically 1).  The formula agrees -- by Poisson summation / Parseval the series sums to
  ``(t^2 e^{beta cos t})|_{t=0} = 0`` for ``V = 1`` and to
  ``2 ||t f||^2 - 2 ||t f||^2 = 0`` for ``V = 2`` -- but because the periodic extension of
  ``t e^{beta cos t}`` jumps at ``t = +-pi`` its terms only decay like ``1/n^2``, so these two
  cases are returned as exactly 0 instead of being summed.  For ``V >= 3`` the factor
  ``I_n^{V-2}`` makes the series converge super-exponentially.  The result is accurate to
  about ``1e-16 * V * <t^2>`` in absolute terms: when ``Q != 0`` is exponentially rare (very
  small V at large beta, e.g. ``V = 3, beta = 10``) the sum cancels below that level and the
  value is only an upper bound of that size (negative rounding results are clipped to 0).
  Note that ``<Q^2>/V`` reaches its infinite-volume value only once ``V <t^2> >> 4 pi^2``
  (e.g. at ``beta = 10``, ``V = 64`` gives ``<Q^2> = 0.0975`` against ``V chi = 0.171``).

* **2D SU(2)**, ``S = -(beta/2) sum_P Re tr U_P``.  The character coefficients of
  ``e^{(beta/2) tr U}`` are ``c_j / d_j = 2 I_{2j+1}(beta) / beta`` and on the torus
  ``Z = sum_R (c_R/d_R)^V`` (Migdal; Rusakov; Gross & Witten, Phys. Rev. D21 (1980) 446):

      Z = sum_{n >= 1} (2 I_n(beta) / beta)^V,       n = 2j + 1,
      <(1/2) Re tr U_P> = (1/V) d log Z / d beta
                        = sum_n w_n [I_{n+1}(beta)/I_n(beta) + (n-1)/beta],
      w_n = I_n^V / sum_m I_m^V,

  using ``I_n' = (I_{n-1}+I_{n+1})/2`` and ``I_{n-1} - I_{n+1} = (2n/beta) I_n``.  For
  ``V -> oo``: ``I_2(beta)/I_1(beta)``.

* **2D SU(3)**, ``S = -(beta/3) sum_P Re tr U_P``.  Since ``(beta/3) Re tr U =
  (beta/6)(tr U + tr U^dagger)``, the Bars-Green / Gross-Witten formula
  ``int_{SU(N)} dU exp[a (tr U + tr U^dagger)] = sum_n det[I_{n+i-j}(2a)]`` applies with
  ``2a = beta/3``.  More generally the character coefficient of the irrep ``(p, q)``
  (Young diagram ``lambda = (p+q, q, 0)``, dimension ``d = (p+1)(q+1)(p+q+2)/2``) is

      c_{pq}(beta) = int dU e^{(beta/3) Re tr U} chi_{pq}(U)^*
                   = sum_{n in Z} det[ I_{n + lambda_i - i + j}(beta/3) ]_{i,j=1..3},

  ``Z = sum_{p,q >= 0} (c_{pq}/d_{pq})^V`` on the torus and
  ``<(1/3) Re tr U_P> = (1/V) d log Z / d beta``; derivatives of the determinants are taken
  row by row with ``d I_k(beta/3)/d beta = (I_{k-1} + I_{k+1})/6``.  In infinite volume the
  plaquettes of 2D lattice gauge theory (axial gauge) are independent, so
  ``<(1/3) Re tr U_P> = d log c_00 / d beta = c_10 / (3 c_00)``.

* **Free scalar field**: the phi^4 action of Albergo, Kanwar & Shanahan (arXiv:1904.12072)
  ``S = sum_x [-2 sum_mu phi_x phi_{x+mu} + (2D + m2) phi_x^2 + lam phi_x^4]`` at
  ``lam = 0`` is ``S = phi^T (-Delta + m2) phi`` (no 1/2), so ``e^{-S}`` is Gaussian with
  covariance ``(1/2)(-Delta + m2)^{-1}``:

      G(x) = <phi(0) phi(x)> = (1/V) sum_p e^{i p x} / (2 [m2 + sum_mu 4 sin^2(p_mu/2)]),

  and ``chi = sum_x G(x) = 1/(2 m2)``.

All functions raise :class:`ValueError` for invalid input (non-positive or non-finite
``beta``, ``volume < 1``, ``area`` outside ``[0, volume]``, ``m2 <= 0``, ...).
"""

from __future__ import annotations

import math
import operator
import re
import warnings
from typing import Callable

import numpy as np
from scipy import integrate, special

from .errors import InputError

__all__ = [
    "u1_log_partition_function",
    "u1_plaquette",
    "u1_wilson_loop",
    "u1_topological_charge_squared",
    "u1_topological_susceptibility_infinite_volume",
    "su2_log_partition_function",
    "su2_plaquette",
    "su2_plaquette_infinite_volume",
    "su3_log_character_coefficient",
    "su3_log_partition_function",
    "su3_plaquette",
    "su3_plaquette_infinite_volume",
    "free_scalar_propagator",
    "free_scalar_susceptibility",
    "expectation_values",
]

REL_TOL = 1e-17
_LOG_REL_TOL = math.log(REL_TOL)
_MAX_ORDER = 1 << 16
_LOG2 = math.log(2.0)


# --------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------
def _check_beta(beta) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise InputError(f"beta must be a real number, got {beta!r}") from None
    if not math.isfinite(b) or b <= 0.0:
        raise InputError(f"beta must be finite and > 0, got {beta!r}")
    return b


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise InputError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {v}")
    return v


def _check_volume(volume) -> int:
    return _check_int(volume, "volume (number of plaquettes)", 1)


def _check_m2(m2) -> float:
    try:
        m = float(m2)
    except (TypeError, ValueError):
        raise InputError(f"m2 must be a real number, got {m2!r}") from None
    if not math.isfinite(m) or m <= 0.0:
        raise InputError(f"the free field needs a finite mass squared m2 > 0, got {m2!r}")
    return m


def _check_shape(lattice_shape) -> tuple[int, ...]:
    try:
        shape = tuple(lattice_shape)
    except TypeError:
        raise InputError(f"lattice_shape must be a sequence of positive integers, got {lattice_shape!r}") from None
    if len(shape) == 0:
        raise InputError("lattice_shape must have at least one dimension")
    return tuple(_check_int(s, "lattice extent", 1) for s in shape)


# --------------------------------------------------------------------------------------
# numerical helpers
# --------------------------------------------------------------------------------------
def _log_ive(order, x: float) -> np.ndarray:
    """``log ive(|order|, x)`` (``-inf`` where it underflows)."""
    with np.errstate(divide="ignore"):
        return np.log(special.ive(np.abs(np.asarray(order)), x))


def _times(k: float, log_values: np.ndarray) -> np.ndarray:
    """``k * log_values`` with ``0 * (-inf) = 0`` (i.e. ``x**0 = 1`` even when ``x = 0``)."""
    if k == 0:
        return np.zeros_like(log_values)
    return k * log_values


def _edges_negligible(log_terms: np.ndarray, lower: bool) -> bool:
    top = np.max(log_terms)
    if top == -np.inf:
        return True
    edge = log_terms[-1] if not lower else max(log_terms[0], log_terms[-1])
    return bool(edge <= top + _LOG_REL_TOL)


def _adaptive_log_sums(beta: float, term_fns, *, symmetric: bool, ref_order: int, start: int = 16):
    """Adaptively truncated ``log sum_n exp(term(n))`` for several term functions.

    ``term_fns`` get ``L(k)``, returning ``log(ive(n + k, beta) / ive(ref_order, beta))`` on
    the summation range ``n = -N..N`` (``symmetric``) or ``n = 1..N``.
    """
    n_cut = max(start, int(4 * beta) + 8)
    log_ref = _log_ive(ref_order, beta)
    while True:
        table = _log_ive(np.arange(0, n_cut + 3), beta) - log_ref
        n = np.arange(-n_cut if symmetric else 1, n_cut + 1)

        def L(k, n=n, table=table):
            return table[np.abs(n + k)]

        logs = [fn(L) for fn in term_fns]
        if all(_edges_negligible(t, symmetric) for t in logs):
            return [special.logsumexp(t) for t in logs]
        if n_cut >= _MAX_ORDER:
            raise RuntimeError("representation sum did not converge before the order cap")
        n_cut *= 2


# --------------------------------------------------------------------------------------
# 2D U(1)
# --------------------------------------------------------------------------------------
def _u1_ratio(beta: float) -> float:
    return float(special.ive(1, beta) / special.ive(0, beta))


def u1_log_partition_function(beta, volume) -> float:
    """``log Z`` of 2D U(1) on ``volume`` plaquettes, ``Z = sum_n I_n(beta)^V`` (Haar-normalised)."""
    beta, V = _check_beta(beta), _check_volume(volume)
    (log_sum,) = _adaptive_log_sums(beta, [lambda L: V * L(0)], symmetric=True, ref_order=0)
    return float(V * (beta + _log_ive(0, beta)) + log_sum)


def u1_plaquette(beta, volume=None) -> float:
    """``<cos theta_P>`` of 2D U(1) on a torus with ``volume`` plaquettes.

    ``sum_n I_n'(beta) I_n^{V-1} / sum_n I_n^V`` with ``I_n' = (I_{n-1}+I_{n+1})/2``;
    ``volume=None`` gives the infinite-volume value ``I_1(beta)/I_0(beta)``.
    """
    beta = _check_beta(beta)
    if volume is None:
        return _u1_ratio(beta)
    V = _check_volume(volume)
    num, den = _adaptive_log_sums(
        beta,
        [
            lambda L: _times(V - 1, L(0)) + np.logaddexp(L(-1), L(1)) - _LOG2,
            lambda L: V * L(0),
        ],
        symmetric=True,
        ref_order=0,
    )
    return float(np.exp(num - den))


def u1_wilson_loop(beta, volume, area) -> float:
    """``<W>`` of a contractible loop enclosing ``area = R*T`` plaquettes in 2D U(1).

    ``sum_n I_n^{V-A} I_{n+1}^A / sum_n I_n^V`` (real: the imaginary part vanishes by
    charge conjugation).  Symmetric under ``A -> V - A``; ``A = 0`` and ``A = V`` give 1.
    ``volume=None`` gives the infinite-volume area law ``(I_1/I_0)^A``.  Very large loops
    at small ``beta`` may underflow to 0.0 (the value is then below ~1e-308).
    """
    beta = _check_beta(beta)
    if volume is None:
        A = _check_int(area, "area", 0)
        return float(np.exp(A * math.log(_u1_ratio(beta))))
    V = _check_volume(volume)
    A = _check_int(area, "area", 0)
    if A > V:
        raise InputError(f"area ({A}) cannot exceed the number of plaquettes ({V})")
    num, den = _adaptive_log_sums(
        beta,
        [lambda L: _times(V - A, L(0)) + _times(A, L(1)), lambda L: V * L(0)],
        symmetric=True,
        ref_order=0,
    )
    return float(np.exp(num - den))


_QUAD_OPTS = dict(epsabs=1e-16, epsrel=1e-13, limit=400)


def _quad(func, weight=None, wvar=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        if weight is None:
            return integrate.quad(func, 0.0, math.pi, **_QUAD_OPTS)[0]
        return integrate.quad(func, 0.0, math.pi, weight=weight, wvar=wvar, **_QUAD_OPTS)[0]


def _u1_scaled_moment(beta: float, power: int) -> float:
    """``(1/pi) int_0^pi t^power e^{beta (cos t - 1)} dt`` (= ``e^{-beta}`` times the (-pi, pi] mean)."""
    return _quad(lambda t: t**power * math.exp(beta * (math.cos(t) - 1.0))) / math.pi


def u1_topological_susceptibility_infinite_volume(beta) -> float:
    """``lim_{V->oo} <Q^2>/V``: variance of ``t/2pi`` under the density ``e^{beta cos t}`` on (-pi, pi]."""
    beta = _check_beta(beta)
    return _u1_scaled_moment(beta, 2) / (special.ive(0, beta) * 4.0 * math.pi**2)


def u1_topological_charge_squared(beta, volume) -> float:
    """``<Q^2>`` of 2D U(1) on a torus with ``volume`` plaquettes (``Q = sum arg U_P / 2pi``).

    Closed form (module docstring):
    ``V/(4pi^2) sum_n I_n^{V-2} [-I_n J''(n) - (V-1) J'(n)^2] / sum_n I_n^V``; ``J'``, ``J''``
    by :func:`scipy.integrate.quad` with ``sin`` / ``cos`` weights.  Exactly 0 for ``V <= 2``.

    Accuracy: absolute, about ``1e-16 * V * <t^2>`` (the ``n = 0`` term).  When ``Q != 0`` is
    exponentially rare (very small ``V`` at large ``beta``, e.g. ``V = 3, beta = 10`` where
    ``<Q^2> ~ 1e-19``) the sum cancels to below that level and only the order of magnitude
    (or 0.0; negative rounding results are clipped) is meaningful.
    """
    beta, V = _check_beta(beta), _check_volume(volume)
    if V <= 2:
        return 0.0
    j0 = float(special.ive(0, beta))
    e = lambda t: math.exp(beta * (math.cos(t) - 1.0))  # noqa: E731
    # everything is divided by e^{beta} I_0(beta): r_n = I_n/I_0, b_n = J'(n)/I_0, c_n = J''(n)/I_0
    c0 = -_u1_scaled_moment(beta, 2) / j0
    b_bound = _u1_scaled_moment(beta, 1) / j0  # |b_n| <= b_bound
    c_bound = -c0  # |c_n| <= c_bound
    total = -c0  # n = 0 term: r_0 = 1, b_0 = 0
    den = 1.0
    for n in range(1, _MAX_ORDER + 1):
        log_r = float(_log_ive(n, beta)) - math.log(j0)
        bound = math.exp((V - 2) * log_r) * (c_bound + (V - 1) * b_bound**2) if log_r > -np.inf else 0.0
        if 2.0 * bound <= REL_TOL * abs(total):
            break
        b = -_quad(lambda t: t * e(t), "sin", n) / (math.pi * j0)
        c = -_quad(lambda t: t * t * e(t), "cos", n) / (math.pi * j0)
        r_vm2 = math.exp((V - 2) * log_r)
        total += 2.0 * r_vm2 * (-c * math.exp(log_r) - (V - 1) * b * b)
        den += 2.0 * math.exp(V * log_r)
    else:  # pragma: no cover
        raise RuntimeError("topological-charge sum did not converge before the order cap")
    # the n-sum cancels down to a tiny number when Q != 0 is (exponentially) rare, i.e. for
    # small V at large beta; rounding there could otherwise produce a tiny negative value.
    return max(float(V * total / (den * 4.0 * math.pi**2)), 0.0)


# --------------------------------------------------------------------------------------
# 2D SU(2)
# --------------------------------------------------------------------------------------
def su2_log_partition_function(beta, volume) -> float:
    """``log Z`` of 2D SU(2), ``Z = sum_{n>=1} (2 I_n(beta)/beta)^V`` (Haar-normalised)."""
    beta, V = _check_beta(beta), _check_volume(volume)
    (log_sum,) = _adaptive_log_sums(beta, [lambda L: V * L(0)], symmetric=False, ref_order=1)
    return float(V * (math.log(2.0 / beta) + beta + _log_ive(1, beta)) + log_sum)


def su2_plaquette_infinite_volume(beta) -> float:
    """``<(1/2) Re tr U_P>`` of 2D SU(2) in infinite volume: ``I_2(beta)/I_1(beta)``."""
    beta = _check_beta(beta)
    return float(special.ive(2, beta) / special.ive(1, beta))


def su2_plaquette(beta, volume=None) -> float:
    """``<(1/2) Re tr U_P> = (1/V) d log Z/d beta`` of 2D SU(2) on ``volume`` plaquettes.

    ``sum_n w_n [I_{n+1}/I_n + (n-1)/beta]`` with ``w_n ~ I_n^V``; ``volume=None`` gives
    ``I_2/I_1``.
    """
    if volume is None:
        return su2_plaquette_infinite_volume(beta)
    beta, V = _check_beta(beta), _check_volume(volume)

    def numerator(L):
        n = np.arange(1, L(0).size + 1)
        with np.errstate(divide="ignore"):
            log_shift = np.log((n - 1) / beta)
        return _times(V - 1, L(0)) + np.logaddexp(L(1), L(0) + log_shift)

    num, den = _adaptive_log_sums(beta, [numerator, lambda L: V * L(0)], symmetric=False, ref_order=1)
    return float(np.exp(num - den))


# --------------------------------------------------------------------------------------
# 2D SU(3)
# --------------------------------------------------------------------------------------
_IJ = np.arange(3)[None, :] - np.arange(3)[:, None]  # j - i


def _su3_dimension(p: int, q: int) -> int:
    return (p + 1) * (q + 1) * (p + q + 2) // 2


def _su3_coefficients(beta: float, p: int, q: int):
    """Scaled ``e^{-beta} c_pq`` and ``e^{-beta} d c_pq / d beta``."""
    x = beta / 3.0
    lam = np.array([p + q, q, 0])
    shift = (p + 2 * q) // 3  # centre of the n-sum: n ~ -mean(lambda)
    n_cut = max(16, int(2 * beta) + 8)
    while True:
        n = np.arange(-n_cut, n_cut + 1) - shift
        orders = n[:, None, None] + lam[None, :, None] + _IJ[None, :, :]  # lambda_i - i + j
        m = special.ive(np.abs(orders), x)
        dm = (special.ive(np.abs(orders - 1), x) + special.ive(np.abs(orders + 1), x)) / 6.0
        dets = np.linalg.det(m)
        ddets = np.zeros_like(dets)
        for i in range(3):
            mi = m.copy()
            mi[:, i, :] = dm[:, i, :]
            ddets += np.linalg.det(mi)
        scale = max(np.max(np.abs(dets)), np.max(np.abs(ddets)))
        edge = max(abs(dets[0]), abs(dets[-1]), abs(ddets[0]), abs(ddets[-1]))
        if scale == 0.0 or edge <= REL_TOL * scale:
            return float(np.sum(dets)), float(np.sum(ddets))
        if n_cut >= _MAX_ORDER:
            raise RuntimeError("SU(3) determinant sum did not converge before the order cap")
        n_cut *= 2


def su3_log_character_coefficient(beta, p: int = 0, q: int = 0) -> float:
    """``log c_pq(beta)``, ``c_pq = int dU e^{(beta/3) Re tr U} chi_pq(U)^*`` over Haar SU(3).

    ``c_00`` is the one-plaquette partition function ``z(beta)``.
    """
    beta = _check_beta(beta)
    p, q = _check_int(p, "p", 0), _check_int(q, "q", 0)
    c, _ = _su3_coefficients(beta, p, q)
    return float(beta + math.log(c))


def su3_plaquette_infinite_volume(beta) -> float:
    """``<(1/3) Re tr U_P> = d log z / d beta`` of 2D SU(3) in infinite volume.

    ``z(beta) = sum_n det[I_{n+i-j}(beta/3)]_{i,j=1..3}``.
    """
    beta = _check_beta(beta)
    c, dc = _su3_coefficients(beta, 0, 0)
    return dc / c


def _su3_torus_sums(beta: float, V: int):
    """``log sum_R (c_R/d_R)^V`` (scaled by ``e^{-beta V}``) and ``<(1/3) Re tr U_P>``."""
    log_terms, ratios = [], []
    top = -np.inf
    shell = 0
    log_c00 = None
    while True:
        shell_logs = []
        for p in range(shell + 1):
            q = shell - p
            c, dc = _su3_coefficients(beta, p, q)
            if log_c00 is None:
                log_c00 = math.log(c)
            if c <= 0.0:
                continue  # underflowed: negligible
            lt = V * (math.log(c) - log_c00 - math.log(_su3_dimension(p, q)))
            shell_logs.append(lt)
            log_terms.append(lt)
            ratios.append(dc / c)
        shell_max = max(shell_logs) if shell_logs else -np.inf
        top = max(top, shell_max)
        if shell >= 2 and shell_max <= top + _LOG_REL_TOL:
            break
        if shell >= 4096:
            raise RuntimeError("SU(3) irrep sum did not converge")
        shell += 1
    log_terms = np.array(log_terms)
    weights = np.exp(log_terms - special.logsumexp(log_terms))
    return float(V * log_c00 + special.logsumexp(log_terms)), float(np.dot(weights, ratios))


def su3_log_partition_function(beta, volume) -> float:
    """``log Z`` of 2D SU(3) on a torus: ``Z = sum_{p,q>=0} (c_pq/d_pq)^V`` (Haar-normalised)."""
    beta, V = _check_beta(beta), _check_volume(volume)
    log_scaled, _ = _su3_torus_sums(beta, V)
    return float(V * beta + log_scaled)


def su3_plaquette(beta, volume=None) -> float:
    """``<(1/3) Re tr U_P> = (1/V) d log Z / d beta`` of 2D SU(3) on ``volume`` plaquettes.

    ``volume=None`` gives :func:`su3_plaquette_infinite_volume`.
    """
    if volume is None:
        return su3_plaquette_infinite_volume(beta)
    beta, V = _check_beta(beta), _check_volume(volume)
    _, plaq = _su3_torus_sums(beta, V)
    return plaq


# --------------------------------------------------------------------------------------
# free scalar field
# --------------------------------------------------------------------------------------
def free_scalar_propagator(lattice_shape, m2) -> np.ndarray:
    """``G(x) = <phi(0) phi(x)>`` of the free (``lam = 0``) project phi^4 action, any dimension.

    ``G(x) = (1/V) sum_p e^{ipx} / (2 (m2 + sum_mu 4 sin^2(p_mu/2)))``, ``p_mu = 2 pi k/L_mu``,
    returned as a real array of shape ``lattice_shape`` indexed by the separation ``x``.
    """
    shape, m2 = _check_shape(lattice_shape), _check_m2(m2)
    p_hat2 = np.zeros(shape)
    for axis, extent in enumerate(shape):
        k = 2.0 * np.pi * np.arange(extent) / extent
        s = (4.0 * np.sin(k / 2.0) ** 2).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        p_hat2 = p_hat2 + s
    g_p = 1.0 / (2.0 * (m2 + p_hat2))
    return np.ascontiguousarray(np.fft.ifftn(g_p).real)


def free_scalar_susceptibility(lattice_shape, m2) -> float:
    """``chi = sum_x G(x) = 1/(2 m2)`` of the free project phi^4 action (any lattice shape)."""
    _check_shape(lattice_shape)
    return 1.0 / (2.0 * _check_m2(m2))


# --------------------------------------------------------------------------------------
# exact values of the observables gaugeflow measures
# --------------------------------------------------------------------------------------
# theory name (as stored in an ensemble) -> function(lattice_shape, couplings, names) -> {name: value}
_EXPECTATION_VALUES: dict[str, Callable[[tuple, dict, set], dict]] = {}
_WILSON_LOOP = re.compile(r"wilson_loop_(\d+)x(\d+)")


def _expectation_values_of(*theory_names: str):
    def register(function):
        for name in theory_names:
            _EXPECTATION_VALUES[name] = function
        return function

    return register


def expectation_values(theory_name: str, lattice_shape, couplings: dict, names) -> dict[str, float]:
    """Exact expectation values of those observables in ``names`` whose value is known, for the
    theory ``theory_name`` (as an ensemble stores it: ``u1``, ``su2``, ``phi4``, ...) on
    ``lattice_shape`` at ``couplings``; observables and theories without one are left out.

    The names are those of :meth:`Theory.observables` and of
    :func:`gaugeflow.hmc.analysis.analyze_ensemble` (``topological_charge_squared``,
    ``topological_susceptibility = <Q^2>/V``, ``chi_2pt``).  Known here:

    * 2D U(1): ``plaquette``, ``action_density = -beta <cos theta_P>``, ``wilson_loop_RxT``
      (area ``R*T``), ``topological_charge_squared``, ``topological_susceptibility``, and by
      symmetry ``topological_charge = 0`` (charge conjugation) and ``polyakov_loop_re = 0``
      (centre symmetry: multiplying the time-like links of one time slice by a phase leaves
      ``S`` and the measure invariant);
    * 2D SU(2), SU(3): ``plaquette``, ``action_density = -beta <(1/N) Re tr U_P>`` and
      ``polyakov_loop_re = 0`` (centre symmetry);
    * the free scalar field (phi^4 at ``lam = 0``, ``m2 > 0``), any dimension: ``chi_2pt``,
      ``action_density = 1/2`` (equipartition: ``S`` is a quadratic form), ``ising_energy =
      (1/D) sum_mu G(e_mu)``, ``magnetization = 0`` and ``abs_magnetization =
      sqrt(2 chi / (pi V))`` (``m`` is Gaussian with variance ``chi / V``).

    ``log Z`` is the theory's :meth:`~gaugeflow.lattice.theory.Theory.exact_log_partition_function`.

    >>> values = expectation_values("u1", (4, 4), {"beta": 1.0}, ["plaquette", "polyakov_loop_re", "chi_2pt"])
    >>> {name: round(value, 6) for name, value in values.items()}
    {'plaquette': 0.446394, 'polyakov_loop_re': 0.0}
    """
    compute = _EXPECTATION_VALUES.get(str(theory_name))
    if compute is None:
        return {}
    names = set(names)
    known = compute(_check_shape(lattice_shape), {k: float(v) for k, v in dict(couplings).items()}, names)
    return {name: float(value) for name, value in known.items() if name in names}


def _wilson_loop_areas(names) -> dict[str, int]:
    areas = {}
    for name in names:
        match = _WILSON_LOOP.fullmatch(name)
        if match:
            areas[name] = int(match.group(1)) * int(match.group(2))
    return areas


@_expectation_values_of("u1")
def _u1_values(shape, couplings, names) -> dict:
    beta = couplings.get("beta", 0.0)
    if len(shape) != 2 or not beta > 0:
        return {}
    volume = math.prod(shape)
    plaquette = u1_plaquette(beta, volume)
    values = {"plaquette": plaquette, "action_density": -beta * plaquette, "topological_charge": 0.0,
              "polyakov_loop_re": 0.0}
    values.update({name: u1_wilson_loop(beta, volume, area) for name, area in _wilson_loop_areas(names).items()
                   if area <= volume})
    if names & {"topological_charge_squared", "topological_susceptibility"}:
        q2 = u1_topological_charge_squared(beta, volume)
        values.update(topological_charge_squared=q2, topological_susceptibility=q2 / volume)
    return values


def _sun_values(plaquette_function):
    def values(shape, couplings, names) -> dict:
        beta = couplings.get("beta", 0.0)
        if len(shape) != 2 or not beta > 0:
            return {}
        plaquette = plaquette_function(beta, math.prod(shape))
        return {"plaquette": plaquette, "action_density": -beta * plaquette, "polyakov_loop_re": 0.0}

    return values


_expectation_values_of("su2")(_sun_values(su2_plaquette))
_expectation_values_of("su3")(_sun_values(su3_plaquette))


@_expectation_values_of("phi4")
def _free_scalar_values(shape, couplings, names) -> dict:
    m2, lam = couplings.get("m2", 0.0), couplings.get("lam")
    if lam != 0 or not (math.isfinite(m2) and m2 > 0):
        return {}
    chi, volume = free_scalar_susceptibility(shape, m2), math.prod(shape)
    values = {"chi_2pt": chi, "action_density": 0.5, "magnetization": 0.0,
              "abs_magnetization": math.sqrt(2 * chi / (math.pi * volume))}
    if "ising_energy" in names:
        propagator = free_scalar_propagator(shape, m2)
        unit = [tuple(1 % extent if axis == mu else 0 for axis, extent in enumerate(shape)) for mu in range(len(shape))]
        values["ising_energy"] = float(np.mean([propagator[x] for x in unit]))
    return values
