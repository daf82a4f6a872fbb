"""A learned propagator for real fields: each momentum mode scaled by its own factor.

For fields ``[B, L0, L1, ...]`` on a periodic lattice,

    phi(k) = a(k) z(k),   a(k) = exp s(p_hat^2(k)),   p_hat^2(k) = sum_mu 4 sin^2(k_mu / 2),

with the unitary (``norm="ortho"``) discrete Fourier transform, so ``log det = sum_k log a(k)``
over the ``V`` momenta, the same for every configuration.  ``a`` depends on ``k`` through the
lattice momentum squared only, so it is real and even (``phi`` stays real), and the layer is
translation and hypercubic invariant; ``s`` is piecewise linear in ``p_hat^2 / (4 D)`` on
[0, 1] with :data:`N_KNOTS` learned knots.  The knots do not depend on the volume: weights
trained on one lattice run on another (:func:`gaugeflow.flows.model.transfer_weights`).

Acting on standard-normal noise alone the layer gives the Gaussian field of propagator
``G(k) = a(k)^2`` (:meth:`MomentumScaling.propagator`): with ``a = [2 (m2 + p_hat^2)]^{-1/2}``
(:mod:`gaugeflow.lattice.phi4` has no 1/2 in front of ``phi (-Laplacian + m2) phi``) it is the
exact trivialising map of the free scalar field (the free-theory spectrum scaling of
``bijx``, Gerdes et al.).  As the first layer of a phi^4 model it hands the coupling layers
noise that already carries the long-distance correlations, which local conditioners reach
only through many layers (what it buys is measured in benchmarks/README.md).

The layer starts as the identity (``s = 0``), so an untrained model is still its prior.  The
momentum grid is recomputed in float64 at each call rather than kept as a buffer, so that
casting the model to float32 for training and back to float64 for Metropolis decisions
leaves the map exactly what it was.
"""

from __future__ import annotations

import math

import torch
from normflows.flows import Flow

N_KNOTS = 9


class MomentumScaling(Flow):
    """``phi = F^{-1}[a(p_hat^2) F[z]]`` for real fields ``[B, L0, L1, ...]`` (module docstring)."""

    def __init__(self, lattice_shape, n_knots: int = N_KNOTS):
        super().__init__()
        self.lattice_shape = tuple(int(n) for n in lattice_shape)
        self.dims = tuple(range(1, len(self.lattice_shape) + 1))
        self.log_scale = torch.nn.Parameter(torch.zeros(n_knots))  # s at the knots; 0: the identity

    def lattice_momentum_squared(self, device=None) -> torch.Tensor:
        """``p_hat^2(k)`` on the momentum grid ``[L0, L1, ...]`` (float64)."""
        axes = [4 * torch.sin(math.pi * torch.arange(n, dtype=torch.float64, device=device) / n) ** 2
                for n in self.lattice_shape]
        return sum(torch.meshgrid(*axes, indexing="ij"))

    def log_scale_at_momenta(self) -> torch.Tensor:
        """``s(p_hat^2(k)) = log a(k)`` on the momentum grid (float64)."""
        knots = self.log_scale.to(torch.float64)
        x = self.lattice_momentum_squared(knots.device) / (4 * len(self.lattice_shape)) * (len(knots) - 1)
        below = x.floor().clamp(max=len(knots) - 2)
        frac = x - below
        below = below.long()
        return knots[below] * (1 - frac) + knots[below + 1] * frac

    def propagator(self) -> torch.Tensor:
        """``G(k) = a(k)^2`` on the momentum grid: the two-point function this layer alone gives
        standard-normal noise, ``<|phi(k)|^2>`` in the unitary normalisation."""
        return torch.exp(2 * self.log_scale_at_momenta()).detach()

    def _scaled(self, z, sign: int):
        log_a = sign * self.log_scale_at_momenta()
        modes = torch.fft.fftn(z, dim=self.dims, norm="ortho")
        phi = torch.fft.ifftn(torch.exp(log_a).to(z.dtype) * modes, dim=self.dims, norm="ortho").real
        return phi, log_a.sum().expand(len(z))

    def forward(self, z, context=None):
        return self._scaled(z, 1)

    def inverse(self, x, context=None):
        return self._scaled(x, -1)
