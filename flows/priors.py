"""Prior (base) distributions of the flows, as ``normflows`` base distributions.

* :class:`UniformAngles` -- Haar measure on U(1) links: independent angles uniform on
  (-pi, pi], density ``(2 pi)^{-n}`` with respect to Lebesgue measure on the angles.
* :class:`HaarSUN` -- Haar measure on SU(N) links; ``log_prob = 0`` because densities of
  SU(N) fields are taken with respect to the (normalised) Haar measure.
* real fields use ``normflows.distributions.DiagGaussian(shape, trainable=False)`` (a
  standard normal).

:func:`prior_for` chooses by the theory's field type (:mod:`gaugeflow.lattice.fields`); a new
field type registers its prior with ``prior_for_field.register``.

normflows' own ``Uniform`` keeps its bounds as plain tensors that do not follow
``.to(device)`` / ``.double()``; these priors carry an empty buffer instead, so a model moved
with ``.to(device, dtype)`` samples on that device and in that precision.
"""

from __future__ import annotations

import functools
import math

import torch
from normflows.distributions import BaseDistribution, DiagGaussian

from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.fields import AngleField, RealField, SUNField
from gaugeflow.lattice.groups import complex_dtype, haar_random_sun


class _FollowsModule(BaseDistribution):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("_reference", torch.zeros(0), persistent=False)  # tracks device and precision

    @property
    def device(self):
        return self._reference.device

    @property
    def precision(self):
        return self._reference.dtype


class UniformAngles(_FollowsModule):
    """Independent uniform angles on (-pi, pi], ``shape`` per sample (e.g. ``[D, L0, L1]``)."""

    def forward(self, num_samples=1):
        uniform = torch.rand(num_samples, *self.shape, device=self.device, dtype=self.precision)
        angles = math.pi - 2 * math.pi * uniform  # in (-pi, pi]
        return angles, self.log_prob(angles)

    def log_prob(self, z):
        n = math.prod(self.shape)
        return torch.full((z.shape[0],), -n * math.log(2 * math.pi), device=z.device, dtype=torch.float64)


class HaarSUN(_FollowsModule):
    """Haar-random SU(N) matrices; ``shape`` excludes the colour axes."""

    def __init__(self, shape, n_colors: int):
        super().__init__(shape)
        self.n_colors = n_colors

    def forward(self, num_samples=1):
        links = haar_random_sun(
            (num_samples, *self.shape), self.n_colors, dtype=complex_dtype(self.precision), device=self.device
        )
        return links, self.log_prob(links)

    def log_prob(self, z):
        return torch.zeros(z.shape[0], device=z.device, dtype=torch.float64)


@functools.singledispatch
def prior_for_field(field, theory) -> BaseDistribution:
    """The natural prior of ``theory``, chosen by the type of its ``field``."""
    raise InputError(f"no flow prior for fields of type {type(field).__name__} (theory {theory.name})")


@prior_for_field.register
def _(field: RealField, theory):
    return DiagGaussian(theory.config_shape, trainable=False)


@prior_for_field.register
def _(field: AngleField, theory):
    return UniformAngles(theory.config_shape)


@prior_for_field.register
def _(field: SUNField, theory):
    return HaarSUN((theory.dimension, *theory.lattice_shape), field.n_colors)


def prior_for(theory) -> BaseDistribution:
    """Gaussian for real fields, uniform angles for U(1), Haar for SU(N)."""
    return prior_for_field(theory.field, theory)
