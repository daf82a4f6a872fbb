import math

import pytest
import torch

from gaugeflow.lattice.geometry import parse_lattice_shape, shift
from gaugeflow.lattice.groups import (
    haar_random_sun,
    project_to_sun,
    random_algebra,
    traceless_antihermitian,
    wrap_angle,
)


@pytest.mark.parametrize("text, shape", [("8x8", (8, 8)), ("4x4x4x8", (4, 4, 4, 8)), ("16", (16,)), ([6, 4], (6, 4))])
def test_parse_lattice_shape(text, shape):
    assert parse_lattice_shape(text) == shape


@pytest.mark.parametrize("bad", ["8x", "ax8", "0x8", "2x2x2x2x2", "-4x4", ""])
def test_malformed_lattice_shape_is_named(bad):
    with pytest.raises(ValueError, match="lattice shape"):
        parse_lattice_shape(bad)


def test_shift_convention():
    field = torch.arange(12.0).reshape(1, 3, 4)
    # shift(f, mu, +1)[x] = f[x + mu]
    assert shift(field, 0, 1, 1)[0, 0, 0] == field[0, 1, 0]
    assert shift(field, 1, 1, 1)[0, 0, 3] == field[0, 0, 0]
    assert shift(field, 1, -1, 1)[0, 0, 0] == field[0, 0, 3]


def test_wrap_angle_range():
    angles = torch.tensor([-math.pi, math.pi, 3 * math.pi, -3.5 * math.pi, 0.3], dtype=torch.float64)
    wrapped = wrap_angle(angles)
    assert torch.all(wrapped > -math.pi) and torch.all(wrapped <= math.pi)
    assert torch.allclose(torch.cos(wrapped), torch.cos(angles))
    assert wrapped[0] == math.pi and wrapped[1] == math.pi


@pytest.mark.parametrize("n", [2, 3, 4])
def test_haar_random_sun_is_special_unitary(n, generator):
    u = haar_random_sun((500,), n, generator=generator)
    eye = torch.eye(n, dtype=u.dtype)
    assert torch.allclose(u @ u.mH, eye.expand_as(u), atol=1e-12)
    assert torch.allclose(torch.linalg.det(u), torch.ones(500, dtype=u.dtype), atol=1e-12)


@pytest.mark.parametrize("n", [2, 3])
def test_haar_moments(n, generator):
    """Haar measure: <tr U> = 0 and <|tr U|^2> = 1 for SU(N), N >= 2."""
    u = haar_random_sun((20000,), n, generator=generator)
    trace = torch.diagonal(u, dim1=-2, dim2=-1).sum(-1)
    stderr = 1 / math.sqrt(20000)
    assert abs(trace.mean()) < 4 * stderr
    assert abs((trace.abs() ** 2).mean() - 1) < 6 * stderr


@pytest.mark.parametrize("n", [2, 3])
def test_random_algebra_is_standard_gaussian_on_su_n(n, generator):
    x = random_algebra((20000,), n, generator=generator)
    assert torch.allclose(x, -x.mH, atol=1e-14)
    assert torch.allclose(torch.diagonal(x, dim1=-2, dim2=-1).sum(-1), torch.zeros(20000, dtype=x.dtype), atol=1e-13)
    squared_norm = -torch.einsum("bij,bji->b", x, x).real
    # chi^2 with dim su(N) = N^2 - 1 degrees of freedom
    assert abs(squared_norm.mean().item() - (n * n - 1)) < 0.05 * (n * n - 1)


def test_projection_is_idempotent_and_restores_group(generator):
    u = haar_random_sun((10,), 3, generator=generator)
    noisy = u + 1e-3 * torch.randn(u.shape, dtype=torch.float64, generator=generator)
    projected = project_to_sun(noisy)
    assert torch.allclose(projected @ projected.mH, torch.eye(3, dtype=u.dtype).expand_as(u), atol=1e-12)
    assert torch.allclose(project_to_sun(projected), projected, atol=1e-12)
    assert (projected - u).abs().max() < 1e-2
    a = torch.randn(5, 3, 3, dtype=torch.complex128, generator=generator)
    assert torch.allclose(traceless_antihermitian(traceless_antihermitian(a)), traceless_antihermitian(a))


@pytest.mark.parametrize("n", [2, 3])
def test_closed_form_exponentials_match_matrix_exp_at_every_scale(n):
    from gaugeflow.lattice.groups import expm_algebra, unitarity_drift

    generator = torch.Generator().manual_seed(n)
    for scale in (1e-9, 1e-4, 1e-2, 0.07, 0.3, 1.0, 3.0):  # both sides of the series/closed-form switch
        x = scale * random_algebra((4000,), n, generator=generator)
        exponential = expm_algebra(x)
        assert (exponential - torch.linalg.matrix_exp(x)).abs().max() < 2e-14 * max(1.0, scale)
        assert unitarity_drift(exponential) < 1e-14 * max(1.0, scale)
        assert (torch.linalg.det(exponential) - 1).abs().max() < 1e-14 * max(1.0, scale)
        assert (expm_algebra(-x) @ exponential - torch.eye(n, dtype=x.dtype)).abs().max() < 1e-14 * max(1.0, scale)


@pytest.mark.parametrize("n", [2, 3])
def test_reunitarisation_only_beyond_the_tolerance(n):
    from gaugeflow.lattice.fields import SUNField
    from gaugeflow.lattice.groups import UNITARITY_TOLERANCE, unitarity_drift

    generator = torch.Generator().manual_seed(7)
    links = haar_random_sun((64,), n, generator=generator)
    field = SUNField(n)
    slightly = links + 1e-14 * torch.randn(links.shape, dtype=links.dtype, generator=generator)
    assert torch.equal(field.project(slightly), slightly)  # within tolerance: untouched, bit for bit
    drifted = links + 1e-9 * torch.randn(links.shape, dtype=links.dtype, generator=generator)
    assert unitarity_drift(drifted) > UNITARITY_TOLERANCE
    fixed = field.project(drifted)
    assert unitarity_drift(fixed) < 1e-14 and (torch.linalg.det(fixed) - 1).abs().max() < 1e-14
    assert (fixed - links).abs().max() < 1e-8  # the nearby SU(N) matrix, not another one


def test_broadcast_products_give_the_same_trajectory(monkeypatch):
    """The product form chosen for GPUs, run on the CPU: same HMC trajectory to rounding."""
    from gaugeflow.hmc.hmc import HMCParameters, hmc_trajectory
    from gaugeflow.lattice import groups
    from gaugeflow.lattice.theories import make_theory

    theory = make_theory("su3", "4x4x4x4", beta=5.5)
    start = theory.hot_start(2, generator=torch.Generator().manual_seed(1))
    params = HMCParameters(0.5, 5, "omelyan", 0.0)
    matmul_result = hmc_trajectory(theory, start, params, torch.Generator().manual_seed(2))
    monkeypatch.setattr(groups, "BROADCAST_PRODUCT_DEVICES", {"cpu"})
    a, b = groups.haar_random_sun((5,), 3), groups.haar_random_sun((5,), 3)
    assert (groups.matmul(a, b) - a @ b).abs().max() < 1e-15
    broadcast_result = hmc_trajectory(theory, start, params, torch.Generator().manual_seed(2))
    assert (broadcast_result.field - matmul_result.field).abs().max() < 1e-12
    assert (broadcast_result.delta_h - matmul_result.delta_h).abs().max() < 1e-9
