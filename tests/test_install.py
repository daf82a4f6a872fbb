"""A plain (non-editable) install puts one package, ``gaugeflow``, into site-packages."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r"""
import importlib, pkgutil, sys
import gaugeflow
assert gaugeflow.__file__.startswith(sys.argv[1]), gaugeflow.__file__
modules = [m.name for m in pkgutil.walk_packages(gaugeflow.__path__, "gaugeflow.")]
for name in modules:
    if name.endswith(".__main__"):  # running it is running the command
        continue
    importlib.import_module(name)
assert {"gaugeflow.lattice", "gaugeflow.flows", "gaugeflow.hmc", "gaugeflow.cli"} <= set(modules), modules
for public in ("make_theory", "generate_ensemble", "analyze_ensemble", "open_ensemble", "architecture",
               "build_flow", "train_flow", "load_flow", "TrainConfig", "__version__"):
    assert hasattr(gaugeflow, public), public
for stray in ("lattice", "flows", "hmc", "scripts"):
    try:
        importlib.import_module(stray)
    except ModuleNotFoundError:
        continue
    raise AssertionError(f"'import {stray}' works after installing gaugeflow")
print(len(modules), gaugeflow.__version__)
"""


def test_plain_install_is_one_namespace(tmp_path):
    target = tmp_path / "site"
    # --no-build-isolation: build with this environment's setuptools, no download
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), ROOT], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    installed = {name for name in os.listdir(target) if name != "bin" and not name.endswith(".dist-info")}
    assert installed == {"gaugeflow"}, installed
    assert {"lattice", "flows", "hmc", "cli"} <= set(os.listdir(target / "gaugeflow"))
    assert not (target / "gaugeflow" / "tests").exists() and not (target / "gaugeflow" / "scripts").exists()
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    # run from an empty directory, so that nothing is found through the current directory
    run = subprocess.run([sys.executable, "-c", CHECK, str(target)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (target / "bin" / "gaugeflow").exists()
    # the batch templates travel with the package: rendering works from the installed copy
    assert {"hmc.sbatch", "train-mpi.sbatch", "aurora-train.pbs"} <= set(os.listdir(target / "gaugeflow" / "slurm"))
    rendered = subprocess.run([sys.executable, "-m", "gaugeflow.cli", "slurm", "render", "hmc", "--", "--seed", "3"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0 and "ARGS=(--seed 3)" in rendered.stdout, rendered.stderr
