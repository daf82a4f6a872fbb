"""Staple couplings: gauge-equivariant single-link maps for U(1) and SU(N) in any dimension.

A layer ``(mu, parity)`` moves the links ``U_mu(x)`` with ``sum_{nu != mu} x_nu + parity``
even (:func:`gaugeflow.flows.masks.staple_link_mask`).  No two of them share a plaquette, so
the ``2 (D - 1)`` staples ``C_k(x)`` of an active link -- the products of the other three links
of each plaquette through it, oriented so that ``U_mu(x) C_k(x)`` is that plaquette -- are made
of frozen links.  With the Wilson action the link's exact conditional distribution given all
others is

    p(U | rest)  ~  exp( (beta / N) Re tr U A ),        A = sum_k C_k   (the staple sum),

the distribution a heat-bath update draws from.  The layer is a learned, exactly invertible
version of such an update (in the spirit of the stout-smearing and staple-dressed flows of
Nagai and Tomiya, arXiv:2103.11965; Abbott et al., arXiv:2305.02402; Boyda et al.,
arXiv:2008.05456 for the spectral map).

The staple sum that centres the map is weighted, ``A = sum_k w_k C_k``, with one learned real
weight per staple position and layer (all 1 at the start; real weights keep ``A`` covariant).

* U(1) (:class:`U1StapleCoupling`): with ``A = sum_k w_k exp(i s_k)``, the *dressed link*
  ``phi = theta + arg A`` is gauge invariant, a circle kernel ``h`` (:mod:`gaugeflow.flows.kernels`)
  maps it, and ``theta -> theta + h(phi) - phi``; ``log det = log h'(phi)`` per link.
* SU(N) (:class:`SUNStapleCoupling`): ``W`` is the SU(N) projection of ``A`` (the unitary polar
  factor with its determinant phase removed, in closed form for SU(2) and SU(3)), so that
  ``P = U W`` transforms by conjugation at ``x``.  A conjugation-equivariant kernel (the
  spectral map of :mod:`gaugeflow.flows.sun_spectral`, or any kernel registered for
  ``SUNField``) gives ``P' = X P`` and the link moves to ``X U``.  Right multiplication by the
  fixed ``W`` preserves Haar measure, so ``log det`` is the kernel's.

The kernel's parameters come from a :class:`~gaugeflow.flows.conditioners.SiteMLP` applied to
gauge-invariant features of the staples of each active link (by default
:func:`u1_staple_features`, :func:`sun_staple_features`: the size of the staple sum and how
each staple lines up with it; any callable of the same form can be passed as ``features``).
The weights are shared by all sites, so the layer is translation equivariant under shifts
that keep its mask, and a model runs unchanged on any even volume.

Exactness: each active link's new value depends on itself and on frozen links only, so the
Jacobian is block diagonal with one block per active link, and the log-determinant is the
sum of the per-link kernel log-derivatives, in float64.  Gauge equivariance: ``A`` (and
``W``) transform like the link, ``U_mu(x) -> g(x) U g(x+mu)^dagger``, ``A -> g(x+mu) A
g(x)^dagger``, so the features are invariant and ``X -> g(x) X g(x)^dagger``.

Chairs (``loops``: :class:`U1Chairs`, :class:`SUNChairs`; :func:`chair_loops`): the conditioner may also
see the six-link chairs through each active link -- a plaquette through the link joined along a
perpendicular link to a plaquette in a plane without ``mu``, all of frozen links besides the
active one.  Integrating out the links that later layers move couples such loops to the link
(the first correction to the heat-bath conditional, ``log I_0(beta |A|)`` for U(1), is a sum
over pairs of staples), which the staples alone cannot show.

Cost: a layer computes ``2 (D - 1)`` staples (two products each) and runs the MLP and the
kernel on half of one direction's links; no convolution over the lattice.  Chairs add, per
active link, 48 gathered plaquette angles (U(1), 4D; the plaquettes of the 3 planes without
``mu``) or 48 three-link detours (SU(N); each serves two active links, so 12 per site are
multiplied and then gathered).  The gather indices are int32 and shared by the layers of one
mask (:func:`shared_index`): 74 MB for the default U(1) model with chairs on 16^4, where
int64 indices per layer took 282 MB.
"""

from __future__ import annotations

import abc
import math
import weakref
from typing import Callable

import torch
from normflows.flows import Flow

from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.gauge import planes
from gaugeflow.lattice.groups import dagger, matmul, real_dtype
from gaugeflow.lattice.u1 import plaquette_angles

from .conditioners import SiteMLP
from .kernels import wrap_with_unit_derivative
from .masks import staple_link_mask
from .sun_coupling import check_sun_links

__all__ = [
    "StapleCoupling", "U1StapleCoupling", "SUNStapleCoupling", "U1Chairs", "SUNChairs", "staple_neighbours",
    "u1_staples", "sun_staples",
    "u1_staple_features", "sun_staple_features", "project_staple_sum", "chair_loops", "chair_plaquettes",
]

def _shifted_sites(lattice_shape, active: torch.Tensor):
    """``site(steps, block=0)``: the flat indices ``block * V + (x + steps)`` for the active sites
    ``x`` (periodic, row-major like the flat sites; ``[n_active]``), with which the links
    flattened over ``(direction, site)`` (``block`` the direction) or the plaquettes flattened
    over ``(plane, site)`` are gathered."""
    shape = torch.tensor(lattice_shape)
    coordinates = active.nonzero()  # [n_active, D], row-major order like the flat sites
    strides = torch.tensor([math.prod(lattice_shape[axis + 1:]) for axis in range(len(lattice_shape))])
    volume = math.prod(lattice_shape)

    def site(steps, block: int = 0):
        return block * volume + ((coordinates + steps) % shape) @ strides

    return site


# One tensor per (what, lattice, mask) for every layer that needs it, while any layer holds it:
# the default 4D models repeat each of their 8 masks, and the chair indices of one U(1) layer on
# 32^4 take 100 MB even as int32.
_SHARED_INDICES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def shared_index(name: str, lattice_shape, mu: int, parity: int | None,
                 build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()``, an index tensor of layer ``(mu, parity)`` on ``lattice_shape`` (``parity`` None:
    one for both parities), as int32 (int64 past 2^31 - 1; gathers take either, equally fast),
    built once and shared by every layer that asks for the same ``name`` while one of them holds
    it.  Index buffers are never written to."""
    key = (name, tuple(lattice_shape), mu, parity)
    index = _SHARED_INDICES.get(key)
    if index is None:
        index = build()
        if index.numel() and int(index.max()) < 2 ** 31:
            index = index.to(torch.int32)
        _SHARED_INDICES[key] = index
    return index


def staple_neighbours(lattice_shape, mu: int, active: torch.Tensor) -> torch.Tensor:
    """Indices into the links flattened over ``(direction, site)`` of everything the staples of
    the active links ``U_mu(x)`` are made of: ``[D-1, 6, n_active]``, for each ``nu != mu``
    (ascending) the links ``U_nu(x+mu), U_mu(x+nu), U_nu(x), U_nu(x+mu-nu), U_mu(x-nu),
    U_nu(x-nu)``.  One gather then brings every staple factor of a layer (no shifted copies of
    the whole lattice)."""
    site = _shifted_sites(lattice_shape, active)
    unit = torch.eye(len(lattice_shape), dtype=torch.long)
    rows = []
    for nu in range(len(lattice_shape)):
        if nu != mu:
            e_mu, e_nu, zero = unit[mu], unit[nu], 0 * unit[mu]
            rows.append(torch.stack([site(e_mu, nu), site(e_nu, mu), site(zero, nu),
                                     site(e_mu - e_nu, nu), site(-e_nu, mu), site(-e_nu, nu)]))
    return torch.stack(rows)


def u1_staples(f) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper and lower staple angles ``s`` of each ``nu != mu`` from the six factors
    :func:`staple_neighbours` gathers (angles, each ``[D-1, ...]``): ``theta_mu(x) + s`` is the
    angle of a plaquette through the link."""
    return f[0] - f[1] - f[2], f[5] - f[3] - f[4]  # U_nu(x+mu) U_mu(x+nu)^* U_nu(x)^*, U_nu(x+mu-nu)^* U_mu(x-nu)^* U_nu(x-nu)


def sun_staples(f) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper and lower staples ``C`` of each ``nu != mu`` from the six factors
    :func:`staple_neighbours` gathers (matrices, each ``[D-1, ..., N, N]``): ``U_mu(x) C`` is a
    plaquette through the link."""
    # f0 f1^dag f2^dag = f0 (f2 f1)^dag and f3^dag f4^dag f5 = (f4 f3)^dag f5: two conjugations (each
    # a copy for a batched matmul on the CPU) instead of four, 0.7 ms of a 3.3 ms SU(3) heat-bath sweep
    return matmul(f[0], dagger(matmul(f[2], f[1]))), matmul(dagger(matmul(f[4], f[3])), f[5])


def planes_without(dimension: int, mu: int) -> list[tuple[int, int]]:
    """The planes ``(a, b)``, ``a < b``, that do not contain ``mu``, in
    :func:`gaugeflow.lattice.gauge.planes` order: those of the plaquettes a chair through a
    ``mu`` link is joined to."""
    return [plane for plane in planes(dimension) if mu not in plane]


def chair_loops(dimension: int, mu: int) -> list[tuple[int, torch.Tensor, int, int]]:
    """The chairs through a link ``U_mu(x)``: ``(plane, shift, staple, sign)`` for each.

    A chair is a plaquette through the link joined, along one of its links ``l`` perpendicular
    to ``mu``, to a plaquette ``P`` in a plane without ``mu`` (``l`` cancels): a six-link loop.
    With ``s_k`` the staple angle of the plaquette (:meth:`U1StapleCoupling.staple_angles`), the
    chair is ``theta_mu(x) + s_k + sign * theta_P``, where ``P`` is the plaquette of the plane
    numbered ``plane`` in :func:`planes_without` ``mu`` at the site ``x + shift`` and ``k`` is
    ``staple``.  Every chair of a layer is made of frozen links besides the active one: a plaquette
    without ``mu`` holds no ``mu`` link, and the chairs joined along a link parallel to ``mu``, and
    the 1x2 rectangles, hold a second active link, so they are left out.  ``8 (D-1)(D-2)`` chairs
    (48 in 4D, 16 in 3D; a lattice of 3 or more dimensions), listed staple by staple: the
    ``4 (D-2)`` chairs of staple ``k`` come ``k``-th."""
    if dimension < 3:
        raise InputError(f"chairs need a lattice of 3 or more dimensions, not {dimension}")
    plane_list = planes_without(dimension, mu)
    unit = torch.eye(dimension, dtype=torch.long)
    found = []
    k = 0
    for nu in range(dimension):
        if nu == mu:
            continue
        e_mu, e_nu, zero = unit[mu], unit[nu], 0 * unit[mu]
        # the links U_nu(y) of the upper and the lower staple (staple_angles) and their signs there
        for ends in (((zero, -1), (e_mu, 1)), ((-e_nu, 1), (e_mu - e_nu, -1))):
            for y, in_staple in ends:
                for rho in range(dimension):
                    if rho in (mu, nu):
                        continue
                    plane = plane_list.index((min(nu, rho), max(nu, rho)))
                    # theta_{a b}(z) = theta_a(z) + theta_b(z+a) - theta_a(z+b) - theta_b(z): U_nu(y)
                    # enters theta_P(y) with +1 for nu < rho, and theta_P(y - rho) with the other sign
                    in_plaquette = 1 if nu < rho else -1
                    for steps, sign in ((zero, in_plaquette), (-unit[rho], -in_plaquette)):
                        found.append((plane, y + steps, k, -in_staple * sign))  # l cancels
            k += 1
    return found


def chair_plaquettes(lattice_shape, mu: int, active: torch.Tensor) -> torch.Tensor:
    """Where the plaquette ``P`` of every chair (:func:`chair_loops`) through the active links
    ``U_mu(x)`` lies: ``[n_chairs, n_active]`` indices into the plaquette angles flattened over
    ``(plane, site)``, with the planes of :func:`planes_without` ``mu``."""
    site = _shifted_sites(lattice_shape, active)
    return torch.stack([site(shift, plane) for plane, shift, _, _ in chair_loops(len(lattice_shape), mu)])


def detour_links(lattice_shape, mu: int) -> torch.Tensor:
    """For SU(N) chairs: the three links of every detour that can replace a link ``U_nu(y)``
    perpendicular to ``mu``, at every site ``y``: ``[2, 3, D-1, D-2, V]`` indices into the links
    flattened over ``(direction, site)``, ordered ``(side, link, nu, rho, y)`` with ``nu != mu``
    and ``rho not in (mu, nu)`` ascending and ``y`` the flat site.  The detour runs from ``y`` to
    ``y + nu`` around the plaquette in the ``(nu, rho)`` plane: ``U_rho(y) U_nu(y+rho)
    U_rho(y+nu)^dagger`` on the ``+rho`` side, ``U_rho(y-rho)^dagger U_nu(y-rho) U_rho(y-rho+nu)``
    on the other.  Each is made of links that no ``mu`` layer moves."""
    dimension = len(lattice_shape)
    site = _shifted_sites(lattice_shape, torch.ones(lattice_shape, dtype=torch.bool))
    unit = torch.eye(dimension, dtype=torch.long)
    sides = []
    for outward in (True, False):
        by_nu = []
        for nu in range(dimension):
            if nu == mu:
                continue
            by_rho = []
            for rho in range(dimension):
                if rho in (mu, nu):
                    continue
                corner = 0 * unit[rho] if outward else -unit[rho]
                by_rho.append(torch.stack([site(corner, rho), site(corner + (unit[rho] if outward else 0), nu),
                                           site(corner + unit[nu], rho)]))
            by_nu.append(torch.stack(by_rho, 1))  # [3, D-2, V]
        sides.append(torch.stack(by_nu, 1))  # [3, D-1, D-2, V]
    return torch.stack(sides)


def chair_detours(lattice_shape, mu: int, active: torch.Tensor) -> torch.Tensor:
    """For SU(N) chairs (:func:`chair_loops`): which detour (:func:`detour_links`) replaces each
    perpendicular link of the active links' staples, ``[2, D-1, 2, 2, D-2, n_active]`` indices into
    the detours flattened over ``(side, nu, rho, y)``, ordered ``(side, nu, end class, staple side
    (upper, lower), rho)``.  End class 0 is the first factor of the upper staple ``U_nu(x+mu)
    U_mu(x+nu)^dagger U_nu(x)^dagger`` and the last of the lower ``U_nu(x+mu-nu)^dagger
    U_mu(x-nu)^dagger U_nu(x-nu)``; class 1 the other two (:class:`SUNChairs`
    takes the two classes' traces in two forms).  Every detour serves two active links (the
    ``U_nu(y)`` it replaces is a staple link of ``U_mu(y - mu)`` and of ``U_mu(y)``, or of
    ``U_mu(y - mu + nu)`` and ``U_mu(y + nu)``), so the detours are multiplied once per site and
    gathered."""
    dimension = len(lattice_shape)
    site = _shifted_sites(lattice_shape, active)
    unit = torch.eye(dimension, dtype=torch.long)
    others = dimension - 2
    sides = []
    for side in range(2):
        by_nu = []
        for i, nu in enumerate(n for n in range(dimension) if n != mu):
            e_mu, e_nu = unit[mu], unit[nu]
            # (class 0: upper first, lower last), (class 1: upper last, lower first)
            ends = ((e_mu, -e_nu), (0 * e_mu, e_mu - e_nu))
            block = (side * (dimension - 1) + i) * others
            by_nu.append(torch.stack([torch.stack([torch.stack([site(y, block + j) for j in range(others)])
                                                   for y in pair]) for pair in ends]))  # [2, 2, D-2, n]
        sides.append(torch.stack(by_nu))
    return torch.stack(sides)


def u1_staple_features(staples: torch.Tensor, centre: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Gauge-invariant features of the staples ``s_k`` ``[n, B, K]`` of ``n`` active links:
    ``|A| / K`` and ``(cos, sin)`` of each staple relative to the staple sum, ``s_k - arg A``;
    ``[n, B, 1 + 2 K]``.  ``centre = arg A`` and ``magnitude = |A|`` are ``[n, B]``."""
    relative = staples - centre[..., None]
    scale = magnitude[..., None] / staples.shape[-1]
    return torch.cat([scale, torch.cos(relative), torch.sin(relative)], dim=-1)


def sun_staple_features(staples: torch.Tensor, projected: torch.Tensor, singular_values: torch.Tensor,
                        determinant_phase: torch.Tensor) -> torch.Tensor:
    """Gauge-invariant features of the staples ``C_k`` ``[K, n, B, N, N]`` of ``n`` active links:
    the singular values of the staple sum ``A`` over ``K`` (``N`` values, sorted), ``(cos, sin)``
    of ``arg det A`` (N >= 3; for SU(2) ``det A >= 0``), and ``tr(C_k W^dagger) / N`` (real part,
    and imaginary part for N >= 3) with ``W`` the projection of ``A``; ``projected`` is ``W``
    ``[n, B, N, N]``, ``singular_values`` ``[n, B, N]``, ``determinant_phase`` ``[n, B]``; returns
    ``[n, B, F]``."""
    n_colors, n_staples = staples.shape[-1], staples.shape[0]
    aligned = torch.einsum("knbij,nbij->nbk", staples, projected.conj()) / n_colors  # tr(C_k W^dagger) / N
    parts = [singular_values / n_staples, aligned.real]
    if n_colors > 2:
        parts += [torch.cos(determinant_phase)[..., None], torch.sin(determinant_phase)[..., None], aligned.imag]
    return torch.cat(parts, dim=-1)


# Per-link tensors are site-major, [n_active, B, ...]: gathering whole sites (all samples at once)
# from the transposed links is 4x faster on the CPU than gathering per sample, and complex links
# are gathered through their real view (PyTorch's complex gather is slower).
def _rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows [S, B, *rest]`` (site-major) at the rows ``index``, ``[len(index), B, *rest]``."""
    real = torch.view_as_real(rows) if rows.is_complex() else rows[..., None]
    picked = real.flatten(2).index_select(0, index).unflatten(2, real.shape[2:])
    return torch.view_as_complex(picked) if rows.is_complex() else picked[..., 0]


def _sites(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``flat [B, S, *rest]`` at the sites ``index``, ``[len(index), B, *rest]``."""
    return _rows(flat.transpose(0, 1), index)  # gathering [S, B, values] rows: the fast path


class StapleCoupling(Flow, abc.ABC):
    """Base of the staple couplings: the mask of layer ``(mu, parity)``, the site-wise
    conditioner and the gather/scatter of the active links.

    Parameters
    ----------
    lattice_shape : extents, all even.
    mu, parity : the layer's mask (:func:`gaugeflow.flows.masks.staple_link_mask`).
    transform : the kernel (a circle kernel for U(1), a conjugation-equivariant kernel with
        ``left_factor`` for SU(N)).
    n_features : number of features per active link the ``features`` callable returns (the
        ``loops`` add theirs).
    hidden : hidden widths of the :class:`~gaugeflow.flows.conditioners.SiteMLP`.
    context_channels : 1 for a model conditioned on a coupling, else 0.
    n_maps : how many successive kernel maps a layer applies to each active link (one parameter
        set per map from the conditioner).
    loops : features of further loops through the active links (:class:`U1Chairs`,
        :class:`SUNChairs`), built for this lattice and mask.
    """

    def __init__(self, lattice_shape, mu: int, parity: int, transform, n_features: int, hidden=(32, 32),
                 context_channels: int = 0, n_maps: int = 1, loops=()):
        super().__init__()
        self.lattice_shape = tuple(int(n) for n in lattice_shape)
        dimension = len(self.lattice_shape)
        if dimension < 2:
            raise InputError("a gauge flow needs at least 2 dimensions")
        if not 0 <= mu < dimension or parity not in (0, 1):
            raise InputError(f"invalid staple layer (mu={mu}, parity={parity}) for a {dimension}-dimensional lattice")
        self.mu, self.parity = int(mu), int(parity)
        self.transform = transform
        for loop in loops:
            if (loop.lattice_shape, loop.mu, loop.parity) != (self.lattice_shape, self.mu, self.parity):
                raise InputError(f"{type(loop).__name__} was built for the layer (mu={loop.mu}, parity={loop.parity}) on "
                                 f"{loop.lattice_shape}, not (mu={mu}, parity={parity}) on {self.lattice_shape}")
        self.loops = torch.nn.ModuleList(loops)
        active = staple_link_mask(self.lattice_shape, mu, parity)
        self.register_buffer("active", active, persistent=False)
        self.register_buffer("active_index", active.flatten().nonzero().squeeze(-1), persistent=False)
        neighbours = shared_index("neighbours", self.lattice_shape, mu, parity,
                                  lambda: staple_neighbours(self.lattice_shape, mu, active))
        self.register_buffer("neighbours", neighbours, persistent=False)
        # A = sum_k w_k C_k: which staples centre the map.  Within a sweep the other links of
        # some plaquettes are already final and of others not yet, which a layer can learn to
        # weigh; real weights keep A covariant.
        self.staple_weights = torch.nn.Parameter(torch.ones(2 * (dimension - 1)))
        self.n_maps = int(n_maps)
        n_features += sum(loop.n_features for loop in loops)
        self.conditioner = SiteMLP(n_features, self.n_maps * transform.n_params, tuple(hidden),
                                   output_bias=transform.identity_params().repeat(self.n_maps),
                                   context_features=context_channels)

    @abc.abstractmethod
    def couple(self, field: torch.Tensor, inverse: bool, context) -> tuple[torch.Tensor, torch.Tensor]:
        """``(new field, log-det [B])`` in the sampling direction, or of the inverse map."""

    def params(self, features: torch.Tensor, context, dtype: torch.dtype) -> torch.Tensor:
        """Conditioner output ``[n_active, B, n_params]`` in the real precision ``dtype``."""
        weight = next(self.conditioner.parameters())
        return self.conditioner(features.to(weight.dtype), context).to(real_dtype(dtype))

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """``values [B, x..., *rest]`` at the active sites, ``[n_active, B, *rest]``."""
        return _sites(values.flatten(1, len(self.lattice_shape)), self.active_index)

    def staple_factors(self, field: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The links the active links' staples are made of: six tensors ``[D-1, n_active, B,
        *rest]`` (:func:`staple_neighbours`), by one gather."""
        picked = _sites(field.flatten(1, len(self.lattice_shape) + 1), self.neighbours.flatten())
        return picked.reshape(*self.neighbours.shape, *picked.shape[1:]).unbind(1)

    def scatter(self, field: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``field [B, D, x..., *rest]`` with the active links ``U_mu(x)`` replaced by ``values``
        ``[n_active, B, *rest]``."""
        # one out-of-place copy of the links flattened over (direction, site); 5% faster than a
        # clone and a slice assignment for a U(1) layer, and the same result
        links = field.flatten(1, len(self.lattice_shape) + 1)
        index = self.mu * self.active.numel() + self.active_index
        return links.index_copy(1, index, values.transpose(0, 1)).reshape(field.shape)

    def forward(self, z, context=None):
        """Sampling direction: ``(x, log|det dx/dz|)``."""
        return self.couple(z, False, context)

    def inverse(self, x, context=None):
        """``(z, log|det dz/dx|)``."""
        return self.couple(x, True, context)

    def extra_repr(self) -> str:
        return f"mu={self.mu}, parity={self.parity}, transform={self.transform!r}"


class U1StapleCoupling(StapleCoupling):
    """Staple coupling for U(1) links as angles ``[B, D, x...]`` (module docstring).

    ``features(staples, centre, magnitude)`` builds the conditioner input from the staple
    angles of the active links (default :func:`u1_staple_features`).  ``loops`` are further
    features of loops through the active links, callables ``loop(theta, staples, centre) ->
    [n_active, B, loop.n_features]`` built for this layer's lattice and mask (e.g.
    :class:`U1Chairs`)."""

    def __init__(self, lattice_shape, mu: int, parity: int, kernel, hidden=(32, 32), context_channels: int = 0,
                 features: Callable = u1_staple_features, loops=()):
        n_staples = 2 * (len(lattice_shape) - 1)
        n_features = features(torch.zeros(1, 1, n_staples), torch.zeros(1, 1), torch.zeros(1, 1)).shape[-1]
        super().__init__(lattice_shape, mu, parity, kernel, n_features, hidden, context_channels, loops=loops)
        self.features = features

    def staple_angles(self, theta: torch.Tensor) -> torch.Tensor:
        """Staple angles ``s_k`` of the active links, ``[n_active, B, 2 (D-1)]``: for each ``nu !=
        mu`` (ascending) the upper and the lower staple, so that ``theta_mu(x) + s_k`` is the
        (unwrapped) angle of a plaquette through the link, and ``S_W = -beta sum_k cos(theta_mu +
        s_k) + ...``."""
        up, down = u1_staples(self.staple_factors(theta))  # each [D-1, n, B]
        return torch.stack([up, down], dim=-1).movedim(0, -2).flatten(-2)

    def couple(self, theta, inverse, context):
        staples = self.staple_angles(theta)  # [n, B, K]
        weights = self.staple_weights.to(theta.dtype)
        real, imag = (torch.cos(staples) * weights).sum(-1), (torch.sin(staples) * weights).sum(-1)
        centre = torch.atan2(imag, real)  # arg A
        features = self.features(staples, centre, torch.hypot(real, imag))
        if self.loops:
            features = torch.cat([features, *(loop(theta, staples, centre) for loop in self.loops)], dim=-1)
        params = self.params(features, context, theta.dtype)
        links = self.gather(theta[:, self.mu])
        dressed = links + centre  # gauge invariant; the kernel accepts unwrapped angles
        new_dressed, log_derivative = self.transform.unwrapped(dressed, params, inverse)
        moved = wrap_with_unit_derivative(links + (new_dressed - dressed))
        return self.scatter(theta, moved), log_derivative.sum(0, dtype=torch.float64)


def newton_schulz_step(matrices: torch.Tensor) -> torch.Tensor:
    """``U (3 - U^dagger U) / 2``: one Newton-Schulz step towards the unitary polar factor (Higham,
    *Functions of Matrices*, SIAM 2008, sec. 8.3).  The identity on unitary matrices; a deviation
    ``e`` from unitarity becomes ``O(e^2)``."""
    eye = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    return matrices @ (3 * eye - dagger(matrices) @ matrices) / 2


def _without_determinant_phase(unitary: torch.Tensor):
    """``(unitary exp(-i arg det / N), arg det)`` for unitary ``N x N`` matrices: in SU(N)."""
    n = unitary.shape[-1]
    phase = torch.angle(_det_3x3(unitary) if n == 3 else torch.linalg.det(unitary))
    return unitary * torch.polar(torch.ones_like(phase), -phase / n)[..., None, None], phase


def back_to_sun(matrices: torch.Tensor) -> torch.Tensor:
    """Matrices near SU(N) put back on it to rounding: one :func:`newton_schulz_step`, then the
    phase of the determinant removed.  The identity on SU(N)."""
    return _without_determinant_phase(newton_schulz_step(matrices))[0]


def _entries(m: torch.Tensor):
    """The nine entries ``m[..., i, j]`` as ``entries[i][j]``, by two unbinds: indexing them one by
    one costs a zero-filled copy of all of ``m`` per entry in the backward pass."""
    return [row.unbind(-1) for row in m.unbind(-2)]


def _det_3x3(m: torch.Tensor) -> torch.Tensor:
    """Determinants of 3x3 matrices by cofactors (LAPACK's batched LU is slower for 3x3)."""
    (a, b, c), (d, e, f), (g, h, i) = _entries(m)
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def _inverse_3x3(m: torch.Tensor) -> torch.Tensor:
    """Inverses of well-conditioned 3x3 matrices by the adjugate."""
    x = _entries(m)
    rows = [(1, 2), (2, 0), (0, 1)]
    cofactors = torch.stack([torch.stack([x[a][c] * x[b][d] - x[a][d] * x[b][c]
                                          for (c, d) in rows], -1) for (a, b) in rows], -2)
    # cofactors[i, j] is the (i, j) cofactor; the inverse is its transpose over the determinant
    return cofactors.transpose(-1, -2) / _det_3x3(m)[..., None, None]


def _hermitian_eigenvalues_3x3(m: torch.Tensor) -> torch.Tensor:
    """Eigenvalues ``[..., 3]`` (descending) of Hermitian 3x3 matrices by the trigonometric
    solution of the characteristic cubic (Smith, Commun. ACM 4 (1961) 168)."""
    q = torch.diagonal(m, dim1=-2, dim2=-1).real.sum(-1) / 3
    shifted = m - q[..., None, None] * torch.eye(3, dtype=m.dtype, device=m.device)
    # p = 0 where m is a multiple of 1 (the staple sum of a cold configuration): three equal
    # eigenvalues q, and no 0/0 in the value or the gradient
    p_squared = (shifted.abs() ** 2).sum((-1, -2)) / 6
    spread = p_squared > torch.finfo(p_squared.dtype).tiny ** (1 / 3)
    p = torch.where(spread, torch.sqrt(torch.where(spread, p_squared, 1.0)), 0.0)
    r = torch.where(spread, _det_3x3(shifted).real / (2 * torch.where(spread, p, 1.0) ** 3), 0.0).clamp(-1.0, 1.0)
    angle = torch.acos(r) / 3
    largest, smallest = q + 2 * p * torch.cos(angle), q + 2 * p * torch.cos(angle + 2 * math.pi / 3)
    return torch.stack([largest, 3 * q - largest - smallest, smallest], -1)


def _unitary_polar_factor_3x3(a: torch.Tensor):
    """``(a (a^dagger a)^{-1/2}, singular values)`` of 3x3 matrices without an SVD: with ``M =
    a^dagger a`` and ``s_k`` the square roots of its eigenvalues, Cayley-Hamilton for ``R =
    M^{1/2}`` gives ``R (M + s_12 1) = s_1 M + s_123 1`` (``s_1``, ``s_12``, ``s_123`` the
    elementary symmetric functions of the ``s_k``), so the polar factor is ``a (M + s_12 1)
    (s_1 M + s_123 1)^{-1}``, which divides by no eigenvalue gap; one Newton-Schulz step
    ``W (3 - W^dagger W) / 2`` then restores unitarity to rounding.  4x faster than the SVD
    forward, 1.6x with the backward."""
    m = dagger(a) @ a
    root = torch.sqrt(_hermitian_eigenvalues_3x3(m).clamp_min(0.0))
    s1, s123 = root.sum(-1), root.prod(-1)
    s12 = root[..., 0] * root[..., 1] + root[..., 0] * root[..., 2] + root[..., 1] * root[..., 2]
    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    # s1 M + s123 1 is Hermitian with eigenvalues >= s123 > 0 for a staple sum of full rank
    w = a @ (m + s12[..., None, None] * eye) @ _inverse_3x3(s1[..., None, None] * m + s123[..., None, None] * eye)
    return newton_schulz_step(w), root


def project_staple_sum(staple_sum: torch.Tensor):
    """``(W, singular values, arg det A)`` for staple sums ``A [..., N, N]``: ``W`` in SU(N) with
    ``A -> g A h^dagger`` giving ``W -> g W h^dagger``.

    SU(2): a sum of SU(2) matrices is ``a V`` with ``a >= 0``, so ``W = A / sqrt(det A)`` in
    closed form (an SVD's backward divides by differences of singular values, here always
    equal).  N >= 3: the unitary polar factor of ``A`` (in closed form for N = 3,
    :func:`_unitary_polar_factor_3x3`; from the SVD ``u v^dagger`` above), times ``exp(-i arg
    det A / N)``.  Computed in complex128.
    """
    n = staple_sum.shape[-1]
    dtype = staple_sum.dtype
    staple_sum = staple_sum.to(torch.complex128)
    if n == 2:
        determinant = torch.linalg.det(staple_sum)
        norm = torch.sqrt(determinant.real.clamp_min(1e-300))
        projected = staple_sum / norm[..., None, None].to(staple_sum.dtype)
        return projected.to(dtype), torch.stack([norm, norm], -1), torch.zeros_like(norm)
    if n == 3:
        unitary, singular_values = _unitary_polar_factor_3x3(staple_sum)
    else:
        u, singular_values, vh = torch.linalg.svd(staple_sum)
        unitary = u @ vh
    projected, phase = _without_determinant_phase(unitary)
    return projected.to(dtype), singular_values, phase


class SUNStapleCoupling(StapleCoupling):
    """Staple coupling for SU(N) links ``[B, D, x..., N, N]`` (module docstring).

    ``transform`` is a conjugation-equivariant kernel with ``left_factor(P, params, inverse) ->
    (X, log_det)`` (``P' = X P``; :class:`gaugeflow.flows.sun_coupling.SpectralTransform`);
    ``features(staples, W, singular_values, determinant_phase)`` builds the conditioner input
    (default :func:`sun_staple_features`).

    ``centres``: ``"sum"`` maps ``P = U W`` once (``W`` the projected staple sum); ``"each"``
    then maps ``P_k = U C_k`` for every staple ``C_k`` in turn.  The link's conditional
    ``exp((beta/N) Re tr U A) = prod_k exp((beta/N) Re tr U C_k)`` is a product of class
    functions of the ``U C_k``, not of ``U W`` alone when ``N >= 3`` (there ``A = W H`` with a
    Hermitian ``H`` that is not a multiple of 1, and a map of ``U W`` misses the ``H`` part, about
    20% of the conditional's variance for SU(3)); a sequence of class-function maps centred on
    the single staples has that product form, and to first order in ``beta`` it contains the
    exact (Lüscher, arXiv:0907.5491) trivialising step.  Each map is a right translation by a
    frozen ``C_k`` (Haar preserving) followed by the kernel, so ``log det`` is the sum of the
    kernels', and the inverse applies the inverse maps in reverse order."""

    CENTRES = ("sum", "each")

    def __init__(self, lattice_shape, n_colors: int, mu: int, parity: int, transform, hidden=(32, 32),
                 context_channels: int = 0, features: Callable = sun_staple_features, centres: str = "sum",
                 loops=()):
        lattice_shape = tuple(int(n) for n in lattice_shape)
        n_staples = 2 * (len(lattice_shape) - 1)
        if centres not in self.CENTRES:
            raise InputError(f"unknown staple centres {centres!r}; choose {', '.join(self.CENTRES)}")
        probe = torch.eye(n_colors, dtype=torch.complex64).expand(n_staples, 1, 1, n_colors, n_colors)
        n_features = features(probe, probe[0], torch.ones(1, 1, n_colors), torch.zeros(1, 1)).shape[-1]
        super().__init__(lattice_shape, mu, parity, transform, n_features, hidden, context_channels,
                         n_maps=1 + (n_staples if centres == "each" else 0), loops=loops)
        self.n_colors = int(n_colors)
        self.features = features
        self.centres = centres

    def staples(self, links: torch.Tensor, factors=None) -> torch.Tensor:
        """Staples ``C_k`` of the active links, ``[2 (D-1), n_active, B, N, N]`` (order as for
        U(1)): ``U_mu(x) C_k`` is a plaquette through the link, and ``sum_k C_k`` is the staple
        sum of :meth:`gaugeflow.lattice.sun.SUN.staples`.  ``factors``: the staple factors if
        already gathered."""
        up, down = sun_staples(self.staple_factors(links) if factors is None else factors)
        return torch.stack([up, down], dim=1).flatten(0, 1)

    def couple(self, links, inverse, context):
        check_sun_links(links, self.lattice_shape, self.n_colors)
        # The update runs in complex128, and every matrix entering a spectral map is on SU(N) to
        # complex128 rounding.  The closed-form eigenvalues take the characteristic polynomial of
        # P from its trace, which holds on SU(N) only: a deviation e (unitarity or determinant)
        # moves nearly equal eigenvalues by up to sqrt(e), and the factor X = f(P) interpolated
        # through them leaves the group by far more than e, which the next map of the layer
        # amplifies again (complex64 links, e = 1e-7: 0.8 off the group after one sweep of a
        # randomised SU(3) model, NaN after two on 4^4).  On SU(N) the projections are the
        # identity, so the map is unchanged.
        factors = self.staple_factors(links)
        staples = self.staples(links, factors).to(torch.complex128)  # [K, n, B, N, N]
        weights = self.staple_weights.to(staples.dtype)
        projected, singular_values, phase = project_staple_sum(torch.einsum("k,knbij->nbij", weights, staples))
        features = self.features(staples, projected, singular_values, phase)
        if self.loops:
            features = torch.cat([features, *(loop(links, factors, projected) for loop in self.loops)], dim=-1)
        params = self.params(features, context, links.dtype)
        moved = back_to_sun(self.gather(links[:, self.mu]).to(torch.complex128))
        centres = [projected] + ([back_to_sun(c) for c in staples.unbind(0)] if self.centres == "each" else [])
        params = params.unflatten(-1, (self.n_maps, -1)).unbind(-2)
        steps = list(zip(centres, params))
        log_det = 0
        for centre, step_params in (reversed(steps) if inverse else steps):
            factor, step_log_det = self.transform.left_factor(moved @ centre, step_params, inverse)
            moved = factor @ moved
            log_det = log_det + step_log_det.sum(0, dtype=torch.float64)
        moved = back_to_sun(moved)  # rounding drift over the maps, removed before it compounds over layers
        return self.scatter(links, moved.to(links.dtype)), log_det


class _LayerLoops(torch.nn.Module):
    """What every ``loops`` entry holds: the layer ``(mu, parity)`` on ``lattice_shape`` it was
    built for (checked by :class:`StapleCoupling`)."""

    def __init__(self, lattice_shape, mu: int, parity: int):
        super().__init__()
        self.lattice_shape, self.mu, self.parity = tuple(int(n) for n in lattice_shape), int(mu), int(parity)

    def _active(self) -> torch.Tensor:
        """The layer's mask, built only when an index not shared yet is (:func:`shared_index`)."""
        return staple_link_mask(self.lattice_shape, self.mu, self.parity)


class U1Chairs(_LayerLoops):
    """The chairs through the active links of the U(1) staple layer ``(mu, parity)`` as conditioner
    features (a ``loops`` entry of :class:`U1StapleCoupling`; 3D and up): ``(cos, sin)`` of every
    chair (:func:`chair_loops`) relative to the staple sum, ``[n_active, B, 2 n_chairs]``.

    Loops beyond the link's own plaquettes, which integrating out the links updated later couples
    to it: the first correction of the heat-bath conditional, ``log I_0(beta |A|)``, is a sum over
    pairs of staples, i.e. chairs and 1x2 loops, with weight ``beta^2 / 2``.  The chairs are the
    ones made of frozen links; their plaquettes are gathered with indices shared by the layers of
    one mask (:func:`shared_index`)."""

    def __init__(self, lattice_shape, mu: int, parity: int):
        super().__init__(lattice_shape, mu, parity)
        loops = chair_loops(len(self.lattice_shape), self.mu)  # refuses fewer than 3 dimensions
        index = shared_index("chair_index", self.lattice_shape, self.mu, self.parity,
                             lambda: chair_plaquettes(self.lattice_shape, self.mu, self._active()).flatten())
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("sign", torch.tensor([sign for *_, sign in loops], dtype=torch.float64), persistent=False)
        self.n_features = 2 * len(loops)

    def angles(self, theta: torch.Tensor, staples: torch.Tensor) -> torch.Tensor:
        """``s_k + sign theta_P`` for every chair through the active links, ``[n_active, B,
        n_chairs]`` from the links ``theta [B, D, x...]`` and the layer's staple angles ``s_k``
        (:meth:`U1StapleCoupling.staple_angles`): ``theta_mu(x)`` plus it is the chair's angle."""
        plaquettes = torch.stack([plaquette_angles(theta, a, b) for a, b in planes_without(theta.dim() - 2, self.mu)],
                                 dim=1)  # [B, planes without mu, x...]
        picked = _sites(plaquettes.flatten(1), self.index)  # [n_chairs * n_active, B]
        # chair_loops lists the chairs staple by staple, as many for each: the staple angles enter
        # by broadcasting, not by an index (whose backward is a scatter; 10% of a U(1) chair step)
        n_staples = staples.shape[-1]
        picked = picked.unflatten(0, (n_staples, -1, staples.shape[0])).permute(2, 3, 0, 1)  # [n, B, K, per staple]
        return (staples[..., None] + self.sign.view(n_staples, -1).to(theta.dtype) * picked).flatten(-2)

    def forward(self, theta: torch.Tensor, staples: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        relative = self.angles(theta, staples) - centre[..., None]
        return torch.cat([torch.cos(relative), torch.sin(relative)], dim=-1)


class SUNChairs(_LayerLoops):
    """The chairs through the active links of the SU(N) staple layer ``(mu, parity)`` as
    conditioner features (a ``loops`` entry of :class:`SUNStapleCoupling`; 3D and up):
    ``tr(H W^dagger) / N`` for every chair staple ``H`` -- the staple ``C_k`` with one
    perpendicular link replaced by a detour (:func:`chair_detours`), so that ``U H`` is the
    chair -- real part (and imaginary part for N >= 3), ``[n_active, B, F]``.  The detours are
    multiplied once per site (:func:`detour_links`), in the links' precision: the features reach
    only the conditioner, which runs in float32."""

    def __init__(self, lattice_shape, n_colors: int, mu: int, parity: int):
        super().__init__(lattice_shape, mu, parity)
        self.n_colors = int(n_colors)
        n_chairs = len(chair_loops(len(self.lattice_shape), self.mu))  # refuses fewer than 3 dimensions
        # the detours depend on mu only: shared by both parities
        self.register_buffer("detour_links", shared_index("detour_links", self.lattice_shape, self.mu, None,
                                                          lambda: detour_links(self.lattice_shape, self.mu)),
                             persistent=False)
        self.register_buffer("chair_detours", shared_index("chair_detours", self.lattice_shape, self.mu, self.parity,
                                                           lambda: chair_detours(self.lattice_shape, self.mu,
                                                                                 self._active())),
                             persistent=False)
        self.n_features = n_chairs * (1 if self.n_colors == 2 else 2)

    def forward(self, links: torch.Tensor, factors, projected: torch.Tensor) -> torch.Tensor:
        """The features from the links ``[B, D, x..., N, N]``, the layer's staple factors
        (:meth:`StapleCoupling.staple_factors`) and ``projected``, the projected staple sum ``W``."""
        ends = _sites(links.flatten(1, len(self.lattice_shape) + 1), self.detour_links.flatten())
        ends = ends.unflatten(0, (2, 3, -1))  # [side, link, (nu, rho, y), B, N, N]
        # unbind, not indexing: the backward of an index fills a zero tensor of all the detours' links
        (a, b, c), (d, e, f) = [side.unbind(0) for side in ends.unbind(0)]
        every = torch.cat([matmul(matmul(a, b), dagger(c)), matmul(matmul(dagger(d), e), f)])  # once per site
        picked = _rows(every, self.chair_detours.flatten())
        detours = picked.reshape(*self.chair_detours.shape, *picked.shape[1:]).unbind(0)  # [D-1, 2, 2, D-2, n, B, N, N]
        g = factors  # the staple factors [D-1, n, B, N, N]
        w_dagger = dagger(projected)
        # With D the detour and S, P the rest of the staple: class 0 is upper D S and lower P D,
        # tr(. W^dagger) = sum(D * M^T) with M = S W^dagger, W^dagger P; class 1 is upper P D^dagger
        # and lower D^dagger S, tr = sum(conj(D) * M) = conj(sum(D * conj(M))) with M = W^dagger P, S W^dagger
        first = torch.stack([matmul(matmul(dagger(g[1]), dagger(g[2])).to(w_dagger.dtype), w_dagger),
                             matmul(w_dagger, matmul(dagger(g[3]), dagger(g[4])).to(w_dagger.dtype))], 1)
        second = torch.stack([matmul(w_dagger, matmul(g[0], dagger(g[1])).to(w_dagger.dtype)),
                              matmul(matmul(dagger(g[4]), g[5]).to(w_dagger.dtype), w_dagger)], 1)
        first, second = first.transpose(-1, -2).to(links.dtype)[:, :, None], second.conj().to(links.dtype)[:, :, None]
        traces = []
        for detour in detours:
            traces += [(detour[:, 0] * first).sum((-1, -2)), (detour[:, 1] * second).sum((-1, -2)).conj()]
        traces = torch.stack(traces).flatten(0, 3).permute(1, 2, 0) / self.n_colors  # [n, B, 8 (D-1)(D-2)]
        parts = [traces.real] + ([traces.imag] if self.n_colors > 2 else [])
        return torch.cat(parts, dim=-1)
