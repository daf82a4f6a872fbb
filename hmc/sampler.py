"""The interface of a Markov-chain update, as driven by :func:`gaugeflow.hmc.run.run_chains`.

A sampler advances a batch of independent chains (axis 0 of ``field``) by one exact
Markov-chain step and reports, per chain, whether the step was accepted and its energy
violation ``delta_h`` (for Metropolis steps ``-log`` of the acceptance ratio, so that
``min(1, exp(-delta_h))`` is the acceptance probability in every case).  Implementations:
:class:`gaugeflow.hmc.hmc.HMCSampler` (``gaugeflow hmc``) and
:class:`gaugeflow.hmc.flow_metropolis.FlowMetropolisSampler` (``gaugeflow sample``; for a
pseudofermion flow :class:`gaugeflow.hmc.pseudofermion_metropolis.PseudofermionFlowMetropolisSampler`).

A sampler may adapt itself (tune a step size, choose a policy) only in :meth:`Sampler.thermalise`,
so the stored chain is a fixed Markov process; whatever it adapted goes into
:meth:`Sampler.resume_attributes` and comes back through :meth:`Sampler.restore`.

Samplers are found by name in the registry of :mod:`gaugeflow.hmc.samplers`
(``register_sampler``), which :func:`gaugeflow.hmc.run.make_sampler` and ``gaugeflow sample
--sampler`` read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class TrajectoryResult:
    """The outcome of one update of every chain."""

    field: torch.Tensor  # the chains' state after the accept/reject step
    accepted: torch.Tensor  # [B] bool
    delta_h: torch.Tensor  # [B] float64; accept probability min(1, exp(-delta_h))
    configs: torch.Tensor | None = None  # the physical fields to store, if the state is not (flow HMC: x = f(z))


def independence_step(field: torch.Tensor, proposal: torch.Tensor, log_ratio: torch.Tensor,
                      new_log_weight: torch.Tensor, generator) -> TrajectoryResult:
    """The accept/reject step of an independence-Metropolis chain per chain: ``proposal``
    replaces ``field`` where ``log u < log_ratio`` (``u`` uniform, float64, from ``generator``)
    and the proposal's log-weight is finite."""
    uniform = torch.rand(field.shape[0], generator=generator, dtype=torch.float64, device=field.device)
    accepted = (torch.log(uniform) < log_ratio) & torch.isfinite(new_log_weight)
    mask = accepted.view(-1, *([1] * (field.dim() - 1)))
    return TrajectoryResult(torch.where(mask, proposal, field), accepted, -log_ratio)


@contextlib.contextmanager
def global_rng_seeded_from(generator, device):
    """Inside the block torch's global RNG (which flow models draw from) is seeded from the chain's
    ``generator``, so a resumed chain proposes the same samples; after it the global RNG is as it
    was."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    device = torch.device(device)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        torch.manual_seed(seed)
        yield


@runtime_checkable
class Sampler(Protocol):
    name: str  # stored as the ensemble's ``sampler`` attribute; a resume must match it

    def run_parameters(self) -> dict:
        """Parameters fixed for the whole run, stored as file attributes and checked on resume."""

    def thermalise(self, field: torch.Tensor, n_therm: int, generator, progress: bool = False,
                   received: dict | None = None) -> torch.Tensor:
        """``n_therm`` unstored updates (the only place a sampler may adapt itself); stop early
        when ``received["signal"]`` is set."""

    def update(self, field: torch.Tensor, generator) -> TrajectoryResult:
        """One exact Markov-chain step of every chain."""

    def resume_attributes(self) -> dict:
        """What the sampler adapted (scalars), stored with the resume state."""

    def restore(self, state: dict) -> None:
        """Take back what an earlier run chose: the file's attributes (:meth:`run_parameters`)
        merged with the resume state (:meth:`resume_attributes`), where there is one.  A sampler
        takes the keys it knows and ignores the rest."""

    def postfix(self) -> dict:
        """A few numbers for the progress bar and the run summary."""
