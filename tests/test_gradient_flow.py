"""The gradient (Wilson) flow: integrator order, group and gauge properties, observables, scales.

All lattices are tiny and flows short, so the module runs in a few seconds on one CPU thread.
"""

import math

import numpy as np
import pytest
import torch

from gaugeflow.hmc.autocorrelation import gamma_method
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.gradient_flow import (
    flow_observables,
    rk3_step,
    scale_t0,
    scale_w0,
    t2_energy,
    t_derivative_t2_energy,
    wilson_flow,
    wilson_flow_steps,
)
from gaugeflow.lattice.groups import expm_algebra, random_algebra, unitarity_drift, wrap_angle
from gaugeflow.lattice.theories import make_theory
from gaugeflow.lattice.u1 import plaquette_angles


def _distance(theory, a, b) -> float:
    return float((theory.links_as_matrices(a) - theory.links_as_matrices(b)).abs().max())


def _flowed(field, theory, t, eps):
    (_, flowed), = wilson_flow_steps(field, theory, [t], eps)
    return flowed


@pytest.mark.parametrize("name, shape", [("su3", "3x3"), ("u1", "6x6"), ("su2", "3x3x3")])
def test_rk3_local_error_scales_as_eps_to_the_fourth(name, shape, generator):
    """One step of size eps against 16 steps of eps/16: the error shrinks 16-fold per halving."""
    theory = make_theory(name, shape, beta=1.0)
    field = theory.hot_start(2, generator=generator)
    errors = []
    for eps in (0.08, 0.04, 0.02):
        reference = _flowed(field, theory, eps, eps / 16)
        errors.append(_distance(theory, rk3_step(field, theory, eps), reference))
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(3.6 < order < 4.4 for order in orders), (errors, orders)


def test_fields_stay_in_su3(generator):
    theory = make_theory("su3", "3x3x3x3", beta=6.0)
    field = theory.hot_start(1, generator=generator)
    for _, flowed in wilson_flow_steps(field, theory, [0.25, 0.5, 0.75], eps=0.05):
        assert float(unitarity_drift(flowed)) < 1e-12
        assert float((torch.linalg.det(flowed) - 1).abs().max()) < 1e-12


@pytest.mark.parametrize("name, shape", [("su3", "3x3x3"), ("u1", "6x6")])
def test_flow_is_gauge_covariant(name, shape, generator):
    """flow(g U g^-1) = g flow(U) g^-1 for a random gauge transformation g(x)."""
    theory = make_theory(name, shape, beta=1.0)
    field = theory.hot_start(2, generator=generator)
    transformation = theory.random_gauge_transformation(2, generator=generator)
    flowed_then_transformed = theory.gauge_transform(_flowed(field, theory, 0.5, 0.05), transformation)
    transformed_then_flowed = _flowed(theory.gauge_transform(field, transformation), theory, 0.5, 0.05)
    assert _distance(theory, flowed_then_transformed, transformed_then_flowed) < 1e-11


def test_energy_decreases_and_its_exact_derivative_matches(generator):
    """E_plaq(t) never increases; the exact dE/dt = -(2/V) sum |Z|^2 agrees with finite differences."""
    theory = make_theory("su2", "3x3x3x3", beta=2.0)
    h = 0.02
    result = wilson_flow(theory.hot_start(2, generator=generator), theory, t_max=0.3, eps=h)
    energy = result.energy["plaquette"]
    assert np.all(np.diff(energy, axis=-1) < 0)
    assert np.all(result.energy_derivative["plaquette"] < 0)
    fourth_order = (energy[:, :-4] - 8 * energy[:, 1:-3] + 8 * energy[:, 3:-1] - energy[:, 4:]) / (12 * h)
    assert np.allclose(fourth_order, result.energy_derivative["plaquette"][:, 2:-2], rtol=1e-4)
    # the clover derivative is the finite difference of the clover energy
    assert np.allclose(t_derivative_t2_energy(result, "clover")[:, 1:-1],
                       (2 * result.times**2 * result.energy["clover"]
                        + result.times**3 * np.gradient(result.energy["clover"], result.times, axis=-1))[:, 1:-1])
    assert t2_energy(result, "plaquette")[0, 0] == 0.0
    with pytest.raises(InputError):
        t2_energy(result, "wilson")


def test_u1_flow_is_the_su2_flow_of_its_embedding(generator):
    """U(1) angles flowed directly and as diag(e^{i theta}, e^{-i theta}) in SU(2) agree; the abelian
    E (F F / 4) is a quarter of the SU(2) E of the embedding."""
    u1, su2 = make_theory("u1", "5x5", beta=1.0), make_theory("su2", "5x5", beta=1.0)
    theta = u1.hot_start(2, generator=generator)
    embedded = torch.diag_embed(torch.stack([torch.polar(torch.ones_like(theta), theta),
                                             torch.polar(torch.ones_like(theta), -theta)], dim=-1))
    flowed_u1, flowed_su2 = _flowed(theta, u1, 0.4, 0.05), _flowed(embedded, su2, 0.4, 0.05)
    assert torch.allclose(torch.polar(torch.ones_like(flowed_u1), flowed_u1), flowed_su2[..., 0, 0], atol=1e-12)
    observed_u1, observed_su2 = flow_observables(flowed_u1, "u1"), flow_observables(flowed_su2, "su2")
    for name in ("energy_plaquette", "energy_clover", "energy_derivative_plaquette"):
        assert torch.allclose(4 * observed_u1[name], observed_su2[name], rtol=1e-10), name


def test_flowed_2d_u1_charge_becomes_an_integer(generator):
    """On hot 2D U(1) configurations the field-theoretic charge (1/2pi) sum sin theta_P is far from
    an integer; after flowing it is within a few per cent of the geometric charge
    (1/2pi) sum arg U_P (always an integer), which stops changing."""
    theory = make_theory("u1", "10x10", beta=1.0)
    field = theory.hot_start(4, generator=generator)

    def sine_charge(theta):
        return (torch.sin(plaquette_angles(theta, 0, 1)).sum((1, 2)) / (2 * math.pi)).numpy()

    assert np.max(np.abs(sine_charge(field) - np.round(sine_charge(field)))) > 0.1
    result = wilson_flow(field, theory, t_max=4.0, eps=0.1)
    charge = result.topological_charge
    assert np.all(np.abs(charge - np.round(charge)) < 1e-9)
    late = result.times >= 2.0  # small dislocations unwind early; the charge then stays put
    assert np.allclose(charge[:, late], charge[:, -1:], rtol=0, atol=1e-9)
    assert np.all(np.abs(sine_charge(result.field) - charge[:, -1]) < 0.03)


def _constant_flux_angles(shape, n: int, m: int) -> torch.Tensor:
    """U(1) 4D angles with constant field strength 2 pi n / (L0 L1) in every 01 plaquette and
    2 pi m / (L2 L3) in every 23 plaquette (the twist of each plane sits on its last slice)."""
    l0, l1, l2, l3 = shape
    x = torch.meshgrid(*(torch.arange(extent, dtype=torch.float64) for extent in shape), indexing="ij")
    theta = torch.zeros(1, 4, *shape, dtype=torch.float64)
    theta[0, 1] = 2 * math.pi * n * x[0] / (l0 * l1)
    theta[0, 0] = torch.where(x[0] == l0 - 1, -2 * math.pi * n * x[1] / l1, 0.0)
    theta[0, 3] = 2 * math.pi * m * x[2] / (l2 * l3)
    theta[0, 2] = torch.where(x[2] == l2 - 1, -2 * math.pi * m * x[3] / l3, 0.0)
    return wrap_angle(theta)


def test_flowed_4d_clover_charge_approaches_an_integer(generator):
    """Constructed: a U(1) field on 6^4 with one flux quantum through every 01 plane and one through
    every 23 plane (constant field strength 2 pi / 36 in both, topological charge n m = 1), and its
    SU(2) embedding diag(U, U^*) (charge 2 n m = 2; self-dual because both fluxes are equal).  Random
    noise (U(1): angles +- 0.4; SU(2): exp(0.25 X) U, X Gaussian in su(2)) moves the clover charge
    away from the integer; the flow smooths the noise away and the clover charge returns to the
    constant-field value n m (V / 4 pi^2) sin^2(2 pi / 36) = 0.990 (U(1)) or twice that (SU(2)):
    integer up to the O(a^2) artefacts of the clover discretisation."""
    shape = (6, 6, 6, 6)
    theta = _constant_flux_angles(shape, 1, 1)
    u1 = make_theory("u1", "6x6x6x6", beta=1.0)
    assert float(flow_observables(theta, u1)["topological_charge"]) == pytest.approx(0.98993, abs=1e-4)
    noisy = theta + 0.8 * (torch.rand(theta.shape, generator=generator, dtype=torch.float64) - 0.5)
    before = float(flow_observables(noisy, u1)["topological_charge"])
    after = float(flow_observables(_flowed(noisy, u1, 1.5, 0.1), u1)["topological_charge"])
    assert abs(after - 1) < 0.015 < abs(before - 1)

    su2 = make_theory("su2", "6x6x6x6", beta=1.0)
    embedded = torch.diag_embed(torch.stack([torch.polar(torch.ones_like(theta), theta),
                                             torch.polar(torch.ones_like(theta), -theta)], dim=-1))
    noisy = expm_algebra(0.25 * random_algebra(embedded.shape[:-2], 2, generator=generator)) @ embedded
    before = float(flow_observables(noisy, su2)["topological_charge"])
    after = float(flow_observables(_flowed(noisy, su2, 1.0, 0.1), su2)["topological_charge"])
    assert abs(after - 2) < 0.03 < abs(before - 2)


def test_adaptive_step_agrees_with_fine_fixed_step(generator):
    theory = make_theory("su2", "4x4", beta=1.0)
    field = theory.hot_start(2, generator=generator)
    (_, adaptive), = wilson_flow_steps(field, theory, [0.5], eps=0.01, adaptive=True, tolerance=1e-5)
    fine = _flowed(field, theory, 0.5, 0.01)
    assert _distance(theory, adaptive, fine) < 1e-5
    # measurement times are hit exactly, whatever the step
    times = [t for t, _ in wilson_flow_steps(field, theory, [0.0, 0.3, 0.7], eps=0.25, adaptive=True)]
    assert times == [0.0, 0.3, 0.7]


def _ar1(n, rho, generator_seed):
    rng = np.random.default_rng(generator_seed)
    noise = rng.normal(size=n)
    out = np.empty(n)
    out[0] = noise[0]
    for i in range(1, n):
        out[i] = rho * out[i - 1] + math.sqrt(1 - rho * rho) * noise[i]
    return out


def test_scales_propagate_errors_through_the_interpolation():
    """Synthetic flow data t^2 E = a_i t (t0 = 0.3 / <a>) and t d/dt t^2 E = a_i t (w0 = sqrt(0.3 / <a>)),
    a_i autocorrelated in two chains: values exact, Gamma errors equal to linear propagation of the
    Gamma error of <a>, jackknife close."""
    times = np.linspace(0, 3, 61)
    a = [0.25 + 0.01 * _ar1(400, 0.6, seed) for seed in (1, 2)]
    mean = np.concatenate(a).mean()
    error_a = gamma_method(a).error

    t0 = scale_t0(times, [ai[:, None] * times for ai in a])
    assert t0.value == pytest.approx(0.3 / mean, rel=1e-10)
    assert t0.error == pytest.approx(0.3 / mean**2 * error_a, rel=1e-4)
    assert t0.tau_int > 1
    assert t0.jackknife_error == pytest.approx(t0.error, rel=0.3)

    w0 = scale_w0(times, np.stack([ai[:, None] * times for ai in a]))
    assert w0.value == pytest.approx(math.sqrt(0.3 / mean), rel=1e-10)
    assert w0.error == pytest.approx(0.5 * math.sqrt(0.3) * mean**-1.5 * error_a, rel=1e-4)

    with pytest.raises(InputError, match="never reaches"):
        scale_t0(times[:5], [ai[:, None] * times[:5] for ai in a])
