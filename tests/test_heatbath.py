"""Heat-bath sweeps and annealed importance sampling against exact results.

* The single-link draws (von Mises for U(1), the SU(2) real part) against their exact
  distributions (Kolmogorov-Smirnov), on both sides of each method's switch.
* Heat-bath chains of 2D U(1), SU(2) and SU(3) against the character-expansion plaquette,
  with Gamma-method errors; links stay on the group.
* Annealed importance sampling: the mean weight is ``Z`` (the character expansion's), and the
  reweighted plaquette is exact, from Haar measure and from a flow; on HDF5 through the
  sampler registry.
"""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from gaugeflow.flows.reweighting import reweight
from gaugeflow.hmc.annealing import annealed_samples, beta_ladder
from gaugeflow.hmc.autocorrelation import gamma_method
from gaugeflow.hmc.heatbath import (HeatBathSampler, heat_bath_sweep, overrelaxation_sweep, su2_heat_bath_quaternions,
                                    von_mises)
from gaugeflow.lattice import exact
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.groups import unitarity_drift
from gaugeflow.lattice.theories import make_theory
from test_physics_validation import assert_agrees

EXACT_PLAQUETTE = {"u1": exact.u1_plaquette, "su2": exact.su2_plaquette, "su3": exact.su3_plaquette}


@pytest.mark.parametrize("kappa", [0.0, 0.1, 0.49, 0.51, 3.0, 30.0])
def test_von_mises_draws_follow_the_exact_distribution(kappa):
    generator = torch.Generator().manual_seed(11)
    angles = von_mises(torch.full((100_000,), kappa, dtype=torch.float64), generator).numpy()
    assert angles.min() >= -math.pi and angles.max() <= math.pi
    reference = st.vonmises(kappa).cdf if kappa > 0 else st.uniform(-math.pi, 2 * math.pi).cdf
    assert st.kstest(angles, reference).pvalue > 1e-3


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.99, 2.01, 10.0])
def test_su2_heat_bath_real_part_follows_sqrt_one_minus_x_squared_times_exp(lam):
    """``x_0`` has density ``sqrt(1 - x^2) exp(lambda x)``; the quaternions are unit."""
    generator = torch.Generator().manual_seed(12)
    quaternions = su2_heat_bath_quaternions(torch.full((100_000,), lam, dtype=torch.float64), generator)
    assert (quaternions.norm(dim=-1) - 1).abs().max() < 1e-14
    delta = np.concatenate([[0.0], np.geomspace(1e-10, 2, 100_001)])  # 1 - x_0, fine where the density peaks
    density = np.sqrt(delta * (2 - delta)) * np.exp(-lam * delta)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(delta))])
    cdf /= cdf[-1]
    assert st.kstest(1 - quaternions[:, 0].numpy(), lambda d: np.interp(d, delta, cdf)).pvalue > 1e-3
    # the direction is uniform: each component of the vector part has mean 0
    vector = quaternions[:, 1:]
    assert vector.mean(0).abs().max() < 5 * vector.std(0).max() / math.sqrt(len(vector))


@pytest.mark.parametrize("name, beta, extent, sweeps, overrelaxation", [
    ("u1", 2.0, 8, 240, 0), ("su2", 3.0, 8, 240, 0), ("su3", 4.0, 6, 160, 0), ("u1", 2.0, 8, 120, 2),
    ("su3", 4.0, 6, 80, 2)])
def test_heat_bath_chains_reproduce_the_2d_plaquette(name, beta, extent, sweeps, overrelaxation):
    """Heat-bath sweeps, alone and each followed by overrelaxation sweeps."""
    theory = make_theory(name, (extent, extent), beta=beta)
    generator = torch.Generator().manual_seed(13)
    sampler = HeatBathSampler(theory, overrelaxation=overrelaxation)
    field = sampler.thermalise(theory.hot_start(16, generator=generator), 1, generator)
    series = []
    for sweep in range(sweeps):
        field = sampler.update(field, generator).field
        if sweep >= 20:
            series.append(theory.observables(field)["plaquette"].numpy())
    g = gamma_method(np.stack(series, axis=-1))
    assert_agrees({"plaquette": (g.mean, g.error, EXACT_PLAQUETTE[name](beta, extent * extent))})
    if name != "u1":
        assert unitarity_drift(field).max() < 1e-12
        assert (torch.linalg.det(field) - 1).abs().max() < 1e-12


@pytest.mark.parametrize("name, shape", [("u1", (4, 4, 4, 4)), ("su2", (4, 4, 4)), ("su3", (4, 4, 4, 4))])
def test_overrelaxation_keeps_the_action_and_moves_every_link(name, shape):
    theory = make_theory(name, shape, beta=2.0)
    generator = torch.Generator().manual_seed(4)
    field = heat_bath_sweep(theory, theory.hot_start(3, generator=generator), generator)
    reflected = overrelaxation_sweep(theory, field)
    assert torch.allclose(theory.action(reflected), theory.action(field), rtol=0, atol=1e-10 * theory.volume)
    moved = (reflected - field).abs()
    moved = moved if name == "u1" else moved.flatten(-2).amax(-1)
    assert bool((moved > 1e-8).all())
    if name != "u1":
        assert unitarity_drift(reflected).max() < 1e-12


def test_a_heat_bath_sweep_draws_every_link_anew_and_reproducibly():
    theory = make_theory("su3", (4, 4, 4, 4), beta=2.0)
    field = theory.hot_start(2, generator=torch.Generator().manual_seed(1))
    first = heat_bath_sweep(theory, field, torch.Generator().manual_seed(2))
    again = heat_bath_sweep(theory, field, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    moved = (first - field).abs().flatten(-2).amax(-1)  # [B, D, x...]
    assert bool((moved > 1e-8).all())
    # a sweep never writes into its input, even where that is the output of a sweep (a view)
    kept = first.clone()
    heat_bath_sweep(theory, first, torch.Generator().manual_seed(3))
    overrelaxation_sweep(theory, first)
    assert torch.equal(first, kept)


def test_heat_bath_refuses_what_it_cannot_update():
    with pytest.raises(InputError, match="pure Wilson gauge"):
        HeatBathSampler(make_theory("phi4", (4, 4), m2=1.0, lam=0.0))
    with pytest.raises(InputError, match="even lattice extents"):
        HeatBathSampler(make_theory("u1", (4, 5), beta=1.0))
    with pytest.raises(InputError, match="pure Wilson gauge"):
        annealed_samples(make_theory("phi4", (4, 4), m2=1.0, lam=0.0), 4, 2)
    with pytest.raises(InputError, match="non-finite"):
        von_mises(torch.tensor([1.0, math.nan], dtype=torch.float64))
    with pytest.raises(InputError, match="beta >= 0"):
        heat_bath_sweep(make_theory("su2", (4, 4), beta=-1.0), make_theory("su2", (4, 4), beta=1.0).cold_start(1))


def mean_weight_over_z(estimates, theory):
    """``(E[w] / Z, its error, 1)`` from :func:`reweight`'s ``log mean w`` and its relative error."""
    ratio = math.exp(estimates["log_partition_function"]["mean"] - theory.exact_log_partition_function())
    return ratio, estimates["log_partition_function"]["error"] * ratio, 1.0


@pytest.mark.parametrize("name, beta", [("u1", 2.0), ("su2", 2.0), ("su3", 3.0)])
def test_annealed_weights_average_to_the_partition_function(name, beta):
    """Jarzynski: ``E[w] = Z_beta / Z_0`` for any ladder, here a short one (weights far from 1)."""
    theory = make_theory(name, (4, 4), beta=beta)
    generator = torch.Generator().manual_seed(14)
    field, log_w = annealed_samples(theory, 1500, 6, generator=generator, batch_size=500)
    estimates = reweight(log_w, {"plaquette": theory.observables(field)["plaquette"]})
    plaquette = estimates["plaquette"]
    assert_agrees({"E[w] / Z": mean_weight_over_z(estimates, theory),
                   "plaquette": (plaquette["mean"], plaquette["error"], EXACT_PLAQUETTE[name](beta, 16))})
    assert field.shape == (1500, *theory.config_shape)


@pytest.mark.parametrize("name", ["u1", "su2"])
def test_resampled_particle_systems_estimate_the_partition_function(name, monkeypatch):
    """Sequential Monte Carlo: the estimate ``Z_hat`` of a system of 8 resampled paths (6 rungs
    from Haar measure to beta = 2, short enough that the systems resample) is unbiased, and the
    particles' weights reweight the plaquette to the exact one; 1000 systems in one batch."""
    from gaugeflow.hmc import annealing

    resampled = []
    resample = annealing.systematic_resampling
    monkeypatch.setattr(annealing, "systematic_resampling",
                        lambda log_w, generator: resampled.append(log_w.shape) or resample(log_w, generator))
    theory = make_theory(name, (4, 4), beta=2.0)
    field, log_w, log_z = annealing.annealed_particles(theory, 1000, 8, 6, generator=torch.Generator().manual_seed(19))
    assert field.shape == (1000, 8, *theory.config_shape) and log_w.shape == (1000, 8) and log_z.shape == (1000,)
    assert resampled and all(shape == (1000, 8) for shape in resampled)
    # per system: Z_hat times the weighted plaquette, and Z_hat; their ratio of means is <P>
    plaquettes = (torch.softmax(log_w, -1) * theory.observables(field.flatten(0, 1))["plaquette"].view(1000, 8)).sum(-1)
    z_hat = torch.exp(log_z - log_z.max())
    ratio = plaquettes * z_hat / z_hat.mean()
    assert_agrees({"E[Z_hat] / Z": mean_weight_over_z(reweight(log_z, {}), theory),
                   "plaquette": (float(ratio.mean()), float(ratio.std() / math.sqrt(len(ratio))),
                                 EXACT_PLAQUETTE[name](2.0, 16))})
    with pytest.raises(InputError, match="at least one particle"):
        annealing.annealed_particles(theory, 1, 0, 2)


def test_annealing_from_a_flow_at_a_lower_beta_is_exact(tmp_path):
    """Start from an (untrained) flow at beta_0 = 1 on the plaquette prior, nearly exact 2D
    physics there: the weights carry its density, and the mean weight is ``Z`` at beta = 2."""
    from gaugeflow.flows import architecture, build_flow

    start_theory = make_theory("u1", (4, 4), beta=1.0)
    torch.manual_seed(3)
    model = build_flow(architecture(start_theory, n_layers=2, hidden_channels=[8], prior="plaquette")).double()
    theory = start_theory.with_couplings(beta=2.0)
    field, log_w = annealed_samples(theory, 2000, 12, start=model, generator=torch.Generator().manual_seed(15))
    assert_agrees({"E[w] / Z": mean_weight_over_z(reweight(log_w, {}), theory)})
    # 300 particles start from the flow in batches (FLOW_BATCH = 256), each a draw of its own
    from gaugeflow.hmc.annealing import FLOW_BATCH, _start, annealed_particles

    started, log_q = _start(theory, model, 300, None, None)
    assert FLOW_BATCH < 300 and started.shape == (300, *theory.config_shape) and log_q.dtype == torch.float64
    assert len(set(log_q.tolist())) == 300
    field, log_w, log_z = annealed_particles(theory, 3, 100, 1, start=model, generator=torch.Generator().manual_seed(4))
    assert field.shape == (3, 100, *theory.config_shape) and torch.isfinite(log_z).all()
    with pytest.raises(InputError, match="not of u1 on"):
        annealed_samples(make_theory("u1", (4, 6), beta=2.0), 4, 2, start=model)


def test_beta_ladder():
    assert beta_ladder(0.5, 1.0, 2) == [0.5, 0.75, 1.0]
    with pytest.raises(InputError, match="at least one step"):
        beta_ladder(0.0, 1.0, 0)


def test_heat_bath_sampler_writes_an_ensemble(tmp_path):
    from gaugeflow.hmc.run import generate_ensemble
    from gaugeflow.lattice.ensemble import open_ensemble

    theory = make_theory("su2", (4, 4), beta=2.0)
    path = tmp_path / "hb.h5"
    summary = generate_ensemble(theory, path, sampler="heatbath", n_configs=8, n_chains=2, n_therm=2, seed=1,
                                progress=False)
    assert summary.n_configs == 8 and summary.acceptance == 1.0
    ensemble = open_ensemble(path)
    assert ensemble.attrs["sampler"] == "heatbath"
    configs = ensemble.configs()
    assert len(configs) == 8 and not np.allclose(configs[0], configs[2])


def _plaquette_flow(beta: float, lattice=(4, 4)):
    """An untrained flow on the 2D plaquette prior (nearly exact 2D physics at its ``beta``)."""
    from gaugeflow.flows import architecture, build_flow

    torch.manual_seed(3)
    return build_flow(architecture(make_theory("u1", lattice, beta=beta), n_layers=2, hidden_channels=[8],
                                   prior="plaquette"))


@pytest.mark.parametrize("start_beta, anneal_steps, particles, seed, updates",
                         [(None, 12, 1, 16, 250), (1.0, 3, 1, 17, 200), (None, 3, 8, 18, 200)])
def test_the_annealed_sampler_is_exact(start_beta, anneal_steps, particles, seed, updates):
    """Independence Metropolis over annealed proposals (short ladders: acceptance well below 1),
    from Haar measure or from a flow at beta_0 = 1, and particle independent Metropolis-Hastings
    over systems of 8 resampled paths, reproduce the 2D U(1) plaquette and Q^2 of the character
    expansion; the chain leaves torch's global RNG as it was (the flow's draws come from the
    chain's generator)."""
    from gaugeflow.hmc.run import make_sampler

    theory = make_theory("u1", (4, 4), beta=2.0)
    start = None if start_beta is None else _plaquette_flow(start_beta)
    sampler = make_sampler(theory, "annealed", model=start, anneal_steps=anneal_steps, anneal_particles=particles)
    assert sampler.run_parameters()["anneal_start_beta"] == (start_beta or 0.0)
    assert sampler.run_parameters()["anneal_particles"] == particles
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(99)
    global_state = torch.random.get_rng_state()
    field = sampler.thermalise(theory.hot_start(32, generator=generator), 2, generator)
    series, accepted = [], []
    for _ in range(updates):
        result = sampler.update(field, generator)
        field = result.field
        accepted.append(result.accepted.double().mean().item())
        values = theory.observables(field)
        series.append(np.stack([values["plaquette"].numpy(), values["topological_charge"].numpy() ** 2]))
    assert torch.equal(torch.random.get_rng_state(), global_state)
    series = np.stack(series, axis=-1)
    plaquette, charge = gamma_method(series[0]), gamma_method(series[1])
    assert 0.1 < np.mean(accepted) < 0.9
    assert_agrees({"plaquette": (plaquette.mean, plaquette.error, exact.u1_plaquette(2.0, 16)),
                   "Q^2": (charge.mean, charge.error, exact.u1_topological_charge_squared(2.0, 16))})


def test_the_annealed_sampler_from_a_flow_resumes_and_checks_the_flow(tmp_path):
    """8 + 8 configurations from a flow start are the 16 of one run, bit for bit; a resume with
    another flow, or with none, is refused; a flow of another lattice, or a flow given to a
    sampler that takes none, is refused by name."""
    from gaugeflow.hmc.run import generate_ensemble, make_sampler
    from gaugeflow.lattice.ensemble import EnsembleError, open_ensemble

    theory = make_theory("u1", (4, 4), beta=2.0)
    flow = _plaquette_flow(1.0).double()
    options = dict(sampler="annealed", anneal_steps=2, n_chains=2, n_therm=1, seed=6, progress=False)
    generate_ensemble(theory, tmp_path / "whole.h5", n_configs=16, model=flow, source="a.pt", **options)
    generate_ensemble(theory, tmp_path / "parts.h5", n_configs=8, model=flow, source="a.pt", **options)
    generate_ensemble(theory, tmp_path / "parts.h5", n_configs=16, resume=True, model=flow, source="a.pt", **options)
    whole, parts = open_ensemble(tmp_path / "whole.h5"), open_ensemble(tmp_path / "parts.h5")
    assert np.array_equal(whole.configs(), parts.configs())
    assert np.array_equal(whole.column("accepted"), parts.column("accepted"))
    assert 0 < whole.column("accepted").mean() < 1
    assert whole.attrs["flow_checkpoint"] == "a.pt" and float(whole.attrs["anneal_start_beta"]) == 1.0
    other = _plaquette_flow(1.0)
    with torch.no_grad():
        next(other.parameters()).add_(0.1)
    for model in (other.double(), None):
        with pytest.raises(EnsembleError, match="cannot resume with"):
            generate_ensemble(theory, tmp_path / "parts.h5", n_configs=24, resume=True, model=model, source="a.pt",
                              **options)
    assert len(open_ensemble(tmp_path / "parts.h5")) == 16
    with pytest.raises(InputError, match="not of u1 on"):
        make_sampler(make_theory("u1", (4, 6), beta=2.0), "annealed", model=flow)
    with pytest.raises(InputError, match="takes no flow model"):
        make_sampler(theory, "heatbath", model=flow)


def test_the_annealed_sampler_resumes_where_it_stopped(tmp_path):
    """The weights of the current states travel in the resume state: 8 + 8 configurations are
    the 16 of one run, bit for bit."""
    from gaugeflow.hmc.run import generate_ensemble
    from gaugeflow.lattice.ensemble import open_ensemble

    theory = make_theory("su2", (4, 4), beta=2.0)
    options = dict(sampler="annealed", anneal_steps=3, n_chains=2, n_therm=1, seed=5, progress=False)
    generate_ensemble(theory, tmp_path / "whole.h5", n_configs=16, **options)
    generate_ensemble(theory, tmp_path / "parts.h5", n_configs=8, **options)
    generate_ensemble(theory, tmp_path / "parts.h5", n_configs=16, resume=True, **options)
    whole, parts = open_ensemble(tmp_path / "whole.h5"), open_ensemble(tmp_path / "parts.h5")
    assert np.array_equal(whole.configs(), parts.configs())
    assert np.array_equal(whole.column("accepted"), parts.column("accepted"))
    assert 0 < whole.column("accepted").mean() < 1
