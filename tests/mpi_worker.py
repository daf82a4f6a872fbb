"""Run under ``mpiexec -n 2`` by tests/test_mpi.py (not collected by pytest itself)."""

import hashlib
import json
import sys

import torch

from gaugeflow.flows import TrainConfig, architecture, build_flow, load_checkpoint, train_flow
from gaugeflow.flows.distributed import Communicator
from gaugeflow.lattice.theories import make_theory


def parameter_digest(model):
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def main(out_dir):
    torch.set_num_threads(1)
    comm = Communicator()
    report = {"rank": comm.rank, "size": comm.size}

    # gradient averaging: rank r holds gradient r + 1 everywhere -> mean 1.5
    probe = torch.nn.Linear(3, 2).double()
    for p in probe.parameters():
        p.grad = torch.full_like(p, comm.rank + 1.0)
    comm.average_gradients(probe)
    report["averaged_gradient"] = sorted({float(v) for p in probe.parameters() for v in p.grad.reshape(-1)})

    theory = make_theory("u1", "4x4", beta=1.0)
    torch.manual_seed(100 + comm.rank)  # deliberately different initial weights: rank 0's must win
    model = build_flow(architecture(theory, n_layers=4, hidden_channels=[4])).double()
    config = TrainConfig(steps=6, batch_size=16, log_every=3, checkpoint_every=3, eval_batches=1, seed=5)
    train_flow(model, config, f"{out_dir}/model.pt", progress=False, communicator=comm)
    report["digest"] = parameter_digest(model)
    report["checkpoint_ranks"] = len(load_checkpoint(f"{out_dir}/model.pt")["rng"])
    with open(f"{out_dir}/rank{comm.rank}.json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
