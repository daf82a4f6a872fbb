"""Tests for flows.kernels: circle diffeomorphisms used by gauge-equivariant couplings."""

import math

import pytest
import torch
from normflows.utils.splines import DEFAULT_MIN_BIN_HEIGHT, DEFAULT_MIN_BIN_WIDTH, DEFAULT_MIN_DERIVATIVE

from gaugeflow.flows.kernels import (CircleKernel, CircularSplineKernel, NCPKernel, circular_rq_spline,
                                     rq_spline_on_interval)
from gaugeflow.lattice.groups import wrap_angle

KERNELS = {
    "ncp": lambda: NCPKernel(n_mixture=6),
    "ncp3": lambda: NCPKernel(n_mixture=3),
    "spline": lambda: CircularSplineKernel(n_bins=8),
    "spline5": lambda: CircularSplineKernel(n_bins=5),
}
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(params=list(KERNELS))
def kernel(request) -> CircleKernel:
    return KERNELS[request.param]()


def pi_of(dtype):
    """pi rounded to ``dtype`` (the upper end of (-pi, pi] in that dtype)."""
    return torch.tensor(math.pi, dtype=dtype)


def random_angles(n, dtype, gen):
    return wrap_angle((2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * math.pi).to(dtype)


def random_params(kernel, shape, dtype, gen, scale=1.0):
    return (scale * torch.randn(*shape, kernel.n_params, generator=gen, dtype=torch.float64)).to(dtype)


def edge_angles(dtype):
    pi = math.pi
    values = [pi, -pi + 1e-15, -pi + 1e-7, -pi + 1e-3, 0.0, 1e-30, -1e-30, pi - 1e-7, pi - 1e-15, 1.0, -2.0]
    return wrap_angle(torch.tensor(values, dtype=torch.float64).to(dtype))


def assert_in_range(angles):
    pi = pi_of(angles.dtype)
    assert torch.isfinite(angles).all()
    assert (angles > -pi).all() and (angles <= pi).all()


def angle_dist(a, b):
    return wrap_angle(a - b).abs()


def test_wrap_angle():
    values = [math.pi, -math.pi, 3 * math.pi, 0.5, -0.5 - 4 * math.pi, 1e-300, math.pi + 1e-17]
    x = torch.tensor(values, dtype=torch.float64)
    w = wrap_angle(x)
    assert_in_range(w)
    assert w[0] == math.pi and w[1] == math.pi and w[5] == 1e-300  # in-range values bit-exact
    assert torch.allclose(w[3:5], torch.tensor([0.5, -0.5], dtype=torch.float64), atol=1e-14)
    assert_in_range(wrap_angle(torch.tensor([math.pi, -math.pi, 7.0], dtype=torch.float32)))


def test_n_params():
    assert NCPKernel(6).n_params == 13
    assert CircularSplineKernel(8).n_params == 25
    for k in KERNELS.values():
        kern = k()
        assert kern.identity_params().shape == (kern.n_params,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_broadcast_and_range(kernel, dtype, generator):
    theta = random_angles(24, dtype, generator).reshape(2, 3, 4)
    params = random_params(kernel, (2, 3, 4), dtype, generator)
    for method in (kernel.forward, kernel.inverse):
        out, logdet = method(theta, params)
        assert out.shape == logdet.shape == theta.shape
        assert out.dtype == logdet.dtype == dtype
        assert_in_range(out)
        assert torch.isfinite(logdet).all()
    # one parameter vector broadcast over all elements, and a 0-d angle
    out, logdet = kernel.forward(theta, params[0, 0, 0])
    assert out.shape == theta.shape
    out0, logdet0 = kernel.forward(theta[0, 0, 0], params[0, 0, 0])
    # a 0-d evaluation may round differently from a vectorised one: in float32 by a few ulp of
    # the knots (~pi) and of the logs of size 1 whose difference is the log-derivative, ~2e-7
    assert out0.shape == ()
    assert torch.allclose(out0, out[0, 0, 0], atol=1e-6) and torch.allclose(logdet0, logdet[0, 0, 0], atol=1e-6)
    with pytest.raises(ValueError):
        kernel.forward(theta, params[..., :-1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip(kernel, dtype, generator):
    theta = torch.cat([random_angles(2000, dtype, generator), edge_angles(dtype)])
    params = random_params(kernel, theta.shape, dtype, generator)
    y, logdet = kernel.forward(theta, params)
    back, logdet_inv = kernel.inverse(y, params)
    assert_in_range(y)
    assert_in_range(back)
    if dtype == torch.float64:
        assert angle_dist(back, theta).max() < 1e-10
        assert (logdet + logdet_inv).abs().max() < 1e-9
    else:  # float32: the error of the inverse is amplified by 1/h', the conditioning of the map
        tol = 1e-5 * (1 + torch.exp(-logdet))
        assert (angle_dist(back, theta) < tol).all()
        assert ((logdet + logdet_inv).abs() < 1e-3 * (1 + torch.exp(-logdet))).all()
    # and inverse followed by forward
    x, logdet_x = kernel.inverse(theta, params)
    again, _ = kernel.forward(x, params)
    tol = 1e-10 if dtype == torch.float64 else 1e-6 * (1 + torch.exp(-logdet_x))  # rounding of x times h'(x)
    assert (angle_dist(again, theta) < tol).all()


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_logdet_matches_autograd(kernel, direction, generator):
    theta = random_angles(500, torch.float64, generator).requires_grad_(True)
    params = random_params(kernel, theta.shape, torch.float64, generator)
    out, logdet = getattr(kernel, direction)(theta, params)
    (grad,) = torch.autograd.grad(out.sum(), theta)  # element-wise map: the gradient is the diagonal
    assert (grad > 0).all()
    assert torch.allclose(torch.log(grad), logdet, rtol=0, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_params(kernel, dtype, generator):
    theta = torch.cat([random_angles(1000, dtype, generator), edge_angles(dtype)])
    params = kernel.identity_params(dtype)
    assert params.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for method in (kernel.forward, kernel.inverse):
        out, logdet = method(theta, params)
        assert angle_dist(out, theta).max() < tol
        assert logdet.abs().max() < tol
    # stacked per element, as produced by a zero-weight conditioner with this bias
    out, logdet = kernel.forward(theta, params.expand(*theta.shape, -1))
    assert angle_dist(out, theta).max() < tol


def test_identity_params_survive_dtype_cast(kernel, generator):
    """A float32 conditioner bias cast to float64 (``module.double()``) is still the identity."""
    theta = torch.cat([random_angles(1000, torch.float64, generator), edge_angles(torch.float64)])
    params = kernel.identity_params(torch.float32).to(torch.float64)
    for method in (kernel.forward, kernel.inverse):
        out, logdet = method(theta, params)
        assert angle_dist(out, theta).max() < 1e-12
        assert logdet.abs().max() < 1e-12


def test_identity_params_give_nonzero_parameter_gradients(kernel):
    """At the identity (untrained flow) the map must still depend on every parameter group."""
    theta = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
    params = kernel.identity_params(torch.float64).expand(13, -1).clone().requires_grad_(True)
    out, logdet = kernel.forward(theta, params)
    (grad,) = torch.autograd.grad((out * torch.cos(3 * theta)).sum() + (logdet * torch.sin(2 * theta)).sum(), params)
    assert grad[:, -1].abs().sum() > 0  # rotation
    if isinstance(kernel, NCPKernel):
        assert grad[:, : kernel.n_mixture].abs().sum() > 1e-3  # log-scales (weights are flat at s = 0)
    else:
        n = kernel.n_bins
        for group in range(3):
            assert grad[:, group * n : (group + 1) * n].abs().sum() > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_monotone_bijection(kernel, dtype, generator):
    """On a sorted grid over (-pi, pi], consecutive outputs advance and close up after exactly 2 pi."""
    n_grid = 2001
    grid = torch.linspace(-math.pi, math.pi, n_grid, dtype=torch.float64)[1:].to(dtype)
    params = random_params(kernel, (4, 1), dtype, generator)  # 4 maps, each on the whole grid
    for method in (kernel.forward, kernel.inverse):
        out, _ = method(grid, params)
        steps = wrap_angle(torch.diff(out, dim=-1, append=out[..., :1]))  # closing step included
        assert (steps > 0).all()
        total = steps.to(torch.float64).sum(-1)
        atol = 1e-9 if dtype == torch.float64 else 1e-4
        assert torch.allclose(total, torch.full_like(total, 2 * math.pi), rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_values(kernel, dtype, generator):
    params = random_params(kernel, (), dtype, generator)
    pi = pi_of(dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    # +pi, angles just above -pi, and -pi itself (= +pi) are (nearly) the same point of the circle
    theta = torch.stack([pi, -pi + 4 * torch.finfo(dtype).eps, torch.nextafter(-pi, pi), -pi])
    y, logdet = kernel.forward(theta, params)
    assert_in_range(y)
    assert torch.isfinite(logdet).all()
    assert angle_dist(y, y[0]).max() < 100 * tol
    assert (logdet - logdet[0]).abs().max() < 1e4 * tol  # continuous derivative across the seam
    x, logdet_inv = kernel.inverse(y, params)
    assert_in_range(x)
    assert torch.isfinite(logdet_inv).all()
    assert angle_dist(x, theta).max() < 1e3 * tol
    # a rotation by -pi sends 0 to -pi, which must be reported as +pi; by +-pi sends pi to 0
    ident = kernel.identity_params(dtype)
    pi_ = math.pi
    for t, src, dst in [(-pi_, 0.0, pi_), (pi_, 0.0, pi_), (pi_, pi_, 0.0), (-pi_, pi_, 0.0)]:
        p = ident.clone()
        p[-1] = t
        src, dst = torch.tensor(src, dtype=dtype), torch.tensor(dst, dtype=dtype)
        out, _ = kernel.forward(src, p)
        assert_in_range(out)
        assert angle_dist(out, dst) < tol
        back, _ = kernel.inverse(out, p)
        assert_in_range(back)
        assert angle_dist(back, src) < tol


def test_input_outside_interval_is_wrapped(kernel, generator):
    theta = random_angles(50, torch.float64, generator)
    params = random_params(kernel, theta.shape, torch.float64, generator)
    y, logdet = kernel.forward(theta, params)
    y2, logdet2 = kernel.forward(theta + 4 * math.pi, params)
    assert angle_dist(y, y2).max() < 1e-12 and torch.allclose(logdet, logdet2, atol=1e-10)


def _away_from_seam(kernel, direction, theta, params, margin=0.2):
    out, _ = getattr(kernel, direction)(theta, params)
    keep = out.abs() < math.pi - margin
    return theta[keep], params[keep]


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("at_identity", [False, True])
def test_gradcheck(kernel, direction, at_identity, generator):
    """Gradients w.r.t. angles and parameters match finite differences (both outputs).

    For the NCP inverse this checks the one-Newton-step (implicit function) trick."""
    theta = random_angles(12, torch.float64, generator)
    if at_identity:
        params = kernel.identity_params(torch.float64).expand(*theta.shape, -1).clone()
    else:
        params = random_params(kernel, theta.shape, torch.float64, generator)
    theta, params = _away_from_seam(kernel, direction, theta, params)
    assert len(theta) >= 4
    theta.requires_grad_(True)
    params.requires_grad_(True)
    fn = getattr(kernel, direction)
    assert torch.autograd.gradcheck(fn, (theta, params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_ncp_inverse_parameter_gradient_is_implicit_function(generator):
    """dx/dp of the NCP inverse = -(dF/dp)/F'(x): compare with central differences directly."""
    kernel = NCPKernel(4)
    theta = random_angles(30, torch.float64, generator)
    params = random_params(kernel, theta.shape, torch.float64, generator)
    theta, params = _away_from_seam(kernel, "inverse", theta, params)
    params.requires_grad_(True)
    x, _ = kernel.inverse(theta, params)
    (grad,) = torch.autograd.grad(x.sum(), params)
    h = 1e-6
    for j in range(kernel.n_params):
        dp = torch.zeros_like(params)
        dp[:, j] = h
        with torch.no_grad():
            fd = (kernel.inverse(theta, params + dp)[0] - kernel.inverse(theta, params - dp)[0]) / (2 * h)
        assert torch.allclose(grad[:, j], fd, rtol=0, atol=1e-7), j
    # and it is not zero: the inverse really depends on the parameters through the Newton step
    assert grad.abs().max() > 1e-2


def test_spline_matches_normflows(generator):
    """Our circular spline reproduces normflows' unconstrained_rational_quadratic_spline."""
    from normflows.utils.splines import unconstrained_rational_quadratic_spline

    n = 8
    theta = random_angles(1000, torch.float64, generator)
    w, h, d = torch.randn(3, 1000, n, generator=generator, dtype=torch.float64)
    for inverse in (False, True):
        ours = circular_rq_spline(theta, w, h, d, inverse=inverse)
        ref = unconstrained_rational_quadratic_spline(
            theta.clone(), w, h, d, inverse=inverse, tails="circular", tail_bound=math.pi
        )
        assert torch.allclose(ours[0], ref[0], rtol=0, atol=1e-12)
        assert torch.allclose(ours[1], ref[1], rtol=0, atol=1e-10)


def test_interval_spline_matches_normflows(generator):
    """The spline of [0, 1] the SU(N) spectral maps use reproduces normflows'
    rational_quadratic_spline (the function it replaces), both directions, the ends included."""
    from normflows.utils.splines import rational_quadratic_spline

    n = 8
    u = torch.rand(2000, generator=generator, dtype=torch.float64)
    u[:2] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    params = torch.randn(2000, 3 * n + 1, generator=generator, dtype=torch.float64)
    minima = (DEFAULT_MIN_BIN_WIDTH, DEFAULT_MIN_BIN_HEIGHT, DEFAULT_MIN_DERIVATIVE)
    for inverse in (False, True):
        ours = rq_spline_on_interval(u, params, inverse, minima)
        ref = rational_quadratic_spline(u.clone(), params[:, :n], params[:, n : 2 * n], params[:, 2 * n :],
                                        inverse=inverse, left=0.0, right=1.0, bottom=0.0, top=1.0)
        assert torch.allclose(ours[0], ref[0], rtol=0, atol=1e-12)
        assert torch.allclose(ours[1], ref[1], rtol=0, atol=1e-10)
        assert (ours[0][:2] == u[:2]).all()  # both ends fixed exactly


def test_spline_steep_float32_inverse_does_not_fail(generator):
    """Steep splines in float32: normflows' discriminant assert would fire here; ours is finite."""
    kernel = CircularSplineKernel(8)
    theta = random_angles(20000, torch.float32, generator)
    params = random_params(kernel, theta.shape, torch.float32, generator, scale=4.0)
    y, logdet = kernel.forward(theta, params)
    x, logdet_inv = kernel.inverse(y, params)
    assert_in_range(x)
    assert torch.isfinite(logdet).all() and torch.isfinite(logdet_inv).all()
    # at the seam (+pi is a knot fixed by the spline) the inverse is exact even in float32;
    # this is where normflows' inverse raised AssertionError (discriminant rounded negative)
    n = kernel.n_bins
    w, h, d = params[:, :n], params[:, n : 2 * n], params[:, 2 * n : 3 * n]
    x_pi, logdet_pi = circular_rq_spline(torch.full_like(theta, math.pi), w, h, d, inverse=True)
    assert (x_pi == pi_of(torch.float32)).all()
    assert torch.isfinite(logdet_pi).all()


def test_ncp_large_log_scales_are_finite():
    """Slopes up to e^{+-40} (documented float32 range) stay finite, also at 0 and pi."""
    kernel = NCPKernel(2)
    theta = torch.tensor([-3.0, -1e-3, 0.0, 1e-3, 3.0, math.pi], dtype=torch.float32)
    for s in (-40.0, 40.0):
        params = torch.tensor([s, -s, 0.3, 0.0, 0.1], dtype=torch.float32)
        y, logdet = kernel.forward(theta, params)
        x, logdet_inv = kernel.inverse(y, params)
        assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
        assert torch.isfinite(x).all() and torch.isfinite(logdet_inv).all()


def test_meta_device_creates_no_cpu_tensors(kernel):
    """Everything follows the input's device: runs on 'meta' tensors without mixing devices."""
    theta = torch.empty(3, 5, device="meta", dtype=torch.float64)
    params = torch.empty(3, 5, kernel.n_params, device="meta", dtype=torch.float64)
    for method in (kernel.forward, kernel.inverse):
        out, logdet = method(theta, params)
        assert out.device.type == logdet.device.type == "meta"
        assert out.shape == logdet.shape == (3, 5)
    assert kernel.identity_params(torch.float64, device="meta").device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda(kernel, dtype, generator):
    theta = random_angles(1000, dtype, generator)
    params = random_params(kernel, theta.shape, dtype, generator)
    y_cpu, ld_cpu = kernel.forward(theta, params)
    y, ld = kernel.forward(theta.cuda(), params.cuda())
    x, ld_inv = kernel.inverse(y, params.cuda())
    assert y.is_cuda and x.is_cuda and ld_inv.is_cuda
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert angle_dist(y.cpu(), y_cpu).max() < tol and (ld.cpu() - ld_cpu).abs().max() < tol
    assert (angle_dist(x.cpu(), theta) < tol * (1 + torch.exp(-ld_cpu))).all()
    ident, _ = kernel.forward(theta.cuda(), kernel.identity_params(dtype, device="cuda"))
    assert angle_dist(ident.cpu(), theta).max() < (1e-12 if dtype == torch.float64 else 1e-6)
