"""Gauge-equivariant plaquette coupling layers for U(1) (Kanwar et al., arXiv:2003.06413).

One layer, labelled ``(mu, nu, offset)`` (see :mod:`flows.masks`), transforms the active
plaquettes ``theta_P(x) = theta_{mu nu}(x)`` element-wise with a circle bijection ``h``
(:mod:`flows.kernels`) whose parameters come from a periodic CNN applied to gauge-invariant
features ``(cos, sin)`` of the frozen plaquettes of every plane, and moves the one active link
inside each active plaquette so that it absorbs the change,

    theta_mu(x) -> theta_mu(x) + h(theta_P(x)) - theta_P(x).

Because the link update is a function of gauge-invariant quantities only, the layer commutes
with gauge transformations.  Given the frozen plaquettes, active links and active plaquettes
are in one-to-one correspondence, so the Jacobian is triangular and
``log det = sum_{x active} log h'(theta_P(x))``.  Works in any dimension; extents along ``nu``
must be multiples of 4.
"""

from __future__ import annotations

import torch
from normflows.flows import Flow

from lattice.gauge import planes
from lattice.groups import wrap_angle
from lattice.u1 import plaquette_angles

from .conditioners import ConvNet
from .masks import gauge_link_masks, scatter_active_sites, transform_active_sites


class U1PlaquetteCoupling(Flow):
    def __init__(self, lattice_shape, mu: int, nu: int, offset: int, kernel, hidden_channels=(32, 32), kernel_size=3,
                 context_channels: int = 0):
        super().__init__()
        self.mu, self.nu, self.kernel = mu, nu, kernel
        masks = gauge_link_masks(lattice_shape, mu, nu, offset)
        self.register_buffer("active", masks["active"], persistent=False)
        self.register_buffer("frozen", masks["frozen"], persistent=False)
        self.register_buffer("active_index", masks["active"].flatten().nonzero().squeeze(-1), persistent=False)
        self.planes = planes(len(lattice_shape))
        self.net = ConvNet(
            len(lattice_shape),
            2 * len(self.planes),
            kernel.n_params,
            hidden_channels,
            kernel_size,
            output_bias=kernel.identity_params(),
            context_channels=context_channels,
        )

    def _params(self, theta, context):
        angles = torch.stack([plaquette_angles(theta, rho, sigma) for rho, sigma in self.planes], dim=1)
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1) * self.frozen.repeat(2, *[1] * (theta.dim() - 2))
        return self.net(features, context).movedim(1, -1)

    def _couple(self, theta, inverse: bool, context):
        params = self._params(theta, context)  # frozen plaquettes are identical before and after the layer
        plaquette = wrap_angle(plaquette_angles(theta, self.mu, self.nu))
        apply = self.kernel.inverse if inverse else self.kernel.forward
        new_plaquette, old_plaquette, log_det = transform_active_sites(plaquette, params, self.active_index, apply)
        links = theta[:, self.mu]
        moved = wrap_angle(links.reshape(len(links), -1)[:, self.active_index] + new_plaquette - old_plaquette)
        new_theta = theta.clone()
        new_theta[:, self.mu] = scatter_active_sites(links, moved, self.active_index)
        return new_theta, log_det

    def forward(self, z, context=None):
        return self._couple(z, False, context)

    def inverse(self, z, context=None):
        return self._couple(z, True, context)
