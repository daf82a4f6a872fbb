"""Checkerboard coupling layers for real scalar fields (phi^4).

Albergo, Kanwar, Shanahan, arXiv:1904.12072: the sites of one parity are transformed
element-wise with parameters computed by a periodic CNN from the sites of the other parity,

    phi'(x) = g(phi(x); theta(x)),   theta = NN(phi * frozen_mask)   for x in the active set,

so the Jacobian is triangular and ``log det = sum_{x active} log g'(phi(x))``.  Two element-wise
transforms are provided: affine (real NVP, ``g = e^s phi + t``) and a monotone
rational-quadratic spline (Durkan et al. arXiv:1906.04032, via normflows) with linear tails
outside ``[-tail_bound, tail_bound]``.
"""

from __future__ import annotations

import math

import torch
from normflows.flows import Flow
from normflows.utils.splines import DEFAULT_MIN_DERIVATIVE, unconstrained_rational_quadratic_spline

from .conditioners import ConvNet
from .masks import checkerboard, scatter_active_sites, transform_active_sites


class AffineTransform:
    """``g(phi) = exp(s) phi + t``; parameters ``(s, t)``."""

    n_params = 2

    def identity_params(self, dtype=torch.float32):
        return torch.zeros(2, dtype=dtype)

    def forward(self, phi, params):
        s, t = params[..., 0], params[..., 1]
        return torch.exp(s) * phi + t, s

    def inverse(self, phi, params):
        s, t = params[..., 0], params[..., 1]
        return (phi - t) * torch.exp(-s), -s


class SplineTransform:
    """Monotone rational-quadratic spline with ``n_bins`` bins on ``[-B, B]``, identity outside.

    Parameters: ``n_bins`` widths, ``n_bins`` heights, ``n_bins - 1`` interior derivatives
    (unnormalised, as in normflows, but shifted so that all-zero parameters give unit slopes:
    equal bins with unit slopes make the spline exactly the identity, and zero is exact in
    every precision, unlike the float32-rounded constant a conditioner bias would hold).
    """

    # softplus(c) + min_derivative = 1
    DERIVATIVE_OFFSET = math.log(math.expm1(1 - DEFAULT_MIN_DERIVATIVE))

    def __init__(self, n_bins: int = 8, tail_bound: float = 5.0):
        self.n_bins, self.tail_bound = n_bins, tail_bound
        self.n_params = 3 * n_bins - 1

    def identity_params(self, dtype=torch.float32):
        return torch.zeros(self.n_params, dtype=dtype)

    def _apply(self, phi, params, inverse):
        k = self.n_bins
        out, logd = unconstrained_rational_quadratic_spline(
            phi,
            params[..., :k],
            params[..., k : 2 * k],
            params[..., 2 * k :] + self.DERIVATIVE_OFFSET,
            inverse=inverse,
            tails="linear",
            tail_bound=self.tail_bound,
        )
        return out, logd

    def forward(self, phi, params):
        return self._apply(phi, params, inverse=False)

    def inverse(self, phi, params):
        return self._apply(phi, params, inverse=True)


class ScalarCoupling(Flow):
    """Checkerboard coupling for fields ``[B, x...]``; ``parity`` selects the active sublattice."""

    def __init__(self, lattice_shape, parity: int, transform, hidden_channels=(32, 32), kernel_size: int = 3,
                 context_channels: int = 0):
        super().__init__()
        self.transform = transform
        self.register_buffer("active", checkerboard(lattice_shape, parity), persistent=False)
        self.register_buffer("active_index", self.active.flatten().nonzero().squeeze(-1), persistent=False)
        self.net = ConvNet(
            len(lattice_shape),
            1,
            transform.n_params,
            hidden_channels,
            kernel_size,
            output_bias=transform.identity_params(),
            context_channels=context_channels,
        )

    def _params(self, phi, context):
        frozen = torch.where(self.active, torch.zeros_like(phi), phi)
        return self.net(frozen[:, None], context).movedim(1, -1)

    def _couple(self, phi, inverse, context):
        params = self._params(phi, context)
        apply = self.transform.inverse if inverse else self.transform.forward
        new, _, log_det = transform_active_sites(phi, params, self.active_index, apply)
        return scatter_active_sites(phi, new, self.active_index), log_det

    def forward(self, z, context=None):
        return self._couple(z, False, context)

    def inverse(self, z, context=None):
        return self._couple(z, True, context)
