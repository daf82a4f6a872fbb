"""Element-wise bijections: the maps a coupling layer applies at its active sites.

Every transform is a small stateless object with the interface of
:class:`ElementwiseTransform`: ``n_params`` parameters per element, produced by the
conditioner (last axis of ``params``), and

* ``forward(x, params) -> (y, log|dy/dx|)`` (sampling direction),
* ``inverse(y, params) -> (x, log|dx/dy|)``,

element-wise over any leading shape.  ``identity_params()`` (all zeros for every transform
here) makes the map exactly the identity; the conditioners start with a zero last layer and
these as the bias, so an untrained flow is exactly its prior.  Any such map becomes a layer
through :class:`gaugeflow.flows.coupling.MaskedCoupling` without new layer code.

Here: maps of the real line (:class:`AffineTransform`, :class:`SplineTransform`).  Maps of the
circle live in :mod:`gaugeflow.flows.kernels`, the SU(N) spectral map in
:mod:`gaugeflow.flows.sun_coupling`.
"""

from __future__ import annotations

import abc

import torch
from normflows.utils.splines import DEFAULT_MIN_DERIVATIVE, unconstrained_rational_quadratic_spline

from gaugeflow.lattice.errors import InputError


_DERIVATIVE_SHIFTS: dict[tuple[torch.dtype, float], float] = {}


def spline_derivative_shift(dtype: torch.dtype = torch.float64, min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> float:
    """``u_0 = log(expm1(1 - min_d))`` rounded in ``dtype``: raw derivative parameters are
    shifted by it, so that raw parameters 0 give knot derivatives ``min_d + softplus(u_0) = 1``.

    Zero is exact in every precision; the constant itself is not, so it is rounded in the
    precision of the computation rather than held in a (float32) conditioner bias, which cast
    to float64 would be off by ~3e-8 and make the "identity" spline not quite the identity.

    Cached in a plain dict, filled for float32 and float64 when a spline transform is made: a
    compiled graph (``torch.compile``) then reads a constant instead of breaking at ``.item()``.
    """
    key = (dtype, float(min_derivative))
    if key not in _DERIVATIVE_SHIFTS:
        one_minus = torch.tensor(1.0 - min_derivative, dtype=dtype)
        _DERIVATIVE_SHIFTS[key] = torch.log(torch.expm1(one_minus)).item()
    return _DERIVATIVE_SHIFTS[key]


def prepare_derivative_shifts(min_derivative: float) -> None:
    """Fill :func:`spline_derivative_shift`'s cache for the real dtypes flows run in."""
    for dtype in (torch.float32, torch.float64):
        spline_derivative_shift(dtype, min_derivative)


class ElementwiseTransform(abc.ABC):
    """An element-wise bijection with ``n_params`` parameters per element.

    ``options`` names the architecture keys its constructor takes (e.g. ``("n_bins",)``), so
    that model building can construct any registered transform from an architecture dict.
    """

    n_params: int
    options: tuple[str, ...] = ()

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log|dy/dx|)`` element-wise."""

    @abc.abstractmethod
    def inverse(self, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, log|dx/dy|)`` element-wise; the log-derivative is minus the forward one at ``x``."""

    def apply(self, x: torch.Tensor, params: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``inverse(x, params)`` if ``inverse`` else ``forward(x, params)``."""
        return self.inverse(x, params) if inverse else self.forward(x, params)

    @classmethod
    def from_architecture(cls, theory, arch: dict) -> "ElementwiseTransform":
        """The transform an architecture dict asks for (its ``options`` keys)."""
        return cls(**{key: arch[key] for key in cls.options})

    def identity_params(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """``[n_params]`` parameters that make the map exactly the identity (zeros)."""
        return torch.zeros(self.n_params, dtype=dtype, device=device)

    def __call__(self, x, params):
        return self.forward(x, params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_params={self.n_params})"


class AffineTransform(ElementwiseTransform):
    """Real NVP: ``y = exp(s) x + t``, ``log dy/dx = s``; parameters ``(s, t)``
    (Dinh, Sohl-Dickstein, Bengio, arXiv:1605.08803)."""

    n_params = 2

    def forward(self, x, params):
        s, t = params[..., 0], params[..., 1]
        return torch.exp(s) * x + t, s

    def inverse(self, y, params):
        s, t = params[..., 0], params[..., 1]
        return (y - t) * torch.exp(-s), -s


class SplineTransform(ElementwiseTransform):
    """Monotone rational-quadratic spline with ``n_bins`` bins on ``[-B, B]``, identity outside
    (linear tails; Durkan, Bekasov, Murray, Papamakarios, arXiv:1906.04032, via normflows).

    Parameters: ``n_bins`` widths, ``n_bins`` heights and ``n_bins - 1`` interior knot
    derivatives, unnormalised as in normflows, the derivatives shifted by
    :func:`spline_derivative_shift` so that all-zero parameters give the identity.
    """

    options = ("n_bins",)

    def __init__(self, n_bins: int = 8, tail_bound: float = 5.0):
        if n_bins < 1:
            raise InputError(f"n_bins must be positive, got {n_bins}")
        self.n_bins, self.tail_bound = int(n_bins), float(tail_bound)
        self.n_params = 3 * self.n_bins - 1
        prepare_derivative_shifts(DEFAULT_MIN_DERIVATIVE)

    def _apply(self, x, params, inverse):
        k = self.n_bins
        return unconstrained_rational_quadratic_spline(
            x,
            params[..., :k],
            params[..., k : 2 * k],
            params[..., 2 * k :] + spline_derivative_shift(params.dtype),
            inverse=inverse,
            tails="linear",
            tail_bound=self.tail_bound,
        )

    def forward(self, x, params):
        return self._apply(x, params, inverse=False)

    def inverse(self, y, params):
        return self._apply(y, params, inverse=True)

