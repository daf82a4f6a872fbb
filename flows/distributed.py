"""Data-parallel training over MPI ranks (mpi4py).

Every rank draws its own share of the batch from its own random stream, computes the
reverse-KL gradient on it, and the gradients are averaged with ``MPI.Allreduce`` before the
optimizer step, so all ranks keep identical parameters (rank 0's initial parameters are
broadcast first).  The result is the gradient of the full (global) batch.  Decisions that
must be collective -- skipping a non-finite step, stopping on SIGTERM/SIGUSR1 -- are taken
by all ranks together.  Rank 0 writes checkpoints (with every rank's RNG state) and logs.

mpi4py is imported only when a communicator is requested, so single-process use never needs
an MPI runtime.  Locally and in CI the PyPI ``mpich`` runtime is used (``pip install
.[mpi]``; launch with ``mpiexec -n 2``); on clusters build mpi4py against the site MPI and
launch with ``srun`` / ``mpiexec``.  Gradients travel through host memory; on GPUs this costs
one device-host copy per step, small next to the flow's forward and backward passes.
"""

from __future__ import annotations

import numpy as np
import torch


class Communicator:
    """The handful of collective operations training needs, over ``MPI.COMM_WORLD``."""

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm or MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def broadcast_parameters(self, module) -> None:
        for tensor in list(module.parameters()) + list(module.buffers()):
            buffer = tensor.detach().cpu().numpy().copy()
            self.comm.Bcast(buffer, root=0)
            with torch.no_grad():
                tensor.copy_(torch.from_numpy(buffer))

    def average_gradients(self, module) -> None:
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.detach().reshape(-1).to("cpu", torch.float64) for p in params]).numpy()
        total = np.empty_like(flat)
        self.comm.Allreduce(flat, total, op=self.MPI.SUM)
        total /= self.size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(torch.from_numpy(total[offset : offset + n]).reshape(p.grad.shape))
            offset += n

    def all(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LAND))

    def any(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def concatenate(self, tensor: torch.Tensor) -> torch.Tensor:
        """All ranks' 1-D tensors, concatenated in rank order (on every rank)."""
        parts = self.comm.allgather(tensor.detach().cpu())
        return torch.cat(parts).to(tensor.device)

    def gather(self, obj):
        return self.comm.gather(obj, root=0)

    def scatter(self, objects):
        return self.comm.scatter(objects, root=0)

    def broadcast(self, obj):
        return self.comm.bcast(obj, root=0)


def local_device(communicator: Communicator | None, device: str) -> str:
    """``cuda`` / ``xpu`` without an index become ``cuda:<local rank>`` on multi-GPU nodes."""
    if communicator is None or ":" in device or device == "cpu":
        return device
    if device == "cuda" and torch.cuda.is_available():
        return f"cuda:{communicator.local_rank % torch.cuda.device_count()}"
    if device == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        return f"xpu:{communicator.local_rank % torch.xpu.device_count()}"
    return device


class SingleProcess:
    """The same interface for one process without MPI (all collectives are trivial)."""

    rank, size, local_rank, is_root = 0, 1, 0, True

    def broadcast_parameters(self, module) -> None:
        pass

    def average_gradients(self, module) -> None:
        pass

    def all(self, flag: bool) -> bool:
        return bool(flag)

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def concatenate(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather(self, obj):
        return [obj]

    def broadcast(self, obj):
        return obj
