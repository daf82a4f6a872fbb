"""The target density ``p(x) ∝ exp(-S[x])`` of a lattice theory, as a normflows ``Target``.

``log_prob`` is the unnormalised ``-S`` (float64), so the reverse KL loss
``E_q[log q - log p]`` equals ``KL(q || p) - log Z``: negative values are expected, and
``-loss`` is a variational lower bound on ``log Z``.  Densities are with respect to the same
reference measure as the prior's: Lebesgue on real fields and U(1) angles, Haar on SU(N).
"""

from __future__ import annotations

from normflows.distributions import Target


class LatticeTarget(Target):
    def __init__(self, theory):
        super().__init__()
        self.theory = theory

    def log_prob(self, x):
        return -self.theory.action(x)
