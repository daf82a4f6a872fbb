"""Gauge-equivariant plaquette coupling layers for U(1) (Kanwar et al., arXiv:2003.06413).

One layer, labelled ``(mu, nu, offset)`` (see :mod:`gaugeflow.flows.masks`), transforms the
active plaquettes ``theta_P(x) = theta_{mu nu}(x)`` element-wise with a circle bijection ``h``
(:mod:`gaugeflow.flows.kernels`) whose parameters come from a periodic CNN applied to
gauge-invariant features ``(cos, sin)`` of the frozen plaquettes of every plane, and moves the
one active link inside each active plaquette so that it absorbs the change,

    theta_mu(x) -> theta_mu(x) + h(theta_P(x)) - theta_P(x).

Because the link update is a function of gauge-invariant quantities only, the layer commutes
with gauge transformations.  Given the frozen plaquettes, active links and active plaquettes
are in one-to-one correspondence, so the Jacobian is triangular and
``log det = sum_{x active} log h'(theta_P(x))``.  Works in any dimension; extents along ``nu``
must be multiples of 4.

Further loops through the active links reach the conditioner as callables (``loops``): each
``loop(layer, plaquettes) -> [B, x...]`` returns, from the layer and the plaquette angles of
every plane, a loop angle at the active sites that the layer leaves unchanged, and the
conditioner sees its ``(cos, sin)`` there.  :func:`rectangle_loop` (the architecture's
``rectangles``) is the 1x2 loop through each active link,
``theta_R(x) = theta_{mu nu}(x) + theta_{mu nu}(x - nu)``: the active
plaquette together with the passive one below it, which share the active link with opposite
orientations, so ``theta_R`` does not change under the layer and may condition it.  It is the
information the plaquette features lack: with the Wilson action the exact conditional of the
active plaquette given everything the layer leaves unchanged is
``exp(beta cos theta_P + beta cos(theta_R - theta_P))``, a von Mises centred at
``theta_R / 2``.  (Loops beyond the plaquette in the conditioner: Abbott et al.,
arXiv:2208.03832, arXiv:2211.07541.)
"""

from __future__ import annotations

import torch

from gaugeflow.lattice.geometry import shift
from gaugeflow.lattice.u1 import SITE_AXIS, plaquette_angles

from .coupling import GaugeCoupling
from .kernels import wrap_with_unit_derivative


def rectangle_loop(layer, plaquettes):
    """The 1x2 loop ``theta_{mu nu}(x) + theta_{mu nu}(x - nu)`` through each active link of
    ``layer`` (module docstring), from the plaquette angles ``plaquettes`` of every plane."""
    plaquette = layer.own_sign * plaquettes[layer.own_plane]  # theta_{nu mu} = -theta_{mu nu}
    return plaquette + shift(plaquette, layer.nu, -1, SITE_AXIS)


class U1PlaquetteCoupling(GaugeCoupling):
    """U(1) links as angles ``[B, D, x...]``; ``transform`` is a
    :class:`~gaugeflow.flows.kernels.CircleKernel`; ``loops`` are callables of further loops
    through the active links for the conditioner (module docstring; e.g. ``(rectangle_loop,)``)."""

    def __init__(self, lattice_shape, mu: int, nu: int, offset: int, kernel, hidden_channels=(16, 16),
                 kernel_size: int = 3, context_channels: int = 0, loops=()):
        super().__init__(lattice_shape, mu, nu, offset, kernel, 2, hidden_channels, kernel_size, context_channels,
                         extra_channels=2 * len(loops))
        self.loops = tuple(loops)
        # theta_{mu nu} among the planes rho < sigma of the frozen features, and its sign there
        self.own_plane = self.planes.index((min(mu, nu), max(mu, nu)))
        self.own_sign = 1.0 if mu < nu else -1.0
        masks = [self.frozen] + [self.active[None]] * len(self.loops)
        self.register_buffer("feature_mask", torch.cat(masks).repeat(2, *[1] * len(lattice_shape)), persistent=False)

    def features(self, theta):
        angles = [plaquette_angles(theta, rho, sigma) for rho, sigma in self.planes]
        angles = torch.stack(angles + [loop(self, angles) for loop in self.loops], dim=1)
        return torch.where(self.feature_mask, torch.cat([torch.cos(angles), torch.sin(angles)], dim=1), 0.0)

    def couple(self, theta, params, inverse):
        # the kernel acts at the active sites only (a strided view, see GaugeCoupling); its
        # unwrapped form suffices, as h(P) - P moves link angles, which are wrapped once here
        plaquette = self.active_slice(plaquette_angles(theta, self.mu, self.nu))
        new_plaquette, log_derivative = self.transform.unwrapped(plaquette, self.active_slice(params), inverse)
        links = theta[:, self.mu]
        moved = wrap_with_unit_derivative(self.active_slice(links) + new_plaquette - plaquette)
        new_theta = theta.select_scatter(self.with_active_slice(links, moved), 1, self.mu)
        return new_theta, log_derivative.flatten(1).sum(-1, dtype=torch.float64)
