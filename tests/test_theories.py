"""Actions, forces and observables of phi^4, U(1) and SU(N): symmetries and exact values."""

import math

import numpy as np
import pytest
import torch

from gaugeflow.lattice.groups import haar_random_sun, random_algebra
from gaugeflow.lattice.theories import make_theory

GAUGE_CASES = [
    ("u1", "6x6", {"beta": 2.0}),
    ("u1", "4x4x4", {"beta": 1.0}),
    ("su2", "4x4", {"beta": 2.0}),
    ("su3", "4x4", {"beta": 3.0}),
    ("su2", "2x2x2x4", {"beta": 2.0}),
    ("su3", "2x2x2x2", {"beta": 5.5}),
]
ALL_CASES = GAUGE_CASES + [("phi4", "6x6", {"m2": -4.0, "lam": 8.0}), ("phi4", "4x4x4", {"m2": 1.0, "lam": 0.5})]


def ids(cases):
    return [f"{name}-{shape}" for name, shape, _ in cases]


@pytest.mark.parametrize("name, shape, couplings", GAUGE_CASES, ids=ids(GAUGE_CASES))
def test_action_and_observables_are_gauge_invariant(name, shape, couplings, generator):
    theory = make_theory(name, shape, **couplings)
    field = theory.hot_start(3, generator=generator)
    transformed = theory.gauge_transform(field, theory.random_gauge_transformation(3, generator=generator))
    assert not torch.allclose(transformed, field)
    assert torch.allclose(theory.action(transformed), theory.action(field), atol=1e-10)
    before, after = theory.observables(field), theory.observables(transformed)
    assert set(before) == set(after)
    for key in before:
        assert torch.allclose(before[key], after[key], atol=1e-10), key


@pytest.mark.parametrize("name, shape, couplings", ALL_CASES, ids=ids(ALL_CASES))
def test_translation_invariance(name, shape, couplings, generator):
    theory = make_theory(name, shape, **couplings)
    field = theory.hot_start(2, generator=generator)
    first_site_axis = 2 if theory.is_gauge_theory else 1
    moved = torch.roll(field, shifts=(1, 2), dims=(first_site_axis, first_site_axis + 1))
    assert torch.allclose(theory.action(moved), theory.action(field), atol=1e-10)
    for key, value in theory.observables(moved).items():
        assert torch.allclose(value, theory.observables(field)[key], atol=1e-10), key


@pytest.mark.parametrize("name, shape, couplings", ALL_CASES, ids=ids(ALL_CASES))
def test_cold_start(name, shape, couplings):
    theory = make_theory(name, shape, **couplings)
    observables = theory.observables(theory.cold_start(2))
    if theory.is_gauge_theory:
        n_planes = theory.dimension * (theory.dimension - 1) // 2
        assert torch.allclose(theory.action(theory.cold_start(2)), torch.full((2,), -couplings["beta"] * n_planes * theory.volume, dtype=torch.float64))
        for key in ("plaquette", "polyakov_loop_re", "polyakov_loop_abs"):
            assert torch.allclose(observables[key], torch.ones(2, dtype=torch.float64))
    else:
        assert torch.all(theory.action(theory.cold_start(2)) == 0)


SIGN_FLIP_CASES = [case for case in ALL_CASES if make_theory(case[0], case[1], **case[2]).sign_flip_symmetric]


@pytest.mark.parametrize("name, shape, couplings", SIGN_FLIP_CASES, ids=ids(SIGN_FLIP_CASES))
def test_declared_sign_flip_symmetry_holds(name, shape, couplings, generator):
    """``sign_flip_symmetric`` lets flows symmetrise over phi -> -phi: it must be true."""
    theory = make_theory(name, shape, **couplings)
    field = theory.hot_start(3, generator=generator)
    assert torch.allclose(theory.action(-field), theory.action(field), rtol=1e-13)


def test_phi4_action_matches_explicit_sum(generator):
    m2, lam = -4.0, 6.975
    theory = make_theory("phi4", "3x4", m2=m2, lam=lam)
    phi = theory.hot_start(1, generator=generator)[0].numpy()
    expected = 0.0
    for x in range(3):
        for y in range(4):
            neighbours = phi[(x + 1) % 3, y] + phi[x, (y + 1) % 4]
            expected += -2 * phi[x, y] * neighbours + (4 + m2) * phi[x, y] ** 2 + lam * phi[x, y] ** 4
    assert np.isclose(theory.action(torch.as_tensor(phi)[None]).item(), expected, rtol=1e-12)


def test_u1_action_matches_explicit_plaquettes(generator):
    theory = make_theory("u1", "3x4", beta=1.7)
    theta = theory.hot_start(1, generator=generator)[0].numpy()
    expected = 0.0
    for x in range(3):
        for y in range(4):
            # U_0(x) U_1(x+0) U_0(x+1)^* U_1(x)^*
            angle = theta[0, x, y] + theta[1, (x + 1) % 3, y] - theta[0, x, (y + 1) % 4] - theta[1, x, y]
            expected -= 1.7 * math.cos(angle)
    assert np.isclose(theory.action(torch.as_tensor(theta)[None]).item(), expected, rtol=1e-12)


def test_sun_action_matches_explicit_plaquettes(generator):
    theory = make_theory("su3", "2x3", beta=5.0)
    u = theory.hot_start(1, generator=generator)[0].numpy()
    expected = 0.0
    for x in range(2):
        for y in range(3):
            plaq = u[0, x, y] @ u[1, (x + 1) % 2, y] @ u[0, x, (y + 1) % 3].conj().T @ u[1, x, y].conj().T
            expected -= 5.0 / 3 * np.trace(plaq).real
    assert np.isclose(theory.action(torch.as_tensor(u)[None]).item(), expected, rtol=1e-12)


@pytest.mark.parametrize("name, shape, couplings", ALL_CASES, ids=ids(ALL_CASES))
def test_force_is_the_directional_derivative(name, shape, couplings, generator):
    """<F, X> = d/d eps S(exp(eps X) U) (gauge) or d/d eps S(phi + eps X), by central differences."""
    theory = make_theory(name, shape, **couplings)
    field = theory.hot_start(2, generator=generator)
    force = theory.force(field)
    direction = theory.field.random_momenta(field, generator)
    eps = 1e-5
    numerical = (theory.action(theory.field.evolve(field, direction, eps)) - theory.action(theory.field.evolve(field, direction, -eps))) / (2 * eps)
    analytic = (force.conj() * direction).real.reshape(2, -1).sum(-1)
    assert torch.allclose(numerical, analytic, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, shape, couplings", ALL_CASES, ids=ids(ALL_CASES))
def test_analytic_force_equals_autograd_force(name, shape, couplings, generator):
    from gaugeflow.lattice.theory import Theory

    theory = make_theory(name, shape, **couplings)
    field = theory.hot_start(2, generator=generator)
    assert torch.allclose(theory.force(field), Theory.force(theory, field), atol=1e-12)


def test_force_lies_in_the_algebra(generator):
    theory = make_theory("su3", "4x4", beta=3.0)
    force = theory.force(theory.hot_start(2, generator=generator))
    assert torch.allclose(force, -force.mH, atol=1e-12)
    assert torch.allclose(torch.diagonal(force, dim1=-2, dim2=-1).sum(-1).abs(), torch.zeros((), dtype=torch.float64), atol=1e-12)


def constant_flux_angles(extents, flux_quanta):
    """2D U(1) angles with uniform plaquette angle 2 pi n / (L0 L1) (periodic)."""
    l0, l1 = extents
    x0, x1 = np.meshgrid(np.arange(l0), np.arange(l1), indexing="ij")
    theta = np.zeros((2, l0, l1))
    theta[1] = 2 * np.pi * flux_quanta * x0 / (l0 * l1)
    theta[0] = np.where(x0 == l0 - 1, -2 * np.pi * flux_quanta * x1 / l1, 0.0)
    return theta


@pytest.mark.parametrize("n", [-2, -1, 0, 1, 3])
def test_u1_2d_topological_charge_of_constant_flux(n):
    theory = make_theory("u1", "6x8", beta=1.0)
    theta = torch.as_tensor(constant_flux_angles((6, 8), n))[None]
    assert theory.observables(theta)["topological_charge"].item() == pytest.approx(n, abs=1e-12)
    assert theory.observables(theta)["plaquette"].item() == pytest.approx(math.cos(2 * math.pi * n / 48))


def test_u1_2d_topological_charge_is_integer(generator):
    theory = make_theory("u1", "8x8", beta=1.0)
    charge = theory.observables(theory.hot_start(50, generator=generator))["topological_charge"]
    assert torch.allclose(charge, charge.round(), atol=1e-10)
    assert charge.abs().max() > 0


@pytest.mark.parametrize("n, m", [(1, 1), (1, -2), (0, 1)])
def test_su2_4d_clover_charge_of_abelian_flux(n, m):
    """Abelian SU(2) field diag(e^{i theta}, e^{-i theta}) with fluxes in the 01 and 23 planes:
    every clover leaf equals the plaquette, so Q = V * 2 sin(phi01) sin(phi23) / (4 pi^2) exactly."""
    shape = (4, 4, 6, 6)
    theta = np.zeros((4, *shape))
    flux01 = constant_flux_angles(shape[:2], n)
    flux23 = constant_flux_angles(shape[2:], m)
    theta[0:2] = flux01[:, :, :, None, None]
    theta[2:4] = flux23[:, None, None, :, :]
    phase = np.exp(1j * theta)
    links = np.zeros((4, *shape, 2, 2), dtype=complex)
    links[..., 0, 0], links[..., 1, 1] = phase, phase.conj()
    theory = make_theory("su2", "4x4x6x6", beta=2.0)
    charge = theory.observables(torch.as_tensor(links)[None])["topological_charge"].item()
    volume = np.prod(shape)
    phi01, phi23 = 2 * np.pi * n / 16, 2 * np.pi * m / 36
    assert charge == pytest.approx(volume * 2 * np.sin(phi01) * np.sin(phi23) / (4 * np.pi**2), abs=1e-10)
    if n * m:
        assert charge == pytest.approx(2 * n * m, rel=0.15)  # continuum value 2 n m


def test_polyakov_loop_of_a_center_twist():
    """Multiplying all time links on one time slice by a centre element multiplies P by it."""
    theory = make_theory("su3", "2x2x2x4", beta=5.5)
    links = theory.cold_start(1)
    omega = torch.exp(torch.tensor(2j * math.pi / 3))
    links[:, 3, :, :, :, 0] *= omega
    observables = theory.observables(links)
    assert observables["polyakov_loop_re"].item() == pytest.approx(math.cos(2 * math.pi / 3))
    assert observables["plaquette"].item() == pytest.approx(1.0)


def test_wilson_loop_of_constant_flux_is_the_enclosed_phase():
    theory = make_theory("u1", "8x8", beta=1.0)
    theta = torch.as_tensor(constant_flux_angles((8, 8), 1))[None]
    observables = theory.observables(theta)
    phi = 2 * math.pi / 64
    assert observables["wilson_loop_1x2"].item() == pytest.approx(math.cos(2 * phi))
    assert observables["wilson_loop_2x2"].item() == pytest.approx(math.cos(4 * phi))


def test_hot_starts_lie_in_the_group(generator):
    theory = make_theory("su2", "4x4", beta=1.0)
    links = theory.hot_start(2, generator=generator)
    assert torch.allclose(torch.linalg.det(links), torch.ones((), dtype=links.dtype))
    theta = make_theory("u1", "4x4", beta=1.0).hot_start(100, generator=generator)
    assert theta.min() > -math.pi and theta.max() <= math.pi


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_theory("u2", "8x8", beta=1.0), "unknown theory"),
        (lambda: make_theory("u1", "8x8"), "needs coupling"),
        (lambda: make_theory("phi4", "8x8", m2=1.0), "lam"),
        (lambda: make_theory("u1", "8x8", beta=1.0, lam=2.0), "takes no coupling"),
        (lambda: make_theory("u1", "8y8", beta=1.0), "lattice shape"),
        (lambda: make_theory("u1", "8x8", beta=float("nan")), "finite"),
        (lambda: make_theory("u1", "8", beta=1.0), "at least 2 dimensions"),
    ],
)
def test_bad_theory_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_field_shape_is_named():
    theory = make_theory("u1", "8x8", beta=1.0)
    with pytest.raises(ValueError, match=r"u1 on 8x8: expected a field of shape \[batch, 2, 8, 8\]"):
        theory.action(torch.zeros(1, 2, 8, 6))


def test_float32_fields_give_float64_actions(generator):
    theory = make_theory("su2", "4x4", beta=2.0)
    links = theory.hot_start(2, generator=generator, precision=torch.float32)
    assert links.dtype == torch.complex64
    assert theory.action(links).dtype == torch.float64
    assert theory.force(links).dtype == torch.complex64
    assert all(v.dtype == torch.float64 for v in theory.observables(links).values())


def test_sun_momenta_match_kinetic_normalisation(generator):
    theory = make_theory("su2", "4x4", beta=2.0)
    p = random_algebra((4000,), 2, generator=generator)
    kinetic = theory.field.kinetic_energy(p[:, None])
    assert kinetic.mean().item() == pytest.approx(1.5, rel=0.05)  # (N^2 - 1)/2 per link
    assert haar_random_sun((1,), 2).shape == (1, 2, 2)
