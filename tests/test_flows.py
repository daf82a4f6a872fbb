"""Flow layers and models: invertibility, exact Jacobians, symmetries, identity at init."""

import math

import pytest
import torch

from gaugeflow.flows import architecture, build_flow, transfer_weights
from gaugeflow.flows.scalar_coupling import ScalarCoupling
from gaugeflow.flows.transforms import AffineTransform, SplineTransform
from gaugeflow.flows.u1_coupling import U1PlaquetteCoupling, rectangle_loop
from gaugeflow.lattice.groups import wrap_angle
from gaugeflow.lattice.theories import make_theory


def perturb(module, scale=0.2, seed=0):
    """Move all parameters away from the identity initialisation.  (Much larger moves make
    kernels with slopes ~e^-15, whose inverse no float64 algorithm resolves to 1e-10.)"""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def angle_distance(a, b):
    return wrap_angle(a - b).abs().max().item()


def _loops(rectangles):
    return (rectangle_loop,) if rectangles else ()


def u1_layer(kernel_name, shape=(4, 4), mu=0, nu=1, offset=1, rectangles=False):
    from gaugeflow.flows.kernels import CircularSplineKernel, NCPKernel

    kernel = NCPKernel(4) if kernel_name == "ncp" else CircularSplineKernel(6)
    torch.manual_seed(0)
    return perturb(U1PlaquetteCoupling(shape, mu, nu, offset, kernel, (8, 8), loops=_loops(rectangles)).double())


SCALAR_TRANSFORMS = {"affine": AffineTransform(), "spline": SplineTransform(6)}


@pytest.mark.parametrize("name", SCALAR_TRANSFORMS)
def test_scalar_coupling_inverse_and_log_det(name, generator):
    torch.manual_seed(0)
    layer = perturb(ScalarCoupling((4, 4), 1, SCALAR_TRANSFORMS[name], (8, 8)).double())
    phi = torch.randn(3, 4, 4, dtype=torch.float64, generator=generator)
    out, log_det = layer(phi)
    back, log_det_inverse = layer.inverse(out)
    assert (out - phi).abs().max() > 1e-2
    assert torch.allclose(back, phi, atol=1e-10)
    assert torch.allclose(log_det + log_det_inverse, torch.zeros(3, dtype=torch.float64), atol=1e-10)
    for b in range(3):
        jacobian = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(1, 4, 4))[0].reshape(-1), phi[b].reshape(-1))
        assert torch.linalg.slogdet(jacobian)[1].item() == pytest.approx(log_det[b].item(), abs=1e-8)


@pytest.mark.parametrize("kernel, rectangles", [("spline", False), ("ncp", False), ("spline", True)])
@pytest.mark.parametrize("mu, nu, offset", [(0, 1, 0), (1, 0, 3)])
def test_u1_coupling_inverse_and_log_det_against_autograd(kernel, rectangles, mu, nu, offset, generator):
    layer = u1_layer(kernel, mu=mu, nu=nu, offset=offset, rectangles=rectangles)
    theta = make_theory("u1", "4x4", beta=1.0).hot_start(2, generator=generator)
    out, log_det = layer(theta)
    back, log_det_inverse = layer.inverse(out)
    assert angle_distance(out, theta) > 1e-2
    assert angle_distance(back, theta) < 1e-10
    assert torch.allclose(log_det + log_det_inverse, torch.zeros(2, dtype=torch.float64), atol=1e-9)
    for b in range(2):
        # Jacobian of the map in angle coordinates (the wrap is locally the identity)
        jacobian = torch.autograd.functional.jacobian(
            lambda v: layer(v.reshape(1, 2, 4, 4))[0].reshape(-1), theta[b].reshape(-1)
        )
        assert torch.linalg.slogdet(jacobian)[1].item() == pytest.approx(log_det[b].item(), abs=1e-8)


@pytest.mark.parametrize("kernel, rectangles", [("spline", False), ("ncp", False), ("spline", True)])
def test_u1_coupling_is_gauge_equivariant(kernel, rectangles, generator):
    theory = make_theory("u1", "8x8", beta=1.0)
    layer = u1_layer(kernel, shape=(8, 8), rectangles=rectangles)
    theta = theory.hot_start(3, generator=generator)
    alpha = theory.random_gauge_transformation(3, generator=generator)
    out, log_det = layer(theta)
    out_transformed, log_det_transformed = layer(theory.gauge_transform(theta, alpha))
    assert angle_distance(out_transformed, theory.gauge_transform(out, alpha)) < 1e-10
    assert torch.allclose(log_det_transformed, log_det, atol=1e-10)


@pytest.mark.parametrize("rectangles", [False, True])
def test_u1_coupling_in_three_dimensions(rectangles, generator):
    theory = make_theory("u1", "4x4x4", beta=1.0)
    from gaugeflow.flows.kernels import CircularSplineKernel

    torch.manual_seed(0)
    layer = perturb(U1PlaquetteCoupling((4, 4, 4), 2, 0, 1, CircularSplineKernel(6), (4,), loops=_loops(rectangles)).double())
    theta = theory.hot_start(2, generator=generator)
    out, log_det = layer(theta)
    back, _ = layer.inverse(out)
    assert angle_distance(back, theta) < 1e-10
    alpha = theory.random_gauge_transformation(2, generator=generator)
    out_t, log_det_t = layer(theory.gauge_transform(theta, alpha))
    assert angle_distance(out_t, theory.gauge_transform(out, alpha)) < 1e-10
    assert torch.allclose(log_det_t, log_det, atol=1e-10)
    changed = (wrap_angle(out - theta).abs() > 1e-12)
    assert changed[:, 2].any() and not changed[:, :2].any()  # only mu = 2 links move


MODEL_CASES = [
    ("phi4", "4x4", {"m2": -4.0, "lam": 8.0}, "spline"),
    ("phi4", "4x4", {"m2": -4.0, "lam": 8.0}, "affine"),
    ("u1", "4x4", {"beta": 2.0}, "spline"),
    ("u1", "4x4", {"beta": 2.0}, "ncp"),
    ("su2", "4x4", {"beta": 2.0}, "spline"),
    ("su3", "4x4", {"beta": 2.0}, "spline"),
]


def small_model(name, shape, couplings, kernel, n_layers=4):
    """U(1) on the Haar prior: these tests are about the local layers, which start as the identity
    and are translation equivariant (the 2D plaquette prior singles out one plaquette, x*, and its
    constraint layer starts away from the identity: tests/test_priors.py)."""
    theory = make_theory(name, shape, **couplings)
    torch.manual_seed(0)
    prior = "haar" if name == "u1" else None
    return build_flow(architecture(theory, n_layers=n_layers, kernel=kernel, hidden_channels=[8], prior=prior)).double()


@pytest.mark.parametrize("name, shape, couplings, kernel", MODEL_CASES, ids=[f"{c[0]}-{c[3]}" for c in MODEL_CASES])
def test_untrained_model_is_the_prior(name, shape, couplings, kernel):
    model = small_model(name, shape, couplings, kernel)
    torch.manual_seed(3)
    z, log_prior = model.q0(4)
    x, log_det = model.forward_and_log_det(z)
    assert torch.allclose(x, z, atol=1e-9)
    assert torch.allclose(log_det, torch.zeros(4, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(model.log_prob(x), log_prior.double(), atol=1e-8)


@pytest.mark.parametrize("name, shape, couplings, kernel", MODEL_CASES, ids=[f"{c[0]}-{c[3]}" for c in MODEL_CASES])
def test_model_log_prob_matches_sampling_density(name, shape, couplings, kernel):
    model = perturb(small_model(name, shape, couplings, kernel), scale=0.1)
    torch.manual_seed(4)
    x, log_q = model.sample(3)
    assert log_q.dtype == torch.float64
    assert torch.allclose(model.log_prob(x), log_q, atol=1e-7)


@pytest.mark.parametrize("name, couplings, kernel", [("phi4", {"m2": -4.0, "lam": 8.0}, "spline"), ("u1", {"beta": 2.0}, "spline")])
def test_model_trained_on_small_lattice_runs_on_large_one(name, couplings, kernel):
    small = perturb(small_model(name, "4x4", couplings, kernel), scale=0.1)
    large = small_model(name, "8x8", couplings, kernel)
    transfer_weights(large, small.state_dict())
    torch.manual_seed(5)
    x, log_q = large.sample(2)
    assert x.shape[-2:] == (8, 8)
    assert torch.allclose(large.log_prob(x), log_q, atol=1e-7)
    # translation equivariance: shifting the input by a mask period shifts the output
    z, _ = large.q0(1)
    out = large.forward_and_log_det(z)[0]
    shifted = large.forward_and_log_det(torch.roll(z, shifts=(4, 4), dims=(-2, -1)))[0]
    assert torch.allclose(shifted, torch.roll(out, shifts=(4, 4), dims=(-2, -1)), atol=1e-10)


def test_transfer_to_another_architecture_is_rejected():
    a = small_model("u1", "4x4", {"beta": 2.0}, "spline", n_layers=2)
    b = small_model("u1", "4x4", {"beta": 2.0}, "spline", n_layers=4)
    with pytest.raises(ValueError, match="do not fit"):
        transfer_weights(b, a.state_dict())


def test_bad_architecture_is_named():
    theory = make_theory("u1", "8x8", beta=2.0)
    with pytest.raises(ValueError, match="kernel 'affine' is not available for u1"):
        architecture(theory, kernel="affine")
    with pytest.raises(ValueError, match="divisible by 4"):
        build_flow(architecture(make_theory("u1", "6x6", beta=2.0)))


def test_float32_model_gives_float64_log_densities():
    model = small_model("u1", "4x4", {"beta": 2.0}, "spline").float()
    x, log_q = model.sample(2)
    assert x.dtype == torch.float32 and log_q.dtype == torch.float64
    assert model.p.log_prob(x).dtype == torch.float64
    assert math.isfinite(log_q.sum().item())


@pytest.mark.parametrize("mu, nu, offset", [(0, 1, 2), (1, 0, 1)])
def test_u1_rectangle_feature_is_the_loop_through_the_active_link(mu, nu, offset, generator):
    """The extra features are (cos, sin) of the 1x2 loop made of the active plaquette and the
    passive one sharing its active link: nonzero at the active sites only, unchanged by the
    layer, and equal to that loop computed from the links directly."""
    from gaugeflow.lattice.u1 import plaquette_angles

    layer = u1_layer("spline", shape=(8, 8), mu=mu, nu=nu, offset=offset, rectangles=True)
    theta = make_theory("u1", "8x8", beta=1.0).hot_start(2, generator=generator)
    features = layer.features(theta)
    assert features.shape[1] == 4  # (cos, sin) of the one plane's frozen plaquettes, then of the loop
    loop = torch.stack([features[:, 1], features[:, 3]], dim=1)
    assert (loop[:, :, ~layer.active] == 0).all()
    plaquette = plaquette_angles(theta, mu, nu)
    expected = plaquette + torch.roll(plaquette, 1, dims=1 + nu)  # theta_{mu nu}(x) + theta_{mu nu}(x - nu)
    assert torch.allclose(loop[:, 0][:, layer.active], torch.cos(expected)[:, layer.active], atol=1e-12)
    assert torch.allclose(loop[:, 1][:, layer.active], torch.sin(expected)[:, layer.active], atol=1e-12)
    out, _ = layer(theta)
    assert angle_distance(out, theta) > 1e-2
    assert torch.allclose(layer.features(out), features, atol=1e-10)
