"""Checkerboard coupling layers for real scalar fields (phi^4).

Albergo, Kanwar, Shanahan, arXiv:1904.12072: the sites of one parity are transformed
element-wise with parameters computed by a periodic CNN from the sites of the other parity,

    phi'(x) = g(phi(x); theta(x)),   theta = NN(phi * frozen_mask)   for x in the active set,

so the Jacobian is triangular and ``log det = sum_{x active} log g'(phi(x))``.  ``g`` is any
real-line :class:`~gaugeflow.flows.transforms.ElementwiseTransform` (affine or spline).
"""

from __future__ import annotations

import torch

from .coupling import MaskedCoupling
from .masks import checkerboard


class ScalarCoupling(MaskedCoupling):
    """Checkerboard coupling for fields ``[B, x...]``; ``parity`` selects the active sublattice."""

    def __init__(self, lattice_shape, parity: int, transform, hidden_channels=(16, 16), kernel_size: int = 3,
                 context_channels: int = 0):
        super().__init__(checkerboard(lattice_shape, parity), transform, 1, hidden_channels, kernel_size, context_channels)

    def features(self, phi):
        return torch.where(self.active, 0.0, phi).unsqueeze(1)

    def couple(self, phi, params, inverse):
        new, log_det = self.masked_transform(phi, params, inverse)
        return self.where_active(new, phi), log_det
