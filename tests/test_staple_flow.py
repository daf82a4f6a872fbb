"""Staple couplings (flows.staple_coupling): exact log-densities, gauge equivariance, round
trips, coverage, transfer between volumes, composition with plaquette couplings, conditioning."""

import copy
import math

import pytest
import torch

from gaugeflow import architecture, build_flow, make_theory
from gaugeflow.flows.kernels import CircularSplineKernel
from gaugeflow.flows.masks import gauge_layer_schedule, staple_layer_schedule, staple_link_mask
from gaugeflow.flows.model import transfer_weights
from gaugeflow.flows.staple_coupling import (SUNChairs, SUNStapleCoupling, U1Chairs, U1StapleCoupling, chair_loops,
                                             project_staple_sum)
from gaugeflow.lattice.errors import InputError
from gaugeflow.flows.sun_coupling import SpectralTransform
from gaugeflow.lattice.groups import dagger, traceless_antihermitian
from gaugeflow.lattice.u1 import U1

from su_algebra import su_basis as _su_basis

TOL = 1e-10
SHAPES = {2: (4, 4), 3: (2, 4, 2), 4: (2, 2, 2, 2)}


def _randomise(module, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def _u1_layer(shape, mu, parity, seed=1, scale=0.5, chairs=False):
    torch.manual_seed(seed)
    loops = [U1Chairs(shape, mu, parity)] if chairs else []
    layer = U1StapleCoupling(shape, mu, parity, CircularSplineKernel(6), hidden=(8,), loops=loops).double()
    return _randomise(layer, seed + 1, scale)


def _sun_layer(shape, n_colors, mu, parity, seed=1, scale=0.5, centres="sum", chairs=False):
    torch.manual_seed(seed)
    layer = SUNStapleCoupling(shape, n_colors, mu, parity, SpectralTransform(n_colors, 4), hidden=(8,),
                              centres=centres, loops=[SUNChairs(shape, n_colors, mu, parity)] if chairs else []).double()
    return _randomise(layer, seed + 1, scale)


def _hot(name, shape, batch, seed):
    theory = make_theory(name, shape, beta=1.0)
    return theory, theory.hot_start(batch, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("dimension", [2, 3, 4])
def test_staples_give_the_plaquettes_through_each_link(dimension):
    """``theta_mu + s_k`` are the 2 (D-1) plaquettes through the link (U(1) action recovered),
    and the SU(N) staple sum is the theory's own (its force uses it)."""
    shape = (4,) * dimension
    theory, theta = _hot("u1", shape, 2, seed=3)
    wilson = 0.0
    for mu in range(dimension):
        for parity in (0, 1):
            layer = U1StapleCoupling(shape, mu, parity, CircularSplineKernel(6))
            wilson = wilson + torch.cos(layer.gather(theta[:, mu])[..., None] + layer.staple_angles(theta)).sum((0, 2))
    # every plaquette counted once from each of its 4 links
    assert torch.allclose(-theory.couplings["beta"] * wilson / 4, theory.action(theta), atol=1e-9)
    su3, links = _hot("su3", shape, 1, seed=4)
    for mu in range(dimension):
        for parity in (0, 1):
            layer = SUNStapleCoupling(shape, 3, mu, parity, SpectralTransform(3))
            expected = layer.gather(su3.staples(links, mu))
            assert (layer.staples(links).sum(0) - expected).abs().max() < 1e-12


@pytest.mark.parametrize("dimension", [2, 3, 4])
def test_active_links_share_no_plaquette_and_schedule_covers_every_link(dimension):
    shape = (4,) * dimension
    covered = torch.zeros(dimension, *shape, dtype=torch.bool)
    for mu, parity in staple_layer_schedule(dimension, 2 * dimension):
        active = staple_link_mask(shape, mu, parity)
        for nu in range(dimension):
            if nu != mu:  # links at x and x + nu_hat would share the (mu, nu) plaquette
                assert not torch.any(active & torch.roll(active, 1, nu))
        assert not torch.any(covered[mu] & active)
        covered[mu] |= active
    assert torch.all(covered)
    with pytest.raises(ValueError, match="even"):
        staple_link_mask((4, 5, 4), 0, 0)


@pytest.mark.parametrize("dimension", [2, 3, 4])
def test_default_gauge_schedules_update_every_link(dimension):
    """With the default depth of each layer kind every link is active at least once."""
    shape = (4,) * dimension
    for name in ("u1", "su2"):
        theory = make_theory(name, shape, beta=1.0)
        for kind in ("plaquette", "staple"):
            arch = architecture(theory, layer_kind=kind)
            model = build_flow(arch)
            covered = torch.zeros(dimension, *shape, dtype=torch.bool)
            for layer in model.flows:
                if isinstance(layer, (U1StapleCoupling, SUNStapleCoupling)):
                    covered[layer.mu] |= layer.active
                elif hasattr(layer, "nu"):
                    covered[layer.mu] |= layer.active
            assert torch.all(covered), (name, kind, dimension)
    # the earlier order, kept for older 4D checkpoints, leaves links out
    old = torch.zeros(4, 4, 4, 4, 4, dtype=torch.bool)
    for mu, nu, offset in gauge_layer_schedule(4, 16, "planes"):
        index = [slice(None)] * 4
        index[nu] = slice(offset, None, 4)
        old[(mu, *index)] = True
    assert int(old.sum()) == 704


# ----------------------------------------------------------------------------- U(1)


@pytest.mark.parametrize("shape", [(4, 4, 4), (4, 2, 4, 6)])
def test_chairs_are_six_link_loops_through_one_active_link(shape):
    """Each chair angle is, as a linear function of all link angles, a loop of six links with
    coefficients +-1 (the joining link cancels) holding the active link once and no other link
    the layer moves; the 8 (D-1)(D-2) chairs of a link are distinct."""
    dimension = len(shape)
    for mu, parity in [(0, 0), (dimension - 1, 1)]:
        chairs = U1Chairs(shape, mu, parity)
        layer = U1StapleCoupling(shape, mu, parity, CircularSplineKernel(6), loops=[chairs])
        theta = torch.zeros(1, dimension, *shape, dtype=torch.float64, requires_grad=True)
        loops = (chairs.angles(theta, layer.staple_angles(theta)) + layer.gather(theta[:, mu])[..., None])[:, 0]
        assert loops.shape[1] == 8 * (dimension - 1) * (dimension - 2)
        moved = mu * layer.active.numel() + layer.active_index
        for i in (0, len(moved) - 1):
            seen = set()
            for c in range(loops.shape[1]):
                (coefficients,) = torch.autograd.grad(loops[i, c], theta, retain_graph=True)
                links = coefficients.flatten().nonzero().squeeze(-1)
                assert len(links) == 6 and torch.all(coefficients.flatten()[links].abs() == 1)
                assert coefficients.flatten()[moved[i]] == 1 and int(torch.isin(links, moved).sum()) == 1
                seen.add(tuple(links.tolist()))
            assert len(seen) == loops.shape[1]
    # gauge invariant (closed loops): unchanged by a random gauge transformation
    theory, angles = _hot("u1", shape, 2, seed=30)
    alpha = theory.random_gauge_transformation(2, generator=torch.Generator().manual_seed(31))
    chairs = U1Chairs(shape, 1, 0)
    layer = U1StapleCoupling(shape, 1, 0, CircularSplineKernel(6), loops=[chairs])
    before = chairs.angles(angles, layer.staple_angles(angles)) + layer.gather(angles[:, 1])[..., None]
    gauged = theory.gauge_transform(angles, alpha)
    after = chairs.angles(gauged, layer.staple_angles(gauged)) + layer.gather(gauged[:, 1])[..., None]
    assert (torch.remainder(after - before + math.pi, 2 * math.pi) - math.pi).abs().max() < 1e-12


def test_layers_of_one_mask_share_their_index_buffers():
    """The gather indices are built once per (lattice, mask) and held as int32: layers of one
    mask hold the same tensors, layers of another mask or lattice their own; the SU(N) detours,
    which depend on ``mu`` only, are shared by both parities.  Chairs need 3 dimensions."""
    shape = (4, 4, 4, 4)
    def u1(lattice, parity):
        return U1StapleCoupling(lattice, 2, parity, CircularSplineKernel(6), loops=[U1Chairs(lattice, 2, parity)])

    first, second, other_parity, other_lattice = u1(shape, 1), u1(shape, 1), u1(shape, 0), u1((4, 4, 4, 6), 1)
    for index_of in (lambda layer: layer.neighbours, lambda layer: layer.loops[0].index):
        index = index_of(first)
        assert index.dtype == torch.int32 and index_of(second) is index
        assert not torch.equal(index_of(other_parity), index)
        assert index_of(other_lattice).shape[-1] > index.shape[-1]
    even, odd = (SUNChairs(shape, 2, 2, parity) for parity in (0, 1))
    assert even.detour_links is odd.detour_links
    assert even.chair_detours.dtype == torch.int32 and not torch.equal(even.chair_detours, odd.chair_detours)
    with pytest.raises(InputError, match="3 or more dimensions"):
        U1Chairs((4, 4), 0, 0)
    with pytest.raises(InputError, match=r"built for the layer \(mu=2, parity=1\)"):
        U1StapleCoupling(shape, 2, 0, CircularSplineKernel(6), loops=[U1Chairs(shape, 2, 1)])
    for dimension in (3, 4):  # staple by staple, as U1Chairs.angles reads them
        staples = [staple for _, _, staple, _ in chair_loops(dimension, 1)]
        assert staples == [k for k in range(2 * (dimension - 1)) for _ in range(4 * (dimension - 2))]


@pytest.mark.parametrize("dimension,chairs", [(2, False), (3, False), (4, False), (3, True), (4, True)])
@pytest.mark.parametrize("mu,parity", [(0, 0), (1, 1)])
def test_u1_log_det_matches_autograd_jacobian(dimension, chairs, mu, parity):
    shape = SHAPES[dimension]
    layer = _u1_layer(shape, mu, parity, chairs=chairs)
    _, theta = _hot("u1", shape, 1, seed=5)
    out, log_det = layer(theta)
    jacobian = torch.autograd.functional.jacobian(lambda t: layer(t.reshape(theta.shape))[0].flatten(), theta.flatten())
    sign, log_abs = torch.linalg.slogdet(jacobian)
    assert sign > 0
    assert abs(log_abs - log_det[0]) < 1e-10
    assert abs(log_det[0]) > 0.1  # far from the identity


@pytest.mark.parametrize("dimension,chairs", [(2, False), (3, False), (4, False), (4, True)])
def test_u1_round_trip_and_gauge_equivariance(dimension, chairs):
    shape = (4,) * dimension
    # steeper splines invert to 1e-10 only; the chairs' 96 more inputs make the splines steeper
    layer = _u1_layer(shape, dimension - 1, 1, seed=7, scale=0.15 if chairs else 0.3, chairs=chairs)
    theory, theta = _hot("u1", shape, 3, seed=8)
    out, log_det = layer(theta)
    changed = (out - theta).abs() > 0
    assert torch.equal(changed.any(0), torch.stack([layer.active if d == layer.mu else torch.zeros_like(layer.active)
                                                    for d in range(dimension)]))
    back, log_det_inv = layer.inverse(out)
    assert (torch.remainder(back - theta + math.pi, 2 * math.pi) - math.pi).abs().max() < TOL
    assert (log_det + log_det_inv).abs().max() < TOL
    alpha = theory.random_gauge_transformation(3, generator=torch.Generator().manual_seed(9))
    out_g, log_det_g = layer(theory.gauge_transform(theta, alpha))
    difference = out_g - theory.gauge_transform(out, alpha)
    assert (torch.remainder(difference + math.pi, 2 * math.pi) - math.pi).abs().max() < TOL
    assert (log_det_g - log_det).abs().max() < TOL


@pytest.mark.parametrize("chairs", [False, True])
def test_u1_translation_equivariance(chairs):
    layer = _u1_layer((4, 6, 4), 1, 0, seed=11, chairs=chairs)
    _, theta = _hot("u1", (4, 6, 4), 2, seed=12)
    for shifts in [(1, 0, 1), (0, 3, 0), (2, 0, 0)]:  # keep the mask: any step along mu, an even sum across
        roll = lambda t: torch.roll(t, shifts=shifts, dims=(2, 3, 4))  # noqa: E731
        out, log_det = layer(theta)
        out_s, log_det_s = layer(roll(theta))
        assert (out_s - roll(out)).abs().max() < TOL
        assert (log_det_s - log_det).abs().max() < TOL


# ----------------------------------------------------------------------------- SU(N)


@pytest.mark.parametrize("n_colors,dimension,centres", [(2, 2, "sum"), (2, 3, "sum"), (2, 4, "sum"), (3, 2, "sum"),
                                                        (3, 3, "sum"), (3, 4, "sum"), (2, 4, "each"), (3, 2, "each"),
                                                        (3, 4, "each"), (2, 4, "chairs"), (3, 3, "chairs")])
def test_sun_log_det_matches_autograd_jacobian(n_colors, dimension, centres):
    """log_det equals log|det dw'/dw| of the whole field in exponential charts ``U = exp(w.T) U0``
    around every link (Haar density ``1 + O(w^2)`` there), input and output."""
    shape = SHAPES[dimension]
    mu, parity = dimension - 1, 0
    chairs = centres == "chairs"  # the single map, its conditioner seeing the chairs
    layer = _sun_layer(shape, n_colors, mu, parity, seed=13, scale=0.4, centres="sum" if chairs else centres,
                       chairs=chairs)
    _, links = _hot(f"su{n_colors}", shape, 1, seed=14)
    basis = _su_basis(n_colors)
    with torch.no_grad():
        out0, log_det = layer(links)

    def chart_map(w):
        generators = torch.einsum("...a,aij->...ij", w.reshape(*links.shape[:-2], -1).to(basis.dtype), basis)
        out, _ = layer(torch.linalg.matrix_exp(generators) @ links)
        relative = traceless_antihermitian(out @ dagger(out0))
        return torch.einsum("aij,...ij->...a", basis.conj(), relative).real.flatten()

    w0 = torch.zeros(links[..., 0, 0].numel() * basis.shape[0], dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(chart_map, w0)
    sign, log_abs = torch.linalg.slogdet(jacobian)
    assert sign != 0
    assert abs(log_abs - log_det[0]) < 1e-9
    assert abs(log_det[0]) > 0.1


@pytest.mark.parametrize("n_colors", [2, 3])
@pytest.mark.parametrize("dimension,chairs", [(2, False), (4, False), (4, True)])
@pytest.mark.parametrize("centres", ["sum", "each"])
def test_sun_round_trip_group_and_gauge_equivariance(n_colors, dimension, chairs, centres):
    shape = (4,) * dimension if dimension == 2 else (2, 4, 2, 4)
    # seven random maps at the default scale contract a link's density by e^20 (log det -20 a
    # link), beyond what any round trip resolves; 0.2 keeps them strong (log det -1.3 a link), and
    # so for the chairs' 48-96 more conditioner inputs (1.6e-7 for SU(3) at 0.5)
    layer = _sun_layer(shape, n_colors, 1, 1, seed=15, centres=centres,
                       scale=0.5 if centres == "sum" and not chairs else 0.2, chairs=chairs)
    theory, links = _hot(f"su{n_colors}", shape, 2, seed=16)
    out, log_det = layer(links)
    moved = (out - links).abs().amax(dim=(-2, -1))
    assert torch.all(moved[:, 1][:, layer.active] > 1e-8)
    assert torch.all(moved[:, 1][:, ~layer.active] == 0) and torch.all(moved[:, [0, *range(2, dimension)]] == 0)
    eye = torch.eye(n_colors, dtype=out.dtype)
    assert (dagger(out) @ out - eye).abs().max() < 1e-12
    assert (torch.linalg.det(out) - 1).abs().max() < 1e-12
    back, log_det_inv = layer.inverse(out)
    assert (back - links).abs().max() < TOL
    assert (log_det + log_det_inv).abs().max() < TOL
    g = theory.random_gauge_transformation(2, generator=torch.Generator().manual_seed(17))
    out_g, log_det_g = layer(theory.gauge_transform(links, g))
    assert (out_g - theory.gauge_transform(out, g)).abs().max() < TOL
    assert (log_det_g - log_det).abs().max() < TOL


@pytest.mark.parametrize("shape", [(4, 4, 4), (4, 2, 4, 6)])
def test_sun_chairs_on_diagonal_links_are_the_u1_chairs(shape):
    """On diagonal SU(2) links ``diag(e^{i theta}, e^{-i theta})`` every chair feature ``Re tr(H
    W^dagger) / 2`` of an SU(2) layer is ``cos`` of a U(1) chair relative to the staple sum (the
    U(1) chairs are six-link loops, tested above): the same 8 (D-1)(D-2) loops, oriented alike."""
    theory, theta = _hot("u1", shape, 2, seed=32)
    links = torch.diag_embed(torch.stack([torch.polar(torch.ones_like(theta), theta),
                                          torch.polar(torch.ones_like(theta), -theta)], -1))
    for mu, parity in [(0, 0), (len(shape) - 1, 1)]:
        sun = SUNStapleCoupling(shape, 2, mu, parity, SpectralTransform(2))
        u1 = U1StapleCoupling(shape, mu, parity, CircularSplineKernel(6))
        sun_chairs, u1_chairs = SUNChairs(shape, 2, mu, parity), U1Chairs(shape, mu, parity)
        factors = sun.staple_factors(links)
        projected, _, _ = project_staple_sum(sun.staples(links, factors).sum(0))
        features = sun_chairs(links, factors, projected)
        staples = u1.staple_angles(theta)
        centre = torch.atan2(torch.sin(staples).sum(-1), torch.cos(staples).sum(-1))
        expected = torch.cos(u1_chairs.angles(theta, staples) - centre[..., None])
        assert features.shape == expected.shape == (sun.active_index.numel(), 2, 8 * (len(shape) - 1) * (len(shape) - 2))
        assert (features.sort(-1).values - expected.sort(-1).values).abs().max() < 1e-12
        assert features.std() > 0.1


@pytest.mark.parametrize("n_colors", [2, 3])
def test_projection_of_the_staple_sum_is_covariant(n_colors):
    from gaugeflow.lattice.groups import haar_random_sun
    gen = torch.Generator().manual_seed(18)
    staples = haar_random_sun((50, 6), n_colors, generator=gen).sum(1)
    g, h = haar_random_sun((2, 50), n_colors, generator=gen)
    w, singular, phase = project_staple_sum(staples)
    w_t, singular_t, phase_t = project_staple_sum(g @ staples @ dagger(h))
    assert (w_t - g @ w @ dagger(h)).abs().max() < 1e-10
    assert (singular_t - singular).abs().max() < 1e-10 and (phase_t - phase).abs().max() < 1e-10
    assert (torch.linalg.det(w) - 1).abs().max() < 1e-12
    # W is the polar factor up to a centre phase: W^dagger A is Hermitian up to that phase
    m = dagger(w) @ staples * torch.polar(torch.ones_like(phase), -phase / n_colors)[..., None, None]
    assert (m - dagger(m)).abs().max() < 1e-10


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", ["u1", "su2", "su3"])
@pytest.mark.parametrize("kind", ["staple", "both"])
def test_model_density_round_trip_and_volume_transfer(name, kind):
    theory = make_theory(name, (2, 4, 2, 4) if kind == "staple" else (4, 4, 4), beta=1.0)
    torch.manual_seed(19)
    # the plaquette couplings' splines get too steep to invert to 1e-9 at the staple layers' scale,
    # and so do SU(3)'s 7 maps a link (log q ~ 1000 at 0.3; inverse to 1e-5 there, 1e-13 at 0.15)
    # and U(1)'s with the chairs' 96 more conditioner inputs (2e-4 at 0.3)
    scale = 0.05 if kind == "both" else 0.15 if name in ("su3", "u1") else 0.3
    model = _randomise(build_flow(architecture(theory, layer_kind=kind, n_layers=4, hidden_channels=[8])).double(),
                       20, scale)
    assert any(isinstance(layer, (U1StapleCoupling, SUNStapleCoupling)) for layer in model.flows)
    if kind == "both":
        assert any(not isinstance(layer, (U1StapleCoupling, SUNStapleCoupling)) for layer in model.flows)
    with torch.no_grad():
        x, log_q = model.sample(3)
        assert (model.log_prob(x) - log_q).abs().max() < 1e-9
        assert log_q.std() > 1e-3  # the model is not its prior
        z, _ = model.inverse_and_log_det(x)
        x_again, _ = model.forward_and_log_det(z)
        assert (x_again - x).abs().max() < 1e-9 or name == "u1"
    big_theory = make_theory(name, (4, 4, 4, 4) if kind == "staple" else (8, 4, 4), beta=1.0)
    big = build_flow(architecture(big_theory, layer_kind=kind, n_layers=4, hidden_channels=[8])).double()
    transfer_weights(big, model.state_dict())
    with torch.no_grad():
        y, log_q_big = big.sample(2)
        assert (big.log_prob(y) - log_q_big).abs().max() < 1e-9


def test_conditioned_staple_model_depends_on_beta():
    theory = make_theory("su2", (4, 4, 4), beta=1.5)
    torch.manual_seed(21)
    model = _randomise(build_flow(architecture(theory, condition=("beta", 1.0, 2.0), layer_kind="staple",
                                               n_layers=2, hidden_channels=[8])).double(), 22, 0.3)
    x = theory.hot_start(2, generator=torch.Generator().manual_seed(23))
    with torch.no_grad():
        low, high = model.log_prob(x, 1.0), model.log_prob(x, 2.0)
        y, log_q = model.sample(2, context=1.2)
        assert (model.log_prob(y, 1.2) - log_q).abs().max() < 1e-9
    assert (low - high).abs().min() > 1e-6


def test_older_gauge_architectures_keep_their_layers():
    from gaugeflow.flows.model import upgrade_architecture
    theory = make_theory("u1", (4, 4, 4, 4), beta=1.0)
    arch = architecture(theory, layer_kind="plaquette")
    old = {k: v for k, v in arch.items() if k not in ("layer_kind", "plaquette_order")}
    old["architecture_version"] = 5
    upgraded = upgrade_architecture(old)
    assert upgraded["layer_kind"] == "plaquette" and upgraded["plaquette_order"] == "planes"
    model = build_flow(upgraded)
    assert [(layer.mu, layer.nu, layer.offset) for layer in model.flows] == gauge_layer_schedule(4, 16, "planes")
    with pytest.raises(ValueError, match="layer kind"):
        architecture(theory, layer_kind="stout")
    assert architecture(theory)["layer_kind"] == "staple"
    assert architecture(make_theory("u1", (8, 8), beta=1.0))["layer_kind"] == "plaquette"
    # chairs (version 8): on by default, off in older staple models, built into the U(1) staple layers
    staple = architecture(theory)
    assert staple["chairs"] is True
    older = {**{k: v for k, v in staple.items() if k != "chairs"}, "architecture_version": 7}
    assert upgrade_architecture(older)["chairs"] is False
    with_chairs = build_flow(staple).flows
    assert all(len(layer.loops) == 1 and layer.loops[0].n_features == 2 * 48 for layer in with_chairs
               if isinstance(layer, U1StapleCoupling))
    assert not any(layer.loops for layer in build_flow(upgrade_architecture(older)).flows
                   if isinstance(layer, U1StapleCoupling))


def test_sun_staple_centres_default_per_group_and_older_models_keep_theirs():
    """``each`` (one sweep, 2 D layers) for SU(3), ``sum`` (two sweeps) for SU(2); a version-6
    SU(3) architecture, from before ``staple_centres`` was recorded, is a ``sum`` model."""
    from gaugeflow.flows.model import ARCHITECTURE_VERSION, upgrade_architecture
    su3, su2 = make_theory("su3", (4, 4, 4, 4), beta=1.0), make_theory("su2", (4, 4, 4, 4), beta=1.0)
    assert (architecture(su3)["staple_centres"], architecture(su3)["n_layers"]) == ("each", 8)
    assert (architecture(su2)["staple_centres"], architecture(su2)["n_layers"]) == ("sum", 16)
    assert architecture(su3, staple_centres="sum")["n_layers"] == 16
    assert architecture(su3, staple_centres="sum", n_layers=4)["n_layers"] == 4
    with pytest.raises(ValueError, match="unknown staple centres 'all'"):
        architecture(su3, staple_centres="all")
    old = {k: v for k, v in architecture(su3, staple_centres="sum").items() if k != "staple_centres"}
    old["architecture_version"] = 6
    upgraded = upgrade_architecture(old)
    assert upgraded["staple_centres"] == "sum" and upgraded["architecture_version"] == ARCHITECTURE_VERSION
    assert {layer.n_maps for layer in build_flow(upgraded).flows} == {1}
    assert {layer.n_maps for layer in build_flow(architecture(su3)).flows} == {7}
    # chairs: on for SU(2) (and U(1)), off for SU(3) unless asked for
    assert architecture(su2)["chairs"] is True and architecture(su3)["chairs"] is False
    assert all([type(loop) for loop in layer.loops] == [SUNChairs]
               for layer in build_flow(architecture(su3, chairs=True, n_layers=2)).flows)


def test_registered_sun_kernel_reaches_both_layer_kinds():
    from gaugeflow.flows.model import register_kernel
    from gaugeflow.lattice.fields import SUNField

    class HalfBins(SpectralTransform):
        """The spectral map with a marker, to see that the registry's class is used."""

    register_kernel(SUNField, "marked-spline", HalfBins)
    theory = make_theory("su2", (4, 4, 4), beta=1.0)
    for kind in ("plaquette", "staple"):
        model = build_flow(architecture(theory, kernel="marked-spline", layer_kind=kind, n_layers=2))
        assert all(isinstance(layer.transform, HalfBins) for layer in model.flows)


def test_u1_theory_is_recognised():
    assert isinstance(make_theory("u1", (4, 4), beta=1.0), U1)


# ----------------------------------------------------------------------------- exact in use


def _trained_staple_model(theory, tmp_path, steps, seed=0):
    from gaugeflow.flows import TrainConfig, train_flow
    torch.manual_seed(seed)
    model = build_flow(architecture(theory, layer_kind="staple", hidden_channels=[8]))
    train_flow(model, TrainConfig(steps=steps, batch_size=32, log_every=steps, checkpoint_every=steps, seed=seed),
               tmp_path / f"{theory.name}.pt", progress=False)
    return model


def _pull(result, value):
    return (result["mean"] - value) / result["error"]


@pytest.mark.parametrize("sampler,kwargs", [("flow", {}), ("composite", {"hmc_per_step": 1})])
def test_staple_flow_samplers_give_the_4d_strong_coupling_plaquette(tmp_path, sampler, kwargs):
    """SU(3) 2^4 at beta = 1: the plaquette is the single-plaquette value u = 0.0572 up to
    O(u^5) ~ 6e-7 (strong-coupling expansion; the smallest closed surfaces have 6 plaquettes),
    far below the statistical error.  A briefly trained staple model, run as an independence
    Metropolis chain and as a composite chain, must reproduce it."""
    from gaugeflow.hmc import HMCParameters, analyze_ensemble, generate_ensemble
    from gaugeflow.lattice import exact
    theory = make_theory("su3", (2, 2, 2, 2), beta=1.0)
    model = _trained_staple_model(theory, tmp_path, steps=15)
    path = tmp_path / f"{sampler}.h5"
    generate_ensemble(theory, path, sampler=sampler, model=model, n_configs=16 * 60, n_chains=16, n_therm=10, seed=3,
                      progress=False, params=HMCParameters(1.0, 4), **kwargs)
    results = analyze_ensemble(path)
    u = exact.su3_plaquette_infinite_volume(1.0)
    pull = _pull(results["plaquette"], u)
    print(f"su3 2^4 beta=1 {sampler}: plaquette {results['plaquette']['mean']:.5f} +- {results['plaquette']['error']:.5f}"
          f" vs u = {u:.5f} (pull {pull:+.2f}), acceptance {results['acceptance']['mean']:.3f}")
    assert abs(pull) < 3
    assert results["acceptance"]["mean"] > 0.1  # the flow proposals are really accepted


@pytest.mark.parametrize("name", ["su2", "su3"])
def test_complex64_links_stay_in_the_group_through_many_layers(name):
    """Training runs in complex64: P = U W and the update are done in complex128 and the moved
    links are put back on SU(N), so rounding does not compound over layers (SU(2) links drifted
    2.5e-3 off the group through 16 untrained layers before)."""
    theory = make_theory(name, (4, 4, 4, 4), beta=1.0)
    torch.manual_seed(24)
    model = _randomise(build_flow(architecture(theory, layer_kind="staple", hidden_channels=[8])), 25, 0.2)
    with torch.no_grad():
        x, log_q = model.sample(16)
    n = theory.n_colors
    assert x.dtype == torch.complex64
    assert (x.mH @ x - torch.eye(n, dtype=x.dtype)).abs().max() < 1e-5
    assert (torch.linalg.det(x) - 1).abs().max() < 1e-5
    assert torch.isfinite(log_q).all()


@pytest.mark.parametrize("name", ["su2", "su3"])
def test_a_sharp_float32_model_stays_in_the_group(name):
    """Parameters far from the identity map (all perturbed by 0.3: sharp maps that push eigenvalues
    together).  The closed-form spectral map assumes an SU(N) input, and the deviation of complex64
    links from the group, amplified by each map and compounded over the seven maps of a layer,
    once took SU(3) links 0.83 off the group in one sweep on 2^4 (and to NaN on 4^4)."""
    theory = make_theory(name, (2, 2, 2, 2), beta=1.0)
    torch.manual_seed(3)
    model = _randomise(build_flow(architecture(theory, layer_kind="staple")), 4, 0.3)
    with torch.no_grad():
        x, log_q = model.sample(16)
    n = theory.n_colors
    assert x.dtype == torch.complex64
    assert (x.mH @ x - torch.eye(n, dtype=x.dtype)).abs().max() < 1e-5
    assert torch.isfinite(log_q).all()


@pytest.mark.parametrize("name", ["su2", "su3"])
def test_a_float32_model_computes_the_float64_map_to_its_rounding(name):
    """A float32 model (training) computes the map and density of the float64 model (sampling,
    evaluation) to float32 accuracy: complex64 links between layers, complex128 within them (an
    update in complex64 trained worse: benchmarks/README.md)."""
    theory = make_theory(name, (2, 2, 2, 2), beta=1.0)
    torch.manual_seed(5)
    model = _randomise(build_flow(architecture(theory, layer_kind="staple", hidden_channels=[8])), 6, 0.2).double()
    with torch.no_grad():
        x, log_q = model.sample(8)
        single = copy.deepcopy(model).float()
        z_single, log_det_single = single.inverse_and_log_det(x.to(torch.complex64))
        z, log_det = model.inverse_and_log_det(x)
    assert z_single.dtype == torch.complex64
    error = (z_single - z).abs()
    # rounding, 6e-8, grows through 16-56 maps, most where eigenvalues nearly meet (the
    # interpolation divides by their differences squared)
    assert error.mean() < 1e-5 and error.max() < 1e-3
    assert (log_det_single - log_det).abs().max() < 1e-3 * (1 + log_det.abs().max())
    assert (log_det - log_q + model.prior_log_prob(z)).abs().max() < 1e-9  # the float64 round trip


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("name", ["su2", "su3"])
def test_a_cold_configuration_has_a_finite_density(name, dtype):
    """Unit links (a cold start) make every staple sum a multiple of a group element, ``A^dagger A``
    a multiple of 1: its closed-form eigenvalues once divided 0 by 0 (SU(3)), and the model's
    log-density of a cold configuration was NaN."""
    theory = make_theory(name, (2, 2, 2, 2), beta=1.0)
    torch.manual_seed(7)
    model = _randomise(build_flow(architecture(theory, layer_kind="staple", hidden_channels=[8])), 8, 0.2)
    model = model.double() if dtype == torch.complex128 else model.float()
    n = theory.n_colors
    cold = torch.eye(n, dtype=dtype).expand(2, 4, 2, 2, 2, 2, n, n).clone()
    with torch.no_grad():
        log_q = model.log_prob(cold)
        x, log_det = model.forward_and_log_det(cold)
    assert torch.isfinite(log_q).all() and torch.isfinite(log_det).all() and torch.isfinite(x).all()
    assert torch.allclose(log_q[0], log_q[1], rtol=1e-5)
