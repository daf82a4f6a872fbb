"""The interface every lattice theory implements, and how a theory declares itself.

A theory knows its lattice, couplings and field type, and provides the Euclidean action
``S[field]`` (the Boltzmann weight is ``exp(-S)``), the molecular-dynamics force, hot and
cold starts, and per-configuration observables.  All methods are batched over a leading
axis, index order ``[batch, (mu,) x_0, ..., x_{D-1}, (colour, colour)]``.  Actions and
observables are returned in float64 whatever the field precision, because they feed
Metropolis decisions and averages.

A theory is the single place that knows about itself.  It declares

* ``name`` and its couplings (:class:`Coupling`: name, meaning, and whether the action is
  affine in it -- only those can be conditioned on by a flow);
* its options (:class:`Option`), discrete choices of how to treat the theory that are no
  numbers (e.g. the Schwinger model's ``fermions``: exact determinant or pseudofermions).
  Ensembles and models store a theory by ``name`` and couplings only, so a theory with
  options names each instance after them and accepts those names in :meth:`parse_name`;
* ``field``, its field type (:mod:`gaugeflow.lattice.fields`): HMC moves on it, and flow
  priors and coupling layers are chosen by it, never by the theory's name;
* :meth:`Theory.exact_log_partition_function` where ``log Z`` is known exactly;
* :meth:`Theory.action_parts`, the action as a sum of terms with their forces, for
  integrators with multiple time scales (one part unless a theory splits it);
* :meth:`Theory.refresh_auxiliary_fields`, the hook for auxiliary fields such as
  pseudofermions: once per HMC trajectory it may draw them (a heat-bath step at fixed
  field) and return the theory whose action holds them fixed for that trajectory.

and registers with :func:`gaugeflow.lattice.theories.register_theory`; the command line
builds ``--theory`` and the coupling options from that registry.

``field``, ``action``, ``force``, :meth:`Theory.action_parts` and
:meth:`Theory.refresh_auxiliary_fields` are what HMC reads: the protocol
:class:`gaugeflow.hmc.hmc.HMCTarget`, which flow HMC's pulled-back action implements as well.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import gauge
from .errors import InputError
from .geometry import check_field_shape, format_lattice_shape, sum_per_config  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Coupling:
    """A coupling a theory takes: its name (also the command-line option ``--name``), what it
    means, and whether the action is affine in it (``S(c) = S(0) + c [S(1) - S(0)]``), which is
    what lets one flow model be conditioned on a range of it."""

    name: str
    description: str
    affine: bool = True


@dataclass(frozen=True)
class Option:
    """A discrete choice a theory offers (also the command-line option ``--name``): its name,
    what it means, and the allowed values, the first of which is the default."""

    name: str
    description: str
    choices: tuple[str, ...]

    @property
    def default(self) -> str:
        return self.choices[0]

    def check(self, value) -> str:
        if value not in self.choices:
            raise InputError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        return value


@dataclass(frozen=True)
class ActionPart:
    """One term of a theory's action and its force (the tangent-space gradient of that term),
    both batched like :meth:`Theory.action` and :meth:`Theory.force`."""

    name: str
    action: Callable[[torch.Tensor], torch.Tensor]
    force: Callable[[torch.Tensor], torch.Tensor]


class Theory(abc.ABC):
    """Base class of all theories.

    Subclasses set the class attributes ``name`` and ``couplings_declared`` (a tuple of
    :class:`Coupling`), set ``self.field`` (a :class:`gaugeflow.lattice.fields.FieldType`) in
    ``__init__``, and implement the abstract methods.  The constructor takes the lattice shape
    and every coupling as a keyword argument; a theory with ``options_declared`` (a tuple of
    :class:`Option`) takes those as keyword arguments of its own ``__init__`` as well.
    """

    name: str = "theory"
    couplings_declared: tuple[Coupling, ...] = ()
    coupling_names: tuple[str, ...] = ()  # derived from couplings_declared
    options_declared: tuple[Option, ...] = ()
    option_names: tuple[str, ...] = ()  # derived from options_declared
    is_gauge_theory: bool = False
    # True where S(-field) = S(field) for every configuration (phi^4's Z2): flows may then
    # symmetrise their density over the sign flip (gaugeflow.flows.model, ``symmetrise``)
    sign_flip_symmetric: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.coupling_names = tuple(c.name for c in cls.couplings_declared)
        cls.option_names = tuple(o.name for o in cls.options_declared)

    def __init__(self, lattice_shape, **couplings):
        self.lattice_shape = tuple(int(extent) for extent in lattice_shape)
        missing = [c for c in self.coupling_names if couplings.get(c) is None]
        if missing:
            raise InputError(f"theory {self.name!r} needs coupling(s) {', '.join(missing)}")
        unknown = set(couplings) - set(self.coupling_names)
        if unknown:
            raise InputError(f"theory {self.name!r} takes no coupling(s) {', '.join(sorted(unknown))}")
        self.couplings = {c: float(couplings[c]) for c in self.coupling_names}
        for name, value in self.couplings.items():
            if not math.isfinite(value):
                raise InputError(f"coupling {name} must be finite, got {value}")

    # -- description --------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return len(self.lattice_shape)

    @property
    def volume(self) -> int:
        return math.prod(self.lattice_shape)

    @property
    @abc.abstractmethod
    def config_shape(self) -> tuple[int, ...]:
        """Shape of one configuration (without the batch axis)."""

    def storage_dtype(self, precision: torch.dtype = torch.float64) -> torch.dtype:
        """Tensor dtype of a field at the given real precision."""
        return precision

    def __repr__(self):
        couplings = ", ".join(f"{k}={v:g}" for k, v in self.couplings.items())
        return f"{type(self).__name__}({format_lattice_shape(self.lattice_shape)}, {couplings})"

    def check_field(self, field: torch.Tensor) -> None:
        check_field_shape(field, self.config_shape, f"{self.name} on {format_lattice_shape(self.lattice_shape)}")

    @classmethod
    def parse_name(cls, name: str) -> dict | None:
        """Extra constructor arguments if ``name`` (lower case) names this theory, else ``None``.

        Families of theories (``su2``, ``su3``, ...) and theories whose instance names carry
        their options (``schwinger-pseudofermion``) override this."""
        return {} if name == cls.name.lower() else None

    def coupling(self, name: str) -> Coupling:
        """The declaration of coupling ``name``."""
        for declared in self.couplings_declared:
            if declared.name == name:
                return declared
        raise InputError(f"{self.name} has no coupling {name!r}; its couplings are {', '.join(self.coupling_names)}")

    def with_couplings(self, **values) -> "Theory":
        """The same theory on the same lattice with some couplings changed."""
        from .theories import make_theory

        return make_theory(self.name, self.lattice_shape, **dict(self.couplings, **values))

    # -- physics ------------------------------------------------------------------------
    @abc.abstractmethod
    def action(self, field: torch.Tensor) -> torch.Tensor:
        """Euclidean action ``S`` per configuration, ``[B]`` float64."""

    def force(self, field: torch.Tensor) -> torch.Tensor:
        """Molecular-dynamics force: the gradient of ``S`` in the field's tangent space.

        Obtained by automatic differentiation of :meth:`action`, so any added action term
        is automatically included; theories override it with an analytic force.
        """
        with torch.enable_grad():
            leaf = field.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.action(leaf).sum(), leaf)
        return self.field.tangent_force(field, gradient)

    def action_parts(self) -> tuple[ActionPart, ...]:
        """The action as a sum of parts, ordered from the finest molecular-dynamics time scale to
        the coarsest (cheap, stiff forces first; Sexton and Weingarten, Nucl. Phys. B 380 (1992)
        665); their actions and forces add up to :meth:`action` and :meth:`force`.  One part
        by default; the Schwinger model has gauge and fermion parts."""
        return (ActionPart(self.name, self.action, self.force),)

    def refresh_auxiliary_fields(self, field: torch.Tensor, generator=None) -> "Theory":
        """Draw auxiliary fields at fixed ``field`` and return the theory to use for one HMC
        trajectory (its action and force hold them fixed).

        Called once at the start of every trajectory.  A theory with pseudofermions draws
        ``phi = D^dagger eta`` (``eta`` Gaussian) per chain here -- an exact heat-bath step of
        the joint distribution -- and returns a theory whose action includes
        ``phi^dagger (D^dagger D)^{-1} phi``.  Theories without auxiliary fields return
        themselves.
        """
        return self

    def exact_log_partition_function(self) -> float | None:
        """``log Z = log int exp(-S)`` where it is known exactly, else ``None``.

        The reference measure is the field type's: Lebesgue on real fields and on U(1)
        angles, the normalised Haar measure on SU(N) links.
        """
        return None

    @abc.abstractmethod
    def hot_start(self, batch: int, *, generator=None, device=None, precision=torch.float64) -> torch.Tensor:
        """Random configurations (disordered start)."""

    @abc.abstractmethod
    def cold_start(self, batch: int, *, device=None, precision=torch.float64) -> torch.Tensor:
        """Ordered configurations."""

    @abc.abstractmethod
    def observables(self, field: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-configuration scalar observables, each ``[B]`` float64."""

    def observable_names(self) -> list[str]:
        probe = self.cold_start(1)
        return list(self.observables(probe))


class GaugeTheory(Theory):
    """Common observables of pure gauge theories with links ``[B, D, x..., (N, N)]``.

    Observables: ``plaquette`` (1 at unit links), ``action_density`` (S / V),
    rectangular ``wilson_loop_RxT``, Polyakov loop (``polyakov_loop_re``, ``polyakov_loop_abs``;
    time is the last axis) and, where defined, ``topological_charge``.
    """

    is_gauge_theory = True
    wilson_loop_sizes = ((1, 2), (2, 2))

    @abc.abstractmethod
    def links_as_matrices(self, field: torch.Tensor) -> torch.Tensor:
        """Links as ``[B, D, x..., N, N]`` complex matrices."""

    def topological_charge(self, field: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"no topological charge for {self.name} in {self.dimension} dimensions")

    @property
    def has_topological_charge(self) -> bool:
        return False

    @abc.abstractmethod
    def random_gauge_transformation(self, batch: int, *, generator=None, device=None, precision=torch.float64):
        """Random gauge transformations ``Omega(x)``, one per configuration."""

    @abc.abstractmethod
    def gauge_transform(self, field: torch.Tensor, transformation: torch.Tensor) -> torch.Tensor:
        """``U_mu(x) -> Omega(x) U_mu(x) Omega(x + mu)^dagger``."""

    def _loop_sizes(self):
        largest = min(self.lattice_shape) // 2
        return [(r, t) for r, t in self.wilson_loop_sizes if max(r, t) <= largest]

    def observables(self, field):
        links = self.links_as_matrices(field)
        result = {
            "action_density": self.action(field) / self.volume,
            "plaquette": gauge.average_plaquette(links).to(torch.float64),
        }
        for r, t in self._loop_sizes():
            result[f"wilson_loop_{r}x{t}"] = gauge.wilson_loop(links, r, t).to(torch.float64)
        polyakov = gauge.polyakov_loop(links)
        result["polyakov_loop_re"] = polyakov.real.to(torch.float64)
        result["polyakov_loop_abs"] = polyakov.abs().to(torch.float64)
        if self.has_topological_charge:
            result["topological_charge"] = self.topological_charge(field)
        return result
