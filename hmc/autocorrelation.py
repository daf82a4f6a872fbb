r"""Autocorrelation analysis of Monte Carlo time series: the Gamma method.

This module implements the error analysis of U. Wolff, "Monte Carlo errors
with less errors", Comput. Phys. Commun. 156 (2004) 143 [hep-lat/0306017],
for a primary observable measured on one or several Markov chains (replica)
of the same ensemble, plus a binned jackknife for derived quantities.

The conventions are chosen to reproduce ``pyerrors`` (``Obs(...)`` followed
by ``.gamma_method(S=...)``) to rounding precision; the places where that
matters are marked "pyerrors convention" below.

Notation
--------
Replica ``r = 1..R`` hold ``N_r`` samples ``a_i^r``; ``N = sum_r N_r``.

Mean
    The estimate is the mean over all samples,
    ``abar = (1/N) sum_r sum_i a_i^r = sum_r N_r abar_r / N``.

Autocorrelation function
    Fluctuations are taken about each replica's own mean ``abar_r``
    (pyerrors convention; Wolff's UWerr uses the overall mean ``abar``, which
    differs only by O(1/N) terms).  The lag products of all replica are
    summed and normalised by the number of contributing pairs::

        Gamma(t) = sum_r sum_{i=1}^{N_r - t} (a_i^r - abar_r)(a_{i+t}^r - abar_r)
                   / sum_r max(N_r - t, 0)

    (a denominator below 1 is replaced by 1), for ``t = 0 .. W_max - 1`` with
    ``W_max = floor(max_r N_r / 2)``.  The normalised autocorrelation function
    is ``rho(t) = Gamma(t) / Gamma(0)``.

Integrated autocorrelation time
    ``tau_int(W) = 1/2 + sum_{t=1}^{W} rho(t)``.  Values ``<= 1/2`` are
    replaced by ``1/2 + eps`` so that the logarithm below stays finite.

Automatic windowing (Wolff sect. 3.3, eq. (51)-(52))
    Assuming ``rho(t) ~ exp(-t/tau)``, one has ``2 tau_int = coth(1/(2 tau))``
    which is inverted to give, with the scale factor ``S`` (``S_tau``)::

        tau(W) = S / ln[(2 tau_int(W) + 1) / (2 tau_int(W) - 1)]
        g(W)   = exp(-W / tau(W)) - tau(W) / sqrt(W N)

    ``g`` balances the truncation bias (first term) against the statistical
    error (second term).  The window is the first ``W >= 1`` with ``g(W) < 0``;
    if no such ``W`` exists below ``W_max - 1``, the last admissible window
    ``W = W_max - 1`` is used (pyerrors convention; no warning is issued).

Bias correction (Wolff eq. (49))
    The sum ``C(W) = Gamma(0) + 2 sum_{t=1}^W Gamma(t)`` has a relative bias
    ``-(2W + 1)/N``, and ``Gamma(0)`` one of ``-1/N``.  Both are corrected::

        tau_int = tau_int(W) (1 + (2W + 1)/N) / (1 + 1/N)
        sigma^2 = 2 tau_int Gamma(0) (1 + 1/N) / N
                = C(W) (1 + (2W + 1)/N) / N

Error of tau_int (Madras-Sokal approximation, Wolff eq. (42))
    ``d tau_int = tau_int(W) * 2 sqrt(|W + 1/2 - tau_int(W)| / N)``, evaluated
    with the *uncorrected* ``tau_int(W)`` (pyerrors convention).

Special cases
    * ``Gamma(0) == 0`` (constant data): error 0, ``tau_int = 1/2``,
      ``d tau_int = 0``, window 0.
    * ``S == 0``: no autocorrelation assumed; ``tau_int = 1/2``, window 0 and
      ``sigma^2 = Gamma(0) / (N - 1)`` (the usual standard error).
    * ``W_max < 2`` (longest replica has fewer than 4 samples, which pyerrors
      rejects): window 0, ``tau_int = 1/2`` and ``sigma^2 = Gamma(0)(1+1/N)/N``.

Replica consistency (as Wolff's UWerr reports it)
    With ``R >= 2`` replica the error ``sigma`` also predicts how far the replica means may
    scatter: ``abar_r - abar`` has variance ``sigma^2 N / N_r`` for chains that sample the same
    distribution and an error that is right, so ::

        chi^2 = sum_r (abar_r - abar)^2 N_r / (sigma^2 N)

    follows a chi^2 distribution with ``R - 1`` degrees of freedom, and its Q-value
    (``replica_q``, the probability of a larger chi^2) is uniform on [0, 1].  A tiny Q says the
    chains disagree beyond their errors: they have not mixed, e.g. independence-Metropolis
    chains that accept almost nothing, each stuck near where it started while its own
    fluctuations (and so ``sigma``) are nearly zero -- a failure the Gamma method cannot see
    within one chain.  ``None`` for one replica.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import chdtrc

from gaugeflow.lattice.errors import InputError

__all__ = ["GammaResult", "gamma_method", "normalized_autocorrelation", "jackknife", "replica_q"]


@dataclass(frozen=True)
class GammaResult:
    """Result of :func:`gamma_method`.

    mean:          mean over all samples of all replica
    error:         statistical error of the mean (autocorrelations included)
    tau_int:       bias-corrected integrated autocorrelation time at ``window``
    tau_int_error: Madras-Sokal error estimate of ``tau_int``
    window:        summation window W chosen by the automatic windowing
    n_samples:     total number of samples N
    replica_q:     Q-value of the replica means given ``error`` (module docstring; ``None``
                   for one replica)
    """

    mean: float
    error: float
    tau_int: float
    tau_int_error: float
    window: int
    n_samples: int
    replica_q: float | None = None


def _as_chains(chains, name: str = "chains") -> list[np.ndarray]:
    """Normalise the accepted input layouts to a list of float64 1-D arrays.

    Accepted: a 1-D array-like (one chain), a 2-D array ``[n_chains, n]`` or a
    list/tuple of 1-D array-likes (unequal lengths allowed).
    """
    if isinstance(chains, np.ndarray):
        if chains.ndim == 1:
            raw = [chains]
        elif chains.ndim == 2:
            raw = list(chains)
        else:
            raise InputError(f"{name}: expected a 1-D or 2-D array, got {chains.ndim}-D")
    elif isinstance(chains, (list, tuple)):
        if len(chains) == 0:
            raise InputError(f"{name}: input is empty")
        # A flat list of numbers is a single chain; otherwise one entry per chain.
        if all(np.ndim(c) == 0 for c in chains):
            raw = [chains]
        else:
            raw = list(chains)
    else:
        raise InputError(f"{name}: expected an array or a list of arrays, got {type(chains).__name__}")

    if len(raw) == 0:
        raise InputError(f"{name}: input is empty (no chains)")
    out = []
    for r, c in enumerate(raw):
        if np.iscomplexobj(c):
            raise InputError(f"{name}: chain {r} is complex; only real data are supported")
        arr = np.asarray(c, dtype=np.float64)
        if arr.ndim != 1:
            raise InputError(f"{name}: chain {r} is not one-dimensional (shape {arr.shape})")
        if arr.size == 0:
            raise InputError(f"{name}: chain {r} is empty")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name}: chain {r} contains non-finite values (NaN or inf)")
        if arr.size < 2:
            raise InputError(f"{name}: chain {r} has {arr.size} sample; at least 2 are required")
        out.append(arr)
    return out


def _lag_products(x: np.ndarray, n_lags: int) -> np.ndarray:
    """sum_{i} x_i x_{i+t} for t = 0..n_lags-1 (zero where t >= len(x)), via FFT.

    Zero-padding to at least len(x) + n_lags prevents the circular wrap-around
    of the FFT from contaminating the lags we keep.
    """
    n = x.size
    m = min(n, n_lags)
    size = n + m
    f = np.fft.rfft(x, size)
    acf = np.fft.irfft(f.real**2 + f.imag**2, size)[:m]
    out = np.zeros(n_lags)
    out[:m] = acf
    return out


def _gamma(chains: list[np.ndarray], n_lags: int) -> np.ndarray:
    """Replica-combined Gamma(t), t = 0..n_lags-1 (see module docstring)."""
    num = np.zeros(n_lags)
    for c in chains:
        # Each replica about its own mean (pyerrors convention).
        num += _lag_products(c - c.mean(), n_lags)
    t = np.arange(n_lags)
    pairs = sum(np.clip(c.size - t, 0, None) for c in chains).astype(np.float64)
    # Lags no replica reaches have num == 0; avoid 0/0.
    pairs[pairs < 1] = 1.0
    return num / pairs


def normalized_autocorrelation(chains, max_lag: int | None = None) -> np.ndarray:
    """Normalised autocorrelation function rho(t) = Gamma(t)/Gamma(0), t = 0..max_lag.

    ``Gamma`` combines the replica as described in the module docstring.
    ``max_lag`` defaults to ``floor(max_r N_r / 2) - 1`` (the lags the Gamma
    method uses) and may not exceed ``max_r N_r - 1``.  For constant data
    (``Gamma(0) == 0``) rho is returned as ``[1, 0, 0, ...]``.
    """
    cs = _as_chains(chains)
    n_max = max(c.size for c in cs)
    if max_lag is None:
        max_lag = n_max // 2 - 1
    max_lag = int(max_lag)
    if not 0 <= max_lag <= n_max - 1:
        raise InputError(f"max_lag must lie in [0, {n_max - 1}], got {max_lag}")
    g = _gamma(cs, max_lag + 1)
    if abs(g[0]) < 10 * np.finfo(float).tiny:
        rho = np.zeros(max_lag + 1)
        rho[0] = 1.0
        return rho
    return g / g[0]


def gamma_method(chains, S: float = 1.5) -> GammaResult:
    """Mean, error and integrated autocorrelation time by Wolff's Gamma method.

    ``chains``: a 1-D array (one chain), a 2-D array ``[n_chains, n]`` or a list
    of 1-D arrays (unequal lengths allowed), all replica of one ensemble.
    ``S``: the windowing parameter S_tau (>= 0; 0 means "no autocorrelation").

    Raises ValueError for empty input, non-finite values, or a chain shorter
    than 2 samples.  See the module docstring for the formulas.
    """
    cs = _as_chains(chains)
    S = float(S)
    if not (S >= 0 and math.isfinite(S)):
        raise InputError(f"S must be a finite number >= 0, got {S}")

    n = sum(c.size for c in cs)
    mean = float(sum(c.sum() for c in cs) / n)
    w_max = max(c.size for c in cs) // 2

    gamma = _gamma(cs, w_max)
    g0 = gamma[0]
    if abs(g0) < 10 * np.finfo(float).tiny:  # every chain constant: nothing fluctuates
        return GammaResult(mean, 0.0, 0.5, 0.0, 0, n, replica_q(cs, mean, 0.0))

    if S == 0.0:
        error = math.sqrt(g0 / (n - 1))
        return GammaResult(mean, error, 0.5, 0.0, 0, n, replica_q(cs, mean, error))

    if w_max < 2:  # no lag t >= 1 available to sum over
        error = math.sqrt(g0 * (1 + 1 / n) / n)
        return GammaResult(mean, error, 0.5, 0.0, 0, n, replica_q(cs, mean, error))

    rho = gamma / g0
    # tau_int(W) for W = 0..w_max-1
    tau_w = np.cumsum(np.concatenate(([0.5], rho[1:])))
    # Keep 2 tau_int - 1 > 0 so the log in tau(W) below is defined.
    tau_w[tau_w <= 0.5] = 0.5 + np.finfo(np.float64).eps
    W = np.arange(w_max)
    dtau_w = tau_w * 2.0 * np.sqrt(np.abs(W + 0.5 - tau_w) / n)

    # Automatic windowing on W = 1..w_max-1.
    Ws = W[1:]
    tau_exp = S / np.log((2 * tau_w[1:] + 1) / (2 * tau_w[1:] - 1))
    g = np.exp(-Ws / tau_exp) - tau_exp / np.sqrt(Ws * n)
    below = np.nonzero(g < 0)[0]
    # First W with g(W) < 0; otherwise fall back to the largest window.
    window = int(Ws[below[0]]) if below.size else w_max - 1

    tau_int = tau_w[window] * (1 + (2 * window + 1) / n) / (1 + 1 / n)  # Wolff eq. (49)
    error = math.sqrt(2 * tau_int * g0 * (1 + 1 / n) / n)
    return GammaResult(mean, error, float(tau_int), float(dtau_w[window]), window, n, replica_q(cs, mean, error))


def replica_q(chains, mean: float, error: float) -> float | None:
    """Q-value of the replica means ``chains`` about ``mean`` given the error of the mean
    ``error`` (module docstring, "Replica consistency"); ``None`` for one replica.  With
    ``error == 0`` it is 1 if every replica has the same mean and 0 otherwise."""
    if len(chains) < 2:
        return None
    n = sum(c.size for c in chains)
    means = np.array([c.mean() for c in chains])
    if error == 0:
        return 1.0 if np.ptp(means) == 0 else 0.0
    chi2 = float(sum((m - mean) ** 2 * c.size for m, c in zip(means, chains)) / (error**2 * n))
    return float(chdtrc(len(chains) - 1, chi2))


def _choose_bin_size(cs_list: list[list[np.ndarray]], min_bins: int = 20) -> int:
    """Default bin size: ceil(4 tau_int_max), shrunk until >= min_bins bins exist.

    A bin several times longer than tau_int makes bin means nearly independent,
    which the jackknife assumes; the floor on the number of bins keeps the
    jackknife variance estimate itself from becoming too noisy.
    """
    tau_max = max(gamma_method(cs).tau_int for cs in cs_list)
    b = max(1, math.ceil(4 * tau_max))
    lengths = [c.size for c in cs_list[0]]
    while b > 1 and sum(L // b for L in lengths) < min_bins:
        b -= 1
    return b


def jackknife(function: Callable[..., float], *chains_of_observables, bin_size: int | None = None) -> tuple[float, float]:
    r"""Binned jackknife estimate of a derived quantity f(<A>, <B>, ...).

    Each positional argument after ``function`` holds per-configuration data of
    one observable, in any layout accepted by :func:`gamma_method`; all of them
    must have the same layout (same number of chains, same chain lengths).

    Every chain is cut into bins of ``bin_size`` consecutive samples; samples
    left over at the end of a chain are dropped.  With ``B`` bins in total
    (all chains pooled) and bin means ``a_b``, the leave-one-bin-out means are
    ``a_(b) = (sum_b' a_b' - a_b) / (B - 1)`` and::

        f_(b)  = f(A_(b), B_(b), ...)
        sigma  = sqrt((B - 1)/B * sum_b (f_(b) - mean_b f_(b))^2)

    The returned value is ``f`` evaluated on the means of the kept samples.

    ``bin_size`` defaults to ``max(1, ceil(4 * tau_int_max))`` from the largest
    tau_int of the inputs (Gamma method, S=1.5), reduced if needed so that at
    least 20 bins exist.  Raises ValueError for bad input or fewer than 2 bins.
    """
    if len(chains_of_observables) == 0:
        raise InputError("jackknife: no observables given")
    cs_list = [_as_chains(c, name=f"observable {k}") for k, c in enumerate(chains_of_observables)]
    lengths = [c.size for c in cs_list[0]]
    for k, cs in enumerate(cs_list[1:], start=1):
        if [c.size for c in cs] != lengths:
            raise InputError(
                f"jackknife: observable {k} has chain lengths {[c.size for c in cs]}, "
                f"observable 0 has {lengths}; all observables need the same layout"
            )

    if bin_size is None:
        bin_size = _choose_bin_size(cs_list)
    elif isinstance(bin_size, bool) or int(bin_size) != bin_size or bin_size < 1:
        raise InputError(f"jackknife: bin_size must be a positive integer, got {bin_size!r}")
    b = int(bin_size)
    n_bins = sum(L // b for L in lengths)
    if n_bins < 2:
        raise InputError(f"jackknife: bin_size={b} leaves {n_bins} bin(s); at least 2 are needed")

    # bin_means[k] holds the B bin means of observable k, all chains pooled.
    bin_means = np.array([
        np.concatenate([c[: (c.size // b) * b].reshape(-1, b).mean(axis=1) for c in cs])
        for cs in cs_list
    ])
    total = bin_means.sum(axis=1)
    full = total / n_bins  # all bins have b samples, so this is the plain mean
    loo = (total[:, None] - bin_means) / (n_bins - 1)  # [n_obs, B]

    value = float(function(*full))
    f_jk = np.array([float(function(*loo[:, i])) for i in range(n_bins)])
    if not np.all(np.isfinite(f_jk)) or not math.isfinite(value):
        raise InputError("jackknife: function returned non-finite values")
    error = math.sqrt((n_bins - 1) / n_bins * np.sum((f_jk - f_jk.mean()) ** 2))
    return value, error
