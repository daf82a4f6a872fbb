"""SU(N) lattice gauge theory with the Wilson action.

Links are SU(N) matrices, layout ``[batch, mu, x_0, ..., x_{D-1}, N, N]`` (complex), with

    S = -(beta / N) sum_{x, mu<nu} Re tr U_{mu nu}(x).

In four dimensions the clover topological charge is provided (see
:func:`gaugeflow.lattice.gauge.clover_topological_charge`).
"""

from __future__ import annotations

import re

import torch

from . import exact, gauge
from .errors import InputError
from .fields import SUNField
from .groups import complex_dtype, haar_random_sun, identity_sun, matmul, real_trace, traceless_antihermitian
from .theory import Coupling, GaugeTheory, sum_per_config


class SUN(GaugeTheory):
    name = "suN"  # the family; instances are named su2, su3, ...
    couplings_declared = (Coupling("beta", "gauge coupling"),)

    def __init__(self, lattice_shape, *, beta, n_colors: int):
        self.name = f"su{int(n_colors)}"
        super().__init__(lattice_shape, beta=beta)
        if n_colors < 2:
            raise InputError("SU(N) needs N >= 2")
        if self.dimension < 2:
            raise InputError("a gauge theory needs at least 2 dimensions")
        self.n_colors = int(n_colors)
        self.field = SUNField(self.n_colors)

    @property
    def config_shape(self):
        return (self.dimension, *self.lattice_shape, self.n_colors, self.n_colors)

    def storage_dtype(self, precision=torch.float64):
        return complex_dtype(precision)

    def action(self, links):
        self.check_field(links)
        traces = sum(real_trace(gauge.plaquettes(links, mu, nu)) for mu, nu in gauge.planes(self.dimension))
        return -(self.couplings["beta"] / self.n_colors) * sum_per_config(traces)

    def staples(self, links, mu: int) -> torch.Tensor:
        """Sum of the ``2 (D-1)`` staples ``A_mu(x)`` with ``S = -(beta/N) sum Re tr U_mu(x) A_mu(x) + ...``
        (:func:`gaugeflow.lattice.gauge.staple_sum`)."""
        return gauge.staple_sum(links, mu)

    def force(self, links):
        """Analytic su(N) force ``F_mu(x) = (beta/N) P_su(N)(U_mu(x) A_mu(x))`` from the staples
        (the autograd force of the base class agrees)."""
        forces = [traceless_antihermitian(matmul(links[:, mu], self.staples(links, mu))) for mu in range(self.dimension)]
        return (self.couplings["beta"] / self.n_colors) * torch.stack(forces, dim=1)

    @classmethod
    def parse_name(cls, name: str):
        """``su2``, ``su3``, ... -> ``{"n_colors": N}`` (N >= 2)."""
        match = re.fullmatch(r"su(\d+)", name)
        if match and int(match.group(1)) >= 2:
            return {"n_colors": int(match.group(1))}
        return None

    def exact_log_partition_function(self):
        """2D SU(2) and SU(3): character expansion (normalised Haar measure)."""
        exact_sums = {2: exact.su2_log_partition_function, 3: exact.su3_log_partition_function}
        if self.dimension != 2 or self.n_colors not in exact_sums:
            return None
        return exact_sums[self.n_colors](self.couplings["beta"], self.volume)

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
