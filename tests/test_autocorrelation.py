"""Tests for hmc.autocorrelation (Gamma method and binned jackknife)."""

import math

import numpy as np
import pytest
from scipy.signal import lfilter

from gaugeflow.hmc.autocorrelation import GammaResult, gamma_method, jackknife, normalized_autocorrelation


def ar1(phi, n, rng, sigma=1.0):
    """Stationary AR(1) chain x_t = phi x_{t-1} + eta_t, eta ~ N(0, sigma^2).

    The first noise value is scaled to the stationary width so that no
    thermalisation transient biases the tests.
    """
    eta = rng.normal(0.0, sigma, n)
    eta[0] /= math.sqrt(1.0 - phi**2)
    return lfilter([1.0], [1.0, -phi], eta)


def ar1_tau_int(phi):
    return (1 + phi) / (2 * (1 - phi))


# --------------------------------------------------------------------------
# 1. agreement with pyerrors
# --------------------------------------------------------------------------

def _pyerrors_reference(chains, S):
    pe = pytest.importorskip("pyerrors")
    names = [f"ens|r{i}" for i in range(len(chains))]
    obs = pe.Obs([np.asarray(c) for c in chains], names)
    obs.gamma_method(S=S)
    return obs


def _cases():
    rng = np.random.default_rng(20240611)
    ramp = np.arange(12.0) + 0.01 * rng.normal(size=12)  # window condition never met
    return {
        "single_ar1": [ar1(0.8, 5000, rng)],
        "three_replica_unequal": [ar1(0.8, n, rng) + 0.3 * i for i, n in enumerate((3000, 1700, 2400))],
        "uncorrelated": [rng.normal(1.0, 2.0, 4000)],
        "anticorrelated": [ar1(-0.5, 3000, rng)],
        "short_ramp": [ramp],
        "mixed_very_unequal": [ar1(0.9, 800, rng), ar1(0.9, 20, rng)],
        "many_short_replica": _many_short_replica(),
    }


def _many_short_replica():
    # 100 strongly correlated replica of 20 samples: W_max = 10 is set by the
    # replica length but N = 2000, so g(W) never turns negative.
    rng = np.random.default_rng(1)
    return [lfilter([1.0], [1.0, -0.99], rng.normal(size=20)) for _ in range(100)]


@pytest.mark.parametrize("S", [1.5, 2.0])
@pytest.mark.parametrize("case", list(_cases()))
def test_agrees_with_pyerrors(case, S):
    chains = _cases()[case]
    ref = _pyerrors_reference(chains, S)
    res = gamma_method(chains if len(chains) > 1 else chains[0], S=S)
    assert isinstance(res, GammaResult)
    assert res.n_samples == sum(len(c) for c in chains)
    assert res.mean == pytest.approx(ref.value, rel=1e-12, abs=1e-14)
    assert res.error == pytest.approx(ref.dvalue, rel=1e-10)
    assert res.tau_int == pytest.approx(ref.e_tauint["ens"], rel=1e-10)
    assert res.tau_int_error == pytest.approx(ref.e_dtauint["ens"], rel=1e-10)
    assert res.window == ref.e_windowsize["ens"]


def test_window_fallback_when_condition_never_met():
    # g(W) >= 0 for all W < W_max - 1: the largest window W_max - 1 is used
    # (pyerrors convention, checked against pyerrors in the test above).
    assert gamma_method(_many_short_replica()).window == 20 // 2 - 1
    # Five samples: W_max = 2 leaves only W = 1.
    assert gamma_method(np.arange(5.0) ** 2).window == 1


def test_rho_agrees_with_pyerrors_and_ar1():
    rng = np.random.default_rng(7)
    chains = [ar1(0.8, n, rng) for n in (3000, 1700, 2400)]
    ref = _pyerrors_reference(chains, 1.5)
    rho = normalized_autocorrelation(chains)
    assert rho.shape == ref.e_rho["ens"].shape
    np.testing.assert_allclose(rho, ref.e_rho["ens"], rtol=1e-9, atol=1e-12)
    # rho(t) = phi^t for AR(1); statistical error at t <= 5 is ~0.03 here.
    np.testing.assert_allclose(rho[:6], 0.8 ** np.arange(6), atol=0.1)
    assert normalized_autocorrelation(chains, max_lag=3).shape == (4,)
    with pytest.raises(ValueError):
        normalized_autocorrelation(chains, max_lag=5000)


def test_layouts_are_equivalent():
    rng = np.random.default_rng(3)
    data = np.stack([ar1(0.5, 1000, rng) for _ in range(3)])
    a = gamma_method(data)
    b = gamma_method(list(data))
    c = gamma_method([list(row) for row in data])
    assert a == b == c
    assert gamma_method(data[0]) == gamma_method(list(data[0]))


# --------------------------------------------------------------------------
# 2. tau_int of an AR(1) process
# --------------------------------------------------------------------------

def test_ar1_tau_int_matches_exact_value():
    phi, n = 0.9, 200_000
    exact = ar1_tau_int(phi)  # 9.5
    res = gamma_method(ar1(phi, n, np.random.default_rng(12345)))
    # Madras-Sokal error here is ~0.25 (2.6 %); 3 sigma is a genuine test.
    assert res.tau_int_error == pytest.approx(exact * 2 * math.sqrt((res.window + 0.5 - exact) / n), rel=0.1)
    assert abs(res.tau_int - exact) < 3 * res.tau_int_error
    # Window should be a few tau_int: long enough to capture the tail
    # (phi^W small), short enough to keep the noise down.
    assert 2 * exact < res.window < 10 * exact


def test_ar1_tau_int_multi_replica():
    phi = 0.8
    exact = ar1_tau_int(phi)  # 4.5
    rng = np.random.default_rng(99)
    res = gamma_method([ar1(phi, n, rng) for n in (40_000, 30_000, 50_000)])
    assert abs(res.tau_int - exact) < 3 * res.tau_int_error


# --------------------------------------------------------------------------
# 3. error of the mean
# --------------------------------------------------------------------------

def test_error_covers_true_mean_and_exceeds_naive_error():
    phi, n = 0.9, 50_000
    x = ar1(phi, n, np.random.default_rng(2024))
    res = gamma_method(x)
    naive = x.std(ddof=1) / math.sqrt(n)
    assert abs(res.mean - 0.0) < 3 * res.error
    # For AR(1) the error is inflated by sqrt(2 tau_int) = sqrt(19) ~ 4.36.
    # Seed scan: the ratio scatters by ~3.5 % (with somewhat heavy tails).
    ratio = res.error / naive
    assert ratio == pytest.approx(math.sqrt(2 * ar1_tau_int(phi)), rel=0.15)
    # The exact asymptotic error for comparison.
    exact_err = math.sqrt(2 * ar1_tau_int(phi) / (1 - phi**2) / n)
    assert res.error == pytest.approx(exact_err, rel=0.15)


def test_uncorrelated_error_is_naive_error():
    x = np.random.default_rng(5).normal(size=20_000)
    res = gamma_method(x)
    naive = x.std(ddof=1) / math.sqrt(x.size)
    assert res.tau_int == pytest.approx(0.5, abs=3 * res.tau_int_error + 0.02)
    assert res.error == pytest.approx(naive, rel=0.1)
    # S = 0 means "assume no autocorrelation": exactly the standard error.
    res0 = gamma_method(x, S=0)
    assert res0.error == pytest.approx(naive, rel=1e-12)
    assert res0.tau_int == 0.5 and res0.window == 0


def test_constant_series():
    res = gamma_method(np.full(100, 3.25))
    assert res == GammaResult(3.25, 0.0, 0.5, 0.0, 0, 100)
    res = gamma_method([np.full(10, 1.0), np.full(7, 1.0)])
    assert res.error == 0.0 and res.tau_int == 0.5
    rho = normalized_autocorrelation(np.full(10, 1.0))
    assert rho[0] == 1.0 and np.all(rho[1:] == 0.0)


def test_very_short_chains():
    res = gamma_method([1.0, 2.0])
    assert res.mean == 1.5 and res.window == 0 and res.tau_int == 0.5
    assert math.isfinite(res.error) and res.error > 0
    res = gamma_method([[1.0, 2.0], [0.0, 4.0, 1.0]])
    assert res.n_samples == 5 and math.isfinite(res.error)


# --------------------------------------------------------------------------
# 4. jackknife
# --------------------------------------------------------------------------

def test_jackknife_variance_of_gaussian():
    sigma2, n = 4.0, 10_000
    x = np.random.default_rng(11).normal(0.0, math.sqrt(sigma2), n)
    val, err = jackknife(lambda m1, m2: m2 - m1**2, x, x**2)
    analytic = math.sqrt(2 * sigma2**2 / n)  # 0.0566
    assert abs(val - sigma2) < 3 * analytic
    assert err == pytest.approx(analytic, rel=0.2)


def test_jackknife_linear_function_is_standard_error():
    # With bins of one sample, the jackknife error of the mean is exactly the
    # standard error, which is also the Gamma-method error with S = 0.
    x = np.random.default_rng(1).normal(size=500)
    val, err = jackknife(lambda a: a, x, bin_size=1)
    assert val == pytest.approx(x.mean(), rel=1e-13)
    assert err == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=1e-10)
    assert err == pytest.approx(gamma_method(x, S=0).error, rel=1e-10)


def test_jackknife_binned_matches_gamma_method():
    # Bins much longer than tau_int make bin means independent, so the
    # jackknife error of the mean equals the Gamma-method error: exactly that
    # of the bin means with S = 0, and approximately that of the raw data.
    rng = np.random.default_rng(8)
    x = ar1(0.8, 50_000, rng)
    b = 100
    val, err = jackknife(lambda a: a, x, bin_size=b)
    bin_means = x[: (x.size // b) * b].reshape(-1, b).mean(axis=1)
    assert err == pytest.approx(gamma_method(bin_means, S=0).error, rel=1e-10)
    g = gamma_method(x)
    # Seed scan: ratio - 1 = -2 % (binning bias ~ tau/b) +- 2 %.
    assert err == pytest.approx(g.error, rel=0.10)
    # Unbinned jackknife underestimates the error of correlated data.
    _, err1 = jackknife(lambda a: a, x, bin_size=1)
    assert err1 < 0.5 * g.error


def test_jackknife_default_binning_multi_chain():
    rng = np.random.default_rng(21)
    chains = [ar1(0.8, n, rng) for n in (20_000, 15_003, 12_345)]
    val, err = jackknife(lambda a: a, chains)
    g = gamma_method(chains)
    # Only a few leftover samples per chain are dropped, so the value moves by
    # a small fraction of the error.
    assert val == pytest.approx(g.mean, abs=0.1 * g.error)
    assert err == pytest.approx(g.error, rel=0.15)
    # Ratio of means, a typical derived quantity, with two observables.
    y = [c + 5.0 for c in chains]
    r, dr = jackknife(lambda a, b: a / b, chains, y)
    assert math.isfinite(r) and dr > 0


def test_jackknife_few_samples_keeps_enough_bins():
    # tau_int is large, but the default must still leave >= 20 bins.
    x = ar1(0.95, 200, np.random.default_rng(4))
    val, err = jackknife(lambda a: a, x)
    assert math.isfinite(err) and err > 0


def test_jackknife_bad_input():
    x = np.random.default_rng(0).normal(size=100)
    with pytest.raises(ValueError):
        jackknife(lambda a, b: a + b, x, x[:50])  # different layouts
    with pytest.raises(ValueError):
        jackknife(lambda a, b: a + b, [x, x], [x, x[:-1]])
    with pytest.raises(ValueError):
        jackknife(lambda a: a, x, bin_size=0)
    with pytest.raises(ValueError):
        jackknife(lambda a: a, x, bin_size=2.5)
    with pytest.raises(ValueError):
        jackknife(lambda a: a, x, bin_size=60)  # only one bin
    with pytest.raises(ValueError):
        jackknife(lambda a: a)
    bad = x.copy()
    bad[3] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        jackknife(lambda a: a, bad)


# --------------------------------------------------------------------------
# 5. bad input
# --------------------------------------------------------------------------

def test_nan_raises():
    x = np.ones(50)
    x[10] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        gamma_method(x)
    with pytest.raises(ValueError, match="non-finite"):
        gamma_method([np.ones(10), x])
    with pytest.raises(ValueError, match="non-finite"):
        normalized_autocorrelation(x)


@pytest.mark.parametrize(
    "bad",
    [[], np.array([]), np.zeros((0, 10)), np.zeros((2, 0)), [np.ones(5), []], [1.0], np.zeros((2, 2, 2))],
    ids=["empty_list", "empty_array", "no_chains", "empty_chains", "one_empty_chain", "one_sample", "3d"],
)
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        gamma_method(bad)


def test_bad_S_raises():
    with pytest.raises(ValueError):
        gamma_method(np.ones(10), S=-1.0)



def test_replica_q_is_uniform_for_chains_that_agree_and_tiny_for_chains_that_have_not_mixed():
    rng = np.random.default_rng(7)
    a = math.exp(-1 / 5)

    def correlated(size):  # AR(1), tau_int ~ 5
        return lfilter([math.sqrt(1 - a * a)], [1, -a], rng.normal(size=size), axis=1)

    # chains that sample one distribution: Q uniform (independent samples), or nearly so when the
    # chains are long against tau_int (400 tau_int a chain)
    independent = np.array([gamma_method(rng.normal(size=(8, 300))).replica_q for _ in range(400)])
    assert 0.025 < np.mean(independent < 0.05) < 0.08 and 0.2 < np.mean(independent < 0.25) < 0.3
    assert np.mean(np.array([gamma_method(correlated((8, 2000))).replica_q for _ in range(400)]) < 1e-4) < 0.005
    # chains frozen in different places (HMC in different topological sectors, say): each one's
    # fluctuations are healthy, so the Gamma method within a chain cannot see it, and the error
    # of the mean is too small -- but the chains' means disagree far beyond it
    frozen = correlated((8, 500)) + rng.choice([-1.0, 0.0, 1.0], size=(8, 1))
    result = gamma_method(frozen)
    assert result.replica_q < 1e-10
    # one replica: nothing to compare; constant replicas: equal means agree, others do not
    assert gamma_method(rng.normal(size=500)).replica_q is None
    assert gamma_method([np.full(10, 1.0), np.full(7, 1.0)]).replica_q == 1.0
    assert gamma_method([np.full(10, 1.0), np.full(7, 2.0)]).replica_q == 0.0
