"""Convolutional conditioners: translation-equivariant networks with periodic padding.

A coupling layer's parameters at site ``x`` are computed from the frozen degrees of freedom
by a small CNN whose convolutions wrap around the torus, so the network commutes with
lattice translations and a model trained on one volume runs unchanged on another.  Input
and output are ``[batch, channels, x_0, ..., x_{D-1}]`` for D = 1..4 (PyTorch has no 4D
convolution; :class:`PeriodicConv` builds one from 3D convolutions, one per kernel offset
along the last axis).

Circular padding is one gather with a cached index per lattice shape
(:func:`periodic_pad`), not ``padding_mode="circular"``: PyTorch pads circularly by slicing and
copying each face and corner, many operator calls per convolution with its backward, and a
training step's operator launches are what limits it on a GPU.  The values are the same bit
for bit.

Conditioning on a coupling (one model for a range of ``beta`` or ``lam``): with
``context_channels = k`` the network takes per-sample context ``[batch, k]`` and appends it
to the input as ``k`` constant channels (constant over the lattice, so translation
equivariance is kept).

The last convolution is initialised to zero weight and a chosen bias (``output_bias``), so
an untrained coupling layer outputs constant parameters -- chosen by each layer to make it
the identity map, which makes an untrained flow exactly its prior.
"""

from __future__ import annotations

import torch
from torch import nn

from gaugeflow.lattice.errors import InputError

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


_PAD_INDICES: dict[tuple, torch.Tensor] = {}


def _periodic_pad_index(shape: tuple[int, ...], pad: int, device: torch.device) -> torch.Tensor:
    """Row-major flat indices into a ``shape`` torus of the sites of the grid padded by ``pad``
    on both sides of every axis, cached per lattice shape and device (in a plain dict, which
    ``torch.compile`` reads as a constant)."""
    key = (shape, pad, device)
    if key not in _PAD_INDICES:
        index = torch.zeros((), dtype=torch.long, device=device)
        for n in shape:
            index = index[..., None] * n + torch.arange(-pad, n + pad, device=device) % n
        _PAD_INDICES[key] = index.flatten()
    return _PAD_INDICES[key]


def periodic_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``x [B, C, x...]`` padded by ``pad`` sites on both sides of every lattice axis with the
    periodic images (as ``F.pad(mode="circular")``), by a single gather."""
    lattice = tuple(x.shape[2:])
    index = _periodic_pad_index(lattice, pad, x.device)
    return x.flatten(2).index_select(2, index).unflatten(2, [n + 2 * pad for n in lattice])


class PeriodicConv(nn.Module):
    """``D``-dimensional convolution with circular padding (odd kernel size), D = 1..4.

    The convolutions are unpadded; :func:`periodic_pad` pads their input, so the parameters
    (and state-dict keys) are those of ``nn.ConvNd`` as before."""

    def __init__(self, dimension: int, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise InputError(f"kernel size must be odd to keep translation equivariance, got {kernel_size}")
        if dimension not in (1, 2, 3, 4):
            raise InputError(f"convolutions are available for 1 to 4 dimensions, not {dimension}")
        self.dimension = dimension
        self.pad = kernel_size // 2
        if dimension <= 3:
            self.convs = nn.ModuleList([_CONV[dimension](in_channels, out_channels, kernel_size)])
        else:
            # sum over offsets along the last axis of 3D convolutions of shifted inputs
            self.convs = nn.ModuleList(
                [
                    nn.Conv3d(in_channels, out_channels, kernel_size, bias=(j == 0))
                    for j in range(kernel_size)
                ]
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = periodic_pad(x, self.pad)
        if self.dimension <= 3:
            return self.convs[0](padded)
        b, c, l0, l1, l2, l3 = x.shape
        out = 0
        for j, conv in enumerate(self.convs):
            window = padded.narrow(-1, j, l3)  # input at x_3 + (j - pad)
            slices = window.permute(0, 5, 1, 2, 3, 4).reshape(b * l3, c, *window.shape[2:5])
            out = out + conv(slices)
        return out.reshape(b, l3, -1, l0, l1, l2).permute(0, 2, 3, 4, 5, 1)

    def zero_(self, bias: torch.Tensor | None = None) -> None:
        """Zero all weights; set the bias (default 0)."""
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.zero_()
                if conv.bias is not None:
                    conv.bias.zero_()
            if bias is not None:
                self.convs[0].bias.copy_(bias)


class ConvNet(nn.Module):
    """Periodic CNN ``in_channels -> hidden... -> out_channels`` with ``activation`` between layers."""

    def __init__(
        self,
        dimension: int,
        in_channels: int,
        out_channels: int,
        hidden_channels=(32, 32),
        kernel_size: int = 3,
        activation=nn.GELU,
        output_bias: torch.Tensor | None = None,
        context_channels: int = 0,
    ):
        super().__init__()
        self.context_channels = context_channels
        sizes = [in_channels + context_channels, *hidden_channels, out_channels]
        layers = []
        for i, (c_in, c_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append(PeriodicConv(dimension, c_in, c_out, kernel_size))
            if i < len(sizes) - 2:
                layers.append(activation())
        self.layers = nn.Sequential(*layers)
        self.layers[-1].zero_(output_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_channels:
            if context is None:
                raise InputError("this model is conditioned on a coupling: pass its value as context")
            context = context.to(x.dtype).reshape(x.shape[0], self.context_channels, *[1] * (x.dim() - 2))
            x = torch.cat([x, context.expand(-1, -1, *x.shape[2:])], dim=1)
        return self.layers(x)


class SiteMLP(nn.Module):
    """Multilayer perceptron ``in_features -> hidden... -> out_features`` applied to the last
    axis of ``[sites, batch, in_features]`` (site-major, as the staple couplings gather their
    links): the same weights at every site, so it commutes with lattice translations and its
    weights are those of any volume.

    The conditioner of the staple couplings (:mod:`gaugeflow.flows.staple_coupling`), whose
    gauge-invariant inputs already describe the neighbourhood of each active link; a
    convolution over the lattice would cost most of a training step and add little there.
    ``context_features`` per-sample inputs (a conditioned coupling) are appended to every
    site's features.  The last layer starts at zero weight and ``output_bias``, so an
    untrained layer is its transform's identity."""

    def __init__(self, in_features: int, out_features: int, hidden=(32, 32), activation=nn.GELU,
                 output_bias: torch.Tensor | None = None, context_features: int = 0):
        super().__init__()
        self.context_features = context_features
        sizes = [in_features + context_features, *hidden, out_features]
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(activation())
        self.layers = nn.Sequential(*layers)
        with torch.no_grad():
            self.layers[-1].weight.zero_()
            self.layers[-1].bias.zero_()
            if output_bias is not None:
                self.layers[-1].bias.copy_(output_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_features:
            if context is None:
                raise InputError("this model is conditioned on a coupling: pass its value as context")
            context = context.to(x.dtype).reshape(1, x.shape[1], self.context_features)
            x = torch.cat([x, context.expand(x.shape[0], -1, -1)], dim=-1)
        return self.layers(x)
