"""The target density ``p(x) ∝ exp(-S[x])`` of a lattice theory, as a normflows ``Target``.

``log_prob`` is the unnormalised ``-S`` (float64), so the reverse KL loss
``E_q[log q - log p]`` equals ``KL(q || p) - log Z``: negative values are expected, and
``-loss`` is a variational lower bound on ``log Z``.  Densities are with respect to the same
reference measure as the prior's: Lebesgue on real fields and U(1) angles, Haar on SU(N).

For models conditioned on a coupling ``c`` (e.g. ``beta``, ``m2`` or ``lam``),
``log_prob(x, context)`` takes per-sample values of ``c``.  Only couplings the theory declares
affine (:class:`gaugeflow.lattice.theory.Coupling`) can be conditioned on: then
``S(x; c) = S(x; 0) + c [S(x; 1) - S(x; 0)]`` is evaluated exactly from two fixed theories.
"""

from __future__ import annotations

import torch
from normflows.distributions import Target

from gaugeflow.lattice.errors import InputError


class LatticeTarget(Target):
    def __init__(self, theory, conditioned_coupling: str | None = None):
        super().__init__()
        self.theory = theory
        self.conditioned_coupling = conditioned_coupling
        if conditioned_coupling is not None:
            if not theory.coupling(conditioned_coupling).affine:
                raise InputError(
                    f"cannot condition on {conditioned_coupling}: the {theory.name} action is not affine in it"
                )
            self._at_zero = theory.with_couplings(**{conditioned_coupling: 0.0})
            self._at_one = theory.with_couplings(**{conditioned_coupling: 1.0})

    def log_prob(self, x, context=None):
        if context is None or self.conditioned_coupling is None:
            return -self.theory.action(x)
        action_zero = self._at_zero.action(x)
        slope = self._at_one.action(x) - action_zero
        return -(action_zero + context.to(torch.float64) * slope)
