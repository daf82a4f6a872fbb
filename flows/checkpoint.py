"""Checkpoints of flow models: write atomically, read safely, check they fit, load a model.

A checkpoint is a ``torch.save`` of tensors and plain containers only::

    {"schema": "gaugeflow-checkpoint", "schema_version": 2, "architecture": {...},
     "train_config": {...}, "step": int, "model": state_dict, "optimizer": ..., "scheduler": ...,
     "rng": [one RNG state per MPI rank], "metrics": {...}, "sha256": digest of all the rest}

It is read only with ``torch.load(weights_only=True)``, so a checkpoint can never execute
code, and its digest is verified before anything in it is used (``torch.load`` does not check
the zip's CRCs: a flipped byte in a tensor would otherwise load as a silently changed weight).
It is written atomically (:func:`gaugeflow.lattice.storage.write_atomically`): a crash or a
full disk leaves the previous checkpoint.  Schema-1 checkpoints (no digest) are still read.
Use :func:`load_flow` to get a ready model.
"""

from __future__ import annotations

import dataclasses
import io
import os

import torch

from gaugeflow.lattice.errors import TrainingError
from gaugeflow.lattice.geometry import parse_lattice_shape
from gaugeflow.lattice.storage import digest, write_atomically

from .model import upgrade_architecture, upgrade_state_dict

CHECKPOINT_SCHEMA = "gaugeflow-checkpoint"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def rng_state() -> dict:
    """This process's random-number state (CPU and, where present, GPU streams)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        state["xpu"] = torch.xpu.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "xpu" in state and hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.set_rng_state_all(state["xpu"])


def save_checkpoint(path, model, optimizer, scheduler, step: int, config, metrics: dict, rng_states=None,
                    training_seconds: float = 0.0) -> None:
    """Write atomically, with a digest of the payload; refuse non-finite parameters.

    ``rng_states`` holds one RNG state per MPI rank (default: this process's)."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingError(f"parameters became non-finite by step {step} ({bad[0]}, ...); not written, the last "
                            f"good checkpoint {path} is kept; lower learning_rate or grad_clip")
    payload = {
        "schema": CHECKPOINT_SCHEMA,
        "schema_version": CHECKPOINT_VERSION,
        "architecture": model.architecture,
        "train_config": dataclasses.asdict(config),
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states if rng_states is not None else [rng_state()],
        "metrics": {k: float(v) for k, v in metrics.items()},
        "training_seconds": float(training_seconds),  # over all resumed runs: a time budget continues
    }
    payload["sha256"] = digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomically(path, buffer.getvalue())


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``), check its schema and bring its
    architecture and weights to the current version."""
    if not os.path.exists(path):
        raise TrainingError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle errors, truncated zip, foreign objects
        raise TrainingError(f"{path} is not a readable gaugeflow checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("schema") != CHECKPOINT_SCHEMA:
        raise TrainingError(f"{path} is not a gaugeflow checkpoint")
    if payload.get("schema_version") not in READABLE_VERSIONS:
        raise TrainingError(f"{path} has checkpoint schema version {payload.get('schema_version')}; "
                            f"this gaugeflow reads {', '.join(map(str, READABLE_VERSIONS))}")
    if payload["schema_version"] >= 2:
        stored = payload.pop("sha256", None)
        if stored != digest(payload):
            raise TrainingError(f"{path}: checkpoint payload: checksum mismatch")
    stored_version = payload["architecture"].get("architecture_version", 0)
    payload["architecture"] = upgrade_architecture(payload["architecture"])
    payload["model"] = upgrade_state_dict(payload["model"], stored_version)
    return payload


def describe(arch: dict) -> str:
    couplings = ", ".join(f"{k}={v:g}" for k, v in arch["couplings"].items())
    lattice = "x".join(map(str, arch["lattice"]))
    return f"{arch['theory']} {lattice} ({couplings}), {arch['n_layers']} {arch['kernel']} layers, hidden {arch['hidden_channels']}"


def check_architecture(payload: dict, arch: dict, path) -> None:
    """Refuse a checkpoint whose model differs from ``arch``, naming the keys that differ."""
    stored = payload["architecture"]
    differing = sorted(key for key in set(stored) | set(arch) if stored.get(key) != arch.get(key))
    if differing:
        details = "; ".join(f"{key}: checkpoint {stored.get(key)!r}, requested {arch.get(key)!r}" for key in differing)
        raise TrainingError(f"checkpoint {path} holds a model for {describe(stored)} that differs in {details}")


# what may differ between a model and the one it starts from (see warm_start)
TRANSFERABLE = ("lattice", "couplings", "architecture_version")


def warm_start(model, path) -> dict:
    """Start ``model`` from the weights of the checkpoint ``path``: a model of the same theory
    and architecture, trained on another volume or at other couplings (the conditioners are
    translation equivariant, so weights carry over to any volume of the same dimension).

    This is how models are grown: train at 8x8, fine-tune at 16x16; train at beta=4, continue
    at beta=6.  Only the weights are taken (optimizer and schedule start anew); of a joint
    pseudofermion model, those of its gauge flow.  Returns the checkpoint's architecture."""
    from .pseudofermion_flow import ARCHITECTURE_KEY

    payload = load_checkpoint(path, map_location=next(model.parameters()).device)
    stored, arch = payload["architecture"], model.architecture
    transferable = (*TRANSFERABLE, ARCHITECTURE_KEY)  # a joint model's initial kappa_q follows kappa
    differing = sorted(k for k in set(stored) | set(arch) if k not in transferable and stored.get(k) != arch.get(k))
    if differing:
        details = "; ".join(f"{k}: {stored.get(k)!r} there, {arch.get(k)!r} here" for k in differing)
        raise TrainingError(f"cannot start from {path}: its model ({describe(stored)}) differs in {details}")
    dtype = next(model.parameters()).dtype
    model.transfer_weights({k: v.to(dtype) if v.is_floating_point() else v for k, v in payload["model"].items()})
    return stored


def load_flow(path, lattice=None, device=None):
    """The trained model of a checkpoint, in the precision it was trained in, in eval mode.

    ``lattice`` (e.g. ``"16x16"``) runs the model on another volume of the same dimension:
    the conditioners are translation equivariant, so the same weights apply.
    """
    from .contract import model_from_weights

    payload = load_checkpoint(path, map_location=device or "cpu")
    arch = dict(payload["architecture"])
    if lattice is not None:
        shape = list(parse_lattice_shape(lattice))
        if len(shape) != len(arch["lattice"]):
            raise TrainingError(f"the model in {path} is {len(arch['lattice'])}-dimensional; lattice {lattice} is not")
        arch["lattice"] = shape
    if not all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point()):
        raise TrainingError(f"{path} holds non-finite parameters; it cannot sample")
    return model_from_weights(payload["model"], arch).to(device or "cpu").eval()
