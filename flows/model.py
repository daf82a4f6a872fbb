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

With ``"condition": {"coupling": "beta", "low": 1.5, "high": 2.5}`` one model serves a range
of a coupling: its value (rescaled to [-1, 1]) is an extra constant input channel of every
conditioner, and the methods take per-sample coupling values as ``context``.

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
    """Defaults chosen for good acceptance per minute on a CPU (benchmarks/README.md):
    phi^4 affine couplings reached acceptance 0.62 on 8x8 in 4.5 minutes (spline: 0.67 in 11)."""
    base = {"kernel_size": 3, "n_bins": 8, "n_mixture": 6}
    if theory_name == "phi4":
        return {**base, "n_layers": 8, "kernel": "affine", "hidden_channels": [16, 16]}
    if theory_name == "u1":
        return {**base, "n_layers": 16, "kernel": "spline", "hidden_channels": [16, 16]}
    return {**base, "n_layers": 16, "kernel": "spline", "hidden_channels": [16, 16]}


def _condition(theory, condition):
    if condition is None:
        return None
    name, low, high = condition
    if name not in theory.couplings:
        raise ValueError(f"cannot condition on {name!r}: {theory.name} has couplings {', '.join(theory.couplings)}")
    low, high = float(low), float(high)
    if not low < high:
        raise ValueError(f"conditioning range for {name} must have low < high, got {low}..{high}")
    if not low <= theory.couplings[name] <= high:
        raise ValueError(f"{name}={theory.couplings[name]:g} lies outside the conditioning range {low:g}..{high:g}")
    return {"coupling": name, "low": low, "high": high}


def architecture(theory, condition=None, **overrides) -> dict:
    """The architecture dict for ``theory`` with ``overrides`` applied (``None`` = default).

    ``condition=("beta", 1.5, 2.5)`` makes the model serve that range of the coupling.
    """
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
        "condition": _condition(theory, condition),
    }


class LatticeFlow(NormalizingFlow):
    """``normflows.NormalizingFlow`` whose log-densities are accumulated in float64.

    normflows starts its sums from ``torch.zeros(len(x))`` (float32, or complex for SU(N)
    links in ``log_prob``); these overrides keep the accumulation real and float64, as
    needed for Metropolis decisions.

    Conditioned models take ``context``: the coupling value per sample (a float or a ``[B]``
    tensor; ``None`` means the architecture's own value).
    """

    def __init__(self, q0, flows, p, architecture: dict):
        super().__init__(q0, flows, p)
        self.architecture = architecture
        self.condition = architecture.get("condition")

    @property
    def theory(self):
        return self.p.theory

    def coupling_values(self, context, n: int, device=None):
        """Per-sample values of the conditioned coupling (``None`` for unconditioned models)."""
        if self.condition is None:
            return None
        if context is None:
            context = self.theory.couplings[self.condition["coupling"]]
        return torch.as_tensor(context, dtype=torch.float64, device=device).expand(n).clone()

    def random_coupling_values(self, n: int, device=None):
        """Couplings drawn uniformly from the conditioning range (training), or ``None``."""
        if self.condition is None:
            return None
        low, high = self.condition["low"], self.condition["high"]
        return low + (high - low) * torch.rand(n, dtype=torch.float64, device=device)

    def _layer_context(self, values):
        if values is None:
            return None
        low, high = self.condition["low"], self.condition["high"]
        return (2 * values - (low + high)) / (high - low)

    def forward_and_log_det(self, z, context=None):
        values = self._layer_context(self.coupling_values(context, len(z), z.device))
        log_det = torch.zeros(len(z), device=z.device, dtype=torch.float64)
        for flow in self.flows:
            z, log_d = flow(z, values) if values is not None else flow(z)
            log_det = log_det + log_d
        return z, log_det

    def inverse_and_log_det(self, x, context=None):
        values = self._layer_context(self.coupling_values(context, len(x), x.device))
        log_det = torch.zeros(len(x), device=x.device, dtype=torch.float64)
        for flow in reversed(self.flows):
            x, log_d = flow.inverse(x, values) if values is not None else flow.inverse(x)
            log_det = log_det + log_d
        return x, log_det

    def sample(self, num_samples=1, context=None):
        z, log_q = self.q0(num_samples)
        x, log_det = self.forward_and_log_det(z, context)
        return x, log_q.to(torch.float64) - log_det

    def log_prob(self, x, context=None):
        z, log_det = self.inverse_and_log_det(x, context)
        return self.q0.log_prob(z).to(torch.float64) + log_det

    def target_log_prob(self, x, context=None):
        """``-S(x)`` at the given coupling values (the architecture's couplings by default)."""
        return self.p.log_prob(x, self.coupling_values(context, len(x), x.device))


def _layers(theory, arch):
    context = 1 if arch.get("condition") else 0
    from .kernels import CircularSplineKernel, NCPKernel
    from .scalar_coupling import AffineTransform, ScalarCoupling, SplineTransform
    from .u1_coupling import U1PlaquetteCoupling

    hidden, size, n = arch["hidden_channels"], arch["kernel_size"], int(arch["n_layers"])
    if theory.name == "phi4":
        transform = AffineTransform() if arch["kernel"] == "affine" else SplineTransform(arch["n_bins"])
        return [ScalarCoupling(theory.lattice_shape, i % 2, transform, hidden, size, context) for i in range(n)]
    if theory.name == "u1":
        kernel = NCPKernel(arch["n_mixture"]) if arch["kernel"] == "ncp" else CircularSplineKernel(arch["n_bins"])
        return [
            U1PlaquetteCoupling(theory.lattice_shape, mu, nu, offset, kernel, hidden, size, context)
            for mu, nu, offset in gauge_layer_schedule(theory.dimension, n)
        ]
    from .sun_coupling import make_sun_flow_layers

    return make_sun_flow_layers(
        theory.lattice_shape, theory.n_colors, n, hidden_channels=tuple(hidden), kernel_size=size, n_bins=arch["n_bins"],
        context_channels=context,
    )


def build_flow(arch: dict) -> LatticeFlow:
    """Construct an untrained model (exactly its prior) from an architecture dict."""
    theory = make_theory(arch["theory"], arch["lattice"], **arch["couplings"])
    condition = arch.get("condition")
    target = LatticeTarget(theory, condition["coupling"] if condition else None)
    return LatticeFlow(prior_for(theory), _layers(theory, arch), target, dict(arch))


def transfer_weights(model: LatticeFlow, state_dict: dict) -> None:
    """Load trained conditioner weights into ``model`` (possibly of another volume).

    Only the layers' parameters are taken; priors and masks belong to the new lattice.
    """
    layer_state = {k: v for k, v in state_dict.items() if k.startswith("flows.")}
    result = model.load_state_dict(layer_state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("flows.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"weights do not fit this architecture (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
