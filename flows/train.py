"""Reverse-KL self-training of flow models (no training data needed).

Loss: ``L = E_{x~q}[log q(x) - log p(x)] = KL(q||p) - log Z`` with ``log p = -S``, so ``-L``
is a lower bound on ``log Z`` and, where ``log Z`` is known exactly, ``KL = L + log Z``.
Gradient estimators (``estimator``) are registered by name in :mod:`gaugeflow.flows.estimators`:
``path`` (path gradient), ``reparam`` (reparameterisation) and ``reinforce`` (score function).

The default (``estimator=None``, :func:`default_estimator`) is the one the model's prior
prefers (:func:`gaugeflow.flows.priors.preferred_estimator`), else ``path``: the 2D U(1)
plaquette prior asks for ``reparam`` in models conditioned on beta.

Training uses Adam with a cosine learning-rate schedule after a linear warm-up over the first
10% (at large beta the full rate from the first step can throw a U(1) flow into a far worse
basin it never leaves) and gradient-norm clipping.  A non-finite loss or
gradient skips the step (and is counted in the log); too many in a row stop training with an
error instead of silently training on NaN.  Metrics (loss, KL where known, ESS of the batch
and of a larger evaluation sample, independence-Metropolis acceptance) are written to a CSV
log, one row written through at a time.  Checkpoints (:mod:`gaugeflow.flows.checkpoint`) are
written atomically and read only with ``torch.load(weights_only=True)``; resuming continues
bit for bit.  A stop signal (SIGTERM, SIGUSR1, Ctrl-C) checkpoints after the step in progress,
whatever ``checkpoint_every`` says.

:func:`train_flow` reads as its steps: check the request, start or resume (optimizer,
scheduler, RNG, log), then the loop of :func:`training_step`, metrics and checkpoints.
"""

from __future__ import annotations

import dataclasses
import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass

import torch
from normflows.flows import Flow
from tqdm.auto import tqdm

from gaugeflow.lattice.backend import available_memory, check_memory, check_seed, stream_seed  # one random stream per MPI rank
from gaugeflow.lattice.errors import InputError, TrainingError
from gaugeflow.lattice.jobcontrol import Interrupted, stop_on_signals
from gaugeflow.lattice.storage import StorageError, WriterLock, _fault_point, describe_os_error, write_atomically

from .checkpoint import check_architecture, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .diagnostics import acceptance_rate, effective_sample_size
from .distributed import SingleProcess
from .estimators import get_estimator
from .model import LatticeFlow, bijection_density
from .priors import preferred_estimator

log = logging.getLogger("gaugeflow")

LOG_COLUMNS = (
    "step", "loss", "loss_std", "kl", "ess_batch", "ess", "acceptance",
    "learning_rate", "grad_norm", "skipped", "seconds",
)

__all__ = ["TrainConfig", "TrainSummary", "TrainingError", "accumulate_gradient", "batch_parts", "reverse_kl_step_terms",
           "train_flow"]


@dataclass
class TrainConfig:
    """Training options.  With ``minutes`` set, training runs for that wall-clock budget
    (summed over resumes) with the learning-rate schedule stretched over it; ``steps`` is then
    only a cap.  ``compile=True`` runs the model's layer passes as ``torch.compile``d graphs
    (:meth:`gaugeflow.flows.model.LatticeFlow.compile_layers`; CUDA graphs on a CUDA device):
    the same training to rounding, far fewer operator launches per step, paid for by a
    compilation of minutes at the first steps.  ``recompute=True`` keeps only each layer's input
    for the backward pass and recomputes the layer there
    (:meth:`gaugeflow.flows.model.LatticeFlow.recompute_in_backward`): the same gradients, a
    fraction of the memory (SU(3) 4^4 staple models: 1.8-2.5x less), 20-60% more CPU time.
    ``micro_batch=m`` draws each step's batch in parts of at most ``m`` samples and runs each
    part's backward pass before the next part is drawn (gradient accumulation,
    :func:`accumulate_gradient`; the evaluation sample is drawn in parts of the same size): the
    same step with one part's graph held at a time, paid for in operator calls (SU(3) 4^4 at
    batch 64 in parts of 16: 2.4x less memory, about 35% more time); with ``recompute`` as well
    the default SU(3) 4^4 model trains at batch 64 in under 1 GB (benchmarks/README.md)."""

    steps: int = 2000
    batch_size: int = 64  # best acceptance per CPU minute (benchmarks/README.md); raise on GPUs
    learning_rate: float = 2e-3
    schedule: str = "cosine"  # or "constant"
    warmup: float = 0.1  # cosine only: the fraction of training over which the rate rises linearly from 1%
    grad_clip: float = 1.0
    estimator: str | None = None  # None: default_estimator(model)
    log_every: int = 50
    checkpoint_every: int = 250
    eval_batches: int = 4
    seed: int = 1
    max_nonfinite: int = 20
    minutes: float | None = None
    compile: bool = False
    recompute: bool = False
    micro_batch: int | None = None

    def __post_init__(self):
        if self.estimator is not None:
            get_estimator(self.estimator)  # refuses an unknown name, listing the registered ones
        if self.schedule not in ("cosine", "constant"):
            raise InputError(f"unknown learning-rate schedule {self.schedule!r}; choose cosine or constant")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "eval_batches", "max_nonfinite"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch is not None and int(self.micro_batch) < 1:
            raise InputError(f"micro_batch must be at least 1, got {self.micro_batch}")
        if self.minutes is not None and not (math.isfinite(float(self.minutes)) and self.minutes > 0):
            raise InputError(f"minutes must be positive and finite, got {self.minutes}")
        if self.compile and self.recompute:
            raise InputError("compile and recompute cannot be combined (torch.compile does not trace the "
                             "recomputation); choose one")
        if not 0 <= float(self.warmup) < 1:
            raise InputError(f"warmup is a fraction of the training, in [0, 1); got {self.warmup}")
        for name in ("learning_rate", "grad_clip"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be positive and finite, got {value}")


def default_estimator(model) -> str:
    """The estimator the model's prior prefers for its conditioning, else ``path`` (module
    docstring)."""
    arch = getattr(model, "architecture", {})
    if not arch.get("prior"):
        return "path"
    return preferred_estimator(model.theory, arch["prior"], arch.get("condition")) or "path"


def reverse_kl_step_terms(model, batch_size: int, estimator: str):
    """``(surrogate, loss, log_q, log_p)``: ``surrogate.backward()`` gives the estimator's
    gradient; ``loss`` is the reverse-KL loss estimate; ``log_q``, ``log_p`` are detached.

    Conditioned models are trained on couplings drawn uniformly from their range; symmetrised
    models train their bijection (:func:`gaugeflow.flows.model.bijection_density`).
    """
    with bijection_density(model):
        return _reverse_kl_step_terms(model, batch_size, estimator)


def _reverse_kl_step_terms(model, batch_size: int, estimator: str):
    device = next(model.parameters()).device
    context = model.random_coupling_values(batch_size, device)
    return get_estimator(estimator).terms(model, batch_size, context)


def batch_parts(batch_size: int, micro_batch: int | None = None) -> list[int]:
    """The sizes of the parts a step's batch is drawn in: the whole batch without
    ``micro_batch``, else ``ceil(batch_size / micro_batch)`` parts whose sizes differ by at most
    one (so that a compiled model meets at most two batch shapes)."""
    n_parts = 1 if micro_batch is None else -(-int(batch_size) // int(micro_batch))
    size, extra = divmod(int(batch_size), n_parts)
    return [size + 1] * extra + [size] * (n_parts - extra)


def accumulate_gradient(model, batch_size: int, estimator: str, micro_batch: int | None = None):
    """Add the estimator's gradient for a batch of ``batch_size`` samples to the parameters'
    ``.grad``, drawing the batch in the parts of :func:`batch_parts` and running each part's
    backward pass before drawing the next, so that autograd holds one part's graph at a time.

    Returns ``(surrogate, loss, log_q, log_p)`` of the whole batch, detached: the surrogate
    and loss as means over all samples, ``log_q`` and ``log_p`` per sample.  Each part's
    surrogate enters with the weight ``n_part / batch_size``, so for estimators whose surrogate
    is a mean of per-sample terms (``path``, ``reparam``) the gradient is that of the whole
    batch drawn at once, to rounding; ``reinforce`` takes its baseline over each part (still
    unbiased).  The random numbers are drawn part after part, so a model whose prior draws
    sample after sample sees the samples of the whole batch."""
    terms = []
    for n in batch_parts(batch_size, micro_batch):
        surrogate, loss, log_q, log_p = reverse_kl_step_terms(model, n, estimator)
        (surrogate * (n / batch_size)).backward()
        terms.append((surrogate.detach(), loss, log_q, log_p, n))
    if len(terms) == 1:
        return terms[0][:4]
    weights = torch.tensor([n / batch_size for *_, n in terms], dtype=terms[0][0].dtype, device=terms[0][0].device)
    surrogate = (torch.stack([t[0] for t in terms]) * weights).sum()
    loss = (torch.stack([t[1].to(weights.dtype) for t in terms]) * weights).sum()
    return surrogate, loss, torch.cat([t[2] for t in terms]), torch.cat([t[3] for t in terms])


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


def _learning_rate_factor(config: TrainConfig, progress: dict):
    """The schedule over the fraction of training done: of ``steps``, or of the time budget
    (``progress["fraction"]``, kept up to date by the loop)."""
    if config.schedule == "constant":
        return lambda step: 1.0

    def cosine(step):
        fraction = progress["fraction"] if config.minutes else min(step, config.steps) / config.steps
        rise = min(1.0, 0.01 + fraction / config.warmup) if config.warmup else 1.0
        return rise * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))

    return cosine


def metrics_log_path(checkpoint_path) -> str:
    root, _ = os.path.splitext(str(checkpoint_path))
    return root + ".metrics.csv"


def _logged_rows(path, up_to_step: int) -> list[dict]:
    """Complete rows of an existing log up to a step (a row cut by a crash is dropped)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                complete = None not in row.values() and int(row["step"]) <= up_to_step
            except (TypeError, ValueError):
                complete = False
            if complete:
                rows.append(row)
    return rows


def _csv_text(rows, header: bool) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LOG_COLUMNS)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _open_log(path, resume_step: int | None) -> str:
    """Start the CSV log; on resume, keep only rows up to the checkpoint's step.  The kept rows
    are rewritten atomically, so a crash during the rewrite loses none of them."""
    rows = _logged_rows(path, resume_step) if resume_step is not None and os.path.exists(path) else []
    write_atomically(path, _csv_text(rows, header=True).encode())
    return path


def _append_log(path, row: dict, checkpoint_path, step: int) -> None:
    """Append one row, written through at once (no buffer to fail later, at close); a full
    disk stops training with a one-line :class:`StorageError`.  A row cut short by a crash is
    dropped on resume."""
    try:
        with open(path, "a", newline="") as handle:
            _fault_point()
            handle.write(_csv_text([row], header=False))
    except OSError as error:
        raise StorageError(f"cannot write {path}: {describe_os_error(error)}; training stopped at step {step}; "
                           f"rerun with resume=True to continue from the checkpoint {checkpoint_path}") from None


@dataclass
class TrainSummary:
    step: int
    metrics: dict
    seconds: float
    log_path: str


@dataclass
class _Training:
    """What a training run carries from step to step."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    progress: dict  # {"fraction": of the time budget used} (minutes mode)
    step: int = 0
    metrics: dict = None
    skipped: int = 0
    nonfinite_in_a_row: int = 0
    seconds_before: float = 0.0  # training time of earlier runs (resumed)


# resident memory over the tensors autograd saves, measured 1.3-1.6 in the 4D cost benchmarks
# (temporaries of the backward pass, gradients, allocator slack)
RESIDENT_OVER_SAVED = 1.5
PROBE_EXTENT = 4  # local layers: saved bytes scale with the volume, so a 4^D probe tells them


def saved_tensor_bytes(model, batch_size: int) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one path-gradient training
    step of ``model`` at ``batch_size`` (parameters excluded, shared storages counted once; the
    path gradient keeps both passes, the most of the built-in estimators).  Runs the step's
    forward passes; the random state is left as it was."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            # the tensor is held until the count ends: a storage freed with an intermediate graph
            # could otherwise hand its address to a later one, which would then go uncounted
            saved[storage.data_ptr()] = (storage.nbytes(), tensor)
        return tensor

    with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        # reverse_kl_step_terms's passes, called directly: wrappers of that function see training steps only
        with bijection_density(model):
            _reverse_kl_step_terms(model, batch_size, "path")
    return sum(nbytes for nbytes, _ in saved.values())


def training_memory_estimate(model, batch_size: int, recompute: bool = False) -> int:
    """Bytes a training step needs, roughly: ``RESIDENT_OVER_SAVED`` times what autograd saves
    for the backward pass, measured on a probe -- the same architecture on a lattice of extents
    at most ``PROBE_EXTENT`` at batches 2 and 4 on the CPU, scaled to the volume (flow layers
    are local) and extrapolated in the batch -- with ``recompute``, the layers' inputs plus one
    layer's share.  Models of other
    kinds (the pseudofermion model's dense operators grow as the volume squared) are probed on
    their own lattice."""
    theory = model.theory
    shape = tuple(theory.lattice_shape)
    probe_shape = tuple(min(n, PROBE_EXTENT) for n in shape) if isinstance(model, LatticeFlow) else shape
    dtype = next(model.parameters()).dtype
    with torch.random.fork_rng(devices=[]):
        probe = type(model).build({**model.architecture, "lattice": list(probe_shape)}).to(dtype=dtype)

    def saved_at_batch(module) -> float:
        # probed at batches 2 and 4: what does not grow with the batch (index tensors saved by
        # gathers, a fifth of a U(1) staple layer's at batch 2) is not multiplied by it
        two, four = saved_tensor_bytes(module, 2), saved_tensor_bytes(module, 4)
        per_sample = max(four - two, 0) / 2
        return max(two - 2 * per_sample, 0) + per_sample * batch_size

    plain = saved_at_batch(probe)
    saved = plain
    if recompute and hasattr(probe, "recompute_in_backward"):
        layers = sum(isinstance(module, Flow) for module in probe.modules()) or 1  # a joint model's too
        saved = saved_at_batch(probe.recompute_in_backward()) + plain / layers
    return int(RESIDENT_OVER_SAVED * saved * math.prod(shape) / math.prod(probe_shape))


def _check_request(model, config: TrainConfig, checkpoint_path, comm) -> int:
    """The per-rank batch size, after checking that the run can start at all."""
    check_seed(config.seed)
    if config.batch_size % comm.size:
        raise InputError(f"batch_size {config.batch_size} must be divisible by the number of MPI ranks ({comm.size})")
    directory = os.path.dirname(os.path.abspath(checkpoint_path))
    if not os.path.isdir(directory):
        raise InputError(f"cannot write {checkpoint_path}: directory {directory} does not exist")
    local_batch = config.batch_size // comm.size
    part = max(batch_parts(local_batch, config.micro_batch))
    what = (f"training {model.theory.name} on {'x'.join(map(str, model.theory.lattice_shape))} at batch {local_batch}"
            + (f" in parts of {part}" if part < local_batch else ""))
    device = next(model.parameters()).device
    try:
        check_memory(training_memory_estimate(model, part, config.recompute), device, what)
    except InputError as error:
        remedies = []
        fitting = _largest_part_that_fits(model, part, config.recompute, available_memory(device))
        if fitting:
            remedies.append(f"micro_batch={fitting} (the batch in parts of {fitting} samples, the same training; "
                            "more time)")
        if not config.recompute:
            remedies.append("recompute=True (less memory, more time)")
        if not remedies:
            raise
        raise InputError(f"{error}, or pass {' or '.join(remedies)}") from None
    return local_batch


def _largest_part_that_fits(model, part: int, recompute: bool, available: int | None) -> int | None:
    """The largest of ``part / 2, part / 4, ..., 1`` whose training step the memory estimate
    fits into ``available`` bytes, if any."""
    while available is not None and part > 1:
        part //= 2
        if training_memory_estimate(model, part, recompute) <= available:
            return part
    return None


_FUSED_ADAM_DEVICES = ("cpu", "cuda")


def make_optimizer(model, learning_rate: float) -> torch.optim.Adam:
    """Adam, in its fused form where the device has one: a few operator calls per step, where
    the per-tensor loop makes about 25 per parameter tensor (2,500 for the default U(1) model,
    as many as four of its coupling layers).

    A module may declare ``learning_rate_scale``: its own parameters then form a parameter group
    at that multiple of the rate (the schedule scales every group alike).  The 2D U(1) constraint
    layer does: its few global spline parameters must move by O(1), which at the local layers'
    rate takes thousands of steps.  Without such modules there is one group, in
    ``model.parameters()`` order."""
    fused = next(model.parameters()).device.type in _FUSED_ADAM_DEVICES
    groups: dict[float, list] = {}
    for module in model.modules():
        scale = float(getattr(module, "learning_rate_scale", 1.0))
        groups.setdefault(scale, []).extend(module.parameters(recurse=False))
    ordered = sorted(groups.items(), key=lambda group: group[0] != 1.0)  # the plain rate first: it is the one logged
    param_groups = [{"params": params, "lr": learning_rate * scale} for scale, params in ordered if params]
    return torch.optim.Adam(param_groups, lr=learning_rate, fused=fused)


def _start_or_resume(model, config: TrainConfig, checkpoint_path, resume: bool, comm) -> _Training:
    """Optimizer, scheduler and RNG: fresh, or restored from ``checkpoint_path``."""
    optimizer = make_optimizer(model, config.learning_rate)
    progress = {"fraction": 0.0}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _learning_rate_factor(config, progress))
    run = _Training(optimizer, scheduler, progress, metrics={})
    if not (resume and os.path.exists(checkpoint_path)):
        if os.path.exists(checkpoint_path):
            raise TrainingError(f"{checkpoint_path} already exists; pass resume=True to continue it, or choose another output")
        torch.manual_seed(stream_seed(config.seed, comm.rank))
        comm.broadcast_parameters(model)
        return run
    payload = load_checkpoint(checkpoint_path, map_location=next(model.parameters()).device)
    check_architecture(payload, model.architecture, checkpoint_path)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    run.step, run.metrics = int(payload["step"]), dict(payload["metrics"])
    run.seconds_before = float(payload.get("training_seconds", 0.0))
    if len(payload["rng"]) == comm.size:
        set_rng_state(payload["rng"][comm.rank])
    else:  # another number of ranks: statistically equivalent, not bit for bit
        torch.manual_seed(stream_seed(config.seed, comm.rank) + 1_000_003 * run.step)
    return run


def training_step(model, run: _Training, config: TrainConfig, local_batch: int, comm):
    """One optimizer step (skipped, and counted, if the loss or gradient is not finite).

    The host waits for the device once per step, for the two numbers that decide the skip
    (a non-finite surrogate makes the gradient non-finite too, so backward runs regardless).

    Returns ``(loss, log_q, log_p, grad_norm)`` of this rank's batch."""
    run.optimizer.zero_grad(set_to_none=True)
    surrogate, loss, log_q, log_p = accumulate_gradient(model, local_batch, config.estimator, config.micro_batch)
    comm.average_gradients(model)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    surrogate_value, grad_norm = torch.stack([surrogate, grad_norm.to(surrogate.dtype)]).tolist()
    finite = comm.all(math.isfinite(surrogate_value) and math.isfinite(grad_norm))
    if finite:
        run.optimizer.step()
        run.scheduler.step()
        run.nonfinite_in_a_row = 0
    else:
        run.optimizer.zero_grad(set_to_none=True)
        run.skipped, run.nonfinite_in_a_row = run.skipped + 1, run.nonfinite_in_a_row + 1
    return loss, log_q, log_p, grad_norm


def _metrics(model, run: _Training, config, local_batch, comm, loss, log_q, log_p, grad_norm, log_z, seconds) -> dict:
    log_q, log_p = comm.concatenate(log_q), comm.concatenate(log_p)
    loss = float(comm.concatenate(loss.reshape(1)).mean())
    return {
        "step": run.step,
        "loss": loss,
        "loss_std": float((log_q - log_p).std()),
        "kl": loss + log_z if log_z is not None else float("nan"),
        "ess_batch": effective_sample_size(log_p - log_q),
        **evaluate(model, *_evaluation_batches(local_batch, config), comm),
        "learning_rate": run.optimizer.param_groups[0]["lr"],
        "grad_norm": grad_norm,
        "skipped": run.skipped,
        "seconds": seconds,
    }


def _evaluation_batches(local_batch: int, config: TrainConfig) -> tuple[int, int]:
    """``(batch, n_batches)`` of the evaluation sample: ``eval_batches`` batches of the training
    batch, drawn in batches of the training step's largest part when it is drawn in parts (the
    same number of samples, rounded up to whole parts)."""
    part = max(batch_parts(local_batch, config.micro_batch))
    return part, -(-config.eval_batches * local_batch // part)


def loss_jumped(metrics: dict, best_loss: float, batch_size: int) -> bool:
    """Whether the logged loss lies far above the lowest one logged before: by 20 nats and by
    ten times its own statistical error.  At large couplings too large a learning rate throws
    a flow into a far worse basin, which it does not leave (benchmarks/README.md)."""
    noise = metrics["loss_std"] / math.sqrt(batch_size)
    return metrics["loss"] > best_loss + max(20.0, 10.0 * noise)


def train_flow(
    model, config: TrainConfig, checkpoint_path, *, resume: bool = False, progress: bool = True, communicator=None
) -> TrainSummary:
    """Train ``model`` (already on its device and precision) and checkpoint to ``checkpoint_path``.

    With ``resume=True`` an existing checkpoint is continued (its architecture must match
    ``model.architecture``); otherwise an existing checkpoint is an error.  With an MPI
    ``communicator`` (:class:`gaugeflow.flows.distributed.Communicator`) training is data
    parallel: ``config.batch_size`` is the global batch, split evenly over the ranks.  With
    ``config.compile`` the model's layer passes are compiled in place (and stay so), as
    ``config.recompute`` switches on the recomputation of layers in the backward pass.
    """
    comm = communicator or SingleProcess()
    if config.estimator is None:
        config = dataclasses.replace(config, estimator=default_estimator(model))
    local_batch = _check_request(model, config, checkpoint_path, comm)
    if config.compile:
        model.compile_layers()
    if config.recompute:
        if not hasattr(model, "recompute_in_backward"):
            raise InputError(f"{type(model).__name__} models cannot recompute their layers in the backward pass; "
                             "train without recompute")
        model.recompute_in_backward()
    lock = WriterLock(checkpoint_path).acquire() if comm.is_root else None  # checkpoint and metrics log
    try:
        return _train(model, config, checkpoint_path, resume, progress, comm, local_batch)
    finally:
        if lock is not None:
            lock.release()


def _train(model, config, checkpoint_path, resume, progress, comm, local_batch) -> TrainSummary:
    run = _start_or_resume(model, config, checkpoint_path, resume, comm)
    # a model conditioned on a coupling is trained on a range of them: no single log Z to subtract
    log_z = None if model.architecture.get("condition") else model.theory.exact_log_partition_function()
    log_path = metrics_log_path(checkpoint_path)
    if comm.is_root:
        _open_log(log_path, run.step if resume else None)
    began = time.perf_counter()
    show = progress and comm.is_root
    budget = 60 * config.minutes if config.minutes else None
    best_loss, warned = math.inf, False

    def time_is_up() -> bool:  # rank 0's clock decides, so every rank keeps the same schedule
        if budget is None:
            return False
        run.progress["fraction"] = comm.broadcast((run.seconds_before + time.perf_counter() - began) / budget)
        return run.progress["fraction"] >= 1.0

    with stop_on_signals() as received:
        # with a time budget the bar counts seconds of it, so tqdm's rate and ETA are the budget's
        bar = tqdm(total=round(budget) if budget else config.steps, initial=round(run.seconds_before) if budget else run.step,
                   disable=None if show else True, desc="train", unit="s" if budget else "step", leave=False,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of the budget [{elapsed}<{remaining}{postfix}]"
                   if budget else None)
        try:
            finished = run.step >= config.steps or time_is_up()
            while not finished:
                run.step += 1
                loss, log_q, log_p, grad_norm = training_step(model, run, config, local_batch, comm)
                if run.nonfinite_in_a_row:
                    tqdm.write(f"step {run.step}: non-finite loss or gradient, step skipped") if show else None
                    if run.nonfinite_in_a_row >= config.max_nonfinite:
                        raise TrainingError(
                            f"training diverged: non-finite loss or gradient in {run.nonfinite_in_a_row} consecutive "
                            f"steps (last good checkpoint: {checkpoint_path}); lower learning_rate or use float64"
                        )
                finished = run.step >= config.steps or time_is_up()
                if budget:
                    bar.update(min(budget, run.progress["fraction"] * budget) - bar.n)
                    bar.set_postfix(step=run.step, refresh=False)
                else:
                    bar.update(1)
                if run.step % config.log_every == 0 or finished:
                    run.metrics = _metrics(model, run, config, local_batch, comm, loss, log_q, log_p, grad_norm, log_z,
                                           time.perf_counter() - began)
                    if comm.is_root:
                        _append_log(log_path, run.metrics, checkpoint_path, run.step)
                    m = run.metrics
                    if not warned and loss_jumped(m, best_loss, config.batch_size):
                        warned = True
                        log.warning(f"training: step {run.step}: the loss jumped to {m['loss']:.1f} from {best_loss:.1f}; "
                                    f"the model has likely left its basin for a worse one, which training rarely "
                                    f"undoes: restart with a lower learning rate (at beta ~6: 1e-3)")
                    best_loss = min(best_loss, m["loss"])
                    bar.set_postfix(loss=f"{m['loss']:.3f}", ess=f"{m['ess']:.2f}", acc=f"{m['acceptance']:.2f}")
                stopping = comm.any(received["signal"] is not None)
                if run.step % config.checkpoint_every == 0 or finished or stopping:
                    rng_states = comm.gather(rng_state())
                    if comm.is_root:
                        save_checkpoint(checkpoint_path, model, run.optimizer, run.scheduler, run.step, config,
                                        run.metrics, rng_states, run.seconds_before + time.perf_counter() - began)
                if stopping and not finished:
                    raise Interrupted(
                        f"stopped by {received['signal'] or 'a signal to another rank'} at step {run.step}; "
                        f"checkpoint saved to {checkpoint_path}; rerun with resume=True to continue"
                    )
        finally:
            bar.close()
    return TrainSummary(step=run.step, metrics=run.metrics, seconds=time.perf_counter() - began, log_path=log_path)
