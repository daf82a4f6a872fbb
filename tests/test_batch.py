"""Batch-system helpers without a scheduler: template rendering, the launch command, the requeue
decision, signal forwarding and the PBS warning timer.  The templates on a real Slurm are
checked by .ci/slurm-check (run by .ci/run)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from gaugeflow.cli import batch, render
from gaugeflow.lattice.ensemble import open_ensemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = {"slurm": ["hmc", "hmc-array", "sample", "train", "train-mpi"], "pbs": ["aurora-train", "polaris-train"]}


def gaugeflow(*args, **options):
    return subprocess.run([sys.executable, "-m", "gaugeflow.cli", *map(str, args)], capture_output=True, text=True,
                          **options)


@pytest.mark.parametrize("system", ["slurm", "pbs"])
def test_every_template_renders_to_valid_bash(system, tmp_path):
    assert render.template_names(system) == TEMPLATES[system]
    for name in TEMPLATES[system]:
        out = tmp_path / f"{name}.{system}"
        result = gaugeflow(system, "render", name, "--time", "00:30:00", "--out", out, "--", "--seed", 7)
        assert result.returncode == 0, result.stderr
        text = out.read_text()
        assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
        assert "ARGS=(--seed 7)" in text and "exec gaugeflow batch" in text
        assert ("#SBATCH --time=00:30:00" if system == "slurm" else "#PBS -l walltime=00:30:00") in text
    again = gaugeflow(system, "render", TEMPLATES[system][0], "--out", out)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_slurm_render_sets_the_header_site_run_directory_and_quoted_options(tmp_path):
    site = tmp_path / "site.sh"
    site.write_text("module load pytorch/2.6\nsource /opt/env/bin/activate\n")
    result = gaugeflow("slurm", "render", "train-mpi", "--account", "m1234", "--partition", "regular", "--nodes", 4,
                       "--gpus-per-node", 8, "--constraint", "gpu", "--site", site, "--run-dir", "$SCRATCH/runs/a b",
                       "--header", "mail-type=END", "--", "--theory", "u1", "--hidden", "32,32", "--out", "my model.pt")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for line in ("#SBATCH --account=m1234", "#SBATCH --partition=regular", "#SBATCH --nodes=4",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --constraint=gpu",
                 "#SBATCH --mail-type=END", "module load pytorch/2.6", "ARGS=(--theory u1 --hidden 32,32 --out 'my model.pt')"):
        assert line in text.splitlines(), line
    assert 'RUN_DIR="${RUN_DIR:-$SCRATCH/runs/a b}"  # outputs' in text
    assert "##SBATCH --account" not in text and "# module load pytorch  " not in text
    cpu = gaugeflow("slurm", "render", "train", "--gpus-per-node", 0, "--cpus-per-task", 2).stdout
    assert "gpus" not in "".join(line for line in cpu.splitlines() if line.startswith("#SBATCH"))
    assert "#SBATCH --cpus-per-task=2" in cpu.splitlines()
    unknown = gaugeflow("slurm", "render", "nonsense")
    assert unknown.returncode == 2 and "unknown slurm template 'nonsense'" in unknown.stderr and "train-mpi" in unknown.stderr


def test_pbs_render_sets_nodes_ranks_and_the_script_to_resubmit(tmp_path):
    out = tmp_path / "train.pbs"
    result = gaugeflow("pbs", "render", "polaris-train", "--nodes", 8, "--account", "LatticeFlow", "--queue", "prod",
                       "--gpus-per-node", 4, "--header", "-l filesystems=home:eagle:grand", "--out", out)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    for line in ("#PBS -l select=8:system=polaris", "#PBS -A LatticeFlow", "#PBS -q prod",
                 "#PBS -l filesystems=home:eagle:grand",
                 f'export GAUGEFLOW_JOB_SCRIPT="${{GAUGEFLOW_JOB_SCRIPT:-{out}}}"'):
        assert line in lines, line
    assert any("gaugeflow batch --ranks-per-node 4 -- train" in line for line in lines)
    refused = gaugeflow("pbs", "render", "aurora-train", "--qos", "high")
    assert refused.returncode == 2 and "--qos is a Slurm option" in refused.stderr


def test_launch_command_follows_the_allocation(monkeypatch, tmp_path):
    for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "PBS_JOBID", "PBS_NODEFILE"):
        monkeypatch.delenv(name, raising=False)
    python = [sys.executable, "-m", "gaugeflow.cli"]
    assert batch.launch_command(["hmc", "--out", "e.h5"]) == [*python, "hmc", "--out", "e.h5", "--resume"]
    assert batch.launch_command(["train", "--resume"]) == [*python, "train", "--resume"]
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert batch.launch_command(["train"], srun_mpi="--mpi=pmix") == ["srun", "--mpi=pmix", *python, "train", "--resume",
                                                                      "--mpi"]
    monkeypatch.delenv("SLURM_JOB_ID")
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x1\nx1\nx2\nx2\n")  # PBS lists a node once per chunk/slot
    monkeypatch.setenv("PBS_JOBID", "99.aurora")
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    assert batch.launch_command(["train"], ranks_per_node=12) == [
        "mpiexec", "-n", "24", "--ppn", "12", "--hostfile", str(nodefile), *python, "train", "--resume", "--mpi"]
    assert batch.seconds("01:30:00") == 5400 and batch.seconds("1-00:00:10") == 86410 and batch.seconds("90") == 90


def test_requeue_resubmits_pbs_jobs_and_stops_at_the_cap(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(batch.subprocess, "run", lambda command, **_: calls.append(command) or
                        subprocess.CompletedProcess(command, 0, "100.pbs\n", ""))
    script = tmp_path / "job.pbs"
    script.write_text("#!/bin/bash\n")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.setenv("PBS_JOBID", "99.pbs")
    monkeypatch.setenv("GAUGEFLOW_JOB_SCRIPT", str(script))
    monkeypatch.setenv("GAUGEFLOW_RESTART", "2")
    assert batch.requeue(max_restarts=5)
    assert calls == [["qsub", "-W", "depend=afterany:99.pbs", "-v",
                      f"GAUGEFLOW_RESTART=3,GAUGEFLOW_JOB_SCRIPT={script}", str(script)]]
    monkeypatch.setenv("GAUGEFLOW_RESTART", "5")
    assert not batch.requeue(max_restarts=5) and len(calls) == 1
    monkeypatch.delenv("PBS_JOBID")
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert batch.requeue(max_restarts=5) and calls[-1] == ["scontrol", "requeue", "17"]


def _hmc(tmp_path, n_configs, therm):
    return ["hmc", "--theory", "u1", "--lattice", "16x16", "--beta", "2.0", "--n-configs", n_configs, "--therm", therm,
            "--commit-every", "0.5", "--quiet", "--out", tmp_path / "ens.h5"]


def test_batch_passes_signals_on_and_the_walltime_warning_stops_the_job(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_"))}
    # a PBS-style time limit: SIGUSR1 `margin` seconds before it, with no signal from outside
    timed = gaugeflow("batch", "--walltime", "7", "--margin", "2", "--", *_hmc(tmp_path, 400000, 10), env=env,
                      timeout=120)
    assert timed.returncode == 3, timed.stderr
    assert "passing SIGUSR1 on to the job" in timed.stderr and "stopped outside a batch job" in timed.stderr
    with open_ensemble(tmp_path / "ens.h5") as ensemble:
        stored = len(ensemble)
    assert stored > 0
    # SIGTERM from outside (the scheduler's stop) reaches the job through the wrapper
    job = subprocess.Popen([sys.executable, "-m", "gaugeflow.cli", "batch", "--", *map(str, _hmc(tmp_path, 400000, 10))],
                           stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(6)
    job.send_signal(signal.SIGTERM)
    _, errors = job.communicate(timeout=120)
    assert job.returncode == 3, errors
    with open_ensemble(tmp_path / "ens.h5") as ensemble:
        assert len(ensemble) > stored  # resumed (--resume is added) and stored more


def test_batch_does_not_requeue_a_job_stopped_before_it_saved_anything(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_"))}
    stopped = gaugeflow("batch", "--walltime", "4", "--margin", "2", "--", *_hmc(tmp_path, 4000, 10**6), env=env,
                        timeout=120)
    assert stopped.returncode == 4, stopped.stderr
    assert "during thermalisation, which stores nothing" in stopped.stderr
    assert "not requeueing; give the job more time" in stopped.stderr
    assert not os.path.exists(tmp_path / "ens.h5")


@pytest.mark.parametrize("system", ["slurm", "pbs"])
def test_help_lists_the_templates_with_examples(system, capsys):
    for argv in (["--help"], ["render", "--help"]):
        with pytest.raises(SystemExit) as stop:
            render.main(system, argv)
        assert stop.value.code == 0
        text = capsys.readouterr().out
        assert "render" in text and "examples:" in text
        assert all(f"  {name} " in text for name in TEMPLATES[system])
    with pytest.raises(SystemExit) as stop:
        render.main(system, ["draw"])
    assert stop.value.code == 2 and "invalid choice: 'draw'" in capsys.readouterr().err


def test_slurm_render_keeps_no_gpu_idle(capsys):
    job = ["--", "--theory", "u1", "--lattice", "8x8", "--beta", "2", "--out", "m.pt"]
    assert render.main("slurm", ["render", "train", "--nodes", "2", "--gpus-per-node", "4", *job]) == 0
    out, err = capsys.readouterr()
    assert "rendering train-mpi" in err and "gaugeflow-train-mpi" in out
    assert {"#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4"} <= set(out.splitlines())
    assert "--device" not in next(line for line in out.splitlines() if line.startswith("ARGS="))  # auto: the GPU
    refused = {
        ("sample", "--gpus-per-node", "4"): "sample is a one-GPU template",
        ("sample", "--gpus-per-node", "4", "--tasks-per-node", "2"): "2 GPU(s) would sit idle",
        ("train", "--", "--device", "cpu"): "holds 1 GPU(s) per node but its options say --device cpu",
        ("hmc", "--", "--device", "cuda"): "asks for no GPU but its options say --device cuda",
    }
    for argv, message in refused.items():
        assert render.main("slurm", ["render", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert render.main("slurm", ["render", "sample", "--gpus-per-node", "4", "--tasks-per-node", "4"]) == 0
    assert "--device auto" in capsys.readouterr().out  # the template's own options: the GPU
