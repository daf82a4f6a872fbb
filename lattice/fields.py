"""Field types: the manifold a theory's field lives on, as seen by molecular dynamics.

Hybrid Monte Carlo needs, for each kind of field, four operations: draw conjugate momenta,
their kinetic energy, move the field along a momentum, and turn the Euclidean gradient of
the action into a force in the tangent space.  Priors and coupling layers of the flows are chosen by field type too (see
:mod:`gaugeflow.flows.priors` and :mod:`gaugeflow.flows.model`).  The three kinds are

* :class:`RealField` -- real scalar fields (phi^4); momenta are real, ``x -> x + dt p``.
* :class:`AngleField` -- U(1) links as angles ``theta`` with ``U = exp(i theta)``; like a real
  field, but angles are wrapped back to (-pi, pi].
* :class:`SUNField` -- SU(N) links; momenta in su(N), ``U -> exp(dt P) U``.

Kinetic energy is ``K = |p|^2 / 2`` summed over sites (and directions), accumulated in
float64 because it enters the Metropolis decision.
"""

from __future__ import annotations

import abc

import torch

from .geometry import sum_per_config
from .groups import (
    UNITARITY_TOLERANCE,
    dagger,
    expm_algebra,
    matmul,
    random_algebra,
    reunitarize,
    traceless_antihermitian,
    unitarity_drift,
    wrap_angle,
)


class FieldType(abc.ABC):
    """What molecular dynamics needs of a manifold; every method is batched over axis 0."""

    @abc.abstractmethod
    def random_momenta(self, like: torch.Tensor, generator=None) -> torch.Tensor:
        """Standard Gaussian momenta in the tangent space at ``like``."""

    @abc.abstractmethod
    def kinetic_energy(self, momenta: torch.Tensor) -> torch.Tensor:
        """``K = |p|^2 / 2`` per configuration, ``[B]`` float64."""

    @abc.abstractmethod
    def evolve(self, field: torch.Tensor, momenta: torch.Tensor, dt: float) -> torch.Tensor:
        """Move ``field`` for time ``dt`` along ``momenta``."""

    @abc.abstractmethod
    def tangent_force(self, field: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """The force in the tangent space from the Euclidean (autograd) gradient of ``S``."""

    @abc.abstractmethod
    def project(self, field: torch.Tensor) -> torch.Tensor:
        """Remove rounding drift off the manifold."""


class RealField(FieldType):
    """Flat real field; molecular dynamics is ``dx/dt = p, dp/dt = -dS/dx``."""

    def random_momenta(self, like: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)

    def kinetic_energy(self, momenta: torch.Tensor) -> torch.Tensor:
        return 0.5 * sum_per_config(momenta * momenta)

    def evolve(self, field: torch.Tensor, momenta: torch.Tensor, dt: float) -> torch.Tensor:
        return field + dt * momenta

    def tangent_force(self, field: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient

    def project(self, field: torch.Tensor) -> torch.Tensor:
        return field


class AngleField(RealField):
    """U(1) link angles; identical to a real field except that angles stay in (-pi, pi]."""

    def evolve(self, field, momenta, dt):
        return wrap_angle(field + dt * momenta)

    def project(self, field):
        return wrap_angle(field)


class SUNField(FieldType):
    """SU(N) links ``[..., N, N]`` with momenta in su(N) (traceless anti-Hermitian).

    Molecular dynamics: ``dU/dt = P U``, ``dP/dt = -F`` where the force ``F`` is the su(N)
    gradient of the action, ``dS(exp(eps X) U)/d eps = <F, X>``.  With PyTorch's convention
    for the gradient of a real function of complex ``U`` (``G = dS/dRe U + i dS/dIm U``)
    this is ``F = P_su(N)(G U^dagger)``.
    """

    def __init__(self, n_colors: int):
        self.n_colors = n_colors

    def random_momenta(self, like, generator=None):
        return random_algebra(like.shape[:-2], self.n_colors, generator=generator, dtype=like.dtype, device=like.device)

    def kinetic_energy(self, momenta):
        return 0.5 * sum_per_config((momenta.conj() * momenta).real)

    def evolve(self, field, momenta, dt):
        """``exp(dt P) U`` with the closed-form exponential of su(2)/su(3) (Rodrigues,
        Cayley-Hamilton; :func:`gaugeflow.lattice.groups.expm_algebra`)."""
        return matmul(expm_algebra(dt * momenta), field)

    def tangent_force(self, field, gradient):
        return traceless_antihermitian(matmul(gradient, dagger(field)))

    def project(self, field):
        """Reunitarise (cheaply) only when rounding has moved the links more than
        ``UNITARITY_TOLERANCE`` off SU(N); otherwise the field is returned untouched."""
        if unitarity_drift(field) > UNITARITY_TOLERANCE:
            return reunitarize(field)
        return field
