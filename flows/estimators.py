"""Gradient estimators of the reverse-KL loss, by name (``TrainConfig(estimator=...)``,
``gaugeflow train --estimator``).

The loss is ``L = E_{x~q}[log q(x) - log p(x)]`` (:mod:`gaugeflow.flows.train`).  An estimator
is a function ``terms(model, batch_size, context) -> (surrogate, loss, log_q, log_p)``: it draws
``batch_size`` samples at the per-sample couplings ``context`` (``None`` for unconditioned
models) and returns a scalar ``surrogate`` whose ``backward()`` gives its gradient estimate,
the loss estimate ``loss`` and the detached per-sample ``log_q`` and ``log_p``.  Built in:

* ``path`` -- path gradient (Vaitl, Nicoli, Nakajima, Kessel, arXiv:2207.08219): the explicit
  parameter dependence of ``log q`` is dropped (its expectation vanishes) and only the
  dependence through the sample is kept, which removes the noise of the score term and
  makes the gradient vanish exactly at ``q = p``; costs one extra inverse pass;
* ``reparam`` -- reparameterisation: differentiate ``log q(x_theta(z)) - log p(x_theta(z))``
  through the sample and the log-determinant (Albergo et al. arXiv:1904.12072);
* ``reinforce`` -- score function: ``E[(f - <f>) grad log q(x)]`` with ``f = log q - log p``
  at fixed samples; needs no differentiable sampler.

A new estimator is a function and one line, ``register_estimator("name", terms, "what it
is")``; ``TrainConfig`` and the command line's ``--estimator`` then offer it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gaugeflow.lattice.errors import InputError

__all__ = ["GradientEstimator", "estimator_names", "get_estimator", "register_estimator"]


@dataclass(frozen=True)
class GradientEstimator:
    """A registered estimator: its name, ``terms(model, batch_size, context)`` (module
    docstring) and a few words for help texts."""

    name: str
    terms: Callable
    description: str = ""


_REGISTRY: dict[str, GradientEstimator] = {}


def register_estimator(name: str, terms: Callable, description: str = "") -> GradientEstimator:
    """Offer ``terms`` as ``estimator=name`` in training and on the command line."""
    estimator = GradientEstimator(str(name), terms, description)
    if name in _REGISTRY and _REGISTRY[name].terms is not terms:
        raise InputError(f"a different gradient estimator is already registered as {name!r}")
    _REGISTRY[name] = estimator
    return estimator


def estimator_names() -> tuple[str, ...]:
    """The registered estimators, in the order of registration."""
    return tuple(_REGISTRY)


def get_estimator(name: str) -> GradientEstimator:
    if name not in _REGISTRY:
        raise InputError(f"unknown estimator {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


@contextlib.contextmanager
def frozen_parameters(module):
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def path_gradient(model, batch_size: int, context):
    x, log_q_sampled = model.sample(batch_size, context)
    with frozen_parameters(model):
        log_q = model.log_prob(x, context)  # depends on the parameters only through x
    log_p = model.target_log_prob(x, context)
    surrogate = (log_q - log_p).mean()
    return surrogate, surrogate.detach(), log_q_sampled.detach(), log_p.detach()


def reparameterisation(model, batch_size: int, context):
    x, log_q = model.sample(batch_size, context)
    log_p = model.target_log_prob(x, context)
    surrogate = (log_q - log_p).mean()
    return surrogate, surrogate.detach(), log_q.detach(), log_p.detach()


def reinforce(model, batch_size: int, context):
    with torch.no_grad():
        x, log_q_sampled = model.sample(batch_size, context)
        log_p = model.target_log_prob(x, context)
    log_q = model.log_prob(x, context)
    signal = (log_q_sampled - log_p).detach()
    surrogate = ((signal - signal.mean()) * log_q).mean()
    return surrogate, signal.mean(), log_q_sampled, log_p


register_estimator("path", path_gradient, "path gradient")
register_estimator("reparam", reparameterisation, "reparameterisation through the sample")
register_estimator("reinforce", reinforce, "score function (REINFORCE)")
