"""The masked coupling layer: one base for every coupling of gaugeflow.

A coupling layer splits the degrees of freedom by masks into *active* ones, which it
transforms element-wise, and *frozen* ones, which it leaves unchanged and which condition
the transform (Dinh, Krueger, Bengio, arXiv:1410.8516; on the lattice Albergo, Kanwar,
Shanahan, arXiv:1904.12072, and gauge-equivariant as in Kanwar et al., arXiv:2003.06413):

    theta = conditioner(features(x)),      x'_active = T(x_active; theta),

so the Jacobian is triangular and ``log det = sum_active log |T'|``.  Three parts are
composed, as in neumc: the *conditioner* (a periodic CNN, :mod:`gaugeflow.flows.conditioners`),
the *element-wise transform* ``T`` (:class:`gaugeflow.flows.transforms.ElementwiseTransform`)
and the *masks* (:mod:`gaugeflow.flows.masks`).

:class:`MaskedCoupling` owns the rules every layer must keep:

* masks are non-persistent buffers (they belong to the lattice, so weights transfer between
  volumes with :func:`gaugeflow.flows.model.transfer_weights`);
* the conditioner's last layer starts at zero with the transform's identity parameters as
  bias, so a new layer is exactly the identity;
* ``context`` (the value of a conditioned coupling) reaches the conditioner;
* parameters are computed once from frozen data (identical before and after the layer, so the
  inverse uses the same ones);
* the log-determinant is accumulated in float64.

Three ways to act on the active sites, with the same density, chosen per layer family for
few operator calls (a training step is launch bound on a GPU; gathering the active sites by
index and scattering them back cost dozens of calls per layer, each with its backward):

* *masked arithmetic* (the default: :meth:`MaskedCoupling.layer_params` gives parameters at
  every site; :meth:`masked_transform`, :meth:`where_active`): the element-wise map runs on
  the whole lattice and ``torch.where`` keeps its result at the active sites; the log-det sums
  ``log|T'|`` over the active sites.  For masks of any shape (the checkerboard of phi^4);
* *strided slices* (:meth:`GaugeCoupling.active_slice`, :meth:`GaugeCoupling.with_active_slice`):
  the active sites of a gauge layer are every fourth slice along one axis, a view; the map runs
  there only (U(1));
* *gathered by index* (:meth:`active_params`, :meth:`active_values`, :meth:`with_active_values`):
  for complex fields, whose slice scatter has no autograd (SU(N), whose subclass overrides
  ``layer_params``).

A subclass says what the features are (:meth:`MaskedCoupling.features`) and how the
transform acts on its field (:meth:`MaskedCoupling.couple`).
"""

from __future__ import annotations

import abc

import torch
from normflows.flows import Flow

from gaugeflow.lattice.gauge import planes
from gaugeflow.lattice.groups import real_dtype

from .conditioners import ConvNet
from .masks import gauge_link_masks
from .transforms import ElementwiseTransform


class MaskedCoupling(Flow, abc.ABC):
    """Base of all coupling layers.

    Parameters
    ----------
    active : boolean mask ``[x...]`` of the sites whose values the layer transforms.
    transform : the element-wise map applied there.
    in_channels : number of feature channels :meth:`features` returns.
    hidden_channels, kernel_size : shape of the periodic CNN conditioner.
    context_channels : 1 for a model conditioned on a coupling, else 0.
    masks : further boolean masks to keep as buffers (e.g. ``frozen`` plaquettes).
    """

    def __init__(self, active: torch.Tensor, transform: ElementwiseTransform, in_channels: int,
                 hidden_channels=(16, 16), kernel_size: int = 3, context_channels: int = 0, **masks):
        super().__init__()
        self.transform = transform
        self.register_buffer("active", active, persistent=False)
        self.register_buffer("active_index", active.flatten().nonzero().squeeze(-1), persistent=False)
        for name, mask in masks.items():
            self.register_buffer(name, mask, persistent=False)
        self.conditioner = ConvNet(
            active.dim(),
            in_channels,
            transform.n_params,
            tuple(hidden_channels),
            kernel_size,
            output_bias=transform.identity_params(),
            context_channels=context_channels,
        )

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Conditioner input ``[B, in_channels, x...]`` built from frozen data only."""

    @abc.abstractmethod
    def couple(self, x: torch.Tensor, params: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the transform (or its inverse) with the parameters :meth:`layer_params` gives;
        returns the new field and the log-det per sample."""

    # -- shared mechanics ---------------------------------------------------------------
    def _conditioner_output(self, x: torch.Tensor, context) -> torch.Tensor:
        """``[B, n_params, x...]``; the conversions are no-ops (no copy) when the conditioner
        and the field share a precision, as in training."""
        weight = next(self.conditioner.parameters())
        return self.conditioner(self.features(x).to(weight.dtype), context).to(real_dtype(x.dtype))

    def layer_params(self, x: torch.Tensor, context=None) -> torch.Tensor:
        """Conditioner output at every site, ``[B, x..., n_params]`` (a view), in ``x``'s real
        precision: the form :meth:`masked_transform` takes."""
        return self._conditioner_output(x, context).movedim(1, -1)

    def active_params(self, x: torch.Tensor, context=None) -> torch.Tensor:
        """Conditioner output at the active sites, ``[B, n_active, n_params]``, in ``x``'s real precision."""
        out = self._conditioner_output(x, context)
        return out.reshape(out.shape[0], out.shape[1], -1)[:, :, self.active_index].transpose(1, 2)

    def where_active(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """``new`` at the active sites, ``old`` elsewhere (both ``[B, x...]``)."""
        return torch.where(self.active, new, old)

    def masked_transform(self, values: torch.Tensor, params: torch.Tensor, inverse: bool):
        """The element-wise map at every site of ``values [B, x...]`` (``params [B, x...,
        n_params]``) and the float64 log-det ``[B]`` summed over the active sites only.  The
        values at inactive sites are computed but meaningless: keep them out with
        :meth:`where_active`."""
        new, log_derivative = self.transform.apply(values, params, inverse)
        log_derivative = torch.where(self.active, log_derivative, 0.0)
        return new, log_derivative.flatten(1).sum(-1, dtype=torch.float64)

    def active_values(self, field: torch.Tensor) -> torch.Tensor:
        """``field [B, x..., *rest]`` at the active sites: ``[B, n_active, *rest]``."""
        sites = field.reshape(field.shape[0], self.active.numel(), *field.shape[1 + self.active.dim():])
        return sites[:, self.active_index]

    def with_active_values(self, field: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A copy of ``field`` with the active sites replaced by ``values``."""
        sites = field.reshape(field.shape[0], self.active.numel(), *field.shape[1 + self.active.dim():]).clone()
        sites[:, self.active_index] = values
        return sites.reshape(field.shape)

    def _run(self, x, inverse: bool, context):
        return self.couple(x, self.layer_params(x, context), inverse)

    def forward(self, z, context=None):
        """Sampling direction: ``(x, log|det dx/dz|)``."""
        return self._run(z, False, context)

    def inverse(self, x, context=None):
        """``(z, log|det dz/dx|)``."""
        return self._run(x, True, context)


class GaugeCoupling(MaskedCoupling):
    """Base of gauge-equivariant plaquette couplings ``(mu, nu, offset)`` of any gauge group
    (masks from :func:`gaugeflow.flows.masks.gauge_link_masks`).

    ``active`` marks the sites ``x`` of the active links ``U_mu(x)`` and of the active
    plaquettes ``U_{mu nu}(x)``; ``frozen`` ``[n_planes, x...]`` the plaquettes (in
    ``self.planes`` order) that contain no active link and feed the conditioner, with
    ``features_per_plane`` gauge-invariant features each.  Subclasses transform the active
    plaquette ``P -> P'`` and move the active link by ``P' P^{-1}``.

    The active sites, ``x_nu = offset (mod 4)``, are a strided slice of the lattice:
    :meth:`active_slice` selects them as a view (no copy, one operator call) and
    :meth:`with_active_slice` writes them back in one call -- the cheap gather and scatter
    that the gauge masks allow."""

    def __init__(self, lattice_shape, mu: int, nu: int, offset: int, transform, features_per_plane: int,
                 hidden_channels=(16, 16), kernel_size: int = 3, context_channels: int = 0, extra_channels: int = 0):
        masks = gauge_link_masks(lattice_shape, mu, nu, offset)
        n_planes = masks["frozen"].shape[0]
        super().__init__(masks["active"], transform, features_per_plane * n_planes + extra_channels, hidden_channels,
                         kernel_size, context_channels, frozen=masks["frozen"])
        self.mu, self.nu, self.offset = int(mu), int(nu), int(offset)
        self.planes = planes(len(lattice_shape))  # the order of the frozen masks

    def active_slice(self, field: torch.Tensor) -> torch.Tensor:
        """``field [B, x..., *rest]`` at the active sites, ``[B, ..., L_nu / 4, ..., *rest]`` (a view)."""
        return field[(slice(None),) * (1 + self.nu) + (slice(self.offset, None, 4),)]

    def with_active_slice(self, field: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A copy of ``field [B, x..., *rest]`` with the active sites replaced by ``values``
        (shaped as :meth:`active_slice` gives them)."""
        return field.slice_scatter(values, dim=1 + self.nu, start=self.offset, step=4)

    def extra_repr(self) -> str:
        return f"mu={self.mu}, nu={self.nu}, offset={self.offset}, transform={self.transform!r}"
