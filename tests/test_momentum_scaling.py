"""The learned propagator in front of phi^4 couplings (flows/momentum_scaling.py)."""

import math

import pytest
import torch

from gaugeflow.flows import (TrainConfig, architecture, build_flow, effective_sample_size, load_flow, train_flow,
                             transfer_weights)
from gaugeflow.flows.momentum_scaling import MomentumScaling
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.theories import make_theory

from test_flows import perturb


def scaling(shape, seed=0):
    layer = MomentumScaling(shape).double()
    return perturb(layer, scale=0.4, seed=seed)


def test_log_det_matches_autograd_and_the_inverse_undoes_the_map():
    shape = (3, 4, 5)  # odd and even extents, D = 3
    layer = scaling(shape)
    z = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x, log_det = layer(z)
    back, inverse_log_det = layer.inverse(x)
    assert (back - z).abs().max() < 1e-12
    assert (log_det + inverse_log_det).abs().max() < 1e-12
    for i in range(len(z)):
        jacobian = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, *shape))[0].flatten(), z[i].flatten())
        assert abs(torch.linalg.slogdet(jacobian)[1].item() - log_det[i].item()) < 1e-10


def test_alone_it_gives_the_gaussian_field_of_its_propagator():
    """Standard-normal noise through the layer has covariance C(x, y) = (1/V) sum_k G(k)
    cos(k.(x - y)) with G = a^2: the density from the change of variables equals that of the
    multivariate normal built from the propagator directly."""
    shape = (4, 6)
    layer = scaling(shape, seed=2)
    propagator = layer.propagator()
    momenta = torch.stack(torch.meshgrid(*[2 * math.pi * torch.arange(n, dtype=torch.float64) / n for n in shape],
                                         indexing="ij")).flatten(1)  # [D, V]
    sites = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape],
                                       indexing="ij")).flatten(1)
    separation = sites[:, :, None] - sites[:, None, :]  # [D, V, V]
    phase = torch.einsum("dk,dxy->kxy", momenta, separation)
    covariance = torch.einsum("k,kxy->xy", propagator.flatten(), torch.cos(phase)) / propagator.numel()
    gaussian = torch.distributions.MultivariateNormal(torch.zeros(len(covariance), dtype=torch.float64), covariance)
    z = torch.randn(5, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    phi, log_det = layer(z)
    log_q = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1) - log_det
    assert (log_q - gaussian.log_prob(phi.flatten(1))).abs().max() < 1e-9


def test_it_commutes_with_lattice_translations():
    shape = (4, 6)
    layer = scaling(shape)
    z = torch.randn(3, *shape, dtype=torch.float64)
    shifted, _ = layer(torch.roll(z, shifts=(1, 2), dims=(1, 2)))
    assert (shifted - torch.roll(layer(z)[0], shifts=(1, 2), dims=(1, 2))).abs().max() < 1e-12


def free_field_model(fit_propagator):
    """An untrained phi^4 model at lam = 0 (couplings at the identity), its momentum scaling
    either at the identity or with its knots on the free field's a = [2 (m2 + p_hat^2)]^{-1/2}
    (phi4.py has no 1/2 in front of phi (-Laplacian + m2) phi)."""
    theory = make_theory("phi4", "6x6", m2=2.0, lam=0.0)
    model = build_flow(architecture(theory, n_layers=2)).double()
    layer = model.flows[0]
    assert isinstance(layer, MomentumScaling)
    if fit_propagator:
        p_hat_squared = torch.linspace(0, 4 * theory.dimension, len(layer.log_scale), dtype=torch.float64)
        with torch.no_grad():
            layer.log_scale.copy_(-0.5 * torch.log(2 * (theory.couplings["m2"] + p_hat_squared)))
    return model


@pytest.mark.parametrize("fit_propagator", [False, True])
def test_on_the_free_propagator_the_model_trivialises_the_free_field(fit_propagator):
    """With the knots on the free propagator an untrained model is the free field exactly (on
    6x6 every p_hat^2 is an integer, and the knots sit at 0, 1, ..., 8): log p - log q is the
    same for every sample, while the same model with the identity scaling (a standard-normal
    field) is far off.  This pins the Fourier normalisation, the sign of the log-det and the
    action's convention together."""
    model = free_field_model(fit_propagator)
    torch.manual_seed(4)
    with torch.no_grad():
        x, log_q = model.sample(4096)
        log_w = model.target_log_prob(x) - log_q
    if fit_propagator:
        assert (log_w - log_w.mean()).abs().max() < 1e-9
    else:
        assert effective_sample_size(log_w) < 0.01


def test_a_float32_round_trip_leaves_the_density_as_it_was():
    """The momentum grid is not a buffer that a cast to float32 would round: a model trained in
    float32 and moved back to float64 for Metropolis decisions is the same map."""
    theory = make_theory("phi4", "6x6", m2=-4.0, lam=8.0)
    model = perturb(build_flow(architecture(theory, n_layers=2)).double(), scale=0.05)
    x = model.sample(16)[0].detach()
    before = model.log_prob(x)
    parameters = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.to(torch.float32).to(torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(parameters[name])  # undo the parameters' own float32 rounding
    assert (model.log_prob(x) - before).abs().max() < 1e-12


def test_its_weights_transfer_to_another_volume():
    """The knots live on p_hat^2 / (4 D), not on the momenta of one lattice: the momenta of a 4x4
    lattice are among those of 8x8, and get the same scale there after a transfer."""
    small = perturb(build_flow(architecture(make_theory("phi4", "4x4", m2=-4.0, lam=8.0), n_layers=2)).double())
    large = build_flow(architecture(make_theory("phi4", "8x8", m2=-4.0, lam=8.0), n_layers=2)).double()
    transfer_weights(large, small.state_dict())
    assert torch.allclose(large.flows[0].propagator()[::2, ::2], small.flows[0].propagator(), rtol=1e-12)


def test_checkpoints_from_before_it_load_without_it(tmp_path):
    """Architecture version 4 had no ``momentum_scaling``: its phi^4 models load with none and
    keep their density."""
    theory = make_theory("phi4", "4x4", m2=-4.0, lam=8.0)
    model = build_flow(architecture(theory, n_layers=2, momentum_scaling=False)).double()
    path = tmp_path / "m.pt"
    train_flow(model, TrainConfig(steps=2, batch_size=8, checkpoint_every=2), path, progress=False)
    payload = torch.load(path, weights_only=True)
    del payload["sha256"], payload["architecture"]["momentum_scaling"]
    payload["schema_version"], payload["architecture"]["architecture_version"] = 1, 4  # schema 1: no checksum
    torch.save(payload, tmp_path / "old.pt")
    old = load_flow(tmp_path / "old.pt")
    assert old.architecture["momentum_scaling"] is False
    assert not any(isinstance(layer, MomentumScaling) for layer in old.flows)
    x, log_q = model.sample(4)
    assert (old.log_prob(x) - log_q).abs().max() < 1e-12


def test_it_is_the_phi4_default_and_gauge_theories_do_not_know_it():
    assert architecture(make_theory("phi4", "4x4", m2=-4.0, lam=8.0))["momentum_scaling"] is True
    with pytest.raises(InputError, match="momentum_scaling"):
        architecture(make_theory("u1", "4x4", beta=2.0), momentum_scaling=True)
