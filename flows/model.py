"""Flow models for lattice theories: architecture description, construction, sampling.

A model is a :class:`LatticeFlow`, i.e. a ``normflows.NormalizingFlow`` with the theory's
prior (:mod:`gaugeflow.flows.priors`), a stack of coupling layers and the target ``exp(-S)``.
It is fully described by a JSON-able, versioned *architecture* dict (stored in checkpoints)::

    {"architecture_version": 5, "theory": "u1", "lattice": [8, 8], "couplings": {"beta": 2.0},
     "n_layers": 16, "kernel": "spline", "hidden_channels": [16, 16], "kernel_size": 3,
     "n_bins": 8, "n_mixture": 6, "rectangles": True, "prior": "plaquette", "symmetrise": False,
     "condition": None}

Layers are chosen by the theory's field type (never by its name), through the registry of
:class:`LayerFamily` (:func:`register_layers`):

* real fields (phi^4): checkerboard couplings, alternating parity; kernels ``affine``, ``spline``;
  ``momentum_scaling`` puts a learned propagator in front of them, every momentum mode
  scaled by its own factor (:mod:`gaugeflow.flows.momentum_scaling`);
* U(1) angles and SU(N) links: gauge-equivariant couplings of the ``layer_kind`` the
  architecture names -- ``plaquette`` (the 2D default: plaquette couplings with CNN
  conditioners, :mod:`gaugeflow.flows.u1_coupling`, :mod:`gaugeflow.flows.sun_coupling`, in the
  ``plaquette_order`` of :func:`gaugeflow.flows.masks.gauge_layer_schedule`; for U(1)
  ``rectangles`` adds the 1x2 loops through the active links to the conditioners' input),
  ``staple`` (the default in 3D and 4D: single-link maps in the staple sum with per-link
  MLP conditioners, :mod:`gaugeflow.flows.staple_coupling`; for SU(N >= 3) ``staple_centres``
  ``each`` by default, maps centred on every staple) or ``both``, alternating; kernels
  ``spline``, ``ncp`` (U(1)) and ``spline`` (SU(N)), or any registered for the field type.

With ``"condition": {"coupling": "beta", "low": 1.5, "high": 2.5}`` one model serves a range
of a coupling: its value (rescaled to [-1, 1]) is an extra constant input channel of every
conditioner, and the methods take per-sample coupling values as ``context``.

``symmetrise`` (theories whose action is even in the field, phi^4): the model's density is
the bijection's averaged over the sign flip, ``q_s(phi) = [q(phi) + q(-phi)] / 2``, sampled
as ``s f(z)`` with a random global sign ``s`` (the symmetrised flows of Hackett et al.,
arXiv:2107.00734).  ``q_s`` is exact and Z2 symmetric like the target, and never worse than
``q``: the reverse KL is convex, so ``KL(q_s||p) <= [KL(q||p) + KL(q(-.)||p)] / 2 = KL(q||p)``
for a symmetric ``p``.  In the broken phase reverse-KL training settles the bijection on one
vacuum; ``q_s`` then restores the other.  Training minimises the bijection's own ``KL(q||p)``
(:func:`bijection_density`), which trains better than ``KL(q_s||p)`` and costs one inverse pass
per density instead of two (benchmarks/README.md); in use each density of ``q_s`` costs a
second inverse pass.  Flow HMC runs on the bijection itself.

``prior`` names the base distribution (:mod:`gaugeflow.flows.priors`): ``plaquette`` for 2D U(1)
gauge fields (independent von Mises plaquettes, the default there), ``haar`` for U(1) and SU(N)
links, ``normal`` for real fields.  A prior may put layers of its own first (the plaquette
prior's constraint layer, :func:`gaugeflow.flows.priors.prior_first_layers`).

All conditioners are periodic CNNs or per-site MLPs, so weights trained on one lattice run on
another of the same dimension (:func:`transfer_weights`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from normflows import NormalizingFlow
from torch.utils.checkpoint import checkpoint

from gaugeflow.lattice.backend import check_memory
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.fields import AngleField, RealField, SUNField
from gaugeflow.lattice.theories import make_theory

from .contract import FlowModel, register_model_kind
from .estimators import frozen_parameters
from .kernels import CircularSplineKernel, NCPKernel
from .masks import gauge_layer_schedule, staple_layer_schedule
from .momentum_scaling import MomentumScaling
from .priors import default_prior, plain_prior, prior_first_layers, prior_for
from .scalar_coupling import ScalarCoupling
from .staple_coupling import SUNChairs, SUNStapleCoupling, U1Chairs, U1StapleCoupling
from .sun_coupling import SpectralTransform, SUNSpectralCoupling
from .target import LatticeTarget
from .transforms import AffineTransform, SplineTransform
from .u1_coupling import U1PlaquetteCoupling, rectangle_loop

# 2: U(1) conditioners may see rectangles (``rectangles``); 3: ``prior``; 4: ``symmetrise``;
# 5: real fields may start with a learned propagator (``momentum_scaling``); 6: gauge fields
# name their ``layer_kind`` (staple couplings) and the plaquette layers' ``plaquette_order``;
# 7: SU(N) models name their ``staple_centres`` (the default became ``each`` for N >= 3);
# 8: staple conditioners may see the chairs through the link (``chairs``)
ARCHITECTURE_VERSION = 8
# None: priors.default_prior; symmetrise None: on where the theory is sign-flip symmetric
COMMON_DEFAULTS = {"kernel_size": 3, "n_bins": 8, "n_mixture": 6, "prior": None, "symmetrise": None}


@dataclass(frozen=True)
class LayerFamily:
    """How flows are built for one field type.

    ``build(theory, arch, transform, context_channels)`` returns the coupling layers;
    ``kernels`` maps kernel names to element-wise transform classes; ``defaults`` holds the
    architecture defaults (chosen for acceptance per CPU minute, benchmarks/README.md).
    """

    build: Callable
    kernels: dict
    defaults: dict = field(default_factory=dict)


_FAMILIES: dict[type, LayerFamily] = {}


def register_layers(field_type: type, family: LayerFamily) -> None:
    """Use ``family`` for theories whose field is a ``field_type`` (or a subclass of it)."""
    _FAMILIES[field_type] = family


def _family_of_type(field_type: type) -> LayerFamily:
    for cls in field_type.__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
    raise InputError(f"no flow layers for fields of type {field_type.__name__}")


def layer_family(theory) -> LayerFamily:
    """The layer family for ``theory``'s field type (the nearest registered base class)."""
    return _family_of_type(type(theory.field))


def register_kernel(field_type: type, name: str, transform_class: type) -> None:
    """Offer an element-wise transform as ``kernel=name`` for flows of ``field_type``."""
    _family_of_type(field_type).kernels[name] = transform_class


def _checkerboard_layers(theory, arch, transform, context_channels):
    first = [MomentumScaling(theory.lattice_shape)] if arch["momentum_scaling"] else []
    return first + [
        ScalarCoupling(theory.lattice_shape, i % 2, transform, arch["hidden_channels"], arch["kernel_size"], context_channels)
        for i in range(arch["n_layers"])
    ]


LAYER_KINDS = ("plaquette", "staple", "both")
# staple couplings where the architecture names no width or depth: 2 sweeps of the 2 D layers
# that update every link once (benchmarks/README.md, "Four dimensions")
# sweeps: each link is updated this many times by the default depth; one sweep of layers
# centred on every staple (7 maps a link in 4D) beats two of single maps at equal cost
STAPLE_DEFAULTS = {"hidden_channels": [32, 32], "sweeps": {"sum": 2, "each": 1}}


def default_staple_centres(theory) -> str:
    """``each`` for SU(N >= 3), where one map of ``U W`` misses part of the link's conditional,
    ``sum`` for SU(2), where it does not (:class:`gaugeflow.flows.staple_coupling.SUNStapleCoupling`;
    measurements in benchmarks/README.md)."""
    return "each" if theory.n_colors >= 3 else "sum"


def default_chairs(theory) -> bool:
    """Whether staple conditioners see the chairs by default: yes for U(1) and SU(2), where at equal
    CPU time they lower the loss by 7-29 nats (4^4), no for SU(N >= 3), where a step costs 1.5
    times as much and SU(3) at beta = 2 gained nothing in 10 CPU minutes (benchmarks/README.md)."""
    return getattr(theory, "n_colors", 1) < 3


def default_layer_kind(theory) -> str:
    """``plaquette`` in 2D (exact 2D physics with the U(1) plaquette prior), ``staple`` above:
    the plaquette couplings' convolutions cost most of a 4D training step (benchmarks/README.md)."""
    return "plaquette" if theory.dimension <= 2 else "staple"


def _gauge_layers(theory, arch, plaquette_layer, staple_layer):
    """The layers of a gauge model: ``n_layers`` plaquette couplings (:func:`gauge_layer_schedule`),
    staple couplings (:func:`staple_layer_schedule`), or both, alternating, for ``layer_kind``
    ``plaquette``, ``staple``, ``both``.  ``plaquette_layer(mu, nu, offset)`` and
    ``staple_layer(mu, parity)`` build one layer."""
    # upgrade_architecture gives every gauge architecture both keys
    kind, n_layers, order = arch["layer_kind"], arch["n_layers"], arch["plaquette_order"]
    if kind == "plaquette":
        return [plaquette_layer(*labels) for labels in gauge_layer_schedule(theory.dimension, n_layers, order)]
    if kind == "staple":
        return [staple_layer(*labels) for labels in staple_layer_schedule(theory.dimension, n_layers)]
    staples = staple_layer_schedule(theory.dimension, (n_layers + 1) // 2)
    plaquettes = gauge_layer_schedule(theory.dimension, n_layers // 2, order)
    layers = []
    for i in range(n_layers):
        layers.append(staple_layer(*staples[i // 2]) if i % 2 == 0 else plaquette_layer(*plaquettes[i // 2]))
    return layers


def _chairs(theory, arch, chairs: type, *layer) -> list:
    """The staple layer ``layer``'s loop features: the chairs where the architecture asks for them
    and the lattice has them (3D and up)."""
    return [chairs(theory.lattice_shape, *layer)] if arch["chairs"] and theory.dimension > 2 else []


def _u1_layers(theory, arch, transform, context_channels):
    if not theory.is_gauge_theory:
        raise InputError(f"the U(1) flow layers are gauge-equivariant couplings; {theory.name} is no gauge theory")
    return _gauge_layers(
        theory, arch,
        lambda mu, nu, offset: U1PlaquetteCoupling(theory.lattice_shape, mu, nu, offset, transform, arch["hidden_channels"],
                                                   arch["kernel_size"], context_channels,
                                                   loops=(rectangle_loop,) if arch["rectangles"] else ()),
        lambda mu, parity: U1StapleCoupling(theory.lattice_shape, mu, parity, transform, arch["hidden_channels"],
                                            context_channels, loops=_chairs(theory, arch, U1Chairs, mu, parity)),
    )


def _sun_layers(theory, arch, transform, context_channels):
    return _gauge_layers(
        theory, arch,
        lambda mu, nu, offset: SUNSpectralCoupling(theory.lattice_shape, theory.n_colors, mu, nu, offset,
                                                   arch["hidden_channels"], arch["kernel_size"],
                                                   context_channels=context_channels, transform=transform),
        lambda mu, parity: SUNStapleCoupling(theory.lattice_shape, theory.n_colors, mu, parity, transform,
                                             arch["hidden_channels"], context_channels,
                                             centres=arch.get("staple_centres") or "sum",
                                             loops=_chairs(theory, arch, SUNChairs, theory.n_colors, mu, parity)),
    )


register_layers(RealField, LayerFamily(
    _checkerboard_layers, {"affine": AffineTransform, "spline": SplineTransform},
    # with the momentum scaling on by default (its effect: benchmarks/README.md)
    {"n_layers": 8, "kernel": "affine", "hidden_channels": [16, 16], "momentum_scaling": True},
))
# gauge fields: "layer_kind" None is default_layer_kind(theory); "n_layers" and "hidden_channels"
# are the plaquette couplings' defaults (STAPLE_DEFAULTS for staple couplings)
register_layers(AngleField, LayerFamily(
    _u1_layers, {"spline": CircularSplineKernel, "ncp": NCPKernel},
    {"n_layers": 16, "kernel": "spline", "hidden_channels": [16, 16], "rectangles": True,  # lower KL at equal cost (benchmarks)
     # chairs None: default_chairs(theory); no chairs exist in 2D
     "layer_kind": None, "plaquette_order": "offsets", "chairs": None},
))
register_layers(SUNField, LayerFamily(
    _sun_layers, {"spline": SpectralTransform},
    {"n_layers": 16, "kernel": "spline", "hidden_channels": [16, 16], "layer_kind": None, "plaquette_order": "offsets",
     "staple_centres": None, "chairs": None},
))


def kernel_class(theory, name: str):
    """The element-wise transform class registered as ``name`` for ``theory``'s field type."""
    kernels = layer_family(theory).kernels
    if name not in kernels:
        raise InputError(f"kernel {name!r} is not available for {theory.name}; choose {', '.join(kernels)}")
    return kernels[name]


def default_architecture(theory) -> dict:
    """The model options used when none are given, for ``theory``'s field type."""
    return {**COMMON_DEFAULTS, **layer_family(theory).defaults}


def _condition(theory, condition):
    if condition is None:
        return None
    name, low, high = condition
    if name not in theory.couplings:
        raise InputError(f"cannot condition on {name!r}: {theory.name} has couplings {', '.join(theory.couplings)}")
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(f"conditioning range for {name} must be finite, got {low}..{high}")
    if not low < high:
        raise InputError(f"conditioning range for {name} must have low < high, got {low}..{high}")
    if not low <= theory.couplings[name] <= high:
        raise InputError(f"{name}={theory.couplings[name]:g} lies outside the conditioning range {low:g}..{high:g}")
    return {"coupling": name, "low": low, "high": high}


def architecture(theory, condition=None, **overrides) -> dict:
    """The architecture dict for ``theory`` with ``overrides`` applied (``None`` = default).

    ``condition=("beta", 1.5, 2.5)`` makes the model serve that range of the coupling.
    """
    arch = default_architecture(theory)
    given = {k: v for k, v in overrides.items() if v is not None}
    arch.update(given)
    unknown = sorted(set(arch) - set(default_architecture(theory)))
    if unknown:
        raise InputError(f"unknown architecture option(s) {', '.join(unknown)}")
    if "layer_kind" in arch:
        arch["layer_kind"] = arch["layer_kind"] or default_layer_kind(theory)
        if arch["layer_kind"] not in LAYER_KINDS:
            raise InputError(f"unknown layer kind {arch['layer_kind']!r}; choose {', '.join(LAYER_KINDS)}")
        if arch["layer_kind"] == "staple":
            if "hidden_channels" not in given:
                arch["hidden_channels"] = STAPLE_DEFAULTS["hidden_channels"]
    if "staple_centres" in arch:
        arch["staple_centres"] = arch["staple_centres"] or default_staple_centres(theory)
        if arch["staple_centres"] not in SUNStapleCoupling.CENTRES:
            raise InputError(f"unknown staple centres {arch['staple_centres']!r}; choose {', '.join(SUNStapleCoupling.CENTRES)}")
    if "chairs" in arch:
        arch["chairs"] = default_chairs(theory) if arch["chairs"] is None else bool(arch["chairs"])
    if arch.get("layer_kind") == "staple" and "n_layers" not in given:
        sweeps = STAPLE_DEFAULTS["sweeps"][arch.get("staple_centres") or "sum"]
        arch["n_layers"] = sweeps * 2 * theory.dimension
    arch["hidden_channels"] = [int(c) for c in arch["hidden_channels"]]
    kernel_class(theory, arch["kernel"])
    for key in ("n_layers", "kernel_size", "n_bins", "n_mixture"):
        arch[key] = int(arch[key])
        if arch[key] < 1:
            raise InputError(f"{key} must be at least 1, got {arch[key]}")
    if any(c < 1 for c in arch["hidden_channels"]):
        raise InputError(f"hidden_channels must all be at least 1, got {arch['hidden_channels']}")
    if "momentum_scaling" in arch:
        arch["momentum_scaling"] = bool(arch["momentum_scaling"])
    arch["prior"] = arch["prior"] or default_prior(theory)
    arch["symmetrise"] = theory.sign_flip_symmetric if arch["symmetrise"] is None else bool(arch["symmetrise"])
    if arch["symmetrise"] and not theory.sign_flip_symmetric:
        raise InputError(f"symmetrise needs an action even in the field; {theory.name}'s is not declared so")
    condition = _condition(theory, condition)
    prior_for(theory, arch["prior"], condition)  # refuse a prior that does not fit, naming it
    return {
        "architecture_version": ARCHITECTURE_VERSION,
        "theory": theory.name,
        "lattice": list(theory.lattice_shape),
        "couplings": dict(theory.couplings),
        **arch,
        "condition": condition,
    }


def upgrade_architecture(arch: dict) -> dict:
    """An architecture dict in the current version (checkpoints before versioning are version 0:
    the same keys, conditioners stored as ``net``; before version 2 U(1) conditioners saw
    plaquettes only; before version 3 every model started from its field type's first prior,
    Haar or normal; before version 4 no model was symmetrised; before version 5 no real-field
    model had a momentum scaling; before version 6 gauge models were plaquette couplings in the
    ``planes`` order; before version 7 SU(N) staple couplings were centred on the staple sum;
    before version 8 staple couplings saw no chairs)."""
    arch = dict(arch)
    version = arch.setdefault("architecture_version", 0)
    if version > ARCHITECTURE_VERSION:
        raise InputError(f"architecture version {version} is newer than this gaugeflow's {ARCHITECTURE_VERSION}")
    if version < 8:
        theory = make_theory(arch["theory"], arch["lattice"], **arch["couplings"])
    if version < 3:
        if version < 2 and "rectangles" in default_architecture(theory):
            arch["rectangles"] = False
        arch["prior"] = plain_prior(theory)
    if version < 4:
        arch["symmetrise"] = False
    if version < 5 and "momentum_scaling" in default_architecture(theory):
        arch["momentum_scaling"] = False
    if "pseudofermion_kappa" in arch:  # joint models before the model_kind field
        arch.setdefault("model_kind", "pseudofermion")
    if version < 6 and "layer_kind" in default_architecture(theory):
        # the two orders are the same sequence of layers in 2D
        arch["layer_kind"], arch["plaquette_order"] = "plaquette", "planes" if theory.dimension > 2 else "offsets"
    if version < 7 and "staple_centres" in default_architecture(theory):
        arch.setdefault("staple_centres", "sum")
    if version < 8 and "chairs" in default_architecture(theory):
        arch.setdefault("chairs", False)
    arch["architecture_version"] = ARCHITECTURE_VERSION
    return arch


def upgrade_state_dict(state_dict: dict, architecture_version: int) -> dict:
    """Model weights of an older architecture version under today's parameter names."""
    if architecture_version >= 1:
        return state_dict
    return {key.replace(".net.", ".conditioner."): value for key, value in state_dict.items()}


class LatticeFlow(NormalizingFlow, FlowModel):
    """``normflows.NormalizingFlow`` whose log-densities are accumulated in float64.

    normflows starts its sums from ``torch.zeros(len(x))`` (float32, or complex for SU(N)
    links in ``log_prob``); these overrides keep the accumulation real and float64, as
    needed for Metropolis decisions.

    Conditioned models take ``context``: the coupling value per sample (a float or a ``[B]``
    tensor; ``None`` means the architecture's own value).

    ``sample`` and ``log_prob`` are the model's density (symmetrised where the architecture
    says so); ``forward_and_log_det`` and ``inverse_and_log_det`` are the bijection alone.
    """

    def __init__(self, q0, flows, p, architecture: dict):
        super().__init__(q0, flows, p)
        self.architecture = architecture
        self.condition = architecture.get("condition")
        self.symmetrise = bool(architecture.get("symmetrise"))
        self._passes = {False: self._through_layers, True: self._through_layers_inverse}
        self.recompute = False

    @property
    def theory(self):
        return self.p.theory

    # the model contract (gaugeflow.flows.contract) beyond sample/log_prob/target_log_prob
    @classmethod
    def build(cls, arch: dict) -> LatticeFlow:
        return build_flow(arch, cls)

    @classmethod
    def from_weights(cls, state_dict: dict, arch: dict) -> LatticeFlow:
        model = build_flow(arch, cls)
        weights = [v for k, v in state_dict.items() if k.startswith("flows.") and v.is_floating_point()]
        if weights:
            model = model.to(weights[0].dtype)
        transfer_weights(model, state_dict)
        return model

    def transfer_weights(self, state_dict: dict) -> None:
        transfer_weights(self, state_dict)

    def coupling_values(self, context, n: int, device=None):
        """Per-sample values of the conditioned coupling (``None`` for unconditioned models)."""
        if self.condition is None:
            return None
        if context is None:
            context = self.theory.couplings[self.condition["coupling"]]
        return torch.as_tensor(context, dtype=torch.float64, device=device).expand(n).clone()

    def random_coupling_values(self, n: int, device=None):
        """Couplings drawn uniformly from the conditioning range (training), or ``None``."""
        if self.condition is None:
            return None
        low, high = self.condition["low"], self.condition["high"]
        return low + (high - low) * torch.rand(n, dtype=torch.float64, device=device)

    def _layer_context(self, values):
        if values is None:
            return None
        low, high = self.condition["low"], self.condition["high"]
        return (2 * values - (low + high)) / (high - low)

    def _through_layers(self, z, values):
        log_det = torch.zeros(len(z), device=z.device, dtype=torch.float64)
        for flow in self.flows:
            z, log_d = self._layer_pass(flow, flow, z, values)
            log_det = log_det + log_d
        return z, log_det

    def _through_layers_inverse(self, x, values):
        log_det = torch.zeros(len(x), device=x.device, dtype=torch.float64)
        for flow in reversed(self.flows):
            x, log_d = self._layer_pass(flow, flow.inverse, x, values)
            log_det = log_det + log_d
        return x, log_det

    def _layer_pass(self, layer, run, field, values):
        arguments = (field,) if values is None else (field, values)
        if not (self.recompute and torch.is_grad_enabled()):
            return run(*arguments)
        # The layer's parameters must require gradients in the recomputation exactly when they
        # did in the pass itself: path gradients run the inverse pass with them frozen, and a
        # recomputation that saw them unfrozen would save other tensors than the pass did.
        frozen = not any(p.requires_grad for p in layer.parameters())
        return checkpoint(
            run, *arguments, use_reentrant=False, preserve_rng_state=False,
            context_fn=lambda: (contextlib.nullcontext(), frozen_parameters(layer) if frozen else contextlib.nullcontext()))

    def recompute_in_backward(self, enabled: bool = True) -> LatticeFlow:
        """Keep only each layer's input for the backward pass and recompute the layer there
        (activation checkpointing, Chen et al., arXiv:1604.06174): the autograd graph held
        during a training step shrinks from all layers' intermediates to one layer's, for about
        one more forward pass of compute.  Gradients and densities are unchanged to rounding.
        Not combined with :meth:`compile_layers` (torch.compile does not trace it)."""
        self.recompute = bool(enabled)
        return self

    def compile_layers(self, mode: str | None = None, **options) -> LatticeFlow:
        """Run the passes through the layers (both directions) as ``torch.compile``d graphs:
        a few fused kernels instead of thousands of operator launches per training step.

        ``mode`` defaults to ``"reduce-overhead"`` (CUDA graphs) for a model on a CUDA device
        and to torch's default elsewhere; ``options`` go to ``torch.compile``.  The densities
        are those of the eager layers to rounding (the compiler may reorder float operations).
        The prior's sampling stays eager, so random numbers are drawn as without compiling.
        Weights, state dict and checkpoints are unaffected.
        """
        if mode is None and next(self.parameters()).device.type == "cuda":
            mode = "reduce-overhead"
        self._passes = {inverse: torch.compile(run, mode=mode, **options)
                        for inverse, run in ((False, self._through_layers), (True, self._through_layers_inverse))}
        return self

    def forward_and_log_det(self, z, context=None):
        values = self._layer_context(self.coupling_values(context, len(z), z.device))
        return self._passes[False](z, values)

    def inverse_and_log_det(self, x, context=None):
        values = self._layer_context(self.coupling_values(context, len(x), x.device))
        return self._passes[True](x, values)

    def _prior_couplings(self, context, n: int, device=None):
        """``{"couplings": {name: values}}`` for a prior that follows a conditioned coupling."""
        if self.condition is None or not getattr(self.q0, "takes_couplings", False):
            return {}
        values = self.coupling_values(context, n, device or self.q0.device)
        return {"couplings": {self.condition["coupling"]: values}}

    def sample(self, num_samples=1, context=None):
        z, log_q = self.q0(num_samples, **self._prior_couplings(context, num_samples))
        x, log_det = self.forward_and_log_det(z, context)
        log_q = log_q.to(torch.float64) - log_det
        if not self.symmetrise:
            return x, log_q
        # q_s(x) = q_s(-x): the partner density is needed whichever sign is kept
        log_q = torch.logaddexp(log_q, self._bijection_log_prob(-x, context)) - math.log(2)
        flip = torch.rand(num_samples, device=x.device) < 0.5
        return torch.where(flip.view(-1, *[1] * (x.dim() - 1)), -x, x), log_q

    def log_prob(self, x, context=None):
        if not self.symmetrise:
            return self._bijection_log_prob(x, context)
        if context is not None and torch.as_tensor(context).dim() > 0:
            context = torch.as_tensor(context).repeat(2)  # per sample, for x and for -x
        log_q, log_q_flipped = self._bijection_log_prob(torch.cat([x, -x]), context).chunk(2)
        return torch.logaddexp(log_q, log_q_flipped) - math.log(2)

    def _bijection_log_prob(self, x, context=None):
        z, log_det = self.inverse_and_log_det(x, context)
        return self.prior_log_prob(z, context) + log_det

    def prior_log_prob(self, z, context=None):
        """``log q_0(z)`` of the prior, float64 (at the given coupling values, as :meth:`sample`)."""
        return self.q0.log_prob(z, **self._prior_couplings(context, len(z), z.device)).to(torch.float64)

    def target_log_prob(self, x, context=None):
        """``-S(x)`` at the given coupling values (the architecture's couplings by default)."""
        return self.p.log_prob(x, self.coupling_values(context, len(x), x.device))


@contextlib.contextmanager
def bijection_density(model):
    """Inside the block ``model.sample`` and ``model.log_prob`` are its bijection's own density,
    unsymmetrised (what training minimises the reverse KL of; module docstring).  Models that
    are not symmetrised, and models of other classes, are left as they are."""
    if not getattr(model, "symmetrise", False):
        yield model
        return
    model.symmetrise = False
    try:
        yield model
    finally:
        model.symmetrise = True


def build_flow(arch: dict, model_class: type | None = None) -> LatticeFlow:
    """Construct an untrained model (exactly its prior) from an architecture dict, as a
    :class:`LatticeFlow` or the subclass ``model_class`` (a registered model kind)."""
    arch = upgrade_architecture(arch)
    theory = make_theory(arch["theory"], arch["lattice"], **arch["couplings"])
    # every layer keeps boolean masks of the lattice (and plaquette planes) and an index of its
    # active sites: refuse a lattice whose masks alone would not fit, before allocating them
    n_planes = theory.dimension * (theory.dimension - 1) // 2
    check_memory(arch["n_layers"] * theory.volume * (10 + n_planes), "cpu",
                 f"the masks of {arch['n_layers']} layers on {'x'.join(map(str, theory.lattice_shape))}")
    transform = kernel_class(theory, arch["kernel"]).from_architecture(theory, arch)
    condition = arch.get("condition")
    context_channels = 1 if condition else 0
    layers = layer_family(theory).build(theory, arch, transform, context_channels)
    # the prior's own first layers (the plaquette prior's constraint layer; no random numbers drawn)
    layers = prior_first_layers(theory, arch["prior"], condition, context_channels) + layers
    target = LatticeTarget(theory, condition["coupling"] if condition else None)
    return (model_class or LatticeFlow)(prior_for(theory, arch["prior"], condition), layers, target, arch)


def transfer_weights(model: LatticeFlow, state_dict: dict) -> None:
    """Load trained conditioner weights into ``model`` (possibly of another volume).

    Only the layers' parameters are taken; priors and masks belong to the new lattice.
    """
    layer_state = {k: v for k, v in state_dict.items() if k.startswith("flows.")}
    result = model.load_state_dict(layer_state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("flows.")]
    if missing or result.unexpected_keys:
        raise InputError(f"weights do not fit this architecture (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")


register_model_kind("flow", LatticeFlow)
