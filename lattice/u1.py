"""Compact U(1) lattice gauge theory with the Wilson action.

Links ``U_mu(x) = exp(i theta_mu(x))`` are stored as angles ``theta`` in (-pi, pi], layout
``[batch, mu, x_0, ..., x_{D-1}]``.  The plaquette angle is

    theta_{mu nu}(x) = theta_mu(x) + theta_nu(x + mu) - theta_mu(x + nu) - theta_nu(x),

and the action is ``S = -beta sum_{x, mu<nu} cos theta_{mu nu}(x)``.  In two dimensions the
topological charge is ``Q = (1/2pi) sum_x arg U_01(x)`` with ``arg`` in (-pi, pi], an integer
on every configuration of a periodic lattice.
"""

from __future__ import annotations

import math

import torch

from . import exact
from .errors import InputError
from .fields import AngleField
from .gauge import planes, u1_links_to_matrices
from .geometry import shift
from .groups import wrap_angle
from .theory import Coupling, GaugeTheory, sum_per_config

SITE_AXIS = 1


def plaquette_angles(theta: torch.Tensor, mu: int, nu: int) -> torch.Tensor:
    """``theta_{mu nu}(x)`` (not wrapped), ``[B, x...]``."""
    t_mu, t_nu = theta[:, mu], theta[:, nu]
    return t_mu + shift(t_nu, mu, 1, SITE_AXIS) - shift(t_mu, nu, 1, SITE_AXIS) - t_nu


def gauge_transform_angles(theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``theta_mu(x) -> theta_mu(x) + alpha(x) - alpha(x + mu)``, wrapped; ``alpha`` is ``[B, x...]``."""
    shifted = torch.stack([shift(alpha, mu, 1, SITE_AXIS) for mu in range(theta.shape[1])], dim=1)
    return wrap_angle(theta + alpha[:, None] - shifted)


def links_from_plaquettes(plaquettes: torch.Tensor, holonomies: torch.Tensor) -> torch.Tensor:
    """2D links ``[B, 2, L0, L1]`` (unwrapped) in a maximal-tree gauge with the given plaquettes.

    ``plaquettes`` ``[B, L0, L1]`` must sum to zero over the lattice (their wrapped values then
    are those of a configuration of any topological charge ``Q``: the unwrapped sum is 0, the
    wrapped one ``2 pi Q``); ``holonomies`` ``[B, 2]`` are the two remaining gauge-invariant
    angles (Polyakov loops).  The gauge: ``theta_1(x) = 0`` off the last row ``x_1 = L1 - 1``,
    ``theta_0(x_0, 0) = 0`` except ``theta_0(L0 - 1, 0) = holonomies[:, 0]``, and
    ``theta_1(0, L1 - 1) = holonomies[:, 1]``.  Then ``theta_{01}(x) = plaquettes(x)`` everywhere:

        theta_0(x_0, x_1) = theta_0(x_0, 0) - sum_{t < x_1} P(x_0, t),
        theta_1(x_0, L1 - 1) = holonomies_1 + sum_{y < x_0} sum_t P(y, t).

    The map (plaquettes but one, holonomies, gauge angles) -> links is linear with an integer
    matrix of determinant +-1 (tested), so it carries the uniform measure of one torus to the
    other's: the reason 2D lattice gauge theory factorises into independent plaquettes up to
    one global constraint (Migdal 1975; Gross & Witten, Phys. Rev. D 21, 446 (1980)).
    """
    batch, l0, l1 = plaquettes.shape
    theta = plaquettes.new_zeros(batch, 2, l0, l1)
    theta[:, 0, l0 - 1, 0] = holonomies[:, 0]
    column_sums = torch.cumsum(plaquettes, dim=2)
    theta[:, 0, :, 1:] = theta[:, 0, :, :1] - column_sums[:, :, :-1]
    theta[:, 1, 1:, l1 - 1] = torch.cumsum(column_sums[:, :-1, -1], dim=1)
    theta[:, 1, :, l1 - 1] += holonomies[:, 1:2]
    return theta


class U1(GaugeTheory):
    name = "u1"
    couplings_declared = (Coupling("beta", "gauge coupling"),)

    def __init__(self, lattice_shape, *, beta):
        super().__init__(lattice_shape, beta=beta)
        if self.dimension < 2:
            raise InputError("a gauge theory needs at least 2 dimensions")
        self.field = AngleField()

    @property
    def config_shape(self):
        return (self.dimension, *self.lattice_shape)

    def action(self, theta):
        self.check_field(theta)
        cosines = sum(torch.cos(plaquette_angles(theta, mu, nu)) for mu, nu in planes(self.dimension))
        return -self.couplings["beta"] * sum_per_config(cosines)

    def force(self, theta):
        """Analytic ``dS/dtheta_mu(x) = beta sum_{nu != mu} [sin theta_{mu nu}(x) - sin theta_{mu nu}(x - nu)]``
        with ``theta_{nu mu} = -theta_{mu nu}`` (the autograd force of the base class agrees)."""
        d = self.dimension
        sines = {(mu, nu): torch.sin(plaquette_angles(theta, mu, nu)) for mu, nu in planes(d)}
        components = []
        for mu in range(d):
            total = torch.zeros_like(theta[:, mu])
            for nu in range(d):
                if nu != mu:
                    s = sines[mu, nu] if mu < nu else -sines[nu, mu]
                    total = total + s - shift(s, nu, -1, SITE_AXIS)
            components.append(total)
        return self.couplings["beta"] * torch.stack(components, dim=1)

    def exact_log_partition_function(self):
        """2D: the character expansion ``Z = (2 pi)^{n_links} sum_n I_n(beta)^V`` (Lebesgue
        measure on the link angles)."""
        if self.dimension != 2:
            return None
        n_links = self.dimension * self.volume
        return n_links * math.log(2 * math.pi) + exact.u1_log_partition_function(self.couplings["beta"], self.volume)

    def links_as_matrices(self, theta):
        return u1_links_to_matrices(theta)

    @property
    def has_topological_charge(self):
        return self.dimension == 2

    def topological_charge(self, theta):
        if self.dimension != 2:
            return super().topological_charge(theta)
        return sum_per_config(wrap_angle(plaquette_angles(theta, 0, 1))) / (2 * math.pi)

    def hot_start(self, batch, *, generator=None, device=None, precision=torch.float64):
        uniform = torch.rand(batch, *self.config_shape, generator=generator, device=device, dtype=precision)
        return wrap_angle(2 * math.pi * uniform - math.pi)

    def cold_start(self, batch, *, device=None, precision=torch.float64):
        return torch.zeros(batch, *self.config_shape, device=device, dtype=precision)

    def random_gauge_transformation(self, batch, *, generator=None, device=None, precision=torch.float64):
        """Uniform random ``alpha(x)``, ``[B, x...]``: ``Omega(x) = exp(i alpha(x))``."""
        uniform = torch.rand(batch, *self.lattice_shape, generator=generator, device=device, dtype=precision)
        return 2 * math.pi * uniform - math.pi

    def gauge_transform(self, theta, alpha):
        """``theta_mu(x) -> theta_mu(x) + alpha(x) - alpha(x + mu)``."""
        return gauge_transform_angles(theta, alpha)
