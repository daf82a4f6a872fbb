"""Flow models for lattice theories: architecture description, construction, sampling.

A model is a :class:`LatticeFlow`, i.e. a ``normflows.NormalizingFlow`` with the theory's
prior (:mod:`flows.priors`), a stack of coupling layers and the target ``exp(-S)``.  It is
fully described by a JSON-able *architecture* dict (stored in checkpoints), e.g.::

    {"theory": "u1", "lattice": [8, 8], "couplings": {"beta": 2.0}, "n_layers": 16,
     "kernel": "spline", "hidden_channels": [32, 32], "kernel_size": 3, "n_bins": 8,
     "n_mixture": 6}

Layers per theory:

* phi4: checkerboard couplings (``kernel`` = ``affine`` or ``spline``), alternating parity;
* u1: gauge-equivariant plaquette couplings (``kernel`` = ``spline`` or ``ncp``) cycling over
  ordered planes and mask offsets;
* suN: gauge-equivariant spectral couplings (:mod:`flows.sun_coupling`).

All conditioners are periodic CNNs, so weights trained on one lattice run on another of the
same dimension (:func:`transfer_weights`).
"""

from __future__ import annotations

import torch
from normflows import NormalizingFlow

from lattice.theories import make_theory

from .masks import gauge_layer_schedule
from .priors import prior_for
from .target import LatticeTarget

KERNELS = {"phi4": ("spline", "affine"), "u1": ("spline", "ncp"), "su": ("spline",)}


def default_architecture(theory_name: str) -> dict:
    """Defaults chosen for good acceptance at modest CPU cost (see benchmarks/)."""
    base = {"kernel_size": 3, "n_bins": 8, "n_mixture": 6}
    if theory_name == "phi4":
        return {**base, "n_layers": 8, "kernel": "spline", "hidden_channels": [16, 16]}
    if theory_name == "u1":
        return {**base, "n_layers": 16, "kernel": "spline", "hidden_channels": [16, 16]}
    return {**base, "n_layers": 16, "kernel": "spline", "hidden_channels": [16, 16]}


def architecture(theory, **overrides) -> dict:
    """The architecture dict for ``theory`` with ``overrides`` applied (``None`` = default)."""
    arch = default_architecture(theory.name)
    arch.update({k: v for k, v in overrides.items() if v is not None})
    arch["hidden_channels"] = [int(c) for c in arch["hidden_channels"]]
    allowed = KERNELS["su" if theory.name.startswith("su") else theory.name]
    if arch["kernel"] not in allowed:
        raise ValueError(f"kernel {arch['kernel']!r} is not available for {theory.name}; choose {', '.join(allowed)}")
    if int(arch["n_layers"]) < 1:
        raise ValueError("a flow needs at least one layer")
    return {
        "theory": theory.name,
        "lattice": list(theory.lattice_shape),
        "couplings": dict(theory.couplings),
        **arch,
    }


class LatticeFlow(NormalizingFlow):
    """``normflows.NormalizingFlow`` whose log-densities are accumulated in float64.

    normflows starts its sums from ``torch.zeros(len(x))`` (float32, or complex for SU(N)
    links in ``log_prob``); these overrides keep the accumulation real and float64, as
    needed for Metropolis decisions.
    """

    def __init__(self, q0, flows, p, architecture: dict):
        super().__init__(q0, flows, p)
        self.architecture = architecture

    @property
    def theory(self):
        return self.p.theory

    def forward_and_log_det(self, z):
        log_det = torch.zeros(len(z), device=z.device, dtype=torch.float64)
        for flow in self.flows:
            z, log_d = flow(z)
            log_det = log_det + log_d
        return z, log_det

    def inverse_and_log_det(self, x):
        log_det = torch.zeros(len(x), device=x.device, dtype=torch.float64)
        for flow in reversed(self.flows):
            x, log_d = flow.inverse(x)
            log_det = log_det + log_d
        return x, log_det

    def sample(self, num_samples=1):
        z, log_q = self.q0(num_samples)
        x, log_det = self.forward_and_log_det(z)
        return x, log_q.to(torch.float64) - log_det

    def log_prob(self, x):
        z, log_det = self.inverse_and_log_det(x)
        return self.q0.log_prob(z).to(torch.float64) + log_det


def _layers(theory, arch):
    from .kernels import CircularSplineKernel, NCPKernel
    from .scalar_coupling import AffineTransform, ScalarCoupling, SplineTransform
    from .u1_coupling import U1PlaquetteCoupling

    hidden, size, n = arch["hidden_channels"], arch["kernel_size"], int(arch["n_layers"])
    if theory.name == "phi4":
        transform = AffineTransform() if arch["kernel"] == "affine" else SplineTransform(arch["n_bins"])
        return [ScalarCoupling(theory.lattice_shape, i % 2, transform, hidden, size) for i in range(n)]
    if theory.name == "u1":
        kernel = NCPKernel(arch["n_mixture"]) if arch["kernel"] == "ncp" else CircularSplineKernel(arch["n_bins"])
        return [
            U1PlaquetteCoupling(theory.lattice_shape, mu, nu, offset, kernel, hidden, size)
            for mu, nu, offset in gauge_layer_schedule(theory.dimension, n)
        ]
    from .sun_coupling import make_sun_flow_layers

    return make_sun_flow_layers(
        theory.lattice_shape, theory.n_colors, n, hidden_channels=tuple(hidden), kernel_size=size, n_bins=arch["n_bins"]
    )


def build_flow(arch: dict) -> LatticeFlow:
    """Construct an untrained model (exactly its prior) from an architecture dict."""
    theory = make_theory(arch["theory"], arch["lattice"], **arch["couplings"])
    return LatticeFlow(prior_for(theory), _layers(theory, arch), LatticeTarget(theory), dict(arch))


def transfer_weights(model: LatticeFlow, state_dict: dict) -> None:
    """Load trained conditioner weights into ``model`` (possibly of another volume).

    Only the layers' parameters are taken; priors and masks belong to the new lattice.
    """
    layer_state = {k: v for k, v in state_dict.items() if k.startswith("flows.")}
    result = model.load_state_dict(layer_state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("flows.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"weights do not fit this architecture (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
