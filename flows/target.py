"""The target density ``p(x) ∝ exp(-S[x])`` of a lattice theory, as a normflows ``Target``.

``log_prob`` is the unnormalised ``-S`` (float64), so the reverse KL loss
``E_q[log q - log p]`` equals ``KL(q || p) - log Z``: negative values are expected, and
``-loss`` is a variational lower bound on ``log Z``.  Densities are with respect to the same
reference measure as the prior's: Lebesgue on real fields and U(1) angles, Haar on SU(N).

For models conditioned on a coupling ``c`` (``beta``, ``m2`` or ``lam``), ``log_prob(x, context)``
takes per-sample values of ``c``.  Every action here is affine in each coupling, so
``S(x; c) = S(x; 0) + c [S(x; 1) - S(x; 0)]`` is evaluated exactly from two fixed theories.
"""

from __future__ import annotations

import torch
from normflows.distributions import Target

from lattice.theories import make_theory


class LatticeTarget(Target):
    def __init__(self, theory, conditioned_coupling: str | None = None):
        super().__init__()
        self.theory = theory
        self.conditioned_coupling = conditioned_coupling
        if conditioned_coupling is not None:
            if conditioned_coupling not in theory.couplings:
                raise ValueError(f"{theory.name} has no coupling {conditioned_coupling!r} to condition on")

            def at(value):
                couplings = dict(theory.couplings, **{conditioned_coupling: value})
                return make_theory(theory.name, theory.lattice_shape, **couplings)

            self._at_zero, self._at_one = at(0.0), at(1.0)

    def log_prob(self, x, context=None):
        if context is None or self.conditioned_coupling is None:
            return -self.theory.action(x)
        action_zero = self._at_zero.action(x)
        slope = self._at_one.action(x) - action_zero
        return -(action_zero + context.to(torch.float64) * slope)
