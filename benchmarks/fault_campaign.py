"""The longer fault campaign: byte flips at every structural position class of a segmented
ensemble, a distributed one and a checkpoint, many per class; every outcome is classified.

A flip must end in one of two ways: the data read back are unchanged (the byte was unused or
redundant), or the damage is refused -- by ``verify`` (ensembles) or ``load_checkpoint`` --
with a one-line error.  A silent change of data, any other exception or a crash of the reading
process (each read runs in a forked child, so that a crash of libhdf5 is counted) is a
failure; the campaign counts them (there must be none).  ``tests/test_integrity.py`` runs a short, seeded
version of the same in CI.

    python benchmarks/fault_campaign.py --per-class 40 --seed 1
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from fault_classes import flip, hdf5_position_classes, occurrences  # noqa: E402

from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow  # noqa: E402
from gaugeflow.flows.checkpoint import load_checkpoint  # noqa: E402
from gaugeflow.flows.distributed import SingleProcess  # noqa: E402
from gaugeflow.hmc.distributed import generate_distributed  # noqa: E402
from gaugeflow.hmc.hmc import HMCParameters, HMCSampler  # noqa: E402
from gaugeflow.hmc.run import run_chains  # noqa: E402
from gaugeflow.lattice.ensemble import EnsembleError, open_ensemble, segment_directory, stream_path  # noqa: E402
from gaugeflow.lattice.errors import GaugeflowError  # noqa: E402
from gaugeflow.lattice.storage import digest  # noqa: E402
from gaugeflow.lattice.theories import make_theory  # noqa: E402

THEORY = make_theory("u1", "4x4", beta=2.0)
PARAMS = HMCParameters(1.0, 4)


def ensemble_digest(path) -> str:
    with open_ensemble(path) as ensemble:
        ensemble.verify()
        return digest({"configs": ensemble.configs(), "meta": ensemble.metadata,
                       "rows": {n: ensemble.column(n) for n in ("chain", "step", "accepted", "delta_h",
                                                                *ensemble.observable_names)},
                       "state": [p.resume_state() for p in (ensemble.streams() or [ensemble])]})


def checkpoint_digest(path) -> str:
    payload = load_checkpoint(path)
    return digest({k: payload[k] for k in ("model", "step", "architecture")})


OUTCOMES = ("unchanged", "refused", "silent change", "other error", "crash")


def judged_in_a_child(read, reference, refusals) -> str:
    """Read in a forked child, so that a crash of libhdf5 on damaged bytes is counted, not fatal."""
    pid = os.fork()
    if pid == 0:  # the child: its exit status is the outcome
        code = 3
        try:
            code = 0 if read() == reference else 2
        except refusals as error:
            code = 1 if "\n" not in str(error) else 3
        except BaseException:  # noqa: BLE001 (counted: there must be none)
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return OUTCOMES[os.waitstatus_to_exitcode(status)] if os.WIFEXITED(status) else "crash"


def campaign(target_files, classes_of, read, refusals, per_class, rng, table, label):
    reference = read()
    for target in target_files:
        original = open(target, "rb").read()
        for kind, offsets in classes_of(target).items():
            row = table.setdefault((label, os.path.basename(target).split(".")[0] + " " + kind),
                                   {"flips": 0, **{outcome: 0 for outcome in OUTCOMES}})
            for offset in rng.sample(offsets, min(per_class, len(offsets))):
                mask = rng.choice([0x01, 0x04, 0x10, 0x40, 0x80, 0xFF])
                flip(target, offset, mask)
                row["flips"] += 1
                outcome = judged_in_a_child(read, reference, refusals)
                row[outcome] += 1
                if outcome not in ("unchanged", "refused"):
                    print(f"{outcome}: {label} {os.path.basename(target)} {kind} byte {offset} ^ {mask:#04x}",
                          file=sys.stderr)
                open(target, "wb").write(original)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng, table, began = random.Random(args.seed), {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        segmented = os.path.join(folder, "seg.h5")
        run_chains(THEORY, segmented, HMCSampler(THEORY, PARAMS, False), n_configs=8, n_chains=2, n_therm=2,
                   progress=False, commit_every=0)
        last = os.path.join(segment_directory(segmented), sorted(os.listdir(segment_directory(segmented)))[-1])
        campaign([last, segmented], hdf5_position_classes, lambda: ensemble_digest(segmented), EnsembleError,
                 args.per_class, rng, table, "segmented")
        streams = os.path.join(folder, "streams.h5")
        generate_distributed(THEORY, streams, lambda: HMCSampler(THEORY, PARAMS, False), SingleProcess(),
                             n_configs=4, n_chains=2, n_therm=2, progress=False, commit_every=0)
        stream = stream_path(streams, 0)
        stream_last = os.path.join(segment_directory(stream), sorted(os.listdir(segment_directory(stream)))[-1])
        campaign([stream_last, stream, streams], hdf5_position_classes, lambda: ensemble_digest(streams),
                 EnsembleError, args.per_class, rng, table, "distributed")
        checkpoint = os.path.join(folder, "m.pt")
        train_flow(build_flow(architecture(make_theory("u1", "4x4", beta=1.0), n_layers=2, hidden_channels=[4])),
                   TrainConfig(steps=1, batch_size=4, eval_batches=1), checkpoint, progress=False)
        data = open(checkpoint, "rb").read()

        def zip_classes(_path):
            classes = {"local header": occurrences(data, b"PK\x03\x04", 26),
                       "central directory": occurrences(data, b"PK\x01\x02", 42),
                       "end record": occurrences(data, b"PK\x05\x06", 18)}
            used = {i for v in classes.values() for i in v}
            classes["records"] = [i for i in range(len(data)) if i not in used]
            return classes

        campaign([checkpoint], zip_classes, lambda: checkpoint_digest(checkpoint), GaugeflowError, args.per_class,
                 rng, table, "checkpoint")
    columns = ["flips", *OUTCOMES]
    print(f"| file | position class | {' | '.join(columns)} |")
    print("|---|---|" + "---:|" * len(columns))
    for (label, kind), row in table.items():
        print(f"| {label} | {kind} | {' | '.join(str(row[c]) for c in columns)} |")
    totals = {c: sum(row[c] for row in table.values()) for c in columns}
    print(f"| all | | {' | '.join(str(totals[c]) for c in columns)} |")
    print(f"\n{time.perf_counter() - began:.0f} s, seed {args.seed}, {args.per_class} flips per class at most")
    return 1 if totals["silent change"] or totals["other error"] or totals["crash"] else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
