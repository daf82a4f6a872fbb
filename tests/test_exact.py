"""Tests of lattice.exact: exact 2D gauge theory and free scalar results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special

from gaugeflow.lattice import exact

TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------------------
# helpers: brute-force Monte Carlo (i.i.d. Haar samples, importance weights e^{-S})
# --------------------------------------------------------------------------------------
def weighted_mean(values, log_weights):
    """Self-normalised importance-sampling mean and its (delta-method) standard error."""
    w = np.exp(log_weights - log_weights.max())
    w /= w.sum()
    mean = float(np.dot(w, values))
    err = float(np.sqrt(np.sum(w**2 * (values - mean) ** 2)))
    return mean, err


def u1_plaquette_angles(theta):
    """``theta_01(x)`` for link angles ``theta[batch, mu, x0, x1]`` (project convention

    ``U_0(x) U_1(x+0) U_0(x+1)^* U_1(x)^*``), unwrapped, shape ``[batch, x0, x1]``.
    """
    t0, t1 = theta[:, 0], theta[:, 1]
    return t0 + np.roll(t1, -1, axis=1) - np.roll(t0, -1, axis=2) - t1


def u1_monte_carlo(shape, beta, n_samples, seed):
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-math.pi, math.pi, size=(n_samples, 2, *shape))
    phi = u1_plaquette_angles(theta)
    cosines = np.cos(phi).reshape(n_samples, -1)
    log_w = beta * cosines.sum(axis=1)
    wrapped = np.angle(np.exp(1j * phi)).reshape(n_samples, -1)  # (-pi, pi]
    q = wrapped.sum(axis=1) / TWO_PI
    return {"plaquette": weighted_mean(cosines.mean(axis=1), log_w), "q": q, "log_w": log_w, "phi": phi}


def haar_su2(rng, n):
    a = rng.standard_normal((n, 4))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    u = np.empty((n, 2, 2), dtype=complex)
    u[:, 0, 0] = a[:, 0] + 1j * a[:, 3]
    u[:, 0, 1] = a[:, 2] + 1j * a[:, 1]
    u[:, 1, 0] = -a[:, 2] + 1j * a[:, 1]
    u[:, 1, 1] = a[:, 0] - 1j * a[:, 3]
    return u


def haar_su3(rng, n):
    z = (rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3))) / math.sqrt(2.0)
    q, r = np.linalg.qr(z)
    d = np.diagonal(r, axis1=1, axis2=2)
    q = q * (d / np.abs(d))[:, None, :]  # Haar on U(3)
    det = np.linalg.det(q)
    return q / np.exp(1j * np.angle(det) / 3.0)[:, None, None]  # Haar on SU(3)


def dagger(u):
    return np.conj(np.swapaxes(u, -1, -2))


def commutator_plaquette_retr(u, v):
    """``Re tr(U V U^dag V^dag)``: the plaquette of a 1x1 torus."""
    p = u @ v @ dagger(u) @ dagger(v)
    return np.trace(p, axis1=1, axis2=2).real


# --------------------------------------------------------------------------------------
# U(1) plaquette
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.3, 2.0, 10.0])
def test_u1_plaquette_large_volume_limit(beta):
    expected = special.i1(beta) / special.i0(beta)
    assert exact.u1_plaquette(beta, 4096) == pytest.approx(expected, rel=1e-12)
    assert exact.u1_plaquette(beta) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("beta", [0.3, 2.0, 10.0])
def test_u1_plaquette_single_plaquette_torus_is_trivial(beta):
    assert exact.u1_plaquette(beta, 1) == pytest.approx(1.0, abs=1e-13)


@pytest.mark.parametrize("beta", [0.7, 2.0, 10.0])
def test_u1_plaquette_two_plaquettes_closed_form(beta):
    # 2x1 torus: theta_P(1) = -theta_P(0), so <cos> = I_1(2 beta)/I_0(2 beta)
    expected = special.ive(1, 2 * beta) / special.ive(0, 2 * beta)
    assert exact.u1_plaquette(beta, 2) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("volume", [1, 2, 3, 16, 4096])
@pytest.mark.parametrize("beta", [0.7, 2.0, 10.0])
def test_u1_plaquette_is_log_z_derivative(beta, volume):
    h = 1e-4 * beta
    fd = (exact.u1_log_partition_function(beta + h, volume) - exact.u1_log_partition_function(beta - h, volume)) / (
        2 * h * volume
    )
    assert exact.u1_plaquette(beta, volume) == pytest.approx(fd, rel=1e-7, abs=1e-9)


def test_u1_two_by_one_lattice_monte_carlo():
    beta = 1.3
    mc = u1_monte_carlo((2, 1), beta, 1_000_000, seed=1234)
    mean, err = mc["plaquette"]
    assert abs(mean - exact.u1_plaquette(beta, 2)) < 5 * err
    assert err < 2e-3
    # |Q| < V/2 = 1 up to a null set: Q = 0 on every configuration
    assert np.all(np.abs(mc["q"]) < 1e-9)
    assert exact.u1_topological_charge_squared(beta, 2) == 0.0


@pytest.mark.parametrize("shape", [(2, 2), (3, 1)])
def test_u1_small_lattice_monte_carlo(shape):
    beta = 1.0
    volume = shape[0] * shape[1]
    mc = u1_monte_carlo(shape, beta, 400_000, seed=sum(shape) * 7)
    mean, err = mc["plaquette"]
    assert abs(mean - exact.u1_plaquette(beta, volume)) < 5 * err
    q = mc["q"]
    assert np.allclose(q, np.round(q), atol=1e-9)
    q2, q2_err = weighted_mean(np.round(q) ** 2, mc["log_w"])
    assert q2 > 0.01
    assert abs(q2 - exact.u1_topological_charge_squared(beta, volume)) < 5 * q2_err
    # Wilson loop enclosing the two plaquettes at x = (0, 0) and (1, 0)
    phi = mc["phi"]
    w_loop, w_err = weighted_mean(np.cos(phi[:, 0, 0] + phi[:, 1, 0]), mc["log_w"])
    assert abs(w_loop - exact.u1_wilson_loop(beta, volume, 2)) < 5 * w_err


# --------------------------------------------------------------------------------------
# U(1) Wilson loops
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("volume", [1, 2, 5, 64, 4096])
@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_wilson_loop_area_one_is_plaquette(beta, volume):
    assert exact.u1_wilson_loop(beta, volume, 1) == pytest.approx(exact.u1_plaquette(beta, volume), rel=1e-13)


@pytest.mark.parametrize("volume", [1, 7, 64])
@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_wilson_loop_area_symmetry(beta, volume):
    assert exact.u1_wilson_loop(beta, volume, 0) == pytest.approx(1.0, rel=1e-13)
    assert exact.u1_wilson_loop(beta, volume, volume) == pytest.approx(1.0, rel=1e-13)
    for area in range(volume + 1):
        assert exact.u1_wilson_loop(beta, volume, area) == pytest.approx(
            exact.u1_wilson_loop(beta, volume, volume - area), rel=1e-12
        )


@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
@pytest.mark.parametrize("area", [1, 4, 12, 30])
def test_wilson_loop_large_volume_area_law(beta, area):
    expected = (special.i1(beta) / special.i0(beta)) ** area
    assert exact.u1_wilson_loop(beta, 4096, area) == pytest.approx(expected, rel=1e-12)
    assert exact.u1_wilson_loop(beta, None, area) == pytest.approx(expected, rel=1e-12)


def test_wilson_loop_large_values_are_finite():
    w = exact.u1_wilson_loop(10.0, 4096, 2048)
    assert np.isfinite(w) and 0.0 < w < 1e-40
    assert exact.u1_wilson_loop(0.1, 4096, 2048) == 0.0  # underflows (true value ~ 1e-5000)


# --------------------------------------------------------------------------------------
# U(1) topological charge
# --------------------------------------------------------------------------------------
def direct_variance_of_t_over_2pi(beta):
    num = integrate.quad(lambda t: t * t * math.exp(beta * (math.cos(t) - 1)), -math.pi, math.pi, epsabs=1e-14)[0]
    den = integrate.quad(lambda t: math.exp(beta * (math.cos(t) - 1)), -math.pi, math.pi, epsabs=1e-14)[0]
    return num / den / TWO_PI**2


@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_q2_large_volume_limit(beta):
    chi = direct_variance_of_t_over_2pi(beta)
    assert exact.u1_topological_susceptibility_infinite_volume(beta) == pytest.approx(chi, rel=1e-10)
    assert exact.u1_topological_charge_squared(beta, 4096) / 4096 == pytest.approx(chi, rel=1e-10)
    assert exact.u1_topological_charge_squared(beta, 1024) / 1024 == pytest.approx(chi, rel=1e-10)


@pytest.mark.parametrize("beta, volume", [(2.0, 32), (5.0, 64), (10.0, 64), (10.0, 128)])
def test_q2_finite_volume_gaussian_approximation(beta, volume):
    # sum_P phi_P ~ Gaussian with variance V <t^2>, conditioned on 2 pi Z: Q is a discrete
    # Gaussian.  Good once V is large (at beta = 10, V = 64 it is far from V chi_infinity).
    var = volume * exact.u1_topological_susceptibility_infinite_volume(beta)
    q = np.arange(-50, 51)
    w = np.exp(-(q**2) / (2 * var))
    approx = float(np.sum(q**2 * w) / np.sum(w))
    assert exact.u1_topological_charge_squared(beta, volume) == pytest.approx(approx, rel=1e-3)


def test_q2_stable_at_large_volume_and_coupling():
    q2 = exact.u1_topological_charge_squared(10.0, 4096)
    assert np.isfinite(q2) and q2 > 0


@pytest.mark.parametrize("beta", [0.3, 2.0, 10.0])
def test_q2_vanishes_on_one_and_two_plaquettes(beta):
    assert exact.u1_topological_charge_squared(beta, 1) == 0.0
    assert exact.u1_topological_charge_squared(beta, 2) == 0.0


@pytest.mark.parametrize("beta", [0.5, 1.5, 3.0])
def test_q2_three_plaquettes_by_quadrature(beta):
    """V = 3: wrapped plaquette angles with sum in 2 pi Z; Q in {-1, 0, 1}."""
    f = lambda t: math.exp(beta * (math.cos(t) - 1))  # noqa: E731
    opts = dict(epsabs=1e-13, epsrel=1e-10)

    def weight(q, lo):
        return integrate.dblquad(
            lambda p2, p1: f(p1) * f(p2) * f(TWO_PI * q - p1 - p2),
            lo,
            math.pi,
            lambda p1: max(-math.pi, TWO_PI * q - p1 - math.pi),
            lambda p1: min(math.pi, TWO_PI * q - p1 + math.pi),
            **opts,
        )[0]

    p0, p1 = weight(0, -math.pi), weight(1, 0.0)
    expected = 2 * p1 / (p0 + 2 * p1)
    assert exact.u1_topological_charge_squared(beta, 3) == pytest.approx(expected, rel=1e-7)


# --------------------------------------------------------------------------------------
# SU(2)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_su2_large_volume_limit(beta):
    expected = special.iv(2, beta) / special.iv(1, beta)
    assert exact.su2_plaquette(beta, 4096) == pytest.approx(expected, rel=1e-12)
    assert exact.su2_plaquette(beta) == pytest.approx(expected, rel=1e-14)
    assert exact.su2_plaquette_infinite_volume(beta) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("volume", [1, 2, 9, 4096])
@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_su2_plaquette_is_log_z_derivative(beta, volume):
    h = 1e-4 * beta
    fd = (exact.su2_log_partition_function(beta + h, volume) - exact.su2_log_partition_function(beta - h, volume)) / (
        2 * h * volume
    )
    assert exact.su2_plaquette(beta, volume) == pytest.approx(fd, rel=1e-7)


def test_su2_stable_at_large_volume_and_coupling():
    p = exact.su2_plaquette(10.0, 4096)
    assert np.isfinite(p) and 0 < p < 1
    assert np.isfinite(exact.su2_log_partition_function(10.0, 4096))


def test_su2_one_plaquette_torus_monte_carlo():
    beta = 2.0
    rng = np.random.default_rng(77)
    n = 200_000
    half_retr = 0.5 * commutator_plaquette_retr(haar_su2(rng, n), haar_su2(rng, n))
    mean, err = weighted_mean(half_retr, beta * half_retr)
    assert abs(mean - exact.su2_plaquette(beta, 1)) < 5 * err


# --------------------------------------------------------------------------------------
# SU(3)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_su3_infinite_volume_vs_haar_monte_carlo(beta):
    rng = np.random.default_rng(int(beta * 100))
    u = haar_su3(rng, 200_000)
    assert np.allclose(np.linalg.det(u[:10]), 1.0)
    third_retr = np.trace(u, axis1=1, axis2=2).real / 3.0
    mean, err = weighted_mean(third_retr, beta * third_retr)
    expected = exact.su3_plaquette_infinite_volume(beta)
    assert abs(mean - expected) < max(5 * err, 1e-3)
    assert abs(mean - expected) < 1e-2


@pytest.mark.parametrize("beta", [0.5, 3.0, 10.0])
def test_su3_infinite_volume_consistency(beta):
    p = exact.su3_plaquette_infinite_volume(beta)
    h = 1e-4 * beta
    fd = (exact.su3_log_character_coefficient(beta + h) - exact.su3_log_character_coefficient(beta - h)) / (2 * h)
    assert p == pytest.approx(fd, rel=1e-7)
    # d z / d beta = (1/3) int Re tr U e^{...} = c_10 / 3
    ratio = math.exp(exact.su3_log_character_coefficient(beta, 1, 0) - exact.su3_log_character_coefficient(beta))
    assert p == pytest.approx(ratio / 3.0, rel=1e-12)
    assert exact.su3_plaquette(beta) == p
    assert exact.su3_plaquette(beta, 4096) == pytest.approx(p, rel=1e-12)


def test_su3_small_beta_expansion():
    # <(1/3) Re tr U> = beta/18 + O(beta^2) from int |tr U|^2 dU = 1
    beta = 1e-3
    assert exact.su3_plaquette_infinite_volume(beta) == pytest.approx(beta / 18.0, rel=1e-2)


@pytest.mark.parametrize("volume", [1, 2, 9])
def test_su3_finite_volume_is_log_z_derivative(volume):
    beta, h = 2.5, 2.5e-4
    fd = (exact.su3_log_partition_function(beta + h, volume) - exact.su3_log_partition_function(beta - h, volume)) / (
        2 * h * volume
    )
    assert exact.su3_plaquette(beta, volume) == pytest.approx(fd, rel=1e-7)


def test_su3_one_plaquette_torus_monte_carlo():
    beta = 3.0
    rng = np.random.default_rng(99)
    n = 200_000
    third_retr = commutator_plaquette_retr(haar_su3(rng, n), haar_su3(rng, n)) / 3.0
    mean, err = weighted_mean(third_retr, beta * third_retr)
    assert abs(mean - exact.su3_plaquette(beta, 1)) < 5 * err


# --------------------------------------------------------------------------------------
# free scalar field
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8,), (4, 6), (3, 4, 5), (2, 2, 2, 3)])
@pytest.mark.parametrize("m2", [0.05, 0.5, 3.0])
def test_free_susceptibility(shape, m2):
    g = exact.free_scalar_propagator(shape, m2)
    assert g.shape == shape and g.dtype == np.float64
    assert g.sum() == pytest.approx(1.0 / (2.0 * m2), rel=1e-12)
    assert exact.free_scalar_susceptibility(shape, m2) == pytest.approx(1.0 / (2.0 * m2), rel=1e-15)


def project_action_matrix(shape, m2):
    """``M`` with ``phi^T M phi = sum_x [-2 sum_mu phi_x phi_{x+mu} + (2D+m2) phi_x^2]``."""
    volume, dim = int(np.prod(shape)), len(shape)
    index = np.arange(volume).reshape(shape)
    m = (2 * dim + m2) * np.eye(volume)
    for mu in range(dim):
        forward = np.roll(index, -1, axis=mu)  # site x + mu
        t = np.zeros((volume, volume))
        t[index.ravel(), forward.ravel()] = 1.0
        m -= t + t.T
    return m


@pytest.mark.parametrize("shape", [(3, 3), (4, 3), (3, 2, 4)])
def test_free_propagator_matches_matrix_inverse(shape):
    m2 = 0.7
    m = project_action_matrix(shape, m2)
    rng = np.random.default_rng(5)
    phi = rng.standard_normal(shape)
    action = sum(-2 * np.sum(phi * np.roll(phi, -1, axis=mu)) + 0 for mu in range(len(shape)))
    action += np.sum((2 * len(shape) + m2) * phi**2)
    assert phi.ravel() @ m @ phi.ravel() == pytest.approx(action, rel=1e-12)
    covariance = 0.5 * np.linalg.inv(m)  # e^{-phi^T M phi}: covariance (1/2) M^{-1}
    g = exact.free_scalar_propagator(shape, m2)
    assert np.allclose(g.ravel(), covariance[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(5, 7), (4, 4, 6)])
def test_free_propagator_is_symmetric(shape):
    g = exact.free_scalar_propagator(shape, 0.3)
    axes = tuple(range(len(shape)))
    g_minus = np.roll(np.flip(g, axis=axes), 1, axis=axes)  # G(-x)
    assert np.allclose(g, g_minus, rtol=1e-13, atol=1e-15)
    assert np.argmax(g) == 0


def test_free_propagator_gaussian_sampling():
    shape, m2 = (3, 3), 0.4
    m = project_action_matrix(shape, m2)
    rng = np.random.default_rng(11)
    samples = rng.multivariate_normal(np.zeros(9), 0.5 * np.linalg.inv(m), size=200_000)
    empirical = np.mean(samples[:, :1] * samples, axis=0)
    g = exact.free_scalar_propagator(shape, m2).ravel()
    assert np.allclose(empirical, g, atol=5e-3)


# --------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda: exact.u1_plaquette(0.0, 4),
        lambda: exact.u1_plaquette(-1.0, 4),
        lambda: exact.u1_plaquette(float("nan"), 4),
        lambda: exact.u1_plaquette(1.0, 0),
        lambda: exact.u1_plaquette(1.0, 2.5),
        lambda: exact.u1_wilson_loop(1.0, 4, 5),
        lambda: exact.u1_wilson_loop(1.0, 4, -1),
        lambda: exact.u1_topological_charge_squared(1.0, 0),
        lambda: exact.u1_topological_charge_squared(-2.0, 16),
        lambda: exact.su2_plaquette(0.0, 4),
        lambda: exact.su2_plaquette(1.0, -3),
        lambda: exact.su3_plaquette_infinite_volume(-1.0),
        lambda: exact.su3_plaquette(1.0, 0),
        lambda: exact.su3_log_character_coefficient(1.0, -1, 0),
        lambda: exact.free_scalar_propagator((4, 4), 0.0),
        lambda: exact.free_scalar_propagator((4, 4), -0.1),
        lambda: exact.free_scalar_propagator((4, 0), 0.5),
        lambda: exact.free_scalar_propagator((), 0.5),
        lambda: exact.free_scalar_susceptibility((4,), 0.0),
    ],
)
def test_invalid_input_raises(call):
    with pytest.raises(ValueError):
        call()
