"""Prior (base) distributions of the flows, as ``normflows`` base distributions.

* :class:`UniformAngles` (``"haar"``) -- Haar measure on U(1) links: independent angles
  uniform on (-pi, pi], density ``(2 pi)^{-n}`` with respect to Lebesgue measure on the angles.
* :class:`PlaquettePrior` (``"plaquette"``, the default for 2D U(1) gauge fields) -- links
  whose plaquettes are independent von Mises angles at concentration ``beta``, but one: the
  exact 2D Wilson measure up to the one global constraint on the plaquettes.
* :class:`HaarSUN` (``"haar"``) -- Haar measure on SU(N) links; ``log_prob = 0`` because
  densities of SU(N) fields are taken with respect to the (normalised) Haar measure.
* real fields use ``normflows.distributions.DiagGaussian(shape, trainable=False)`` (a
  standard normal, ``"normal"``).

A model's architecture names its prior (``"prior"``); :func:`prior_for` builds it from the
theory's field type (:mod:`gaugeflow.lattice.fields`), :func:`default_prior` says which one a
theory gets when none is named, and a new field type or prior is one :func:`register_prior`.
A prior also declares what it asks of the model built on it, so that no other module tests
its name: the layers that go first (:func:`prior_first_layers`; the plaquette prior's
constraint layer) and the gradient estimator it prefers (:func:`preferred_estimator`).

normflows' own ``Uniform`` keeps its bounds as plain tensors that do not follow
``.to(device)`` / ``.double()``; these priors carry an empty buffer instead, so a model moved
with ``.to(device, dtype)`` samples on that device and in that precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from normflows.distributions import BaseDistribution, DiagGaussian

from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.fields import AngleField, RealField, SUNField
from gaugeflow.lattice.groups import complex_dtype, haar_random_sun
from gaugeflow.lattice.u1 import gauge_transform_angles, links_from_plaquettes, plaquette_angles

from .u1_global import PlaquetteConstraintLayer

CONSTRAINT_BINS = 16  # the constrained plaquette's spline: one scalar per sample, so bins are cheap


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


class PlaquettePrior(_FollowsModule):
    """2D U(1) links whose plaquettes are independent von Mises angles, all but one.

    The Wilson measure of 2D U(1) on an ``L0 x L1`` torus, ``prod_x exp(beta cos theta_01(x))``,
    is a product over plaquettes, which are independent variables up to one global constraint
    (their angles sum to ``2 pi Q``): in a maximal-tree gauge the links are an integer linear,
    volume-preserving function of ``V - 1`` plaquettes, two holonomies and the gauge angles
    (:func:`gaugeflow.lattice.u1.links_from_plaquettes`; Migdal 1975, Gross & Witten 1980).
    This prior draws the plaquettes ``x != x* = (L0 - 1, L1 - 1)`` from the von Mises density
    ``exp(kappa cos P) / (2 pi I_0(kappa))``, sets ``P(x*)`` by the constraint, draws holonomies and
    gauge angles uniformly, and builds the links.  Its density on the link angles is

        log q(theta) = sum_{x != x*} [kappa cos theta_01(x) - log I_0(kappa)] - 2 V log(2 pi),

    gauge invariant, and at ``kappa = beta`` the importance weight is ``p/q ∝ exp(beta cos P(x*))``:
    one plaquette, whatever the volume, so the prior alone has the ESS ``I_0(beta)^2 / I_0(2 beta)``
    (0.46 / 0.30 / 0.24 at beta = 2 / 4 / 6; measured acceptances are in benchmarks/README.md),
    with the topological sectors already right (``Q`` is the winding of the sum of the other plaquettes).
    The layers on top learn what is left: first the one plaquette
    (:class:`gaugeflow.flows.u1_global.PlaquetteConstraintLayer`), then the local corrections
    and, for the Schwinger model, the fermions.  Only 2D: in more dimensions the plaquettes obey
    the Bianchi identity.

    ``kappa`` is the theory's ``beta`` or, for models conditioned on beta, each sample's value
    (``couplings={"beta": tensor}``); it must be positive.
    """

    takes_couplings = True  # LatticeFlow passes per-sample coupling values (conditioned models)

    def __init__(self, lattice_shape, beta: float):
        if len(lattice_shape) != 2:
            raise InputError(f"the plaquette prior is for 2D lattices (in more dimensions plaquettes are not independent); "
                             f"got a {len(lattice_shape)}D lattice: use prior='haar'")
        _check_concentration(beta)
        super().__init__((2, *lattice_shape))
        self.beta = float(beta)

    def _concentration(self, n, couplings, device):
        beta = (couplings or {}).get("beta", self.beta)
        return torch.as_tensor(beta, dtype=torch.float64, device=device).expand(n)

    def forward(self, num_samples=1, couplings=None):
        kappa = self._concentration(num_samples, couplings, self.device)
        lattice = self.shape[1:]
        loc = torch.zeros(num_samples, *lattice, dtype=torch.float64, device=self.device)
        plaquettes = torch.distributions.VonMises(loc, kappa[:, None, None].expand_as(loc)).sample()
        plaquettes[:, -1, -1] = 0.0
        plaquettes[:, -1, -1] = -plaquettes.sum((1, 2))
        uniform = torch.rand(num_samples, 2 + math.prod(lattice), dtype=torch.float64, device=self.device)
        angles = math.pi - 2 * math.pi * uniform
        links = links_from_plaquettes(plaquettes, angles[:, :2])
        links = gauge_transform_angles(links, angles[:, 2:].reshape(num_samples, *lattice)).to(self.precision)
        return links, self.log_prob(links, couplings)

    def log_prob(self, z, couplings=None):
        kappa = self._concentration(z.shape[0], couplings, z.device)
        cosines = torch.cos(plaquette_angles(z, 0, 1)).to(torch.float64)
        free = cosines.flatten(1).sum(-1) - cosines[:, -1, -1]
        n_free = cosines[0].numel() - 1
        log_i0 = torch.log(torch.special.i0e(kappa)) + kappa
        return kappa * free - n_free * log_i0 - 2 * cosines[0].numel() * math.log(2 * math.pi)

    @staticmethod
    def first_layers(theory, condition, context_channels: int) -> list:
        """The one plaquette this prior leaves near uniform is mapped first
        (:class:`gaugeflow.flows.u1_global.PlaquetteConstraintLayer`), starting from the transport
        to its large-volume target marginal, von Mises at beta (over the range of a model
        conditioned on beta)."""
        beta = ((condition["low"], condition["high"]) if condition and condition["coupling"] == "beta"
                else theory.couplings["beta"])
        return [PlaquetteConstraintLayer(theory.lattice_shape, CONSTRAINT_BINS, context_channels, beta=beta)]

    @staticmethod
    def preferred_estimator(condition) -> str | None:
        """``reparam`` for models conditioned on beta: the constraint layer's steep spline makes the
        path gradient of its rotation far noisier there (benchmarks/README.md); no preference
        otherwise."""
        return "reparam" if (condition or {}).get("coupling") == "beta" else None


def _check_concentration(beta):
    if not (math.isfinite(float(beta)) and float(beta) > 0):
        raise InputError(f"the plaquette prior needs beta > 0 (its von Mises concentration), got {beta}; "
                         f"use prior='haar'")


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


def _no_layers(theory, condition, context_channels: int) -> list:
    return []


def _no_preference(condition) -> None:
    return None


@dataclass(frozen=True)
class PriorEntry:
    """A registered prior: ``build(theory, condition) -> BaseDistribution``, and what it asks of
    the models built on it: ``first_layers(theory, condition, context_channels)``, the layers
    that go first (none by default), and ``estimator(condition)``, the gradient estimator it
    prefers (``None``: no preference, the training default)."""

    build: Callable
    first_layers: Callable[..., list] = _no_layers
    estimator: Callable[..., str | None] = _no_preference


_PRIORS: dict[type, dict[str, PriorEntry]] = {}


def register_prior(field_type: type, name: str, build: Callable, *, first_layers: Callable | None = None,
                   estimator: Callable | None = None) -> None:
    """Offer ``build(theory, condition) -> BaseDistribution`` as ``prior=name`` for flows on
    ``field_type`` fields (``condition``: the architecture's conditioning dict or ``None``).
    The first prior registered for a field type is its :func:`plain_prior`.  A prior that
    needs its own first layers or prefers a gradient estimator declares them here
    (:class:`PriorEntry`)."""
    _PRIORS.setdefault(field_type, {})[name] = PriorEntry(build, first_layers or _no_layers,
                                                          estimator or _no_preference)


def _priors_of(theory) -> dict:
    for cls in type(theory.field).__mro__:
        if cls in _PRIORS:
            return _PRIORS[cls]
    raise InputError(f"no flow prior for fields of type {type(theory.field).__name__} (theory {theory.name})")


def plaquette_prior_applies(theory) -> bool:
    """Whether :class:`PlaquettePrior` fits ``theory``: 2D U(1) links with a Wilson ``beta``."""
    return (isinstance(theory.field, AngleField) and theory.is_gauge_theory and theory.dimension == 2
            and theory.couplings.get("beta", 0) > 0)


def plain_prior(theory) -> str:
    """The field type's first registered prior (Haar, or normal for real fields): the one every
    model had before architecture version 3."""
    return next(iter(_priors_of(theory)))


def default_prior(theory) -> str:
    """The prior a model of ``theory`` gets when none is named: ``plaquette`` for 2D U(1) gauge
    fields at beta > 0 (far closer to the target at every volume), else :func:`plain_prior`."""
    return "plaquette" if plaquette_prior_applies(theory) else plain_prior(theory)


def _entry(theory, name: str) -> PriorEntry:
    priors = _priors_of(theory)
    if name not in priors:
        raise InputError(f"prior {name!r} is not available for {theory.name}; choose {', '.join(priors)}")
    return priors[name]


def prior_for(theory, name: str | None = None, condition: dict | None = None) -> BaseDistribution:
    """The prior ``name`` (``None``: :func:`default_prior`) for flows of ``theory``."""
    return _entry(theory, default_prior(theory) if name is None else name).build(theory, condition)


def prior_first_layers(theory, name: str, condition: dict | None, context_channels: int) -> list:
    """The layers that the prior ``name`` puts first in a model of ``theory`` (usually none)."""
    return list(_entry(theory, name).first_layers(theory, condition, context_channels))


def preferred_estimator(theory, name: str, condition: dict | None) -> str | None:
    """The gradient estimator that the prior ``name`` prefers for a model of ``theory`` with this
    ``condition`` (``None``: no preference)."""
    return _entry(theory, name).estimator(condition)


def _plaquette_prior(theory, condition):
    if not theory.is_gauge_theory:
        raise InputError(f"the plaquette prior is for gauge fields; {theory.name} is no gauge theory")
    if "beta" not in theory.couplings:
        raise InputError(f"the plaquette prior's concentration is beta; {theory.name} has couplings "
                         f"{', '.join(theory.couplings)}: use prior='haar'")
    if condition is not None and condition["coupling"] == "beta":
        _check_concentration(condition["low"])
    return PlaquettePrior(theory.lattice_shape, theory.couplings["beta"])


register_prior(RealField, "normal", lambda theory, condition: DiagGaussian(theory.config_shape, trainable=False))
register_prior(AngleField, "haar", lambda theory, condition: UniformAngles(theory.config_shape))
register_prior(AngleField, "plaquette", _plaquette_prior, first_layers=PlaquettePrior.first_layers,
               estimator=PlaquettePrior.preferred_estimator)
register_prior(SUNField, "haar",
               lambda theory, condition: HaarSUN((theory.dimension, *theory.lattice_shape), theory.field.n_colors))
