"""One contract for every flow model, and the registry of model kinds.

A model kind is a class implementing :class:`FlowModel`; samplers, checkpoints, reweighting
and the command line use only this contract, never ``isinstance`` tests, so a new kind is one
class and one :func:`register_model_kind` line.  Two kinds are built in:

* ``flow`` -- :class:`gaugeflow.flows.model.LatticeFlow`, a normalizing flow of the theory's
  field (its state ``x`` is the field);
* ``pseudofermion`` -- :class:`gaugeflow.flows.pseudofermion_flow.PseudofermionFlow`, the
  joint model ``q(U) q(phi | U)`` of a gauge field and its pseudofermions (its state is
  ``(U, phi)``).

A model's kind is its architecture's ``model_kind`` field (``flow`` where absent: every model
before joint models existed; older joint architectures are recognised by their
``pseudofermion_kappa`` field and given the field when loaded).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from gaugeflow.lattice.errors import InputError

MODEL_KIND_KEY = "model_kind"


class FlowModel(abc.ABC):
    """What every flow model provides.  ``x`` is the model's state (a field, or a joint state);
    densities are ``[B]`` float64; ``context`` is a conditioned model's coupling value."""

    architecture: dict  # everything needed to build the model again (stored in checkpoints)

    @property
    @abc.abstractmethod
    def theory(self):
        """The lattice theory the model samples."""

    @abc.abstractmethod
    def sample(self, num_samples: int = 1, context=None):
        """``(x, log q(x))`` for ``num_samples`` independent samples."""

    @abc.abstractmethod
    def log_prob(self, x, context=None):
        """``log q(x)``, exact."""

    @abc.abstractmethod
    def target_log_prob(self, x, context=None):
        """``log p(x)`` up to a constant: ``-S`` (and, for joint states, the auxiliary part)."""

    @classmethod
    @abc.abstractmethod
    def build(cls, arch: dict) -> FlowModel:
        """An untrained model of the architecture ``arch``."""

    @classmethod
    @abc.abstractmethod
    def from_weights(cls, state_dict: dict, arch: dict) -> FlowModel:
        """The model of ``arch`` with trained weights ``state_dict`` (of any volume of the same
        dimension: the layers' weights carry over, priors and masks belong to ``arch``)."""

    @abc.abstractmethod
    def transfer_weights(self, state_dict: dict) -> None:
        """Start from the weights of a model of the same kind trained on another volume or at
        other couplings (``--init-from``)."""

    def physical_field(self, x):
        """The configurations in ``x`` that observables are measured on."""
        return x

    def metropolis_sampler(self, source: str = ""):
        """The independence-Metropolis sampler on this model's density."""
        from gaugeflow.hmc.flow_metropolis import FlowMetropolisSampler

        return FlowMetropolisSampler(self, source)


@dataclass(frozen=True)
class ModelKind:
    name: str
    cls: type
    for_theory: Callable  # whether `gaugeflow train` builds this kind for a theory
    architecture: Callable  # the kind's architecture from a plain flow's


_KINDS: dict[str, ModelKind] = {}


def register_model_kind(name: str, cls: type, *, for_theory: Callable | None = None,
                        architecture: Callable | None = None) -> ModelKind:
    """Register a :class:`FlowModel` class as kind ``name``; ``for_theory(theory)`` says where
    ``gaugeflow train`` builds it instead of a plain flow, ``architecture(flow_arch)`` makes its
    architecture from a plain flow's."""
    if not issubclass(cls, FlowModel):
        raise InputError(f"a model kind must implement gaugeflow.flows.contract.FlowModel; {cls.__name__} does not")
    kind = ModelKind(name, cls, for_theory or (lambda theory: False),
                     architecture or (lambda arch: dict(arch, **{MODEL_KIND_KEY: name})))
    _KINDS[name] = kind
    return kind


def _builtin_kinds() -> dict[str, ModelKind]:
    from . import model, pseudofermion_flow  # noqa: F401 (they register themselves)

    return _KINDS


def kind_of(arch: dict) -> ModelKind:
    """The kind of model ``arch`` describes."""
    name = arch.get(MODEL_KIND_KEY) or ("pseudofermion" if "pseudofermion_kappa" in arch else "flow")
    kinds = _builtin_kinds()
    if name not in kinds:
        raise InputError(f"unknown model kind {name!r}; registered: {', '.join(kinds)}")
    return kinds[name]


def model_kind_names() -> tuple[str, ...]:
    return tuple(_builtin_kinds())


def model_architecture(theory, flow_architecture: dict) -> dict:
    """The architecture ``gaugeflow train`` builds for ``theory``: that of the first registered
    kind made for the theory (a joint pseudofermion model for ``schwinger-pseudofermion``),
    else the plain flow's."""
    for kind in _builtin_kinds().values():
        if kind.for_theory(theory):
            return kind.architecture(flow_architecture)
    return flow_architecture


def build_model(arch: dict) -> FlowModel:
    """An untrained model of the kind and architecture ``arch``."""
    return kind_of(arch).cls.build(arch)


def model_from_weights(state_dict: dict, arch: dict) -> FlowModel:
    return kind_of(arch).cls.from_weights(state_dict, arch)
