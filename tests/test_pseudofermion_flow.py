"""Pseudofermion flows (Abbott et al. arXiv:2207.08945): the joint density of gauge field and
pseudofermions against a dense computation, gauge equivariance with fermions present, and
exactness of the joint independence-Metropolis chain with a barely trained model."""

import math

import numpy as np
import torch

from gaugeflow.flows import TrainConfig, architecture, train_flow
from gaugeflow.flows.pseudofermion_flow import (JointField, build_pseudofermion_flow, hopping_matrix,
                                                pseudofermion_architecture)
from gaugeflow.hmc import HMCParameters, analyze_ensemble, gamma_method, generate_ensemble
from gaugeflow.hmc.pseudofermion_metropolis import PseudofermionFlowMetropolisSampler
from gaugeflow.hmc.run import make_sampler
from gaugeflow.lattice import open_ensemble
from gaugeflow.lattice.fermions import checkerboard, wilson_matrix
from gaugeflow.lattice.theories import make_theory


def joint_model(lattice="4x4", beta=1.0, kappa=0.2, kappa_q=0.16, log_scale=0.1, seed=0, n_layers=2):
    """A small joint model whose conditional is deliberately not the exact one."""
    torch.manual_seed(seed)
    theory = make_theory("schwinger-pseudofermion", lattice, beta=beta, kappa=kappa)
    model = build_pseudofermion_flow(pseudofermion_architecture(architecture(theory, n_layers=n_layers, hidden_channels=[8]),
                                                                kappa_q)).double()
    with torch.no_grad():
        model.log_scale.fill_(log_scale)
    return model


def dense_schur(theta, kappa):
    """``D_hat = D_oo - D_oe D_ee^{-1} D_eo`` from the full dense ``D`` (numpy), odd block in
    the order spin * V/2 + odd site."""
    volume = theta[0, 0].numel()
    d = wilson_matrix(theta, kappa).numpy()
    sites = checkerboard(tuple(theta.shape[2:])).sites
    even, odd = ([s * volume + i for s in range(2) for i in sites[p].tolist()] for p in (0, 1))
    blocks = lambda a, b: d[:, a][:, :, b]  # noqa: E731
    return blocks(odd, odd) - blocks(odd, even) @ np.linalg.inv(blocks(even, even)) @ blocks(even, odd)


def test_joint_density_matches_a_dense_computation():
    model = joint_model()
    theory = model.theory
    x, log_q = model.sample(6)
    theta, phi = x.gauge.detach(), x.pseudofermions.detach().numpy().reshape(6, -1, 1)
    n = phi.shape[1]
    kappa_q, scale = model.kappa_q.item(), math.exp(model.log_scale.item())
    target_operator, model_operator = dense_schur(theta, 0.2), scale * dense_schur(theta, kappa_q).conj().transpose(0, 2, 1)
    dagger = lambda a: a.conj().transpose(0, 2, 1)  # noqa: E731
    normal = dagger(target_operator) @ target_operator  # D_hat^dagger D_hat
    covariance = model_operator @ dagger(model_operator)  # of phi = M chi
    quadratic = lambda a, v: (dagger(v) @ np.linalg.solve(a, v)).real[:, 0, 0]  # noqa: E731
    log_p = -theory.gauge_action(theta).numpy() - quadratic(normal, phi) - n * math.log(math.pi)
    conditional = -n * math.log(math.pi) - quadratic(covariance, phi) - np.linalg.slogdet(covariance)[1]
    gauge_log_q = model.gauge.log_prob(theta).detach().numpy()
    with torch.no_grad():
        assert np.abs(model.target_log_prob(JointField(theta, x.pseudofermions)).numpy() - log_p).max() < 1e-10
        assert np.abs(model.log_prob(x).numpy() - gauge_log_q - conditional).max() < 1e-10
        assert np.abs(log_q.detach().numpy() - gauge_log_q - conditional).max() < 1e-10
    # the phi-marginal of the joint target is exp(-S_gauge) det(D^dagger D): p(U, phi) = p(U) p(phi | U)
    exact = make_theory("schwinger", "4x4", beta=1.0, kappa=0.2)
    exact_conditional = -n * math.log(math.pi) - quadratic(normal, phi) - np.linalg.slogdet(normal)[1]
    assert np.abs(log_p - (-exact.action(theta).numpy() + exact_conditional)).max() < 1e-10
    # the sampler's heat bath draws from p(phi | U): covariance D_hat^dagger D_hat, checked on K
    assert np.abs(np.eye(n) - 0.04 * hopping_matrix(theta).numpy() - target_operator).max() < 1e-12


def test_joint_density_is_gauge_invariant():
    model = joint_model(seed=3)
    theory = model.theory
    with torch.no_grad():
        x, _ = model.sample(5)
        alpha = theory.random_gauge_transformation(5, generator=torch.Generator().manual_seed(4))
        y = model.gauge_transform(x, alpha)
        assert (y.gauge - x.gauge).abs().max() > 0.1 and (y.pseudofermions - x.pseudofermions).abs().max() > 0.1
        assert (model.log_prob(y) - model.log_prob(x)).abs().max() < 1e-10
        assert (model.target_log_prob(y) - model.target_log_prob(x)).abs().max() < 1e-10
        # a transformation of phi alone is no symmetry: the check above is not empty
        assert (model.target_log_prob(JointField(x.gauge, y.pseudofermions))
                - model.target_log_prob(x)).abs().max() > 1e-3


def test_joint_flow_metropolis_reproduces_exact_determinant_hmc(tmp_path):
    """A joint model trained for a few steps (its conditional started off the exact one), sampled
    by joint independence Metropolis alone from the last configurations of an exact-determinant
    HMC ensemble (equilibrium starts: a chain started from a poor flow's samples, accepting ~10%
    of proposals, takes far longer than a test to forget its start): the plaquette agrees with
    that ensemble's (Gamma-method errors for both)."""
    torch.set_num_threads(1)
    beta, kappa, chains = 1.0, 0.2, 32
    model = joint_model(beta=beta, kappa=kappa, kappa_q=0.16, log_scale=0.1, n_layers=4).float()
    train_flow(model, TrainConfig(steps=60, batch_size=64, learning_rate=5e-3, log_every=60, checkpoint_every=60,
                                  estimator="reparam"), tmp_path / "joint.pt", progress=False)
    # the conditional is still not the exact one (there p/q would be the exact-determinant weight)
    assert max(abs(model.kappa_q.item() - kappa), abs(model.log_scale.item())) > 2e-3
    exact = make_theory("schwinger", "4x4", beta=beta, kappa=kappa)
    hmc_path = tmp_path / "hmc.h5"
    generate_ensemble(exact, hmc_path, n_configs=chains * 150, params=HMCParameters(1.0, 5), n_chains=chains,
                      n_therm=20, seed=10, progress=False)
    hmc = analyze_ensemble(hmc_path)["plaquette"]
    with open_ensemble(hmc_path) as ensemble:
        field = torch.as_tensor(ensemble.configs(len(ensemble) - chains))
    sampler = make_sampler(model.theory, "flow", model=model)
    assert isinstance(sampler, PseudofermionFlowMetropolisSampler)
    generator = torch.Generator().manual_seed(10)
    plaquettes, accepted = [], []
    for _ in range(300):
        result = sampler.update(field, generator)
        field = result.field
        plaquettes.append(exact.observables(field)["plaquette"].numpy())
        accepted.append(result.accepted.double().mean().item())
    flow = gamma_method(list(np.asarray(plaquettes).T))
    print(f"schwinger 4x4 beta={beta} kappa={kappa}: joint flow plaquette {flow.mean:.5f} +- {flow.error:.5f} "
          f"(tau_int {flow.tau_int:.1f}, acceptance {np.mean(accepted):.3f}), "
          f"exact-det HMC {hmc['mean']:.5f} +- {hmc['error']:.5f}")
    assert abs(flow.mean - hmc["mean"]) < 3 * math.hypot(flow.error, hmc["error"])
    assert 0.02 < np.mean(accepted) < 0.98


def test_weights_average_to_the_exact_determinant_weight():
    """``E_{phi ~ q(phi|U)} [p(U, phi) / q(U, phi)] = p(U) / q(U)`` with ``p(U)`` the exact-determinant
    density of the dense Wilson operator: the joint weights are normalised as the marginal's."""
    model = joint_model(kappa_q=0.18, log_scale=0.05, seed=5)
    exact = make_theory("schwinger", "4x4", beta=1.0, kappa=0.2)
    torch.manual_seed(6)
    n = 20000
    with torch.no_grad():
        x, log_q_gauge, _ = model.sample_parts(2)
        for b in range(2):
            hopping = hopping_matrix(x.gauge[b:b + 1]).expand(n, -1, -1)
            phi, log_q_phi = model.conditional_sample(hopping)
            joint = JointField(x.gauge[b:b + 1].expand(n, -1, -1, -1), phi)
            log_ratio = (model.target_log_prob(joint, hopping=hopping) - log_q_phi
                         + exact.action(x.gauge[b:b + 1]))  # log p(U, phi)/q(phi|U) - log p(U)
            ratio = torch.exp(log_ratio)
            assert abs(ratio.mean().item() - 1) < 4 * ratio.std().item() / n**0.5


def test_the_command_line_trains_and_samples_the_joint_model(tmp_path):
    from gaugeflow.cli import main
    from gaugeflow.flows import load_flow
    from gaugeflow.flows.pseudofermion_flow import PseudofermionFlow

    torch.set_num_threads(1)
    model_path, out = tmp_path / "joint.pt", tmp_path / "joint.h5"
    assert main(["train", "--theory", "schwinger", "--fermions", "pseudofermion", "--lattice", "4x4", "--beta", "1",
                 "--kappa", "0.2", "--steps", "3", "--batch-size", "8", "--layers", "2", "--hidden", "4",
                 "--log-every", "3", "--quiet", "--out", str(model_path)]) == 0
    model = load_flow(model_path)
    assert isinstance(model, PseudofermionFlow) and model.architecture["pseudofermion_kappa"] == 0.2
    assert main(["sample", "--model", str(model_path), "--sampler", "flow", "--n-configs", "8", "--chains", "2",
                 "--therm", "2", "--quiet", "--out", str(out)]) == 0
    with open_ensemble(out) as ensemble:
        assert ensemble.attrs["sampler"] == "pseudofermion-flow" and ensemble.theory_name == "schwinger-pseudofermion"
        assert len(ensemble) == 8
    composite = tmp_path / "composite.h5"  # flow step on the joint density, then pseudofermion HMC
    assert main(["sample", "--model", str(model_path), "--sampler", "composite", "--hmc-per-step", "1", "--n-configs", "4",
                 "--chains", "2", "--therm", "1", "--quiet", "--out", str(composite)]) == 0
    with open_ensemble(composite) as ensemble:
        assert ensemble.attrs["sampler"] == "composite" and len(ensemble) == 4
    # reweighting joint samples: the joint target is normalised so that log Z is the exact-det one
    assert main(["reweight", "--model", str(model_path), "--n-samples", "64", "--json"]) == 0


def test_a_joint_model_grows_from_a_smaller_volume_and_another_kappa(tmp_path):
    """``--init-from`` with a joint model carries its gauge flow over (it once transferred
    nothing, silently); the conditional starts as the exact one at the new kappa."""
    from gaugeflow.cli import main
    from gaugeflow.flows.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    small, large = tmp_path / "small.pt", tmp_path / "large.pt"
    common = ["train", "--theory", "schwinger", "--fermions", "pseudofermion", "--beta", "1", "--batch-size", "8",
              "--layers", "2", "--hidden", "4", "--quiet"]
    assert main([*common, "--lattice", "4x4", "--kappa", "0.2", "--steps", "3", "--out", str(small)]) == 0
    assert main([*common, "--lattice", "8x8", "--kappa", "0.22", "--steps", "1", "--lr", "1e-12",
                 "--init-from", str(small), "--out", str(large)]) == 0
    trained, grown = load_checkpoint(small)["model"], load_checkpoint(large)["model"]
    layers = [k for k in trained if k.startswith("gauge.flows.")]
    assert layers and all(torch.allclose(grown[k], trained[k], atol=1e-9) for k in layers)
    assert load_checkpoint(large)["architecture"]["pseudofermion_kappa"] == 0.22
    assert abs(float(grown["kappa_q"]) - 0.22) < 1e-6 and abs(float(trained["kappa_q"]) - 0.2) < 0.05
