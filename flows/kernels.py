"""Element-wise bijections of the circle ("plaquette kernels") for gauge-equivariant couplings.

A gauge-equivariant coupling layer (Kanwar et al., arXiv:2003.06413) transforms each active
plaquette angle ``theta`` by a diffeomorphism of the circle ``h`` whose parameters come from a
conditioner looking at frozen plaquettes.  This module provides those maps.  Each kernel maps
angles ``theta`` of any shape ``[...]`` (project convention: angles in ``(-pi, pi]``), with
per-element parameters ``params`` of shape ``[..., n_params]`` (the conditioner's output
channels for that element, last axis; leading axes broadcast against ``theta``), to

* ``forward(theta, params) -> (h(theta), log h'(theta))`` and
* ``inverse(theta, params) -> (h^{-1}(theta), log (h^{-1})'(theta))``,

element-wise, with the new angles in ``(-pi, pi]``.  Every kernel is orientation preserving
(``h' > 0``) and ``identity_params()`` makes it exactly the identity map; the conditioners
(:mod:`gaugeflow.flows.conditioners`) zero their last layer and use these as the output bias, so an
untrained flow is exactly its prior.

Kernels:

* :class:`NCPKernel` -- "non-compact projection": a convex mixture of the tan transforms
  ``g_s(theta) = 2 atan(e^s tan(theta / 2))`` followed by a rotation
  (Kanwar et al., arXiv:2003.06413; Rezende et al., "Normalizing flows on tori and spheres",
  arXiv:2002.02428).  No closed-form inverse: bisection plus one differentiable Newton step.
* :class:`CircularSplineKernel` -- circular rational-quadratic spline followed by a rotation
  (Durkan et al., "Neural spline flows", arXiv:1906.04032; circular boundary conditions as in
  Rezende et al., arXiv:2002.02428), in normflows' parametrisation, evaluated by a thin
  re-implementation (:func:`circular_rq_spline`) of normflows' spline code that avoids its
  inverse's ``AssertionError`` on rounded discriminants.  Both directions analytic.

The same spline evaluation, on ``[0, 1]`` with both ends fixed, is :func:`rq_spline_on_interval`:
the SU(N) spectral maps (:mod:`gaugeflow.flows.sun_spectral`) apply it on their canonical cell.

The kernels are small stateless objects (no ``nn.Module``, no trainable state); all tensors
they create follow the dtype and device of their inputs.  float32 and float64 are supported.
For both kernels ``identity_params()`` is all zeros, so it stays exact when a float32
conditioner is cast to float64.

Accuracy of ``inverse(forward(theta))``: the rounding of ``y = h(theta)`` alone
(``~ulp(pi)``) moves ``h^{-1}(y)`` by ``ulp(pi) / h'(theta)``, so where a kernel is very flat
(e.g. ``h' ~ e^{-15}``, reached with conditioner outputs of size ~10-30) no algorithm
round-trips better than ~1e-9 in float64; with parameters of order 1 the kernels round-trip
to ~1e-12 in float64.
"""

from __future__ import annotations

import abc
import math

import torch
from normflows.utils.splines import DEFAULT_MIN_BIN_HEIGHT, DEFAULT_MIN_BIN_WIDTH, DEFAULT_MIN_DERIVATIVE
from torch.nn import functional as F

from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.groups import wrap_angle

from .transforms import ElementwiseTransform, prepare_derivative_shifts, spline_derivative_shift

__all__ = ["CircleKernel", "NCPKernel", "CircularSplineKernel", "circular_rq_spline", "rq_spline_on_circle",
           "rq_spline_on_interval", "wrap_with_unit_derivative"]

_PI = math.pi
_TWO_PI = 2.0 * math.pi


class _WrapWithUnitDerivative(torch.autograd.Function):
    """:func:`~gaugeflow.lattice.groups.wrap_angle` whose backward passes the gradient through
    unchanged -- its derivative, 1 wherever it is differentiable -- in no operator calls, where
    autograd through ``wrap_angle``'s remainder and selections costs about 70 per call."""

    @staticmethod
    def forward(ctx, angles):
        return wrap_angle(angles)

    @staticmethod
    def backward(ctx, grad):
        return grad


def wrap_with_unit_derivative(angles: torch.Tensor) -> torch.Tensor:
    """``wrap_angle(angles)``, the same values, with a backward of no operator calls."""
    return _WrapWithUnitDerivative.apply(angles)


def _broadcast(theta: torch.Tensor, params: torch.Tensor, n_params: int):
    """Common dtype and broadcast shapes: ``theta [...]``, ``params [..., n_params]``."""
    if params.shape[-1] != n_params:
        raise InputError(f"expected {n_params} parameters on the last axis, got shape {tuple(params.shape)}")
    dtype = torch.promote_types(theta.dtype, params.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    theta = theta.to(dtype)
    params = params.to(dtype=dtype)
    if theta.shape == params.shape[:-1]:  # as a coupling layer calls: no expand calls needed
        return theta, params
    shape = torch.broadcast_shapes(theta.shape, params.shape[:-1])
    return theta.expand(shape), params.expand(*shape, n_params)


class CircleKernel(ElementwiseTransform):
    """Base class of element-wise, orientation-preserving diffeomorphisms of the circle.

    An :class:`~gaugeflow.flows.transforms.ElementwiseTransform` whose inputs and outputs are
    angles in ``(-pi, pi]``: ``theta`` has any shape ``[...]``, ``params`` has shape
    ``[..., n_params]`` broadcastable against ``theta``; ``forward`` returns
    ``(h(theta), log h'(theta))`` and ``inverse`` ``(h^{-1}(theta), -log h'(h^{-1}(theta)))``.

    Subclasses implement :meth:`unwrapped`, the map up to a multiple of ``2 pi`` per element
    (any real ``theta``); ``forward`` and ``inverse`` wrap it.  A caller that wraps what it
    computes from the result anyway (the U(1) coupling moves a link by ``h(P) - P``) calls
    ``unwrapped`` and saves the operator calls of a wrap.
    """

    @abc.abstractmethod
    def unwrapped(self, theta: torch.Tensor, params: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h(theta) + 2 pi k, log h'(theta))`` with integer ``k`` per element, or the same
        for ``h^{-1}`` with ``inverse``; ``theta`` any real angles."""

    def forward(self, theta, params):
        angles, log_derivative = self.unwrapped(theta, params, inverse=False)
        return wrap_with_unit_derivative(angles), log_derivative

    def inverse(self, theta, params):
        angles, log_derivative = self.unwrapped(theta, params, inverse=True)
        return wrap_with_unit_derivative(angles), log_derivative


class NCPKernel(CircleKernel):
    r"""Mixture of non-compact-projection (tan) transforms, then a rotation.

    With parameters ``[s_1..s_K, a_1..a_K, t]`` (``K = n_mixture``, ``n_params = 2K + 1``)::

        h(theta) = wrap( sum_i w_i g_{s_i}(theta) + t ),   w = softmax(a),
        g_s(theta) = 2 atan(e^s tan(theta / 2))            (continuous on [-pi, pi])
        g_s'(theta) = 1 / (e^{-s} cos^2(theta/2) + e^{s} sin^2(theta/2))

    Each ``g_s`` fixes ``0`` and ``+-pi`` and is increasing, so the convex mixture is an
    increasing bijection of ``[-pi, pi]``; the rotation ``t`` makes ``h`` a general
    orientation-preserving circle map.  ``g_s`` is evaluated in the overflow-free form
    ``g_s(theta) = theta + 2 atan2(tanh(s/2) sin(theta/2) cos(theta/2),
    sigmoid(-s) cos^2(theta/2) + sigmoid(s) sin^2(theta/2))`` (the difference ``g_s - theta`` is
    ``2pi``-periodic and lies in ``(-pi, pi)``), which is exactly ``theta`` at ``s = 0``:
    ``identity_params()`` is all zeros.  Values and log-derivatives stay finite for slopes
    ``e^{|s|}`` up to ``|s| ~ 40`` in float32 (``e^{-2|s|}`` must not underflow) and ``~ 350``
    in float64; the inverse is then of course ill-conditioned where ``h'`` is tiny.

    **Inverse.**  ``F(x) = sum_i w_i g_{s_i}(x)`` has no closed-form inverse.  We solve
    ``F(x) = z``, ``z = wrap(theta - t)``, by vectorised bisection in float64 (without autograd)
    on the bracket ``[z - pi, z + pi]`` (valid because ``|F(x) - x| < pi``), with a fixed
    ``BISECTION_STEPS = 56`` halvings (bracket ``2 pi * 2^-56 < 1e-16``), and then take ONE
    Newton step written with autograd attached::

        x0 = bisection(z).detach()
        x  = x0 - (F(x0) - z) / F'(x0)

    At the root the step changes the value by at most rounding, but its gradients are those of
    the implicit function theorem: ``dx/dz = 1/F'(x)``, ``dx/dp = -(dF/dp)/F'(x)``.  So the
    inverse is differentiable w.r.t. ``theta`` and the parameters -- as needed for path-gradient
    (and reverse-KL through the inverse) training -- without back-propagating through the
    bisection loop.  The log-derivative ``-log F'(x)`` is evaluated at the attached ``x``.
    """

    BISECTION_STEPS = 56
    options = ("n_mixture",)

    def __init__(self, n_mixture: int = 6):
        if n_mixture < 1:
            raise InputError(f"n_mixture must be positive, got {n_mixture}")
        self.n_mixture = int(n_mixture)
        self.n_params = 2 * self.n_mixture + 1

    def _split(self, params: torch.Tensor):
        k = self.n_mixture
        return params[..., :k], torch.log_softmax(params[..., k : 2 * k], dim=-1), params[..., 2 * k]

    @staticmethod
    def _lift(x: torch.Tensor, s: torch.Tensor, log_w: torch.Tensor, with_logdet: bool = True):
        """Unwrapped mixture ``F(x)`` and ``log F'(x)``; ``x [...]``, ``s, log_w [..., K]``."""
        half = 0.5 * x[..., None]
        sin_h, cos_h = torch.sin(half), torch.cos(half)
        sin2, cos2 = sin_h * sin_h, cos_h * cos_h
        numerator = torch.tanh(0.5 * s) * sin_h * cos_h
        delta = 2.0 * torch.atan2(numerator, torch.sigmoid(-s) * cos2 + torch.sigmoid(s) * sin2)
        lift = x + (log_w.exp() * delta).sum(-1)
        if not with_logdet:
            return lift, None
        # log g_s' = -log(e^{-s} cos^2 + e^{s} sin^2), shifted by |s| against overflow (the shift
        # cancels identically, so detaching it leaves value and gradient exact)
        m = s.detach().abs()
        log_g = -(m + torch.log(torch.exp(-s - m) * cos2 + torch.exp(s - m) * sin2))
        return lift, torch.logsumexp(log_w + log_g, dim=-1)

    def unwrapped(self, theta, params, inverse):
        theta, params = _broadcast(theta, params, self.n_params)
        s, log_w, t = self._split(params)
        if not inverse:  # F(theta) - theta is 2 pi periodic: F lifts the map for any real theta
            lift, logdet = self._lift(theta, s, log_w)
            return lift + t, logdet
        z = wrap_with_unit_derivative(theta - t)
        work = theta.dtype if theta.device.type == "mps" else torch.float64  # MPS has no float64
        with torch.no_grad():
            z_d, s_d, log_w_d = z.detach().to(work), s.detach().to(work), log_w.detach().to(work)
            lo = z_d - _PI  # F(lo) < z < F(lo + 2 pi) since |F(x) - x| < pi
            step = _TWO_PI
            for _ in range(self.BISECTION_STEPS):
                step *= 0.5
                mid = lo + step
                below = self._lift(mid, s_d, log_w_d, with_logdet=False)[0] < z_d
                lo = torch.where(below, mid, lo)
            x0 = (lo + 0.5 * step).to(theta.dtype)
        # one Newton step with autograd attached: implicit-function gradients (see docstring)
        f0, log_d0 = self._lift(x0, s, log_w)
        x = x0 - (f0 - z) * torch.exp(-log_d0)
        logdet = self._lift(x, s, log_w)[1]
        return x, -logdet


def circular_rq_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Circular rational-quadratic spline of ``[-pi, pi]`` onto itself, element-wise.

    Same parametrisation and formulas as ``normflows.utils.splines.
    unconstrained_rational_quadratic_spline(inputs, w, h, d, inverse, tails="circular",
    tail_bound=pi)`` -- ``inputs [...]``; ``w, h, d [..., n_bins]``, the derivative at ``+pi``
    being the one at ``-pi`` -- and agrees with it to rounding where normflows works, but:

    * the inverse's quadratic is solved from the *nearer* knot of the bin (reflecting the bin
      when nearer the upper knot).  Measured from the lower knot, as in normflows, the
      discriminant ``b^2 - 4ac`` cancels catastrophically near the upper knot when the slope
      there is small; in float32 it rounds negative and normflows'
      ``assert (discriminant >= 0).all()`` raises ``AssertionError`` -- reproducibly at the
      seam ``y = +pi`` already for parameters of scale ~1.5 (the same code as nflows, cf.
      bayesiains/nflows#87, #71).  Here the inverse at ``+pi`` is exactly ``pi``, the
      discriminant is clamped at 0 and there is no assert (which was also a host-device
      synchronisation per call on GPU);
    * no boolean-mask indexing of the in-range points (another GPU sync) and no in-place
      ``+ 1e-6`` on the last knot for ``searchsorted``: the bin is the number of interior knots
      ``<= x``, so ``x = +pi`` (also float32's pi, which exceeds ``math.pi``) lies in the last
      bin and ``x = -pi`` in the first;
    * the position ``xi`` inside the bin is clamped to ``[0, 1]`` (gradient passes at the ends):
      in float32 with steep parameters a rounded inverse root slightly outside the bin gave a
      NaN log-derivative;
    * inputs are assumed to lie in ``[-pi, pi]`` (the kernels wrap them first); normflows
      instead gives points outside the identity map and log-derivative 0;
    * few operator calls (a training step is launch bound on a GPU): widths and heights are
      normalised together, and the six numbers of an element's bin (its two knots in ``x``
      and ``y``, the knot derivatives at both ends) come from one ``gather``.

    Returns ``(outputs, log|d outputs / d inputs|)``.
    """
    unnormalized = torch.stack([unnormalized_widths, unnormalized_heights, unnormalized_derivatives], dim=-2)
    return rq_spline_on_circle(inputs, unnormalized, inverse, (min_bin_width, min_bin_height, min_derivative))


def _knots(unnormalized_sizes: torch.Tensor, min_sizes: tuple[float, float],
           bounds: tuple[float, float] = (-_PI, _PI)) -> torch.Tensor:
    """``[..., 2, n_bins + 1]`` knots in ``x`` and ``y`` from ``[..., 2, n_bins]`` unnormalised
    bin widths and heights on the interval ``bounds = (lower, upper)``: ``lower``, ``lower +
    (upper - lower) cumsum(min + (1 - n min) softmax)``, ``upper``, the ends exact."""
    n_bins = unnormalized_sizes.shape[-1]
    # softmax over a leading axis: the CPU kernel over a short last axis is ~10x slower
    sizes = F.softmax(unnormalized_sizes.movedim(-1, 0), dim=0).movedim(0, -1)
    if min_sizes[0] == min_sizes[1]:  # the usual case: one scalar affine map for both rows
        sizes = min_sizes[0] + (1 - min_sizes[0] * n_bins) * sizes
    else:
        sizes = torch.stack([m + (1 - m * n_bins) * row for m, row in zip(min_sizes, sizes.unbind(-2))], dim=-2)
    lower, upper = bounds
    inner = F.pad(torch.cumsum(sizes, dim=-1)[..., :-1], (1, 0))  # the first exactly 0
    if (lower, upper) != (0.0, 1.0):
        inner = (upper - lower) * inner + lower
    return F.pad(inner, (0, 1), value=upper)


def _log_slope(t, delta, curvature, d_start, d_end, denominator):
    """``log`` of the spline's slope at relative position ``t`` in a bin of mean slope ``delta``,
    with knot derivatives ``d_start`` at ``t = 0`` and ``d_end`` at ``t = 1`` (Durkan et al. eq. 5)."""
    # products and sums rather than square() and scalar factors: fewer operator calls with autograd
    one_minus_t = 1 - t
    t_one_minus_t = t * one_minus_t
    slope_mix = d_end * (t * t) + (delta + delta) * t_one_minus_t + d_start * (one_minus_t * one_minus_t)
    log_denominator = torch.log(denominator)
    return torch.log(delta * delta * slope_mix) - (log_denominator + log_denominator)


def _check_minima(num_bins: int, minima) -> None:
    if minima[0] * num_bins > 1.0 or minima[1] * num_bins > 1.0:
        raise InputError("minimal bin width/height too large for the number of bins")


def rq_spline_on_circle(
    inputs: torch.Tensor, unnormalized: torch.Tensor, inverse: bool, minima: tuple[float, float, float],
    derivative_shift: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`circular_rq_spline` with its parameters in one tensor ``[..., 3, n_bins]`` (rows:
    unnormalised widths, heights, derivatives; the derivatives shifted by ``derivative_shift``),
    ``minima = (min_bin_width, min_bin_height, min_derivative)``."""
    _check_minima(unnormalized.shape[-1], minima)
    knots = _knots(unnormalized[..., :2, :], minima[:2])  # [..., 2, n + 1]
    derivatives = minima[2] + F.softplus(unnormalized[..., 2:, :] + derivative_shift)  # [..., 1, n]
    derivatives = torch.cat([derivatives, derivatives[..., :1]], dim=-1)  # circular: d(+pi) = d(-pi)
    return _rq_spline(inputs, torch.cat([knots, derivatives], dim=-2), inverse)


def rq_spline_on_interval(
    inputs: torch.Tensor, unnormalized: torch.Tensor, inverse: bool, minima: tuple[float, float, float],
    derivative_shift: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotone rational-quadratic spline of ``[0, 1]`` onto itself, element-wise (Durkan et al.,
    arXiv:1906.04032), fixing both ends.

    ``inputs [...]`` in ``[0, 1]``; ``unnormalized [..., 3 n + 1]``: ``n`` unnormalised bin widths,
    ``n`` heights and ``n + 1`` knot derivatives (shifted by ``derivative_shift``), the
    parametrisation of normflows' ``rational_quadratic_spline(..., left=0, right=1, bottom=0,
    top=1)``, with which it agrees to rounding (tested).  It is that function's formulas in the
    evaluation of :func:`circular_rq_spline` -- the inverse's root from the nearer knot, no
    domain check (a host synchronisation), the bin's numbers from one ``gather``, the softmax
    over a leading axis -- which cut the spline's share of an SU(3) spectral map by a third
    (16.6 -> 11.3 ms for the inverse and backward at 8,192 matrices).  Returns ``(outputs,
    log|d outputs / d inputs|)``.
    """
    n = (unnormalized.shape[-1] - 1) // 3
    _check_minima(n, minima)
    knots = _knots(unnormalized[..., : 2 * n].unflatten(-1, (2, n)), minima[:2], bounds=(0.0, 1.0))
    derivatives = minima[2] + F.softplus(unnormalized[..., None, 2 * n :] + derivative_shift)  # [..., 1, n + 1]
    return _rq_spline(inputs, torch.cat([knots, derivatives], dim=-2), inverse)


def _rq_spline(inputs: torch.Tensor, table: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The spline through the knots ``table [..., 3, n + 1]`` (rows: knots in ``x``, knots in
    ``y``, knot derivatives) at ``inputs [...]`` within the first and last knot; returns
    ``(outputs, log|d outputs / d inputs|)``."""
    with torch.no_grad():  # the bin: the number of interior knots <= the input
        bin_idx = (inputs[..., None] >= table[..., int(inverse), 1:-1]).sum(dim=-1, keepdim=True)
        ends = torch.cat([bin_idx, bin_idx + 1], dim=-1)[..., None, :].expand(*table.shape[:-1], 2)
    (x_lo, x_hi), (y_lo, y_hi), (d_lo, d_hi) = (row.unbind(-1) for row in table.gather(-1, ends).unbind(-2))
    width, height = x_hi - x_lo, y_hi - y_lo
    delta = height / width
    curvature = d_lo + d_hi - (delta + delta)

    if inverse:
        # Solve the bin's quadratic measured from the nearer knot: from the lower knot the
        # discriminant cancels catastrophically near the upper knot when the slope there is small
        # (at +pi this made normflows' assert fire in float32).  Reflecting the bin
        # (x -> x_hi - x, y -> y_hi - y, d_lo <-> d_hi) gives the same spline form.
        from_lower, from_upper = inputs - y_lo, y_hi - inputs
        upper = from_upper < from_lower
        shifted = torch.where(upper, from_upper, from_lower)
        d_near, d_far = torch.where(upper, d_hi, d_lo), torch.where(upper, d_lo, d_hi)
        a = shifted * curvature + height * (delta - d_near)
        b = height * d_near - shifted * curvature
        c = -delta * shifted
        discriminant = (b * b - 4 * a * c).clamp(min=0)
        # clamp: a rounded root just outside [0, 1] can make the log-derivative NaN in float32
        rho = ((c + c) / (-b - torch.sqrt(discriminant))).clamp(0, 1)
        step = rho * width
        outputs = torch.where(upper, x_hi - step, x_lo + step)
        denominator = delta + curvature * (rho * (1 - rho))
        return outputs, -_log_slope(rho, delta, curvature, d_near, d_far, denominator)

    xi = ((inputs - x_lo) / width).clamp(0, 1)
    xi_one_minus_xi = xi * (1 - xi)
    denominator = delta + curvature * xi_one_minus_xi
    outputs = y_lo + height * (delta * (xi * xi) + d_lo * xi_one_minus_xi) / denominator
    return outputs, _log_slope(xi, delta, curvature, d_lo, d_hi, denominator)


class CircularSplineKernel(CircleKernel):
    r"""Circular rational-quadratic spline on ``[-pi, pi]``, then a rotation.

    Parameters ``[u_w (n_bins), u_h (n_bins), u_d (n_bins), t]`` (``n_params = 3 n_bins + 1``)::

        h(theta) = wrap( RQS(theta; widths=softmax(u_w), heights=softmax(u_h),
                              knot derivatives=min_d + softplus(u_d + u_0)) + t ),
        u_0 = log(expm1(1 - min_d))      (so u_d = 0 <=> knot derivative 1)

    where ``RQS`` is the monotone rational-quadratic spline of Durkan et al.
    (arXiv:1906.04032) through ``n_bins + 1`` knots from ``(-pi, -pi)`` to ``(pi, pi)`` (bin
    widths and heights ``2 pi (min_bin + (1 - n_bins min_bin) softmax)``).  There are ``n_bins``
    free knot derivatives: the derivative at ``+pi`` is the one at ``-pi`` (circular boundary
    condition, Rezende et al. arXiv:2002.02428), so ``h`` is a ``C^1`` diffeomorphism of the
    circle.  Both directions are analytic (the inverse solves the bin's quadratic) and
    differentiable in ``theta`` and the parameters.

    Parametrisation and formulas are those of normflows'
    ``unconstrained_rational_quadratic_spline(..., tails="circular", tail_bound=pi)`` (whose
    unnormalised derivatives are ``u_d + u_0``), but the
    evaluation is our thin re-implementation :func:`circular_rq_spline`, because normflows'
    inverse raises ``AssertionError`` on rounded-negative discriminants in float32 (e.g. at
    the seam ``+pi``) and synchronises with the host (see there); the tests check agreement
    with normflows to 1e-12 in float64.

    ``identity_params()`` is all zeros: equal widths and heights make every bin slope exactly 1,
    and ``u_d = 0`` makes every knot derivative exactly 1.  The shift ``u_0`` is what makes the
    identity exact in every dtype: with normflows' raw convention the identity value
    ``log(expm1(1 - min_d))`` must be rounded in the working dtype (the Python float gives a
    float32 derivative ``1 - 6e-8``), and a float32 conditioner bias later cast to float64
    (``module.double()``) is off by ~3e-8, i.e. log-derivatives ~1e-8 per element instead of 0.
    Here ``u_0`` is rounded in the dtype of the computation (``min_d + softplus(u_0) == 1``
    exactly in float32 and float64) and ``0`` is exact in all dtypes, so the map is the identity
    to rounding (~1e-16 in float64, checked to 1e-12).
    """

    options = ("n_bins",)

    def __init__(
        self,
        n_bins: int = 8,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        if n_bins < 1:
            raise InputError(f"n_bins must be positive, got {n_bins}")
        self.n_bins = int(n_bins)
        self.min_bin_width = float(min_bin_width)
        self.min_bin_height = float(min_bin_height)
        self.min_derivative = float(min_derivative)
        self.n_params = 3 * self.n_bins + 1
        prepare_derivative_shifts(self.min_derivative)

    def _spline(self, x: torch.Tensor, params: torch.Tensor, inverse: bool):
        n = self.n_bins
        return rq_spline_on_circle(
            x,
            params[..., : 3 * n].unflatten(-1, (3, n)),
            inverse,
            (self.min_bin_width, self.min_bin_height, self.min_derivative),
            spline_derivative_shift(params.dtype, self.min_derivative),
        )

    def unwrapped(self, theta, params, inverse):
        theta, params = _broadcast(theta, params, self.n_params)
        rotation = params[..., 3 * self.n_bins]
        if inverse:
            return self._spline(wrap_with_unit_derivative(theta - rotation), params, inverse=True)
        y, logdet = self._spline(wrap_with_unit_derivative(theta), params, inverse=False)
        return y + rotation, logdet
