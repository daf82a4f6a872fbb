"""The lean training step: same density as before, few operator calls, a compiled path.

The layers were rewritten for fewer operator launches (masked arithmetic instead of
gathering and scattering the active sites, periodic padding by one gather, a spline that
normalises its parameters together).  Two independent checks that the model's density did
not change: log q of seeded models against values computed with the gathering implementation
before the rewrite, and every layer against a plain reference written here (boolean-mask
gathers, ``F.pad(mode="circular")`` convolutions, normflows' own splines).
"""

import math

import pytest
import torch
from normflows.utils.splines import unconstrained_rational_quadratic_spline
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from gaugeflow.flows import architecture, build_flow
from gaugeflow.flows.train import (TrainConfig, _evaluation_batches, accumulate_gradient, batch_parts,
                                   reverse_kl_step_terms)
from gaugeflow.flows.transforms import spline_derivative_shift
from gaugeflow.lattice.groups import wrap_angle
from gaugeflow.lattice.theories import make_theory

TOL = 1e-10

# (theory, lattice, couplings, architecture options, weight perturbation) -> log q of three
# fixed configurations, computed at commit db0df91 (gather/scatter layers, circular-mode
# convolutions, the previous spline evaluation) with the recipe of `seeded_model` below;
# "u1-rectangles" has no such values (the loop features came later): the plain reference checks it
CASES = {
    "u1-spline": ("u1", "4x4", {"beta": 2.0}, {"n_layers": 4, "kernel": "spline", "hidden_channels": [8], "n_bins": 4,
                                                   "rectangles": False},
                  0.2, [-63.85781977501422, -62.59339534012769, -63.45063978648295]),
    "u1-ncp": ("u1", "4x4", {"beta": 2.0}, {"n_layers": 4, "kernel": "ncp", "hidden_channels": [8], "n_mixture": 3,
                                                "rectangles": False},
               0.2, [-59.69033364133843, -56.80163518556648, -60.60101112820781]),
    "phi4-affine": ("phi4", "4x4", {"m2": -4.0, "lam": 8.0}, {"n_layers": 4, "kernel": "affine", "hidden_channels": [8]},
                    0.05, [-42.453667709132525, -50.366298096485025, -28.75629574868132]),
    "phi4-spline": ("phi4", "4x4", {"m2": -4.0, "lam": 8.0},
                    {"n_layers": 4, "kernel": "spline", "hidden_channels": [8], "n_bins": 4},
                    0.2, [-241.73723833019739, -297.71339281858474, -246.0300237278498]),
    "u1-rectangles": ("u1", "4x4", {"beta": 2.0}, {"n_layers": 4, "kernel": "spline", "hidden_channels": [8],
                                                   "n_bins": 4, "rectangles": True}, 0.2, None),
}


def seeded_model(name):
    """A float64 model of ``CASES[name]`` with seeded weights away from the identity, and three
    fixed configurations (uniform in [-3, 3] per degree of freedom)."""
    theory_name, lattice, couplings, options, scale, _ = CASES[name]
    torch.manual_seed(0)
    theory = make_theory(theory_name, lattice, **couplings)
    # the layers of db0df91 ran on the Haar prior, no density was symmetrised, and no phi^4
    # model started with a momentum scaling
    prior = {"prior": "haar"} if theory_name == "u1" else {"symmetrise": False, "momentum_scaling": False}
    model = build_flow(architecture(theory, **options, **prior)).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(3, *model.theory.config_shape, generator=generator, dtype=torch.float64) * 6 - 3
    return model, x


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case[-1] is not None])
def test_log_q_is_that_of_the_layers_before_the_rewrite(name):
    model, x = seeded_model(name)
    with torch.no_grad():
        log_q = model.log_prob(x)
    assert torch.allclose(log_q, torch.tensor(CASES[name][-1], dtype=torch.float64), rtol=0, atol=TOL)


# -- a plain reference of the layers -----------------------------------------------------
def reference_conditioner(net, features):
    """The periodic CNN with PyTorch's own circular padding (2D), from the layer's weights."""
    convs = [layer.convs[0] for layer in net.layers if hasattr(layer, "convs")]
    x = features
    for i, conv in enumerate(convs):
        pad = conv.kernel_size[0] // 2
        x = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), conv.weight, conv.bias)
        if i < len(convs) - 1:
            x = F.gelu(x)
    return x


def active_site_params(layer, features):
    """``[B, n_active, n_params]``: conditioner output gathered at the active sites by boolean mask."""
    out = reference_conditioner(layer.conditioner, features)
    return out.permute(0, 2, 3, 1)[:, layer.active]


def reference_circle_map(kernel, theta, params, inverse):
    """The circular spline kernel through normflows' spline (``tails="circular"``), then the rotation."""
    n = kernel.n_bins
    w, h, d, t = params[..., :n], params[..., n : 2 * n], params[..., 2 * n : 3 * n], params[..., 3 * n]
    d = d + spline_derivative_shift(params.dtype)
    if inverse:
        theta = wrap_angle(theta - t)
    y, log_derivative = unconstrained_rational_quadratic_spline(
        theta.clone(), w, h, d, inverse=inverse, tails="circular", tail_bound=math.pi
    )
    return wrap_angle(y if inverse else y + t), log_derivative


def reference_u1_layer(layer, theta, inverse):
    """Kanwar et al.'s layer written plainly: gather the active plaquettes, map them, move the links."""
    mu, nu = layer.mu, layer.nu
    t_mu = theta[:, mu]

    def plaquette(a, b):  # theta_{ab}(x), a lattice of two dimensions
        return theta[:, a] + theta[:, b].roll(-1, 1 + a) - theta[:, a].roll(-1, 1 + b) - theta[:, b]

    frozen = plaquette(0, 1).unsqueeze(1)  # the one plane, masked to its frozen plaquettes below
    features = torch.cat([torch.cos(frozen), torch.sin(frozen)], 1) * layer.frozen.to(theta.dtype)
    if layer.loops:  # the 1x2 loop theta_{mu nu}(x) + theta_{mu nu}(x - nu) at the active sites
        loop = plaquette(mu, nu) + plaquette(mu, nu).roll(1, 1 + nu)
        active = layer.active.to(theta.dtype)
        features = torch.stack([features[:, 0], torch.cos(loop) * active, features[:, 1], torch.sin(loop) * active], 1)
    params = active_site_params(layer, features)
    p = wrap_angle(plaquette(mu, nu))[:, layer.active]
    new_p, log_derivative = reference_circle_map(layer.transform, p, params, inverse)
    new_theta = theta.clone()
    new_mu = new_theta[:, mu].clone()
    new_mu[:, layer.active] = wrap_angle(t_mu[:, layer.active] + new_p - p)
    new_theta[:, mu] = new_mu
    return new_theta, log_derivative.sum(-1)


def reference_scalar_layer(layer, phi, inverse):
    """Checkerboard affine coupling written plainly."""
    frozen = phi * (~layer.active).to(phi.dtype)
    params = active_site_params(layer, frozen.unsqueeze(1))
    s, t = params[..., 0], params[..., 1]
    x = phi[:, layer.active]
    new = (x - t) * torch.exp(-s) if inverse else torch.exp(s) * x + t
    out = phi.clone()
    out[:, layer.active] = new
    return out, (-s if inverse else s).sum(-1)


@pytest.mark.parametrize("name, reference", [("u1-spline", reference_u1_layer), ("u1-rectangles", reference_u1_layer),
                                             ("phi4-affine", reference_scalar_layer)])
def test_every_layer_matches_a_plain_reference(name, reference):
    model, x = seeded_model(name)
    with torch.no_grad():
        for layer in model.flows:
            for inverse in (False, True):
                out, log_det = layer.inverse(x) if inverse else layer(x)
                ref_out, ref_log_det = reference(layer, x, inverse)
                assert log_det.dtype == torch.float64
                assert torch.allclose(out, ref_out, rtol=0, atol=TOL)
                assert torch.allclose(log_det, ref_log_det, rtol=0, atol=TOL)
                assert (log_det.abs() > 1e-3).all()  # the layers are far from the identity
            x = layer(x)[0]


@pytest.mark.parametrize("rectangles, n_features", [(False, 2), (True, 4)])
def test_state_dict_keys_are_those_of_existing_checkpoints(rectangles, n_features):
    """Conditioner parameters keep their names and shapes (masks and pad indices are not state);
    the loop features are two more input channels of the first convolution."""
    model = build_flow(architecture(make_theory("u1", "8x8", beta=2.0), rectangles=rectangles, prior="haar"))
    expected = {}
    for i in range(16):
        for j, (c_in, c_out) in zip((0, 2, 4), ((n_features, 16), (16, 16), (16, 25))):
            expected[f"flows.{i}.conditioner.layers.{j}.convs.0.weight"] = (c_out, c_in, 3, 3)
            expected[f"flows.{i}.conditioner.layers.{j}.convs.0.bias"] = (c_out,)
    layers = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("flows.")}
    assert layers == expected
    # on the plaquette prior (architecture version 3) the constraint layer comes first, as flows.0
    plaquette = build_flow(architecture(make_theory("u1", "8x8", beta=2.0), rectangles=rectangles))
    shifted = {f"flows.{int(k.split('.')[1]) + 1}." + k.split(".", 2)[2]: v for k, v in expected.items()}
    assert {k: tuple(v.shape) for k, v in plaquette.state_dict().items() if k.startswith("flows.")} == {
        **shifted, "flows.0.params": (49,)}


def operator_calls(fn):
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        fn()
    return {event.key: event.count for event in profiler.key_averages()}


def test_a_u1_layer_neither_scatters_nor_pads_by_copies():
    model, x = seeded_model("u1-spline")
    x.requires_grad_(True)
    layer = model.flows[1]
    with torch.no_grad():
        forward = operator_calls(lambda: layer(x))
    assert not {"aten::index_put_", "aten::_pad_circular", "aten::nonzero"} & set(forward)
    calls = operator_calls(lambda: sum(t.sum() for t in layer(x)).backward())
    assert sum(calls.values()) < 1400  # 2,200 with the gather/scatter layers


def step_terms(model, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    surrogate, *_ = reverse_kl_step_terms(model, 8, "path")
    surrogate.backward()
    return surrogate.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("theory_args, scale", [(("u1", "4x4", {"beta": 2.0}), 0.2),
                                                 (("phi4", "4x4", {"m2": -4.0, "lam": 8.0}), 0.05)])
def test_a_compiled_training_step_gives_the_eager_loss_and_gradients(theory_args, scale):
    """torch.compile on the CPU (inductor's C++ kernels) of a tiny model, against eager mode;
    phi^4 with its momentum scaling, whose FFTs inductor leaves to eager kernels."""
    torch._dynamo.reset()
    name, lattice, couplings = theory_args
    theory = make_theory(name, lattice, **couplings)
    torch.manual_seed(0)
    model = build_flow(architecture(theory, n_layers=2, hidden_channels=[4], n_bins=4)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    eager_loss, eager_grads = step_terms(model, 5)
    model.compile_layers()
    compiled_loss, compiled_grads = step_terms(model, 5)
    again_loss, _ = step_terms(model, 5)  # the cached graphs
    assert torch.allclose(compiled_loss, eager_loss, rtol=0, atol=1e-10)
    assert torch.equal(again_loss, compiled_loss)
    for eager, compiled in zip(eager_grads, compiled_grads):
        assert torch.allclose(compiled, eager, rtol=1e-8, atol=1e-10)


def perturbed_float64_model(theory_args, options):
    """A float64 model of ``(name, lattice, couplings)`` with its weights moved off the identity."""
    name, lattice, couplings = theory_args
    torch.manual_seed(0)
    model = build_flow(architecture(make_theory(name, lattice, **couplings), **options)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("theory_args, options", [
    (("u1", "4x4", {"beta": 2.0}), {"n_layers": 2, "hidden_channels": [4], "n_bins": 4, "prior": "haar"}),
    (("su3", "2x2x2x2", {"beta": 1.0}), {"n_layers": 2, "layer_kind": "staple", "staple_centres": "each"}),
])
def test_recomputing_layers_in_the_backward_pass_gives_the_same_step(theory_args, options):
    """``recompute_in_backward``: the same loss and gradients (path gradients, whose density
    pass runs with frozen parameters), and every layer's conditioner really runs again in the
    backward pass (twice per pass instead of once)."""
    model = perturbed_float64_model(theory_args, options)
    calls = []
    for layer in model.flows:
        layer.conditioner.register_forward_pre_hook(lambda module, args: calls.append(module))
    plain_loss, plain_grads = step_terms(model, 5)
    plain_calls, calls[:] = len(calls), []
    model.recompute_in_backward()
    loss, grads = step_terms(model, 5)
    assert plain_calls == 2 * len(model.flows)  # the sampling pass and the density pass
    assert len(calls) == 2 * plain_calls
    assert torch.equal(loss, plain_loss)
    for plain, recomputed in zip(plain_grads, grads):
        assert torch.allclose(recomputed, plain, rtol=1e-10, atol=1e-12)
    assert any(g.abs().max() > 0 for g in grads)


@pytest.mark.parametrize("theory_args, options, estimator, whole_batch", [
    (("u1", "4x4x4", {"beta": 1.0}), {"n_layers": 2, "hidden_channels": [4], "n_bins": 4, "prior": "haar"}, "path", True),
    (("u1", "4x4", {"beta": 2.0}), {"n_layers": 2, "hidden_channels": [4], "n_bins": 4, "prior": "haar"}, "reparam", True),
    # Haar SU(3) links draw their real parts, then their imaginary parts; a conditioned model draws
    # the couplings first: parts of the batch are other samples than the whole batch
    (("su3", "2x2x2x2", {"beta": 1.0}), {"n_layers": 2, "layer_kind": "staple", "staple_centres": "each"}, "path", False),
    (("u1", "4x4", {"beta": 1.0}), {"n_layers": 2, "hidden_channels": [4], "n_bins": 4, "prior": "haar",
                                    "condition": ("beta", 0.5, 1.5)}, "path", False),
])
def test_a_batch_drawn_in_parts_gives_the_gradient_of_the_whole_batch(theory_args, options, estimator, whole_batch):
    """``accumulate_gradient`` with ``micro_batch``: 7 samples in parts of 3, 2, 2, with the
    layer passes run part by part.  Where the prior draws sample after sample (U(1) angles), the
    parts are the samples of the whole batch, and the loss, the per-sample densities and the
    gradient are those of the 7 drawn at once; otherwise they are the parts' own, weighted
    3/7, 2/7, 2/7."""
    model = perturbed_float64_model(theory_args, options)

    def step(micro_batch):
        torch.manual_seed(5)
        model.zero_grad(set_to_none=True)
        terms = accumulate_gradient(model, 7, estimator, micro_batch)
        return terms, [p.grad.clone() for p in model.parameters()]

    def parts_one_by_one():
        torch.manual_seed(5)
        terms, grads = [], []
        for n in (3, 2, 2):
            model.zero_grad(set_to_none=True)
            surrogate, loss, log_q, log_p = reverse_kl_step_terms(model, n, estimator)
            surrogate.backward()
            terms.append((n / 7 * surrogate.detach(), n / 7 * loss, log_q, log_p))
            grads.append([n / 7 * p.grad for p in model.parameters()])
        surrogate, loss, log_q, log_p = zip(*terms)
        return (sum(surrogate), sum(loss), torch.cat(log_q), torch.cat(log_p)), [sum(g) for g in zip(*grads)]

    assert batch_parts(7, 3) == [3, 2, 2] and batch_parts(7, 7) == [7] and batch_parts(7) == [7]
    # the evaluation sample is drawn in batches of the largest part, as many samples or a few more
    assert _evaluation_batches(64, TrainConfig(eval_batches=4, micro_batch=24)) == (22, 12)
    assert _evaluation_batches(64, TrainConfig(eval_batches=4)) == (64, 4)
    (surrogate, loss, log_q, log_p), grads = step(None) if whole_batch else parts_one_by_one()
    calls = []
    hook = model.flows[0].conditioner.register_forward_pre_hook(lambda module, args: calls.append(module))
    (part_surrogate, part_loss, part_log_q, part_log_p), part_grads = step(3)
    hook.remove()
    assert len(calls) == 3 * (2 if estimator == "path" else 1)  # path: a sampling and a density pass per part
    assert torch.allclose(part_surrogate, surrogate, rtol=1e-12) and torch.allclose(part_loss, loss, rtol=1e-12)
    assert torch.allclose(part_log_q, log_q, rtol=1e-12) and torch.allclose(part_log_p, log_p, rtol=1e-12)
    for whole, parts in zip(grads, part_grads):
        assert torch.allclose(parts, whole, rtol=1e-9, atol=1e-12)
    assert any(g.abs().max() > 0 for g in grads)
