"""Data-parallel training launched for real with ``mpiexec -n 2``."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the [mpi] extra)")


def launch(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([MPIEXEC, "-n", "2", sys.executable, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_two_ranks_average_gradients_and_stay_in_sync(tmp_path):
    result = launch(os.path.join(ROOT, "tests", "mpi_worker.py"), tmp_path)
    assert result.returncode == 0, result.stderr
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["size"] for r in reports] == [2, 2]
    assert all(r["averaged_gradient"] == [1.5] for r in reports)
    assert reports[0]["digest"] == reports[1]["digest"]  # identical parameters after training
    assert reports[0]["checkpoint_ranks"] == 2  # one RNG state per rank
    assert (tmp_path / "model.metrics.csv").read_text().count("\n") == 3  # header + steps 3 and 6, root only


def test_cli_data_parallel_training_resumes(tmp_path):
    out = tmp_path / "model.pt"
    args = ["-m", "gaugeflow.cli", "train", "--theory", "phi4", "--m2", -4, "--lam", 8, "--lattice", "4x4",
            "--layers", 2, "--hidden", "4", "--batch-size", 16, "--log-every", 2, "--quiet", "--mpi", "--out", out]
    assert launch(*args, "--steps", 2).returncode == 0
    resumed = launch(*args, "--steps", 4, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    rows = (tmp_path / "model.metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    odd = launch(*args[:-2], "--batch-size", 15, "--steps", 2, "--out", tmp_path / "odd.pt")
    assert odd.returncode == 2 and "divisible by the number of MPI ranks" in odd.stderr
