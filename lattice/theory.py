"""The interface every lattice theory implements.

A theory knows its lattice, couplings and field type, and provides the Euclidean action
``S[field]`` (the Boltzmann weight is ``exp(-S)``), the molecular-dynamics force, hot and
cold starts, and per-configuration observables.  All methods are batched over a leading
axis.  Actions and observables are returned in float64 whatever the field precision,
because they feed Metropolis decisions and averages.

Extending a theory (e.g. adding a pseudofermion term for the Schwinger model) means adding
a term to :meth:`Theory.action`; the force follows by automatic differentiation.
"""

from __future__ import annotations

import math

import torch

from . import gauge
from .geometry import check_field_shape, format_lattice_shape


def sum_per_config(values: torch.Tensor) -> torch.Tensor:
    """Sum everything but the batch axis, in float64."""
    return values.reshape(values.shape[0], -1).to(torch.float64).sum(-1)


class Theory:
    """Base class.  Subclasses set ``name``, ``field`` and implement the abstract methods."""

    name: str = "theory"
    coupling_names: tuple[str, ...] = ()
    is_gauge_theory: bool = False

    def __init__(self, lattice_shape, **couplings):
        self.lattice_shape = tuple(int(extent) for extent in lattice_shape)
        missing = [c for c in self.coupling_names if couplings.get(c) is None]
        if missing:
            raise ValueError(f"theory {self.name!r} needs coupling(s) {', '.join(missing)}")
        unknown = set(couplings) - set(self.coupling_names)
        if unknown:
            raise ValueError(f"theory {self.name!r} takes no coupling(s) {', '.join(sorted(unknown))}")
        self.couplings = {c: float(couplings[c]) for c in self.coupling_names}
        for name, value in self.couplings.items():
            if not math.isfinite(value):
                raise ValueError(f"coupling {name} must be finite, got {value}")

    # -- description --------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return len(self.lattice_shape)

    @property
    def volume(self) -> int:
        return math.prod(self.lattice_shape)

    @property
    def config_shape(self) -> tuple[int, ...]:
        """Shape of one configuration (without the batch axis)."""
        raise NotImplementedError

    def storage_dtype(self, precision: torch.dtype = torch.float64) -> torch.dtype:
        """Tensor dtype of a field at the given real precision."""
        return precision

    def __repr__(self):
        couplings = ", ".join(f"{k}={v:g}" for k, v in self.couplings.items())
        return f"{type(self).__name__}({format_lattice_shape(self.lattice_shape)}, {couplings})"

    def check_field(self, field: torch.Tensor) -> None:
        check_field_shape(field, self.config_shape, f"{self.name} on {format_lattice_shape(self.lattice_shape)}")

    # -- physics ------------------------------------------------------------------------
    def action(self, field: torch.Tensor) -> torch.Tensor:
        """Euclidean action ``S`` per configuration, ``[B]`` float64."""
        raise NotImplementedError

    def force(self, field: torch.Tensor) -> torch.Tensor:
        """Molecular-dynamics force: the gradient of ``S`` in the field's tangent space.

        Obtained by automatic differentiation of :meth:`action`, so any added action term
        is automatically included.
        """
        with torch.enable_grad():
            leaf = field.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.action(leaf).sum(), leaf)
        return self.field.tangent_force(field, gradient)

    def hot_start(self, batch: int, *, generator=None, device=None, precision=torch.float64) -> torch.Tensor:
        raise NotImplementedError

    def cold_start(self, batch: int, *, device=None, precision=torch.float64) -> torch.Tensor:
        raise NotImplementedError

    def observables(self, field: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-configuration scalar observables, each ``[B]`` float64."""
        raise NotImplementedError

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

    def links_as_matrices(self, field: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def topological_charge(self, field: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"no topological charge for {self.name} in {self.dimension} dimensions")

    @property
    def has_topological_charge(self) -> bool:
        return False

    def random_gauge_transformation(self, batch: int, *, generator=None, device=None, precision=torch.float64):
        raise NotImplementedError

    def gauge_transform(self, field: torch.Tensor, transformation: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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
