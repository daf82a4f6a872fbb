"""Sign-flip symmetrised models: q_s(phi) = [q(phi) + q(-phi)] / 2 (flows/model.py, ``symmetrise``)."""

import math

import pytest
import torch

from gaugeflow.flows import TrainConfig, architecture, build_flow, load_checkpoint, load_flow, train_flow
from gaugeflow.flows.model import bijection_density
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.theories import make_theory

from test_flows import perturb

THEORY = dict(name="phi4", lattice_shape="4x4", m2=-4.0, lam=8.0)


def phi4_model(symmetrise, condition=None, seed=0, scale=0.05, n_layers=4, **options):
    """A model whose bijection is not odd, so that q(phi) and q(-phi) differ (perturbed weights;
    much larger moves make affine scales whose inverse overflows at rare far samples)."""
    theory = make_theory(**THEORY)
    torch.manual_seed(seed)
    model = build_flow(architecture(theory, n_layers=n_layers, hidden_channels=[8], symmetrise=symmetrise,
                                    condition=condition, **options)).double()
    return perturb(model, scale=scale, seed=seed)


def test_phi4_is_symmetrised_by_default_and_gauge_theories_refuse_it():
    assert architecture(make_theory(**THEORY))["symmetrise"] is True
    assert architecture(make_theory("u1", "4x4", beta=2.0))["symmetrise"] is False
    with pytest.raises(InputError, match="symmetrise needs an action even in the field; u1"):
        architecture(make_theory("u1", "4x4", beta=2.0), symmetrise=True)


def test_density_is_the_average_over_the_sign_flip():
    model, plain = phi4_model(True), phi4_model(False)
    torch.manual_seed(1)
    x = torch.randn(6, 4, 4, dtype=torch.float64)
    expected = torch.logaddexp(plain.log_prob(x), plain.log_prob(-x)) - math.log(2)
    assert torch.allclose(model.log_prob(x), expected, atol=1e-12)
    assert torch.allclose(model.log_prob(-x), model.log_prob(x), atol=1e-12)
    assert (plain.log_prob(x) - plain.log_prob(-x)).abs().max() > 0.1  # the test has teeth


def test_samples_are_the_bijection_s_with_random_signs_and_their_density():
    model, plain = phi4_model(True), phi4_model(False)
    torch.manual_seed(2)
    x, log_q = model.sample(64)
    torch.manual_seed(2)
    x_plain, _ = plain.sample(64)
    same = (x - x_plain).flatten(1).abs().amax(1) < 1e-12
    flipped = (x + x_plain).flatten(1).abs().amax(1) < 1e-12
    assert torch.all(same | flipped) and 16 < flipped.sum() < 48
    assert torch.allclose(model.log_prob(x), log_q, atol=1e-9)


def test_symmetrised_density_is_normalised():
    """E_{phi ~ q_s}[q(phi) / q_s(phi)] = 1 when both densities are normalised; the ratio
    2 q(phi) / [q(phi) + q(-phi)] lies in [0, 2], so the importance estimate is well behaved."""
    model, plain = phi4_model(True), phi4_model(False)
    torch.manual_seed(3)
    with torch.no_grad():
        x, log_q_s = model.sample(20000)
        ratio = torch.exp(plain.log_prob(x) - log_q_s)
    error = ratio.std().item() / math.sqrt(len(ratio))
    assert abs(ratio.mean().item() - 1) < 4 * error
    assert ratio.std() > 0.2  # q_s differs from q


def test_conditioned_model_takes_per_sample_couplings():
    model = phi4_model(True, condition=("lam", 6.0, 9.0))
    lam = torch.tensor([6.5, 7.0, 8.5], dtype=torch.float64)
    torch.manual_seed(4)
    x, log_q = model.sample(3, context=lam)
    assert torch.allclose(model.log_prob(x, context=lam), log_q, atol=1e-9)
    one_by_one = torch.cat([model.log_prob(x[i:i + 1], context=float(lam[i])) for i in range(3)])
    assert torch.allclose(one_by_one, log_q, atol=1e-9)


@pytest.mark.parametrize("estimator", ["path", "reparam"])
def test_training_minimises_the_kl_of_the_bijection(estimator):
    from gaugeflow.flows.train import reverse_kl_step_terms

    model, plain = phi4_model(True), phi4_model(False)
    terms = []
    for m in (model, plain):
        torch.manual_seed(5)
        surrogate, loss, log_q, _ = reverse_kl_step_terms(m, 16, estimator)
        surrogate.backward()
        terms.append((loss, log_q, [p.grad.clone() for p in m.parameters()]))
    (loss, log_q, grads), (loss_plain, log_q_plain, grads_plain) = terms
    assert torch.equal(loss, loss_plain) and torch.equal(log_q, log_q_plain)
    assert all(torch.equal(g, h) for g, h in zip(grads, grads_plain))
    assert model.symmetrise  # restored after the step


def test_symmetrised_density_is_closer_to_the_target_after_training(tmp_path):
    """KL(q||p) - KL(q_s||p) = E_q[log q - log q_s] (log q_s - log p is even), a Jensen-Shannon
    divergence between q and its mirror image: positive, and measurable after training."""
    model = phi4_model(True, scale=0.0, n_layers=2)
    train_flow(model, TrainConfig(steps=150, batch_size=64, log_every=150, checkpoint_every=150),
               tmp_path / "m.pt", progress=False)
    assert load_checkpoint(tmp_path / "m.pt")["architecture"]["symmetrise"] is True
    torch.manual_seed(9)
    with torch.no_grad(), bijection_density(model):
        x, log_q = model.sample(4096)
    with torch.no_grad():
        gain = log_q - model.log_prob(x)
    error = gain.std().item() / math.sqrt(len(gain))
    assert gain.mean().item() > 5 * error


def test_phi4_checkpoints_from_before_symmetrisation_load_unsymmetrised(tmp_path):
    """Architecture version 3 had no ``symmetrise``: those phi^4 models keep their plain density."""
    model = phi4_model(False, n_layers=2, momentum_scaling=False)
    path = tmp_path / "m.pt"
    train_flow(model, TrainConfig(steps=2, batch_size=8, checkpoint_every=2), path, progress=False)
    payload = torch.load(path, weights_only=True)
    del payload["sha256"], payload["architecture"]["symmetrise"], payload["architecture"]["momentum_scaling"]
    payload["schema_version"], payload["architecture"]["architecture_version"] = 1, 3
    torch.save(payload, tmp_path / "old.pt")
    old = load_flow(tmp_path / "old.pt")
    assert old.architecture["symmetrise"] is False and not old.symmetrise
    x, log_q = model.sample(4)
    assert (old.log_prob(x) - log_q).abs().max() < 1e-12


def test_symmetrisation_repairs_the_mode_collapse_of_reverse_kl_training(tmp_path):
    """Deep in the broken phase (4x4, m2 = -4, lam = 2) reverse-KL training puts the bijection
    on one of the two vacua within 150 steps; its independence-Metropolis chain then never
    visits the other and <M> comes out at the vacuum's value, with a small error and nothing in
    the acceptance to warn.  The symmetrised model's chain visits both, and <M> = 0 (the
    action is even) within its error, while <|M|> agrees with the plain chain's."""
    from gaugeflow.hmc.analysis import analyze_ensemble
    from gaugeflow.hmc.run import generate_ensemble

    theory = make_theory("phi4", "4x4", m2=-4.0, lam=2.0)
    torch.manual_seed(0)
    model = build_flow(architecture(theory, n_layers=2, hidden_channels=[8])).double()
    train_flow(model, TrainConfig(steps=150, batch_size=64, log_every=150, checkpoint_every=150),
               tmp_path / "m.pt", progress=False)
    results = {}
    for symmetrise in (False, True):
        model.symmetrise = symmetrise
        path = tmp_path / f"chain_{symmetrise}.h5"
        generate_ensemble(theory, path, sampler="flow", model=model, n_configs=2000, n_chains=4, n_therm=20, seed=1,
                          progress=False)
        results[symmetrise] = analyze_ensemble(path)
    plain, symmetric = results[False]["magnetization"], results[True]["magnetization"]
    assert abs(plain["mean"]) > 0.5 and abs(plain["mean"]) > 20 * plain["error"]  # collapsed, confidently wrong
    assert abs(symmetric["mean"]) < 3 * symmetric["error"] and symmetric["error"] < 0.1
    plain_abs, symmetric_abs = results[False]["abs_magnetization"], results[True]["abs_magnetization"]
    assert abs(plain_abs["mean"] - symmetric_abs["mean"]) < 3 * math.hypot(plain_abs["error"], symmetric_abs["error"])
