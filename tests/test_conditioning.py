"""One model for a range of couplings: conditioning on beta (U(1)) or lam (phi^4)."""

import pytest
import torch

from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow
from gaugeflow.lattice.theories import make_theory


def conditioned_model(name="u1", couplings=None, condition=("beta", 0.5, 1.5), n_layers=8):
    """Haar-prior U(1) models: the conditioning machinery of the local layers is what is tested here
    (the plaquette prior's per-sample beta: tests/test_priors.py)."""
    theory = make_theory(name, "4x4", **(couplings or {"beta": 1.0}))
    torch.manual_seed(0)
    prior = "haar" if name == "u1" else None
    return build_flow(architecture(theory, n_layers=n_layers, hidden_channels=[8], condition=condition, prior=prior)).double()


@pytest.mark.parametrize("name, couplings, condition", [
    ("u1", {"beta": 1.0}, ("beta", 0.5, 1.5)),
    ("phi4", {"m2": -4.0, "lam": 8.0}, ("lam", 4.0, 10.0)),
    ("phi4", {"m2": -4.0, "lam": 8.0}, ("m2", -5.0, -3.0)),
])
def test_target_at_other_couplings_is_the_exact_action(name, couplings, condition, generator):
    model = conditioned_model(name, couplings, condition)
    values = torch.tensor([condition[1], 0.5 * (condition[1] + condition[2]), condition[2]], dtype=torch.float64)
    x, _ = model.sample(3, values)
    for value, config in zip(values, x):
        theory = make_theory(name, "4x4", **dict(couplings, **{condition[0]: value.item()}))
        assert model.target_log_prob(config[None], value)[0].item() == pytest.approx(-theory.action(config[None]).item(), rel=1e-12)


def test_conditioned_model_densities_are_consistent():
    model = conditioned_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    values = torch.tensor([0.5, 0.9, 1.5], dtype=torch.float64)
    x, log_q = model.sample(3, values)
    assert torch.allclose(model.log_prob(x, values), log_q, atol=1e-8)
    # the coupling really enters: other values give other densities
    assert not torch.allclose(model.log_prob(x, values.flip(0)), log_q, atol=1e-4)


def test_untrained_conditioned_model_is_the_prior():
    model = conditioned_model()
    z, log_prior = model.q0(4)
    x, log_det = model.forward_and_log_det(z, torch.full((4,), 0.7, dtype=torch.float64))
    assert torch.allclose(x, z) and torch.allclose(log_det, torch.zeros(4, dtype=torch.float64), atol=1e-12)


def kl_at(model, beta, n=2048):
    torch.manual_seed(7)
    with torch.no_grad():
        x, log_q = model.sample(n, beta)
        loss = (log_q - model.target_log_prob(x, beta)).mean().item()
    return loss + make_theory("u1", "4x4", beta=beta).exact_log_partition_function()


def test_training_a_conditioned_model_improves_every_coupling(tmp_path):
    model = conditioned_model()
    before = {beta: kl_at(model, beta) for beta in (0.5, 1.5)}
    train_flow(model, TrainConfig(steps=120, batch_size=64, learning_rate=5e-3, log_every=40, seed=2),
               tmp_path / "c.pt", progress=False)
    after = {beta: kl_at(model, beta) for beta in (0.5, 1.5)}
    for beta in before:
        assert after[beta] < 0.6 * before[beta], (beta, before, after)


@pytest.mark.parametrize("condition, message", [
    (("lam", 0.0, 1.0), "cannot condition on 'lam'"),
    (("beta", 2.0, 1.0), "low < high"),
    (("beta", 1.5, 2.5), "outside the conditioning range"),
])
def test_bad_conditioning_is_named(condition, message):
    theory = make_theory("u1", "4x4", beta=1.0)
    with pytest.raises(ValueError, match=message):
        architecture(theory, condition=condition)
