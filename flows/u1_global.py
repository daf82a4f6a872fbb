"""The 2D U(1) constraint layer: the plaquette that closes the torus, mapped, its change spread
over all the others.

On a 2D torus the plaquette angles sum to ``2 pi Q``, so one plaquette is fixed by the others;
the plaquette prior (:class:`gaugeflow.flows.priors.PlaquettePrior`) draws all but
``x* = (L0 - 1, L1 - 1)`` from the exact von Mises marginals and leaves ``u = theta_01(x*)``
close to uniform, where the target wants ``exp(beta cos u)``.  This layer maps ``u`` by a
learned circle diffeomorphism ``h`` (:class:`~gaugeflow.flows.kernels.CircularSplineKernel`)
and moves every other plaquette by the same amount the other way, so the sum stays::

    d = h(u) - u,      theta_01(x*) -> theta_01(x*) + d,      theta_01(x) -> theta_01(x) - d / (V - 1).

On the links this adds ``-(d / (V - 1)) A``, with ``A`` a fixed link field whose plaquettes are
``1`` everywhere but ``-(V - 1)`` at ``x*`` (:func:`gaugeflow.lattice.u1.links_from_plaquettes`):
gauge equivariant, since ``d`` is a function of a gauge-invariant plaquette and a gauge
transformation adds to the links.  ``d`` is a periodic function of ``u`` (the spline fixes
``-pi`` and ``pi``; the rotation shifts both alike), so the map is well defined on the torus, and
in the coordinates of the links' volume-preserving parametrisation (``V - 1`` free plaquettes
``P``, holonomies, gauge angles) it is ``P -> P - d(u) 1 / (V - 1)`` with ``u = -sum P``, whose
Jacobian is, by the matrix-determinant lemma, ``1 + d'(u) = h'(u)``: ``log det = log h'(u)``.
Spreading ``d`` over ``V - 1`` plaquettes costs a KL of order ``beta d^2 / (2 (V - 1))``, which
the local layers after it can take up.  2D only, like the prior.

The spline's parameters are learned constants (for conditioned models, an affine function of
the rescaled coupling).  A new layer starts at the identity or, given ``beta``, at the spline
fitted to the exact transport of ``u``'s marginal (:func:`constraint_transport`).  Under the
prior, ``u`` is minus the wrapped sum of ``n = V - 1`` independent von Mises angles, with
density ``g_n(u) = (1 / 2 pi) [1 + 2 sum_k rho_k^n cos(k u)]``, ``rho_k = I_k(beta) / I_0(beta)``
(nearly uniform on large lattices); under the target it has ``g_n(u) exp(beta cos u) / Z``.
The start minimises the KL between the spline's image of ``g_n`` and that density, a
one-dimensional problem solved on a quadrature grid when the layer is built, starting from
the quantile spline of the von Mises transport (:func:`von_mises_transport`); what an untrained
model accepts from there is measured by ``benchmarks/plaquette_prior_benchmark.py``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from normflows.flows import Flow
from scipy.special import ive
from scipy.stats import vonmises

from gaugeflow.lattice.groups import wrap_angle
from gaugeflow.lattice.u1 import links_from_plaquettes, plaquette_angles

from .kernels import CircularSplineKernel
from .transforms import spline_derivative_shift


def von_mises_transport(kernel: CircularSplineKernel, beta: float) -> torch.Tensor:
    """Parameters of ``kernel`` (float64) that map the uniform density on the circle close to the
    von Mises density at concentration ``beta``: knots at equal input widths and at the von Mises
    quantiles, knot derivatives the ratio of the densities (clipped to [1e-3, 1e3])."""
    n = kernel.n_bins
    knots = vonmises.ppf(np.arange(n + 1) / n, beta)
    knots[0], knots[-1] = -math.pi, math.pi
    fractions = (np.diff(knots) / (2 * math.pi) - kernel.min_bin_height) / (1 - n * kernel.min_bin_height)
    derivatives = np.clip(1 / (2 * math.pi * vonmises.pdf(knots[:-1], beta)), 1e-3, 1e3)
    softplus_values = derivatives - kernel.min_derivative
    raw_derivatives = (softplus_values + np.log(-np.expm1(-softplus_values))  # softplus^{-1}, without overflow
                       - spline_derivative_shift(torch.float64, kernel.min_derivative))
    params = np.concatenate([np.zeros(n), np.log(np.clip(fractions, 1e-9, None)), raw_derivatives, [0.0]])
    return torch.tensor(params, dtype=torch.float64)


def closing_plaquette_log_density(u: torch.Tensor, beta: float, n_free: int) -> torch.Tensor:
    """``log g_n(u)``: the density of minus the wrapped sum of ``n_free`` independent von Mises
    angles at concentration ``beta``, as a cosine series (module docstring); ``u`` any real
    angles (the series is periodic).  The terms kept are those above 1e-17."""
    orders = np.arange(1, 257)
    weights = (ive(orders, beta) / ive(0, beta)) ** n_free
    weights = torch.tensor(weights[weights > 1e-17], dtype=u.dtype, device=u.device)
    if weights.numel() == 0:
        return torch.full_like(u, -math.log(2 * math.pi))
    orders = torch.arange(1, weights.numel() + 1, dtype=u.dtype, device=u.device)
    series = 1 + 2 * (weights * torch.cos(u[..., None] * orders)).sum(-1)
    return torch.log(series) - math.log(2 * math.pi)


def transport_kl(kernel: CircularSplineKernel, params: torch.Tensor, beta: float, n_free: int,
                 grid: int = 4096) -> torch.Tensor:
    """``KL(h_params # g_n || g_n exp(beta cos) / Z)`` (float64) by the midpoint rule on ``grid``
    points of the circle: the constraint layer's own contribution to the model's KL, the
    spreading left out (module docstring)."""
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) * (2 * math.pi / grid) - math.pi
    log_source = closing_plaquette_log_density(u, beta, n_free)
    weights = torch.softmax(log_source, 0)
    h, log_derivative = kernel.unwrapped(u, params.expand(grid, -1), inverse=False)
    log_target = closing_plaquette_log_density(h, beta, n_free) + beta * torch.cos(h)
    log_z = torch.logsumexp(log_source + beta * torch.cos(u), 0) + math.log(2 * math.pi / grid)
    return (weights * (log_source - log_derivative.double() - log_target)).sum() + log_z


# below this KL (nats) the fit changes little (8x8, beta 2: acceptance 0.920 -> 0.922) and is skipped
QUANTILE_START_GOOD_ENOUGH = 1e-3


def _minimise(parameters, objective, max_evaluations=300):
    """L-BFGS on a smooth, deterministic float64 ``objective()`` of ``parameters`` (in place)."""
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.LBFGS(parameters, lr=1, max_iter=max_evaluations, max_eval=max_evaluations,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-9)

    def closure():
        optimizer.zero_grad()
        value = objective()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(closure)
    return [p.detach() for p in parameters]


@functools.lru_cache(maxsize=64)
def _fitted_transport(key, beta, n_free):
    kernel = CircularSplineKernel(*key)
    params = von_mises_transport(kernel, beta)
    if transport_kl(kernel, params, beta, n_free) < QUANTILE_START_GOOD_ENOUGH:
        return params
    (params,) = _minimise([params], lambda: transport_kl(kernel, params, beta, n_free))
    return params


@functools.lru_cache(maxsize=16)
def _fitted_affine_transport(key, low, high, n_free, n_betas=5):
    kernel = CircularSplineKernel(*key)
    low_end, high_end = _fitted_transport(key, low, n_free), _fitted_transport(key, high, n_free)
    start, slope = (low_end + high_end) / 2, (high_end - low_end) / 2
    contexts = torch.linspace(-1, 1, n_betas, dtype=torch.float64)
    betas = [low + (high - low) * (c.item() + 1) / 2 for c in contexts]

    def mean_kl():
        return sum(transport_kl(kernel, start + c * slope, b, n_free) for c, b in zip(contexts, betas)) / n_betas

    if mean_kl() < QUANTILE_START_GOOD_ENOUGH:
        return start, slope
    # the line through the fitted ends starts close (mean KL ~0.02): a few dozen steps do
    return tuple(_minimise([start, slope], mean_kl, max_evaluations=40))


def _key(kernel):
    return (kernel.n_bins, kernel.min_bin_width, kernel.min_bin_height, kernel.min_derivative)


def constraint_transport(kernel: CircularSplineKernel, beta: float, n_free: int) -> torch.Tensor:
    """Parameters of ``kernel`` (float64) that carry the closing plaquette's prior marginal
    ``g_n`` to its target marginal (module docstring): :func:`transport_kl` minimised by L-BFGS
    from :func:`von_mises_transport` (kept as it is where its KL is already below 1e-3 nats, as
    at small beta on large lattices).  Deterministic, 0.1-1.3 s, cached per
    ``(kernel, beta, n_free)``."""
    return _fitted_transport(_key(kernel), float(beta), int(n_free)).clone()


def constraint_transport_over(kernel: CircularSplineKernel, low: float, high: float, n_free: int):
    """``(start, slope)`` (float64) for a layer conditioned on beta in ``[low, high]``, whose
    parameters are ``start + c slope`` at the rescaled coupling ``c`` in [-1, 1]: the mean of
    :func:`transport_kl` over 5 equally spaced betas, 40 L-BFGS evaluations from the line through
    the two ends' :func:`constraint_transport` (16x16, beta in [1.75, 6.25]: KL up to 0.039 on
    that line, up to 0.014 after the fit; 2-3 s, cached)."""
    start, slope = _fitted_affine_transport(_key(kernel), float(low), float(high), int(n_free))
    return start.clone(), slope.clone()


class PlaquetteConstraintLayer(Flow):
    """Maps the constrained plaquette ``theta_01(x*)`` of 2D U(1) links ``[B, 2, L0, L1]`` and
    spreads the change over the other plaquettes (module docstring)."""

    # training moves these few global parameters at 20x the local layers' rate
    # (gaugeflow.flows.train.make_optimizer), for layers that must still move (conditioned models,
    # whose start interpolates between two fitted ends): trained alone from the identity at lr
    # 2e-2, the layer reached acceptance 0.88 at 16x16, beta 6 in 300 steps
    learning_rate_scale = 20.0

    def __init__(self, lattice_shape, n_bins: int = 16, context_channels: int = 0, beta=None):
        """``beta``: start from :func:`constraint_transport` at this beta or, for a conditioned model,
        a ``(low, high)`` range (:func:`constraint_transport_over`: parameters affine in the coupling)."""
        super().__init__()
        self.kernel = CircularSplineKernel(n_bins)
        n_free = math.prod(lattice_shape) - 1
        start, slope = torch.zeros(self.kernel.n_params), torch.zeros(self.kernel.n_params)
        if isinstance(beta, (tuple, list)):
            start, slope = (t.float() for t in constraint_transport_over(self.kernel, *beta, n_free))
        elif beta is not None:
            start = constraint_transport(self.kernel, beta, n_free).float()
        self.params = torch.nn.Parameter(start)
        self.context_weights = torch.nn.Parameter(slope) if context_channels else None
        l0, l1 = lattice_shape
        spread = torch.ones(1, l0, l1, dtype=torch.float64)
        spread[0, -1, -1] = -(l0 * l1 - 1)
        # A / (V - 1): the link field that moves theta_01(x*) by -1 and every other plaquette by 1 / (V - 1)
        direction = links_from_plaquettes(spread, torch.zeros(1, 2, dtype=torch.float64)) / (l0 * l1 - 1)
        self.register_buffer("direction", direction, persistent=False)

    def _params(self, n, context):
        params = self.params.expand(n, -1)
        if self.context_weights is not None and context is not None:
            params = params + context.to(params.dtype)[:, None] * self.context_weights
        return params

    def _shift(self, u, params):
        """``d = h(u) - u`` (a fixed lift of ``h``, periodic in ``u``) and ``log h'(u)``."""
        new_u, log_derivative = self.kernel.unwrapped(u, params, inverse=False)
        return new_u - u, log_derivative.to(torch.float64)

    def _moved(self, theta, d):
        return wrap_angle(theta - d.to(theta.dtype)[:, None, None, None] * self.direction.to(theta.dtype))

    def forward(self, z, context=None):
        u = wrap_angle(plaquette_angles(z, 0, 1)[:, -1, -1])
        d, log_derivative = self._shift(u, self._params(len(z), context))
        return self._moved(z, d), log_derivative

    def inverse(self, x, context=None):
        params = self._params(len(x), context)
        u, _ = self.kernel.inverse(wrap_angle(plaquette_angles(x, 0, 1)[:, -1, -1]), params)
        d, log_derivative = self._shift(u, params)  # the forward map's own d at u, not one from h^{-1}'s lift
        return self._moved(x, -d), -log_derivative
