"""HMC against exact results, with autocorrelation-aware errors (Gamma method).

Each comparison requires |MC - exact| < 3 sigma.  Several quantities are compared per
ensemble, so a 2-sigma criterion would fail for a correct sampler at a sizeable fraction of
seeds; 3 sigma per quantity plus a joint chi^2 check keeps the tests honest and stable.
The ensembles are sized so that sigma is a few per mille for the plaquettes: large enough
to detect a wrong action normalisation or a biased update.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from gaugeflow.hmc.analysis import analyze_ensemble
from gaugeflow.hmc.autocorrelation import gamma_method
from gaugeflow.hmc.hmc import HMCParameters, hmc_trajectory
from gaugeflow.hmc.run import generate_ensemble, thermalise
from gaugeflow.lattice import exact
from gaugeflow.lattice.phi4 import two_point_function
from gaugeflow.lattice.theories import make_theory


def assert_agrees(comparisons):
    """comparisons: {name: (mc_mean, mc_error, exact_value)}"""
    pulls = {name: (mean - value) / error for name, (mean, error, value) in comparisons.items()}
    report = ", ".join(f"{n}: {m:.5f} +- {e:.5f} (exact {v:.5f}, pull {pulls[n]:+.2f})" for n, (m, e, v) in comparisons.items())
    print(report)  # shown with pytest -s
    assert all(abs(p) < 3 for p in pulls.values()), report
    total = sum(p * p for p in pulls.values())
    assert total < chi2.ppf(0.999, len(pulls)), report
    assert all(e > 0 for _, e, _ in comparisons.values())


def test_u1_2d_plaquette_wilson_loops_and_topological_susceptibility(tmp_path):
    """2D U(1), L=8, beta=2 (the tutorial point of arXiv:2101.08176): character expansion."""
    path = tmp_path / "u1.h5"
    generate_ensemble(
        make_theory("u1", "8x8", beta=2.0), path, n_configs=6400, n_therm=60, n_chains=32, seed=11,
        params=HMCParameters(1.0, 4), target_acceptance=0.85, progress=False,
    )
    results = analyze_ensemble(path)
    volume = 64
    comparisons = {
        "plaquette": exact.u1_plaquette(2.0, volume),
        "wilson_loop_1x2": exact.u1_wilson_loop(2.0, volume, 2),
        "wilson_loop_2x2": exact.u1_wilson_loop(2.0, volume, 4),
        "topological_charge_squared": exact.u1_topological_charge_squared(2.0, volume),
    }
    assert_agrees({k: (results[k]["mean"], results[k]["error"], v) for k, v in comparisons.items()})
    assert results["topological_charge"]["error"] < 0.1  # Q is not frozen: errors are small
    assert abs(results["exp_minus_delta_h"]["mean"] - 1) < 5 * results["exp_minus_delta_h"]["error"]


def run_chains(theory, n_chains, n_therm, n_trajectories, params, seed, measure):
    generator = torch.Generator().manual_seed(seed)
    field = theory.hot_start(n_chains, generator=generator)
    field, params = thermalise(theory, field, params, n_therm, generator, tune=True, target=0.85)
    series = []
    for _ in range(n_trajectories):
        field = hmc_trajectory(theory, field, params, generator).field
        series.append(measure(field))
    return np.stack(series, axis=-1)  # [..., n_chains, n_trajectories]


def test_su2_2d_plaquette():
    """2D SU(2), 6x6, beta=2: Z = sum_j (2 I_{2j+1}(beta)/beta)^V."""
    theory = make_theory("su2", "6x6", beta=2.0)
    plaquettes = run_chains(theory, 32, 40, 120, HMCParameters(1.0, 4), 5, lambda f: theory.observables(f)["plaquette"].numpy())
    g = gamma_method(plaquettes)
    assert_agrees({"plaquette": (g.mean, g.error, exact.su2_plaquette(2.0, 36))})


def test_su3_2d_plaquette():
    """2D SU(3), 4x4, beta=3: finite-volume character sum over irreps (p, q)."""
    theory = make_theory("su3", "4x4", beta=3.0)
    plaquettes = run_chains(theory, 32, 30, 80, HMCParameters(1.0, 4), 6, lambda f: theory.observables(f)["plaquette"].numpy())
    g = gamma_method(plaquettes)
    assert_agrees({"plaquette": (g.mean, g.error, exact.su3_plaquette(3.0, 16))})


def test_free_scalar_propagator():
    """phi^4 at lam=0, m2=0.5 on 8x8: G(x) = (1/2)(-Laplacian + m2)^{-1}(0, x), chi_2pt = 1/(2 m2)."""
    shape, m2 = (8, 8), 0.5
    theory = make_theory("phi4", "8x8", m2=m2, lam=0.0)
    separations = [(0, 0), (1, 0), (0, 2), (2, 3), (4, 4)]

    def measure(phi):
        g = two_point_function(phi)
        values = [g[:, x, y] for x, y in separations]
        values.append(phi.reshape(phi.shape[0], -1).sum(-1) ** 2 / phi[0].numel())  # V m^2
        return torch.stack(values).numpy()

    series = run_chains(theory, 32, 40, 150, HMCParameters(1.0, 6), 3, measure)
    propagator = exact.free_scalar_propagator(shape, m2)
    comparisons = {}
    for i, (x, y) in enumerate(separations):
        g = gamma_method(series[i])
        comparisons[f"G({x},{y})"] = (g.mean, g.error, propagator[x, y])
    g = gamma_method(series[-1])  # <m> = 0 exactly for the free field
    comparisons["chi_2pt"] = (g.mean, g.error, exact.free_scalar_susceptibility(shape, m2))
    assert_agrees(comparisons)


@pytest.mark.parametrize("offset", [0.0, 0.05])
def test_validation_detects_a_wrong_coupling(offset):
    """The U(1) comparison has teeth: a 2.5% shift of beta moves the plaquette by many sigma."""
    value_true = exact.u1_plaquette(2.0, 64)
    value_shifted = exact.u1_plaquette(2.0 + offset, 64)
    typical_sigma = 0.0015  # what the 6400-configuration ensemble above achieves
    if offset:
        assert abs(value_shifted - value_true) > 5 * typical_sigma
    else:
        assert math.isclose(value_shifted, value_true)


def test_flow_independence_metropolis_is_exact(tmp_path):
    """A briefly trained U(1) flow (4x4, beta=1) as an independence-Metropolis proposal:
    the chain reproduces the character-expansion results whatever the flow's quality."""
    from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow
    from gaugeflow.hmc.flow_metropolis import FlowMetropolisSampler
    from gaugeflow.hmc.run import run_chains

    theory = make_theory("u1", "4x4", beta=1.0)
    torch.manual_seed(0)
    model = build_flow(architecture(theory, n_layers=8, hidden_channels=[8]))
    train_flow(model, TrainConfig(steps=60, batch_size=64, learning_rate=5e-3, log_every=60, seed=1), tmp_path / "m.pt", progress=False)
    path = tmp_path / "flow.h5"
    summary = run_chains(theory, path, FlowMetropolisSampler(model), n_configs=6400, n_therm=5, n_chains=32, seed=9, progress=False)
    assert 0.3 < summary.acceptance < 1.0
    results = analyze_ensemble(path)
    comparisons = {
        "plaquette": exact.u1_plaquette(1.0, 16),
        "wilson_loop_1x2": exact.u1_wilson_loop(1.0, 16, 2),
        "topological_charge_squared": exact.u1_topological_charge_squared(1.0, 16),
    }
    assert_agrees({k: (results[k]["mean"], results[k]["error"], v) for k, v in comparisons.items()})
