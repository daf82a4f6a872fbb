"""Distributed ensemble generation (``--mpi``), launched for real with ``mpiexec``, and reading
an ensemble while a job writes it."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gaugeflow.flows.distributed import SingleProcess
from gaugeflow.hmc.analysis import analyze_ensemble
from gaugeflow.hmc.distributed import generate_distributed
from gaugeflow.hmc.run import HMCSampler, run_chains
from gaugeflow.lattice.ensemble import EnsembleError, compact_ensemble, open_ensemble, stream_path
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.theories import make_theory
from test_mpi import MPIEXEC, ROOT

needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the [mpi] extra)")

HMC = ["-m", "gaugeflow.cli", "hmc", "--theory", "u1", "--beta", "2.0", "--chains", "4", "--therm", "10",
       "--quiet", "--mpi"]


def launch(ranks, *args, background=False):
    command = [MPIEXEC, "-n", str(ranks), sys.executable, *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def rows(path):
    with open_ensemble(path) as ensemble:
        ensemble.verify()
        return ensemble.configs(), ensemble.column("chain"), ensemble.column("step")


@needs_mpi
def test_any_rank_count_stores_the_same_ensemble(tmp_path):
    reference, pieced = tmp_path / "reference.h5", tmp_path / "pieced.h5"
    done = launch(2, *HMC, "--lattice", "4x4", "--n-configs", 48, "--out", reference)
    assert done.returncode == 0, done.stderr
    # the same ensemble in three runs: 2 ranks, then 1 rank running both streams, then 3 ranks (one idle)
    for ranks, n_configs in ((2, 16), (1, 32), (3, 48)):
        result = launch(ranks, *HMC, "--lattice", "4x4", "--n-configs", n_configs, "--out", pieced, "--resume")
        assert result.returncode == 0, result.stderr
    configs, chain, step = rows(pieced)
    expected = rows(reference)
    np.testing.assert_array_equal(configs, expected[0])  # bit for bit
    np.testing.assert_array_equal(chain, expected[1])
    assert sorted(set(chain.tolist())) == list(range(8))  # 2 streams x 4 chains, ids unique across ranks
    for c in range(8):
        assert step[chain == c].tolist() == list(range(1, 7))
    with open_ensemble(pieced) as ensemble:
        assert ensemble.layout == "streams" and ensemble.n_streams == 2 and len(ensemble) == 48
    # plain h5py sees every row through the manifest's virtual datasets
    import h5py

    with h5py.File(pieced, "r") as h5file:
        np.testing.assert_array_equal(h5file["configs"][...], configs)


def _until_both_ranks_commit(job, path):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listing = [os.listdir(d) for d in (stream_path(path, s) + ".segments" for s in (0, 1)) if os.path.isdir(d)]
        if len(listing) == 2 and all(len(names) >= 2 for names in listing):
            return
        time.sleep(0.1)
    job.kill()
    pytest.fail(f"the ranks stored nothing: {job.communicate()[1]}")


@needs_mpi
def test_stopped_or_killed_ranks_resume_exactly(tmp_path):
    reference, stopped, killed = tmp_path / "reference.h5", tmp_path / "stopped.h5", tmp_path / "killed.h5"
    options = ["--lattice", "16x16", "--n-configs", 8000, "--commit-every", 0.5]
    # SIGTERM (what Slurm or PBS sends): mpiexec forwards it, every rank commits and exits 3
    job = launch(2, *HMC, *options, "--out", stopped, background=True)
    _until_both_ranks_commit(job, stopped)
    job.send_signal(signal.SIGTERM)
    _, errors = job.communicate(timeout=120)
    assert job.returncode == 3, errors
    assert "stopped by a signal" in errors and "--resume" in errors
    with open_ensemble(stopped) as ensemble:
        assert 0 < len(ensemble) < 8000
    resumed = launch(1, *HMC, *options, "--out", stopped, "--resume")  # another rank count
    assert resumed.returncode == 0, resumed.stderr
    # SIGKILL of one rank (a node failure): the job dies, committed rows survive, a rerun completes it
    job = launch(2, *HMC, *options, "--out", killed, background=True)
    _until_both_ranks_commit(job, killed)
    victim = subprocess.run(["pgrep", "-f", "--", f"--out {killed}"], capture_output=True, text=True).stdout.split()
    ranks = [pid for pid in map(int, victim) if pid != job.pid]
    assert ranks, "no rank process found"
    os.kill(ranks[-1], signal.SIGKILL)
    job.communicate(timeout=120)
    assert job.returncode != 0
    resumed = launch(2, *HMC, *options, "--out", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert launch(2, *HMC, *options, "--out", reference).returncode == 0
    expected = rows(reference)[0]
    np.testing.assert_array_equal(rows(stopped)[0], expected)
    np.testing.assert_array_equal(rows(killed)[0], expected)


def test_distributed_input_errors_name_the_problem(tmp_path):
    theory = make_theory("u1", "4x4", beta=2.0)
    sampler = lambda: HMCSampler(theory)  # noqa: E731
    with pytest.raises(InputError, match=r"multiple of n_chains x streams \(4 x 1 = 4\)"):
        generate_distributed(theory, tmp_path / "odd.h5", sampler, SingleProcess(), n_configs=6, n_chains=4,
                             progress=False)
    single = tmp_path / "single.h5"
    run_chains(theory, single, sampler(), n_configs=4, n_chains=4, n_therm=2, progress=False)
    with pytest.raises(EnsembleError, match="written by a single process"):
        generate_distributed(theory, single, sampler, SingleProcess(), n_configs=8, n_chains=4, resume=True,
                             progress=False)
    distributed = tmp_path / "distributed.h5"
    summary = generate_distributed(theory, distributed, sampler, SingleProcess(), n_configs=8, n_chains=4, n_therm=2,
                                   progress=False)
    assert summary.n_configs == 8 and summary.n_new == 8
    with pytest.raises(EnsembleError, match="already exists"):
        generate_distributed(theory, distributed, sampler, SingleProcess(), n_configs=8, n_chains=4, progress=False)
    with pytest.raises(EnsembleError, match="n_chains=4; cannot resume with n_chains=2"):
        generate_distributed(theory, distributed, sampler, SingleProcess(), n_configs=8, n_chains=2, resume=True,
                             progress=False)
    with pytest.raises(EnsembleError, match="distributed ensemble"):
        open_ensemble(distributed, "a")
    compacted = tmp_path / "compacted.h5"  # one self-contained file with every stream's rows
    assert compact_ensemble(distributed, compacted)["rows"] == 8
    with open_ensemble(compacted) as one, open_ensemble(distributed) as streams:
        np.testing.assert_array_equal(one.configs(), streams.configs())
        assert streams.verify()["rows"] == 8


def test_analysis_reads_an_ensemble_while_a_job_writes_it(tmp_path):
    out = tmp_path / "running.h5"
    command = [sys.executable, "-m", "gaugeflow.cli", "hmc", "--theory", "u1", "--lattice", "8x8", "--beta", "2.0",
               "--n-configs", "400000", "--therm", "5", "--commit-every", "0", "--quiet", "--out", str(out)]
    job = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE,
                           text=True)
    try:
        def rows():
            with open_ensemble(out) as ensemble:
                return len(ensemble), min((len(c) for c in ensemble.per_chain(ensemble.column("step"))), default=0)

        seen = []
        deadline = time.monotonic() + 120
        while len(seen) < 3 and time.monotonic() < deadline and job.poll() is None:
            if os.path.exists(out):
                n, shortest = rows()
                if shortest < 2 and n:
                    try:
                        analyze_ensemble(out)
                    except InputError as error:
                        assert "at least 2 per chain" in str(error)
                    else:  # the writer committed between the two reads; rows only grow, so it must show
                        assert rows()[1] >= 2
                elif n and (not seen or n > seen[-1]):
                    results = analyze_ensemble(out)  # no HDF5 file locking to switch off: nothing is held open
                    assert 0.5 < results["plaquette"]["mean"] < 0.9
                    seen.append(n)
            time.sleep(0.2)
        assert job.poll() is None, job.stderr.read()
        assert len(seen) == 3 and seen[0] < seen[1] < seen[2]
    finally:
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=60)
    assert job.returncode == 3
    assert subprocess.run([sys.executable, "-m", "gaugeflow.cli", "verify", str(out)], cwd=ROOT).returncode == 0
