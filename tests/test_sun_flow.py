"""Tests for the gauge-equivariant SU(N) spectral coupling layers (flows.sun_coupling)."""

import math

import pytest
import torch

from gaugeflow.flows.sun_coupling import SUNSpectralCoupling, make_sun_flow_layers
from gaugeflow.flows.sun_spectral import (_spectral_map_by_eigenvectors, canonical_decomposition, cell_transform,
                                          haar_log_density, separated, spectral_map, unitary_eigenvalues)
from gaugeflow.lattice.groups import dagger, haar_random_sun, traceless_antihermitian
from gaugeflow.lattice.sun import SUN

from su_algebra import su_basis as _su_basis

TOL = 1e-10


def _perturbed_layer(lattice_shape, n_colors, mu, nu, offset, seed, scale=0.2, **kwargs):
    """A float64 layer with every parameter randomised, so that it is far from the identity."""
    torch.manual_seed(seed)
    layer = SUNSpectralCoupling(lattice_shape, n_colors, mu, nu, offset, hidden_channels=(8, 8), **kwargs).double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def _hot(lattice_shape, n_colors, batch, seed):
    theory = SUN(lattice_shape, beta=1.0, n_colors=n_colors)
    return theory, theory.hot_start(batch, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- kernel pieces


@pytest.mark.parametrize("n_colors", [2, 3])
def test_canonical_decomposition_reconstructs_matrix(n_colors):
    p = haar_random_sun((200,), n_colors, generator=torch.Generator().manual_seed(3))
    gaps, vectors = canonical_decomposition(p)
    assert torch.all(gaps >= 0)
    assert torch.allclose(gaps.sum(-1), torch.full_like(gaps[..., 0], 2 * math.pi), atol=1e-12)
    # rebuild the canonical phases from the gaps (sum theta = 0)
    n = n_colors
    weights = torch.arange(n - 1, 0, -1, dtype=gaps.dtype) / n
    first = (gaps[..., :-1] * weights).sum(-1, keepdim=True)
    theta = torch.cat([first, first - torch.cumsum(gaps[..., :-1], -1)], -1)
    rebuilt = (vectors * torch.polar(torch.ones_like(theta), theta)[..., None, :]) @ dagger(vectors)
    assert (rebuilt - p).abs().max() < 1e-12


@pytest.mark.parametrize("n_colors", [2, 3])
def test_closed_form_spectra_give_the_eigenvector_map(n_colors):
    """The closed-form route (eigenvalues from the trace, X by interpolation) is the same map,
    log-density and gradient as the eigenvector route, also near phase 0 and pi and where two
    eigenvalues nearly meet; degenerate spectra (the identity, a cold start) fall back."""
    gen = torch.Generator().manual_seed(8)
    haar = haar_random_sun((400,), n_colors, generator=gen, dtype=torch.complex128)
    generators = haar - dagger(haar)
    near_identity = torch.linalg.matrix_exp(0.02 * generators)
    near_centre = near_identity * torch.polar(torch.tensor(1.0, dtype=torch.float64),
                                              torch.tensor(2 * math.pi / n_colors, dtype=torch.float64))
    identity = torch.eye(n_colors, dtype=torch.complex128).expand(4, n_colors, n_colors)
    p = torch.cat([haar, near_identity, near_centre, identity])
    params = (0.3 * torch.randn(len(p), n_colors - 1, 3 * 4 + 1, generator=gen, dtype=torch.float64)).requires_grad_()
    values = unitary_eigenvalues(p, detached=True)
    assert separated(values)[:400].all() and not separated(values)[-4:].any()
    closed, log_det = spectral_map(p, params)
    reference, log_det_reference = _spectral_map_by_eigenvectors(p, params, False, torch.complex128)
    assert (closed - reference).abs().max() < 1e-10
    assert (log_det - log_det_reference).abs().max() < 1e-9
    assert (closed[-4:] - identity).abs().max() < 1e-12
    weights = torch.randn(len(p), generator=gen, dtype=torch.float64)
    grad, = torch.autograd.grad(((closed @ p).real.sum((-1, -2)) * weights).sum() + log_det.sum(), params)
    grad_reference, = torch.autograd.grad(((reference @ p).real.sum((-1, -2)) * weights).sum()
                                          + log_det_reference.sum(), params)
    assert (grad - grad_reference).abs().max() < 1e-8


@pytest.mark.parametrize("n_colors", [2, 3])
def test_cell_transform_inverse_and_logdet(n_colors):
    gen = torch.Generator().manual_seed(5)
    p = haar_random_sun((100,), n_colors, generator=gen, dtype=torch.complex128)
    gaps, _ = canonical_decomposition(p)
    params = 0.5 * torch.randn(100, n_colors - 1, 3 * 6 + 1, generator=gen, dtype=torch.float64)
    new_gaps, ld = cell_transform(gaps, params)
    back, ld_inv = cell_transform(new_gaps, params, inverse=True)
    assert torch.all(new_gaps >= 0)
    assert (back - gaps).abs().max() < 1e-12
    assert (ld + ld_inv).abs().max() < 1e-10
    # Jacobian d g'_{1..N-1} / d g_{1..N-1} by finite differences
    eps = 1e-6
    for b in range(3):
        cols = []
        for k in range(n_colors - 1):
            step = torch.zeros(n_colors, dtype=torch.float64)
            step[k], step[-1] = eps, -eps
            plus, _ = cell_transform((gaps[b] + step)[None], params[b : b + 1])
            minus, _ = cell_transform((gaps[b] - step)[None], params[b : b + 1])
            cols.append((plus - minus)[0, :-1] / (2 * eps))
        numeric = torch.linalg.slogdet(torch.stack(cols, -1))[1]
        assert abs(numeric - ld[b]) < 1e-6


def test_su2_haar_density_is_sin_squared():
    phi = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    gaps = torch.stack([2 * phi, 2 * math.pi - 2 * phi], -1)
    assert torch.allclose(haar_log_density(gaps), 2 * torch.log(torch.sin(phi)), atol=1e-14)


# ----------------------------------------------------------------------------- layer


@pytest.mark.parametrize("n_colors", [2, 3])
@pytest.mark.parametrize("double", [False, True])
def test_identity_at_initialisation(n_colors, double):
    layer = SUNSpectralCoupling((4, 4), n_colors, 1, 0, 2, hidden_channels=(8,))
    if double:
        layer = layer.double()
    _, links = _hot((4, 4), n_colors, 3, seed=11)
    out, log_det = layer(links)
    assert log_det.shape == (3,) and log_det.dtype == torch.float64
    assert (out - links).abs().max() < 1e-12
    assert log_det.abs().max() < 1e-12
    back, log_det_inv = layer.inverse(links)
    assert (back - links).abs().max() < 1e-12
    assert log_det_inv.abs().max() < 1e-12


@pytest.mark.parametrize("n_colors", [2, 3])
@pytest.mark.parametrize("mu,nu,offset", [(0, 1, 0), (1, 0, 3)])
def test_invertibility_and_unitarity(n_colors, mu, nu, offset):
    layer = _perturbed_layer((4, 4), n_colors, mu, nu, offset, seed=21)
    _, links = _hot((4, 4), n_colors, 4, seed=22)
    out, log_det = layer(links)
    assert log_det.abs().min() > 1e-3  # really not the identity
    changed = (out - links).abs().amax(dim=(-2, -1))  # [B, D, x...]
    expected = torch.zeros_like(changed, dtype=torch.bool)
    expected[:, mu] = layer.active
    assert torch.all(changed[~expected] == 0)
    assert torch.all(changed[expected] > 1e-8)
    back, log_det_inv = layer.inverse(out)
    assert (back - links).abs().max() < TOL
    assert (log_det + log_det_inv).abs().max() < TOL
    eye = torch.eye(n_colors, dtype=out.dtype)
    assert (dagger(out) @ out - eye).abs().max() < 1e-12
    assert (torch.linalg.det(out) - 1).abs().max() < 1e-12


@pytest.mark.parametrize("n_colors", [2, 3])
def test_log_det_matches_autograd_jacobian(n_colors):
    """log_det equals log|det dw'/dw| in exponential coordinates around the active links.

    Haar measure in the chart ``U = exp(w . T) U0`` has density ``1 + O(w^2)``, so at ``w = 0``
    the Jacobian of the chart-to-chart map is the density ratio.  The output chart uses the
    projection onto su(N) of ``U' U0'^dagger``, whose differential at the identity equals that
    of the matrix logarithm.
    """
    shape, mu, nu, offset = (4, 4), 0, 1, 1
    layer = _perturbed_layer(shape, n_colors, mu, nu, offset, seed=31, scale=0.3)
    _, links = _hot(shape, n_colors, 1, seed=32)
    active = layer.active
    basis = _su_basis(n_colors)
    n_active, dim = int(active.sum()), basis.shape[0]
    with torch.no_grad():
        out0, log_det = layer(links)
    base_in, base_out = links[0, mu][active], out0[0, mu][active]  # [n_active, N, N]

    def chart_map(w):
        generators = torch.einsum("ka,aij->kij", w.reshape(n_active, dim).to(basis.dtype), basis)
        u_mu = links[0, mu].clone()
        u_mu[active] = torch.linalg.matrix_exp(generators) @ base_in
        new = torch.stack([u_mu if d == mu else links[0, d] for d in range(2)])[None]
        out, _ = layer(new)
        rel = traceless_antihermitian(out[0, mu][active] @ dagger(base_out))
        return torch.einsum("aij,kij->ka", basis.conj(), rel).real.reshape(-1)

    w0 = torch.zeros(n_active * dim, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(chart_map, w0)
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign != 0
    assert abs(logabs - log_det[0]) < 1e-8
    assert abs(log_det[0]) > 0.1  # a non-trivial check


@pytest.mark.parametrize("n_colors", [2, 3])
def test_gauge_equivariance(n_colors):
    layer = _perturbed_layer((4, 4), n_colors, 1, 0, 1, seed=41)
    theory, links = _hot((4, 4), n_colors, 3, seed=42)
    g = theory.random_gauge_transformation(3, generator=torch.Generator().manual_seed(43))
    out, log_det = layer(links)
    out_g, log_det_g = layer(theory.gauge_transform(links, g))
    assert (out_g - theory.gauge_transform(out, g)).abs().max() < TOL
    assert (log_det_g - log_det).abs().max() < TOL
    back_g, log_det_inv_g = layer.inverse(theory.gauge_transform(out, g))
    assert (back_g - theory.gauge_transform(links, g)).abs().max() < TOL
    assert (log_det_inv_g + log_det).abs().max() < TOL


@pytest.mark.parametrize("n_colors", [2, 3])
@pytest.mark.parametrize("shape,mu,nu,shifts", [((6, 8), 0, 1, (1, 4)), ((8, 6), 1, 0, (4, 5)), ((6, 8), 0, 1, (3, 0))])
def test_translation_equivariance(n_colors, shape, mu, nu, shifts):
    layer = _perturbed_layer(shape, n_colors, mu, nu, 2, seed=51)
    _, links = _hot(shape, n_colors, 2, seed=52)
    roll = lambda u: torch.roll(u, shifts=shifts, dims=(2, 3))  # noqa: E731
    out, log_det = layer(links)
    out_s, log_det_s = layer(roll(links))
    assert (out_s - roll(out)).abs().max() < TOL
    assert (log_det_s - log_det).abs().max() < TOL


def test_make_sun_flow_layers_schedule_and_composition():
    layers = make_sun_flow_layers((4, 4), 2, 8, hidden_channels=(8,), n_bins=4)
    assert len(layers) == 8
    assert [(layer.mu, layer.nu, layer.offset) for layer in layers] == [
        (0, 1, 0), (1, 0, 0), (0, 1, 1), (1, 0, 1), (0, 1, 2), (1, 0, 2), (0, 1, 3), (1, 0, 3)
    ]
    gen = torch.Generator().manual_seed(61)
    with torch.no_grad():
        for layer in layers:
            layer.double()
            for p in layer.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    _, links = _hot((4, 4), 2, 2, seed=62)
    x, total = links, torch.zeros(2, dtype=torch.float64)
    for layer in layers:
        x, ld = layer(x)
        total = total + ld
    assert not torch.allclose(x, links)  # every link moved at least once
    assert torch.all((x - links).abs().amax(dim=(-2, -1)) > 0)
    for layer in reversed(layers):
        x, ld = layer.inverse(x)
        total = total + ld
    assert (x - links).abs().max() < TOL
    assert total.abs().max() < TOL


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        SUNSpectralCoupling((4, 6), 2, 0, 1, 0)  # extent along nu not a multiple of 4
    layer = SUNSpectralCoupling((4, 4), 2, 0, 1, 0)
    with pytest.raises(ValueError):
        layer(torch.zeros(1, 2, 4, 4, 3, 3, dtype=torch.complex128))
