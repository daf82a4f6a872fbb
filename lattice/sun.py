"""SU(N) lattice gauge theory with the Wilson action.

Links are SU(N) matrices, layout ``[batch, mu, x_0, ..., x_{D-1}, N, N]`` (complex), with

    S = -(beta / N) sum_{x, mu<nu} Re tr U_{mu nu}(x).

In four dimensions the clover topological charge is provided (see
:func:`lattice.gauge.clover_topological_charge`).
"""

from __future__ import annotations

import torch

from . import gauge
from .fields import SUNField
from .groups import complex_dtype, haar_random_sun, identity_sun, real_trace
from .theory import GaugeTheory, sum_per_config


class SUN(GaugeTheory):
    coupling_names = ("beta",)

    def __init__(self, lattice_shape, *, beta, n_colors: int):
        self.name = f"su{int(n_colors)}"
        super().__init__(lattice_shape, beta=beta)
        if n_colors < 2:
            raise ValueError("SU(N) needs N >= 2")
        if self.dimension < 2:
            raise ValueError("a gauge theory needs at least 2 dimensions")
        self.n_colors = int(n_colors)
        self.field = SUNField(self.n_colors)

    @property
    def config_shape(self):
        return (self.dimension, *self.lattice_shape, self.n_colors, self.n_colors)

    def storage_dtype(self, precision=torch.float64):
        return complex_dtype(precision)

    def action(self, links):
        traces = sum(real_trace(gauge.plaquettes(links, mu, nu)) for mu, nu in gauge.planes(self.dimension))
        return -(self.couplings["beta"] / self.n_colors) * sum_per_config(traces)

    def links_as_matrices(self, links):
        return links

    @property
    def has_topological_charge(self):
        return self.dimension == 4

    def topological_charge(self, links):
        return gauge.clover_topological_charge(links)

    def hot_start(self, batch, *, generator=None, device=None, precision=torch.float64):
        shape = (batch, self.dimension, *self.lattice_shape)
        return haar_random_sun(shape, self.n_colors, generator=generator, dtype=complex_dtype(precision), device=device)

    def cold_start(self, batch, *, device=None, precision=torch.float64):
        shape = (batch, self.dimension, *self.lattice_shape)
        return identity_sun(shape, self.n_colors, dtype=complex_dtype(precision), device=device)

    def random_gauge_transformation(self, batch, *, generator=None, device=None, precision=torch.float64):
        """Haar-random ``Omega(x)``, ``[B, x..., N, N]``."""
        shape = (batch, *self.lattice_shape)
        return haar_random_sun(shape, self.n_colors, generator=generator, dtype=complex_dtype(precision), device=device)

    def gauge_transform(self, links, transformation):
        return gauge.gauge_transform(links, transformation)
