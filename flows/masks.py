"""Masks that split lattice degrees of freedom into updated and conditioning sets.

* :func:`checkerboard` -- parity of ``sum_mu x_mu``, for site-local scalar couplings
  (Albergo, Kanwar, Shanahan, arXiv:1904.12072).
* :func:`gauge_link_masks` -- for gauge-equivariant plaquette couplings (Kanwar et al.,
  arXiv:2003.06413), generalised to any dimension.  A layer is labelled by an ordered pair of
  directions ``(mu, nu)`` and an offset ``0..3``.  The *active* links are ``U_mu(x)`` with
  ``x_nu = offset (mod 4)``; each one is the first link of exactly one *active* plaquette
  ``U_{mu nu}(x)``, which the layer transforms.  *Frozen* plaquettes (in every plane) contain
  no active link and feed the conditioner; all other plaquettes change passively.  Extents
  along ``nu`` must be multiples of 4.  Cycling through all ``(mu, nu)`` and offsets updates
  every link.
"""

from __future__ import annotations

import itertools

import torch

from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.gauge import planes
from gaugeflow.lattice.geometry import shift


def checkerboard(lattice_shape, parity: int = 0, device=None) -> torch.Tensor:
    """Boolean ``[x...]`` mask, True where ``sum_mu x_mu + parity`` is even."""
    grids = torch.meshgrid(*[torch.arange(n, device=device) for n in lattice_shape], indexing="ij")
    return (sum(grids) + parity) % 2 == 0


def gauge_layer_schedule(dimension: int, n_layers: int):
    """``(mu, nu, offset)`` for layer ``i``: cycle over ordered planes, then offsets."""
    pairs = [(mu, nu) for mu, nu in itertools.permutations(range(dimension), 2)]
    return [(*pairs[i % len(pairs)], (i // len(pairs)) % 4) for i in range(n_layers)]


def gauge_link_masks(lattice_shape, mu: int, nu: int, offset: int, device=None) -> dict[str, torch.Tensor]:
    """Boolean masks for one gauge coupling layer.

    Returns ``links`` ``[D, x...]`` (active links), ``active`` ``[x...]`` (sites whose
    ``(mu, nu)`` plaquette is transformed) and ``frozen`` ``[n_planes, x...]`` (plaquettes, in
    :func:`gaugeflow.lattice.gauge.planes` order, that contain no active link).
    """
    dimension = len(lattice_shape)
    if lattice_shape[nu] % 4:
        raise InputError(f"gauge-equivariant flows need lattice extents divisible by 4; axis {nu} has {lattice_shape[nu]}")
    coordinate = torch.arange(lattice_shape[nu], device=device)
    view = [1] * dimension
    view[nu] = -1
    active = ((coordinate - offset) % 4 == 0).view(view).expand(*lattice_shape)
    links = torch.zeros(dimension, *lattice_shape, dtype=torch.bool, device=device)
    links[mu] = active
    frozen = []
    for rho, sigma in planes(dimension):
        # plaquette U_{rho sigma}(x) uses U_rho(x), U_sigma(x+rho), U_rho(x+sigma), U_sigma(x)
        touched = links[rho] | shift(links[sigma], rho, 1, 0) | shift(links[rho], sigma, 1, 0) | links[sigma]
        frozen.append(~touched)
    return {"links": links, "active": active.clone(), "frozen": torch.stack(frozen)}
