"""HMC: reversibility, dH ~ dt^2, <exp(-dH)> = 1, Metropolis in float64, step-size tuning."""

import math

import numpy as np
import pytest
import torch

from gaugeflow.hmc.hmc import (
    HMCParameters,
    acceptance_probability,
    hamiltonian,
    hmc_trajectory,
    molecular_dynamics,
    retuned_steps,
)
from gaugeflow.lattice.theories import make_theory

# trajectory lengths keep every case well inside the integrators' stability region
# (phi^4 at lam = 8 is stiff: curvature ~ 12 lam phi^2)
CASES = [
    ("phi4", "6x6", {"m2": -4.0, "lam": 8.0}, 0.1),
    ("u1", "6x6", {"beta": 2.0}, 1.0),
    ("su2", "4x4", {"beta": 2.0}, 1.0),
    ("su3", "2x2x2x2", {"beta": 5.5}, 1.0),
]
IDS = [c[0] for c in CASES]


def thermalised(theory, generator, n=30):
    from gaugeflow.hmc.run import thermalise

    field = theory.hot_start(4, generator=generator)
    return thermalise(theory, field, HMCParameters(0.5, 10), n, generator, tune=True, target=0.9)[0]


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
@pytest.mark.parametrize("name, shape, couplings, tau", CASES, ids=IDS)
def test_molecular_dynamics_is_reversible(name, shape, couplings, tau, integrator, generator):
    theory = make_theory(name, shape, **couplings)
    field = thermalised(theory, generator)
    momenta = theory.field.random_momenta(field, generator)
    params = HMCParameters(tau, 10, integrator)
    end, end_momenta = molecular_dynamics(theory, field, momenta, params)
    back, back_momenta = molecular_dynamics(theory, end, -end_momenta, params)
    assert (end - field).abs().max() > 1e-2  # it did move
    assert torch.allclose(back, field, atol=1e-10)
    assert torch.allclose(back_momenta, -momenta, atol=1e-10)


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
@pytest.mark.parametrize("name, shape, couplings, tau", CASES, ids=IDS)
def test_energy_violation_scales_as_step_size_squared(name, shape, couplings, tau, integrator, generator):
    theory = make_theory(name, shape, **couplings)
    field = thermalised(theory, generator)
    momenta = theory.field.random_momenta(field, generator)
    h_start = hamiltonian(theory, field, momenta)
    violations = []
    for n_steps in (12, 24, 48):
        end, end_momenta = molecular_dynamics(theory, field, momenta, HMCParameters(tau, n_steps, integrator))
        violations.append((hamiltonian(theory, end, end_momenta) - h_start).abs().mean().item())
    for coarse, fine in zip(violations, violations[1:]):
        assert coarse / fine == pytest.approx(4.0, rel=0.1)


def test_omelyan_beats_leapfrog_per_force_evaluation(generator):
    theory = make_theory("u1", "8x8", beta=2.0)
    field = thermalised(theory, generator)
    momenta = theory.field.random_momenta(field, generator)
    h_start = hamiltonian(theory, field, momenta)

    def violation(integrator, n_steps):
        end, p = molecular_dynamics(theory, field, momenta, HMCParameters(1.0, n_steps, integrator))
        return (hamiltonian(theory, end, p) - h_start).abs().mean().item()

    assert violation("omelyan", 10) < 0.5 * violation("leapfrog", 20)  # same number of forces


def test_exp_minus_delta_h_averages_to_one(generator):
    """Creutz's identity <exp(-dH)> = 1 holds for an area-preserving, reversible integrator."""
    theory = make_theory("u1", "6x6", beta=2.0)
    field = theory.hot_start(64, generator=generator)
    params = HMCParameters(1.0, 4, "leapfrog")
    values = []
    for _ in range(40):
        result = hmc_trajectory(theory, field, params, generator)
        field = result.field
        values.append(torch.exp(-result.delta_h))
    values = torch.cat(values[10:]).numpy()
    assert values.std() > 0.05  # the test has teeth: dH is not negligible
    assert abs(values.mean() - 1) < 4 * values.std() / math.sqrt(len(values) / 2)


def test_metropolis_is_float64_and_rejects_nan(generator):
    theory = make_theory("su2", "4x4", beta=2.0)
    links = theory.hot_start(4, generator=generator, precision=torch.float32)
    result = hmc_trajectory(theory, links, HMCParameters(1.0, 5), generator)
    assert result.delta_h.dtype == torch.float64 and result.field.dtype == torch.complex64
    nan_dh = torch.tensor([float("nan"), 0.5, -1.0], dtype=torch.float64)
    assert acceptance_probability(nan_dh).tolist() == pytest.approx([0.0, math.exp(-0.5), 1.0])


def test_rejected_chains_keep_their_configuration(generator):
    theory = make_theory("u1", "4x4", beta=3.0)
    field = theory.hot_start(32, generator=generator)
    result = hmc_trajectory(theory, field, HMCParameters(1.0, 2, "leapfrog"), generator)  # coarse integration
    rejected = ~result.accepted
    assert rejected.any() and result.accepted.any()
    assert torch.equal(result.field[rejected], field[rejected])


def test_step_tuning_moves_towards_target():
    params = HMCParameters(1.0, 10)
    assert retuned_steps(params, measured_acceptance=0.3, target=0.8) > 10
    assert retuned_steps(params, measured_acceptance=0.99, target=0.8) < 10
    assert retuned_steps(params, measured_acceptance=0.8, target=0.8) == 10
    assert retuned_steps(params, measured_acceptance=0.0, target=0.8) <= 15  # damped


def test_thermalisation_reaches_target_acceptance(generator):
    from gaugeflow.hmc.run import thermalise

    theory = make_theory("u1", "8x8", beta=2.0)
    field = theory.hot_start(16, generator=generator)
    untuned = HMCParameters(2.0, 2)
    initial = [hmc_trajectory(theory, field, untuned, generator).accepted.double().mean().item() for _ in range(5)]
    field, params = thermalise(theory, field, untuned, 120, generator, tune=True, target=0.75)
    accepted = [hmc_trajectory(theory, field, params, generator).accepted.double().mean().item() for _ in range(20)]
    assert np.mean(initial) < 0.1
    # the step count is an integer: the acceptance lands between those of its neighbours
    assert 0.6 < np.mean(accepted) < 0.97


@pytest.mark.parametrize("bad", [dict(trajectory_length=0.0), dict(n_steps=0), dict(integrator="rk4")])
def test_bad_hmc_parameters(bad):
    with pytest.raises(ValueError):
        HMCParameters(**bad)
