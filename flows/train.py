"""Reverse-KL self-training of flow models (no training data needed).

Loss: ``L = E_{x~q}[log q(x) - log p(x)] = KL(q||p) - log Z`` with ``log p = -S``, so ``-L``
is a lower bound on ``log Z`` and, where ``log Z`` is known exactly, ``KL = L + log Z``.
Gradient estimators (``estimator``):

* ``reparam`` -- reparameterisation: differentiate ``log q(x_theta(z)) - log p(x_theta(z))``
  through the sample and the log-determinant (Albergo et al. arXiv:1904.12072);
* ``path`` -- path gradient (Vaitl, Nicoli, Nakajima, Kessel, arXiv:2207.08219): the explicit
  parameter dependence of ``log q`` is dropped (its expectation vanishes) and only the
  dependence through the sample is kept, which removes the noise of the score term and
  makes the gradient vanish exactly at ``q = p``; costs one extra inverse pass;
* ``reinforce`` -- score function: ``E[(f - <f>) grad log q(x)]`` with ``f = log q - log p``
  at fixed samples; needs no differentiable sampler.

Training uses Adam with a cosine learning-rate schedule and gradient-norm clipping.  A
non-finite loss or gradient skips the step (and is counted in the log); too many in a row
stop training with an error instead of silently training on NaN.  Metrics (loss, KL where
known, ESS of the batch and of a larger evaluation sample, independence-Metropolis
acceptance) are written to a CSV log.  Checkpoints (model, optimizer, scheduler, RNG,
step, architecture, training configuration) are written atomically and read only with
``torch.load(weights_only=True)``; resuming continues bit for bit.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from hmc.flow_metropolis import acceptance_rate, effective_sample_size
from lattice import exact
from lattice.jobcontrol import Interrupted, stop_on_signals

CHECKPOINT_SCHEMA = "gaugeflow-checkpoint"
CHECKPOINT_VERSION = 1
ESTIMATORS = ("path", "reparam", "reinforce")
LOG_COLUMNS = (
    "step", "loss", "loss_std", "kl", "ess_batch", "ess", "acceptance",
    "learning_rate", "grad_norm", "skipped", "seconds",
)


class TrainingError(ValueError):
    """Training cannot go on (diverged), or a checkpoint does not fit the request."""


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64  # best acceptance per CPU minute (benchmarks/README.md); raise on GPUs
    learning_rate: float = 2e-3
    schedule: str = "cosine"  # or "constant"
    grad_clip: float = 1.0
    estimator: str = "path"
    log_every: int = 50
    checkpoint_every: int = 250
    eval_batches: int = 4
    seed: int = 1
    max_nonfinite: int = 20

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown learning-rate schedule {self.schedule!r}; choose cosine or constant")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "eval_batches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1")
        if not self.learning_rate > 0:
            raise ValueError("learning rate must be positive")


def exact_log_partition_function(theory) -> float | None:
    """``log Z`` (w.r.t. the prior's reference measure) where it is known exactly, else None."""
    couplings, volume = theory.couplings, theory.volume
    if theory.dimension == 2 and theory.name == "u1":
        n_links = 2 * volume
        return n_links * math.log(2 * math.pi) + exact.u1_log_partition_function(couplings["beta"], volume)
    if theory.dimension == 2 and theory.name == "su2":
        return exact.su2_log_partition_function(couplings["beta"], volume)
    if theory.dimension == 2 and theory.name == "su3":
        return exact.su3_log_partition_function(couplings["beta"], volume)
    if theory.name == "phi4" and couplings["lam"] == 0 and couplings["m2"] > 0:
        # S = phi^T M phi with M = -Laplacian + m2:  Z = pi^{V/2} det(M)^{-1/2}
        momenta = np.meshgrid(*[2 * np.pi * np.arange(n) / n for n in theory.lattice_shape], indexing="ij")
        eigenvalues = couplings["m2"] + sum(4 * np.sin(p / 2) ** 2 for p in momenta)
        return 0.5 * volume * math.log(math.pi) - 0.5 * float(np.log(eigenvalues).sum())
    return None


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


def reverse_kl_step_terms(model, batch_size: int, estimator: str):
    """``(surrogate, loss, log_q, log_p)``: ``surrogate.backward()`` gives the estimator's
    gradient; ``loss`` is the reverse-KL loss estimate; ``log_q``, ``log_p`` are detached.

    Conditioned models are trained on couplings drawn uniformly from their range.
    """
    device = next(model.parameters()).device
    context = model.random_coupling_values(batch_size, device)
    if estimator == "reparam":
        x, log_q = model.sample(batch_size, context)
        log_p = model.target_log_prob(x, context)
        surrogate = (log_q - log_p).mean()
        return surrogate, surrogate.detach(), log_q.detach(), log_p.detach()
    if estimator == "path":
        x, log_q_sampled = model.sample(batch_size, context)
        with frozen_parameters(model):
            log_q = model.log_prob(x, context)  # depends on the parameters only through x
        log_p = model.target_log_prob(x, context)
        surrogate = (log_q - log_p).mean()
        return surrogate, surrogate.detach(), log_q_sampled.detach(), log_p.detach()
    with torch.no_grad():
        x, log_q_sampled = model.sample(batch_size, context)
        log_p = model.target_log_prob(x, context)
    log_q = model.log_prob(x, context)
    signal = (log_q_sampled - log_p).detach()
    surrogate = ((signal - signal.mean()) * log_q).mean()
    return surrogate, signal.mean(), log_q_sampled, log_p


@torch.no_grad()
def evaluate(model, batch_size: int, n_batches: int, communicator=None) -> dict:
    """Large-sample diagnostics at the model's own couplings: ESS and independence-Metropolis
    acceptance (over the samples of all ranks when ``communicator`` is given)."""
    log_weights = []
    for _ in range(n_batches):
        x, log_q = model.sample(batch_size)
        log_weights.append(model.target_log_prob(x) - log_q)
    log_weights = torch.cat(log_weights)
    if communicator is not None:
        log_weights = communicator.concatenate(log_weights)
    return {"ess": effective_sample_size(log_weights), "acceptance": acceptance_rate(log_weights)}


def _rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        state["xpu"] = torch.xpu.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "xpu" in state and hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.set_rng_state_all(state["xpu"])


def save_checkpoint(path, model, optimizer, scheduler, step: int, config: TrainConfig, metrics: dict, rng_states=None) -> None:
    """Write atomically (temporary file, then rename): a crash never leaves a torn checkpoint.

    ``rng_states`` holds one RNG state per MPI rank (default: this process's)."""
    payload = {
        "schema": CHECKPOINT_SCHEMA,
        "schema_version": CHECKPOINT_VERSION,
        "architecture": model.architecture,
        "train_config": dataclasses.asdict(config),
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states if rng_states is not None else [_rng_state()],
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    temporary = f"{path}.tmp{os.getpid()}"
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``) and check its schema."""
    if not os.path.exists(path):
        raise TrainingError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle errors, truncated zip, foreign objects
        raise TrainingError(f"{path} is not a readable gaugeflow checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("schema") != CHECKPOINT_SCHEMA:
        raise TrainingError(f"{path} is not a gaugeflow checkpoint")
    if payload.get("schema_version") != CHECKPOINT_VERSION:
        raise TrainingError(
            f"{path} has checkpoint schema version {payload.get('schema_version')}; this gaugeflow reads {CHECKPOINT_VERSION}"
        )
    return payload


def describe(arch: dict) -> str:
    couplings = ", ".join(f"{k}={v:g}" for k, v in arch["couplings"].items())
    lattice = "x".join(map(str, arch["lattice"]))
    return f"{arch['theory']} {lattice} ({couplings}), {arch['n_layers']} {arch['kernel']} layers, hidden {arch['hidden_channels']}"


def check_architecture(payload: dict, arch: dict, path) -> None:
    if payload["architecture"] != arch:
        raise TrainingError(f"checkpoint {path} holds a model for {describe(payload['architecture'])}; requested {describe(arch)}")


def _learning_rate_factor(config: TrainConfig):
    if config.schedule == "constant":
        return lambda step: 1.0
    return lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))


def metrics_log_path(checkpoint_path) -> str:
    root, _ = os.path.splitext(str(checkpoint_path))
    return root + ".metrics.csv"


def _open_log(path, resume_step: int | None):
    """Open the CSV log; on resume, keep only rows up to the checkpoint's step."""
    rows = []
    if resume_step is not None and os.path.exists(path):
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
    handle = open(path, "w", newline="")
    writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    handle.flush()
    return handle, writer


@dataclass
class TrainSummary:
    step: int
    metrics: dict
    seconds: float
    log_path: str


def _rank_seed(seed: int, rank: int) -> int:
    return seed + 7919 * rank  # rank 0 uses the seed itself, as a single process does


def train_flow(
    model, config: TrainConfig, checkpoint_path, *, resume: bool = False, progress: bool = True, communicator=None
) -> TrainSummary:
    """Train ``model`` (already on its device and precision) and checkpoint to ``checkpoint_path``.

    With ``resume=True`` an existing checkpoint is continued (its architecture must match
    ``model.architecture``); otherwise an existing checkpoint is an error.  With an MPI
    ``communicator`` (:class:`flows.distributed.Communicator`) training is data parallel:
    ``config.batch_size`` is the global batch, split evenly over the ranks.
    """
    from .distributed import SingleProcess

    comm = communicator or SingleProcess()
    if config.batch_size % comm.size:
        raise TrainingError(f"--batch-size {config.batch_size} must be divisible by the number of MPI ranks ({comm.size})")
    local_batch = config.batch_size // comm.size
    directory = os.path.dirname(os.path.abspath(checkpoint_path))
    if not os.path.isdir(directory):
        raise TrainingError(f"cannot write {checkpoint_path}: directory {directory} does not exist")
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _learning_rate_factor(config))
    log_z = exact_log_partition_function(model.theory)
    start, metrics = 0, {}

    if resume and os.path.exists(checkpoint_path):
        payload = load_checkpoint(checkpoint_path, map_location=device)
        check_architecture(payload, model.architecture, checkpoint_path)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        start, metrics = int(payload["step"]), dict(payload["metrics"])
        if len(payload["rng"]) == comm.size:
            _set_rng_state(payload["rng"][comm.rank])
        else:  # another number of ranks: statistically equivalent, not bit for bit
            torch.manual_seed(_rank_seed(config.seed, comm.rank) + 1_000_003 * start)
        log_handle, log_writer = _open_log(metrics_log_path(checkpoint_path), start) if comm.is_root else (None, None)
    else:
        if os.path.exists(checkpoint_path):
            raise TrainingError(f"{checkpoint_path} already exists; pass --resume to continue it, or choose another output")
        torch.manual_seed(_rank_seed(config.seed, comm.rank))
        comm.broadcast_parameters(model)
        log_handle, log_writer = _open_log(metrics_log_path(checkpoint_path), None) if comm.is_root else (None, None)

    began = time.perf_counter()
    nonfinite_in_a_row, skipped = 0, 0
    step = start
    show = progress and comm.is_root
    with log_handle or contextlib.nullcontext(), stop_on_signals() as received:
        bar = tqdm(total=config.steps, initial=start, disable=None if show else True, desc="train", unit="step", leave=False)
        try:
            for step in range(start + 1, config.steps + 1):
                optimizer.zero_grad(set_to_none=True)
                surrogate, loss, log_q, log_p = reverse_kl_step_terms(model, local_batch, config.estimator)
                finite = comm.all(torch.isfinite(surrogate).item())
                if finite:
                    surrogate.backward()
                    comm.average_gradients(model)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
                    finite = math.isfinite(grad_norm)
                if finite:
                    optimizer.step()
                    scheduler.step()
                    nonfinite_in_a_row = 0
                else:
                    optimizer.zero_grad(set_to_none=True)
                    grad_norm, skipped, nonfinite_in_a_row = float("nan"), skipped + 1, nonfinite_in_a_row + 1
                    tqdm.write(f"step {step}: non-finite loss or gradient, step skipped") if show else None
                    if nonfinite_in_a_row >= config.max_nonfinite:
                        raise TrainingError(
                            f"training diverged: non-finite loss or gradient in {nonfinite_in_a_row} consecutive steps "
                            f"(last good checkpoint: {checkpoint_path}); lower --lr or use float64"
                        )
                bar.update(1)

                if step % config.log_every == 0 or step == config.steps:
                    log_q, log_p = comm.concatenate(log_q), comm.concatenate(log_p)
                    loss = comm.concatenate(loss.reshape(1)).mean()
                    log_weights = log_p - log_q
                    metrics = {
                        "step": step,
                        "loss": float(loss),
                        "loss_std": float((log_q - log_p).std()),
                        "kl": float(loss) + log_z if log_z is not None else float("nan"),
                        "ess_batch": effective_sample_size(log_weights),
                        **evaluate(model, local_batch, config.eval_batches, comm),
                        "learning_rate": optimizer.param_groups[0]["lr"],
                        "grad_norm": grad_norm,
                        "skipped": skipped,
                        "seconds": time.perf_counter() - began,
                    }
                    if comm.is_root:
                        log_writer.writerow(metrics)
                        log_handle.flush()
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", ess=f"{metrics['ess']:.2f}", acc=f"{metrics['acceptance']:.2f}")
                stopping = comm.any(received["signal"] is not None)
                if step % config.checkpoint_every == 0 or step == config.steps or stopping:
                    rng_states = comm.gather(_rng_state())
                    if comm.is_root:
                        save_checkpoint(checkpoint_path, model, optimizer, scheduler, step, config, metrics, rng_states)
                if stopping and step < config.steps:
                    raise Interrupted(
                        f"stopped by {received['signal'] or 'a signal to another rank'} at step {step} of {config.steps}; "
                        f"checkpoint saved to {checkpoint_path}; rerun with --resume to continue"
                    )
        finally:
            bar.close()
    return TrainSummary(step=step, metrics=metrics, seconds=time.perf_counter() - began, log_path=metrics_log_path(checkpoint_path))
