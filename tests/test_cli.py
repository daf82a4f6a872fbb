"""The gaugeflow command line: end to end, bad input, signals."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gaugeflow(*args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "gaugeflow.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, **kwargs
    )


SMALL_RUN = ["--lattice", "4x4", "--n-configs", 8, "--therm", 5, "--chains", 2, "--quiet"]


def test_hmc_then_analyze_json(tmp_path):
    out = tmp_path / "ens.h5"
    result = gaugeflow("hmc", "--theory", "u1", "--beta", 2.0, *SMALL_RUN, "--out", out)
    assert result.returncode == 0, result.stderr
    analysis = gaugeflow("analyze", out, "--json")
    assert analysis.returncode == 0, analysis.stderr
    results = json.loads(analysis.stdout)
    assert {"plaquette", "topological_charge", "topological_susceptibility", "acceptance"} <= set(results)
    plaquette = results["plaquette"]
    assert set(plaquette) == {"mean", "error", "tau_int", "tau_int_error", "replica_q", "exact", "pull"}
    assert 0 < plaquette["mean"] < 1 and plaquette["tau_int_error"] > 0
    from gaugeflow.lattice import exact
    assert plaquette["exact"] == exact.u1_plaquette(2.0, 16)  # full precision
    assert plaquette["pull"] == (plaquette["mean"] - plaquette["exact"]) / plaquette["error"]
    assert results["polyakov_loop_abs"]["exact"] is None and results["exp_minus_delta_h"]["exact"] == 1.0
    table = gaugeflow("analyze", out)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["observable", "estimate", "tau_int", "exact", "pull"]
    from gaugeflow.hmc.analysis import format_value_error
    row = next(line.split() for line in lines if line.startswith("plaquette "))
    assert row[:3] == ["plaquette", format_value_error(plaquette["mean"], plaquette["error"]),
                       format_value_error(plaquette["tau_int"], plaquette["tau_int_error"])]
    assert abs(float(row[3]) - plaquette["exact"]) < plaquette["error"] / 100 and row[4] == f"{plaquette['pull']:+.1f}"
    assert len(next(line.split() for line in lines if line.startswith("polyakov_loop_abs "))) == 3  # no exact value


def test_phi4_run_reports_chi_2pt(tmp_path):
    out = tmp_path / "phi4.h5"
    result = gaugeflow("hmc", "--theory", "phi4", "--m2", -4, "--lam", 8, *SMALL_RUN, "--out", out, "--trajectory-length", 0.2)
    assert result.returncode == 0, result.stderr
    assert "chi_2pt" in json.loads(gaugeflow("analyze", out, "--json").stdout)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--theory", "u7", "--beta", 1], "unknown theory 'u7'"),
        (["--theory", "u1"], "needs coupling(s) --beta"),
        (["--theory", "phi4", "--m2", 1], "--lam"),
        (["--theory", "u1", "--beta", 1, "--lattice", "8xx8"], "lattice shape"),
        (["--theory", "u1", "--beta", 1, "--device", "cuda:99"], "cuda"),  # no machine has 100 GPUs
        (["--theory", "u1", "--beta", 1, "--n-configs", 7], "multiple of --chains"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, args, message):
    out = tmp_path / "ens.h5"
    base = ["--lattice", "4x4", "--n-configs", 8, "--therm", 2, "--chains", 2, "--quiet", "--out", out]
    result = gaugeflow("hmc", *base, *args)  # later options override earlier ones
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_unwritable_output_and_foreign_input(tmp_path):
    result = gaugeflow("hmc", "--theory", "u1", "--beta", 1, *SMALL_RUN, "--out", tmp_path / "no" / "such" / "dir.h5")
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    result = gaugeflow("analyze", foreign)
    assert result.returncode == 2 and "not a gaugeflow ensemble" in result.stderr
    assert "Traceback" not in result.stderr


def test_existing_output_is_kept(tmp_path):
    out = tmp_path / "ens.h5"
    assert gaugeflow("hmc", "--theory", "u1", "--beta", 2, *SMALL_RUN, "--out", out).returncode == 0
    before = out.read_bytes()
    result = gaugeflow("hmc", "--theory", "u1", "--beta", 2, *SMALL_RUN, "--out", out)
    assert result.returncode == 2 and "--resume" in result.stderr
    assert out.read_bytes() == before


def test_sigterm_saves_and_resume_completes(tmp_path):
    """A real SIGTERM (as Slurm sends it): clean exit 3, nothing lost, --resume finishes the job."""
    out = tmp_path / "ens.h5"
    common = ["hmc", "--theory", "u1", "--beta", 2, "--lattice", "8x8", "--chains", 2, "--therm", 2, "--quiet", "--out", out]
    args = common + ["--n-configs", 200000]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "gaugeflow.cli", *map(str, args)], cwd=ROOT, env=env,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not out.exists():
        time.sleep(0.2)
    time.sleep(2.0)  # let it store some rows
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    assert "rerun with --resume" in stderr
    with h5py.File(out, "r") as f:
        stored = int(f.attrs["n_configs"])
    assert 0 < stored < 200000  # the signal committed what was queued
    target = stored + 4
    resumed = gaugeflow(*common, "--n-configs", target, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(out, "r") as f:
        assert int(f.attrs["n_configs"]) == target
        steps = f["step"][:target]
    assert list(steps[-4:]) == [steps[-5] + 1] * 2 + [steps[-5] + 2] * 2


def test_train_resume_keeps_the_stored_architecture_where_no_option_is_given(tmp_path):
    """Resuming continues the model in the checkpoint: options left out take its values, not
    today's defaults (a 4D SU(3) staple model trained with ``sum`` centres resumes as one);
    an option given explicitly must still match."""
    out = tmp_path / "model.pt"
    common = ["train", "--theory", "su3", "--lattice", "2x2x2x2", "--beta", 1.0, "--hidden", "4", "--batch-size", 4,
              "--quiet", "--out", out]
    first = gaugeflow(*common, "--staple-centres", "sum", "--layers", 2, "--steps", 1)
    assert first.returncode == 0, first.stderr
    resumed = gaugeflow(*common, "--steps", 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    from gaugeflow.flows.checkpoint import load_checkpoint
    payload = load_checkpoint(out)
    assert payload["step"] == 2 and payload["architecture"]["staple_centres"] == "sum"
    assert payload["architecture"]["n_layers"] == 2
    other = gaugeflow(*common, "--staple-centres", "each", "--steps", 3, "--resume")
    assert other.returncode == 2 and "--staple-centres: checkpoint 'sum'" in other.stderr and "Traceback" not in other.stderr


def test_train_resume_and_plot(tmp_path):
    out = tmp_path / "model.pt"
    args = ["train", "--theory", "u1", "--lattice", "4x4", "--beta", 1.0, "--layers", 2, "--hidden", "4", "--condition", "beta:0.5:1.5",
            "--batch-size", 16, "--log-every", 2, "--checkpoint-every", 2, "--quiet", "--out", out]
    first = gaugeflow(*args, "--steps", 4)
    assert first.returncode == 0, first.stderr
    resumed = gaugeflow(*args, "--steps", 6, "--resume", "--plot")
    assert resumed.returncode == 0, resumed.stderr
    rows = (tmp_path / "model.metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,loss") and [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]
    png = tmp_path / "model.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plotted = gaugeflow("plot", tmp_path / "model.metrics.csv", "--out", tmp_path / "curves.png")
    assert plotted.returncode == 0 and (tmp_path / "curves.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--theory", "u1", "--beta", 1, "--lattice", "6x6"], "divisible by 4"),
        (["--theory", "u1", "--beta", 1, "--lattice", "4x4", "--kernel", "affine"], "not available for u1"),
        (["--theory", "phi4", "--m2", 1, "--lam", 1, "--lattice", "4x4", "--hidden", "a,b"], "--hidden"),
        (["--theory", "u1", "--beta", 1, "--lattice", "4x4", "--estimator", "magic"], "invalid choice"),
        (["--theory", "u1", "--beta", 1, "--lattice", "4x4", "--condition", "beta:2"], "--condition must look like"),
        (["--theory", "u1", "--beta", 1, "--lattice", "4x4", "--condition", "beta:2:3"], "outside the conditioning range"),
        (["--theory", "phi4", "--m2", 1, "--lam", 1, "--lattice", "4x4", "--rectangles"],
         "unknown architecture option(s) --rectangles"),
        (["--theory", "u1", "--beta", 1, "--lattice", "4x4", "--compile", "--recompute"],
         "compile and recompute cannot be combined"),
    ],
)
def test_train_bad_input(tmp_path, args, message):
    result = gaugeflow("train", *args, "--steps", 2, "--quiet", "--out", tmp_path / "m.pt")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m.pt").exists()


def test_train_rejects_a_foreign_checkpoint(tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"not a checkpoint")
    result = gaugeflow("train", "--theory", "u1", "--beta", 1, "--lattice", "4x4", "--steps", 2, "--quiet",
                       "--out", out, "--resume")
    assert result.returncode == 2 and "not a readable gaugeflow checkpoint" in result.stderr
    assert out.read_bytes() == b"not a checkpoint"


def test_sample_from_a_trained_flow_and_resume(tmp_path):
    model, out = tmp_path / "model.pt", tmp_path / "flow.h5"
    trained = gaugeflow("train", "--theory", "u1", "--lattice", "4x4", "--beta", 1.0, "--layers", 4, "--hidden", "4",
                        "--steps", 4, "--batch-size", 16, "--quiet", "--out", model)
    assert trained.returncode == 0, trained.stderr
    args = ["sample", "--model", model, "--chains", 2, "--therm", 2, "--quiet", "--out", out]
    first = gaugeflow(*[a for a in args if a != "--quiet"], "--n-configs", 6)  # says what it chose and ran
    assert first.returncode == 0, first.stderr
    said = first.stderr.strip().splitlines()
    assert said[0].startswith("composite sampler: flow proposals accept ") and "so this run uses " in said[0]
    assert said[-1].startswith(f"{out}: 6 configurations (6 new) in ") and "; the composite sampler ran " in said[-1]
    assert "as chosen during thermalisation" in said[-1]
    resumed = gaugeflow(*args, "--n-configs", 10, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(out, "r") as f:  # the default: a composite chain whose policy thermalisation chose
        assert f.attrs["sampler"] == "composite" and int(f.attrs["n_configs"]) == 10
        assert f.attrs["fallback"] == "auto" and f.attrs["fallback_reason"].startswith("flow proposals accept ")
        assert "so this run uses " in f.attrs["fallback_reason"]
        assert list(f["step"][:]) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    for sampler in ("flow", "flow-hmc"):
        result = gaugeflow(*args[:-1], tmp_path / f"by-{sampler}.h5", "--sampler", sampler, "--n-configs", 4)
        assert result.returncode == 0, result.stderr
        with h5py.File(tmp_path / f"by-{sampler}.h5", "r") as f:
            assert f.attrs["sampler"] == sampler and f["configs"].shape == (4, 2, 4, 4)
    larger = gaugeflow("sample", "--model", model, "--lattice", "8x8", "--chains", 2, "--therm", 1, "--n-configs", 2,
                       "--sampler", "flow", "--quiet", "--out", tmp_path / "large.h5")
    assert larger.returncode == 0, larger.stderr
    with h5py.File(tmp_path / "large.h5", "r") as f:
        assert f["configs"].shape == (2, 2, 8, 8)
    hmc_file = tmp_path / "hmc.h5"
    assert gaugeflow("hmc", "--theory", "u1", "--beta", 1.0, *SMALL_RUN, "--out", hmc_file).returncode == 0
    mixed = gaugeflow("sample", "--model", model, "--chains", 2, "--n-configs", 10, "--quiet", "--out", hmc_file, "--resume")
    assert mixed.returncode == 2 and "sampler 'hmc', not 'composite'" in mixed.stderr
    annealed = tmp_path / "annealed.h5"  # the flow at beta = 1 starts proposals annealed to beta = 2
    ran = gaugeflow("hmc", "--theory", "u1", "--beta", 2.0, *SMALL_RUN, "--sampler", "annealed", "--anneal-steps", 3,
                    "--anneal-from", model, "--particles", 4, "--out", annealed)  # systems of 4 resampled paths
    assert ran.returncode == 0, ran.stderr
    with h5py.File(annealed, "r") as f:
        assert f.attrs["sampler"] == "annealed" and f.attrs["flow_checkpoint"] == str(model)
        assert float(f.attrs["anneal_start_beta"]) == 1.0 and f["configs"].shape == (8, 2, 4, 4)
        assert int(f.attrs["anneal_particles"]) == 4
    for extra, message in ((["--anneal-from", model], "--anneal-from is the start of annealed proposals"),
                           (["--particles", 4], "--particles is the size of the particle system of annealed")):
        refused = gaugeflow("hmc", "--theory", "u1", "--beta", 2.0, *SMALL_RUN, *extra, "--out", tmp_path / "no.h5")
        assert refused.returncode == 2 and message in refused.stderr
        assert not (tmp_path / "no.h5").exists()
    other = gaugeflow("hmc", "--theory", "u1", "--beta", 2.0, *SMALL_RUN, "--sampler", "annealed", "--anneal-steps", 3,
                      "--anneal-from", model, "--particles", 2, "--resume", "--out", annealed)
    assert other.returncode == 2 and "cannot resume with anneal_particles=2" in other.stderr


@pytest.mark.parametrize("theory", [["--theory", "u1", "--beta", 0.8], ["--theory", "su2", "--beta", 1.5]])
def test_4d_staple_model_trains_samples_and_reweights(tmp_path, theory):
    """The 4D default layer kind (staple couplings) end to end: train, a composite chain and
    reweighting from the checkpoint; ``--layer-kind`` picks the kind, odd extents are refused;
    ``--recompute`` trains with layers recomputed in the backward pass, ``--micro-batch`` in parts
    of the batch; U(1) and SU(2) models see the chairs unless ``--no-chairs``."""
    model, out = tmp_path / "model.pt", tmp_path / "flow.h5"
    trained = gaugeflow("train", *theory, "--lattice", "2x2x2x4", "--layer-kind", "staple", "--hidden", "4",
                        "--steps", 2, "--batch-size", 8, "--recompute", "--micro-batch", 3, "--quiet", "--out", model)
    assert trained.returncode == 0, trained.stderr
    from gaugeflow.flows.checkpoint import load_checkpoint
    architecture = load_checkpoint(model)["architecture"]
    assert architecture["layer_kind"] == "staple" and architecture["n_layers"] == 16
    assert architecture["chairs"] is True  # the default for U(1) and SU(2)
    assert load_checkpoint(model)["train_config"]["recompute"] is True
    assert load_checkpoint(model)["train_config"]["micro_batch"] == 3
    if theory[1] == "u1":  # the option reaches the checkpoint (U(1) alone: SU(2) takes the same path)
        plain = gaugeflow("train", *theory, "--lattice", "2x2x2x4", "--hidden", "4", "--layers", 2, "--no-chairs",
                          "--steps", 1, "--batch-size", 4, "--quiet", "--out", tmp_path / "plain.pt")
        assert plain.returncode == 0, plain.stderr
        assert load_checkpoint(tmp_path / "plain.pt")["architecture"]["chairs"] is False
    sampled = gaugeflow("sample", "--model", model, "--chains", 2, "--therm", 1, "--n-configs", 4, "--hmc-per-step", 1,
                        "--quiet", "--out", out)
    assert sampled.returncode == 0, sampled.stderr
    with h5py.File(out, "r") as f:
        assert f["configs"].shape[0] == 4
    reweighted = gaugeflow("reweight", "--model", model, "--n-samples", 32, "--json")
    assert reweighted.returncode == 0, reweighted.stderr
    assert "ess" in json.loads(reweighted.stdout)
    odd = gaugeflow("train", *theory, "--lattice", "2x3x2x4", "--layer-kind", "staple", "--steps", 1, "--quiet",
                    "--out", tmp_path / "odd.pt")
    assert odd.returncode == 2 and "even lattice extents" in odd.stderr and "Traceback" not in odd.stderr


def test_library_messages_are_translated_to_options_but_paths_are_not():
    from gaugeflow.cli.commands import in_option_names

    message = "/scratch/beta/n_configs.h5: n_configs (7) must be a multiple of n_chains (2); learning_rate, beta=2."
    assert in_option_names(message) == (
        "/scratch/beta/n_configs.h5: --n-configs (7) must be a multiple of --chains (2); --lr, --beta=2."
    )
    assert in_option_names("pass resume=True to continue it") == "pass --resume to continue it"


def test_a_bug_is_not_reported_as_bad_input(tmp_path, monkeypatch):
    from gaugeflow.cli import commands

    def broken(*args, **kwargs):
        raise KeyError("internal")  # not a GaugeflowError: must surface with its traceback

    monkeypatch.setattr("gaugeflow.hmc.analysis.analyze_with_warnings", broken)  # what analyze calls
    with pytest.raises(KeyError, match="internal"):
        commands.main(["analyze", str(tmp_path / "any.h5")])
    monkeypatch.undo()
    assert commands.main(["analyze", str(tmp_path / "missing.h5")]) == 2  # a bad path is bad input


@pytest.mark.parametrize("command, args, message", [
    ("hmc", ["--theory", "su100000", "--lattice", "4x4", "--beta", 1], "TiB on cpu, but only"),
    ("hmc", ["--theory", "u1", "--lattice", "65536x65536", "--beta", 1], "TiB on cpu, but only"),
    ("train", ["--theory", "u1", "--lattice", "65536x65536", "--beta", 1], "the masks of 16 layers"),
    ("train", ["--theory", "u1", "--lattice", "2048x2048", "--beta", 1, "--batch-size", 4096], "at batch 4096 would need"),
    # one sample does not fit: only recomputing can help
    ("train", ["--theory", "u1", "--lattice", "32x32x32x32", "--beta", 1, "--batch-size", 1024], "or pass --recompute ("),
    ("train", ["--theory", "u1", "--lattice", "8x8x8x8", "--beta", 1, "--batch-size", 4096], "or pass --micro-batch="),
    ("train", ["--theory", "u1", "--lattice", "8x8", "--beta", 1, "--micro-batch", 0], "--micro-batch must be at least 1"),
    ("train", ["--theory", "u1", "--lattice", "8x8", "--beta", 1, "--condition", "beta:-inf:inf"], "must be finite"),
])
def test_what_cannot_work_is_refused_before_allocating(tmp_path, command, args, message):
    result = gaugeflow(command, *args, "--quiet", "--out", tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["hmc", "train"])
def test_a_signal_while_starting_up_still_stops_cleanly(tmp_path, command):
    """SIGTERM while Python is still importing PyTorch: a clean stop (exit 3; HMC: 4, stopped in its
    thermalisation, which stores nothing, so that batch jobs do not requeue it forever), and
    --resume then works."""
    out = tmp_path / ("ens.h5" if command == "hmc" else "m.pt")
    args = {"hmc": ["hmc", "--theory", "u1", "--beta", 2, "--lattice", "4x4", "--n-configs", 8, "--chains", 2,
                    "--therm", 2],
            "train": ["train", "--theory", "u1", "--beta", 1, "--lattice", "4x4", "--layers", 2, "--hidden", 4,
                      "--steps", 4, "--batch-size", 8]}[command]
    process = subprocess.Popen([sys.executable, "-m", "gaugeflow.cli", *map(str, args), "--quiet", "--out", str(out)],
                               env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # handlers are in place after ~0.05 s; importing PyTorch takes about a second
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (4 if command == "hmc" else 3), stderr
    assert "stopped by SIGTERM" in stderr
    resumed = gaugeflow(*args, "--quiet", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr


# write steps of a resumed run: 1-3 rewrite the metrics log, 4 appends the row of step 4 to it,
# 5-7 write the checkpoint of step 4 (every step, in process: tests/test_integrity.py)
@pytest.mark.parametrize("step, written", [(4, "m.metrics.csv"), (5, "m.pt")])
def test_train_on_a_full_disk_keeps_the_last_checkpoint(tmp_path, step, written):
    out = tmp_path / "m.pt"
    args = ["train", "--theory", "u1", "--beta", 1, "--lattice", "4x4", "--layers", 2, "--hidden", 4, "--batch-size", 8,
            "--checkpoint-every", 2, "--log-every", 2, "--quiet", "--out", out]
    assert gaugeflow(*args, "--steps", 2).returncode == 0
    before, log_before = out.read_bytes(), (tmp_path / "m.metrics.csv").read_bytes()
    env = dict(os.environ, OMP_NUM_THREADS="1", GAUGEFLOW_FAULT=f"enospc:{step}")
    result = subprocess.run([sys.executable, "-m", "gaugeflow.cli", *map(str, args), "--steps", "4", "--resume"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "No space left on device (ENOSPC)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(tmp_path / written) in result.stderr
    assert out.read_bytes() == before  # the last good checkpoint
    assert (tmp_path / "m.metrics.csv").read_bytes()[: len(log_before)] == log_before
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name or name.endswith(".lock")]
    assert gaugeflow(*args, "--steps", 4, "--resume").returncode == 0


def test_train_grows_a_model_from_a_smaller_volume_and_another_coupling(tmp_path):
    import torch

    from gaugeflow.flows import architecture, build_flow
    from gaugeflow.flows.checkpoint import load_checkpoint, warm_start
    from gaugeflow.lattice.theories import make_theory

    small, large = tmp_path / "small.pt", tmp_path / "large.pt"
    common = ["train", "--theory", "u1", "--layers", 2, "--hidden", "4", "--batch-size", 8, "--quiet"]
    assert gaugeflow(*common, "--lattice", "4x4", "--beta", 2, "--steps", 3, "--no-rectangles", "--out", small).returncode == 0
    model = build_flow(architecture(make_theory("u1", "8x8", beta=3.0), n_layers=2, hidden_channels=[4], rectangles=False))
    warm_start(model, small)
    trained = load_checkpoint(small)["model"]
    for key, value in model.state_dict().items():
        if key.startswith("flows.") and key in trained:
            assert torch.equal(value, trained[key].to(value.dtype)), key
    # the CLI takes the architecture from the model it starts from, and refuses another one
    grown = gaugeflow("train", "--theory", "u1", "--lattice", "8x8", "--beta", 3, "--init-from", small, "--steps", 2,
                      "--batch-size", 8, "--quiet", "--out", large)
    assert grown.returncode == 0, grown.stderr
    assert load_checkpoint(large)["architecture"]["n_layers"] == 2
    assert load_checkpoint(large)["architecture"]["rectangles"] is False  # as the model it grew from
    refused = gaugeflow("train", "--theory", "u1", "--lattice", "8x8", "--beta", 3, "--init-from", small, "--layers", 4,
                        "--steps", 2, "--quiet", "--out", tmp_path / "other.pt")
    assert refused.returncode == 2 and "differs in --layers: 2 there, 4 here" in refused.stderr


def _subcommands():
    import argparse

    from gaugeflow.cli.commands import build_parser

    parser = build_parser()
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return parser, {name: command for name, command in sub.choices.items() if name not in ("batch", "slurm", "pbs")}


def test_every_subcommand_has_a_description_examples_that_parse_and_listed_choices():
    import shlex

    from gaugeflow.flows.model import _FAMILIES
    from gaugeflow.flows.priors import _PRIORS

    parser, commands = _subcommands()
    for name, command in [("gaugeflow", parser), *commands.items()]:
        text = command.format_help()
        assert command.description and "examples:\n" in text, name
        for line in text.split("examples:\n", 1)[1].splitlines():
            words = shlex.split(line.split("#")[0])
            words = words[words.index("gaugeflow") + 1:]
            if words and words[0] != "COMMAND":
                parser.parse_args(words)  # exits (status 2) if an example does not parse
    train = commands["train"].format_help()
    assert "--kernel {" + ",".join(sorted({k for family in _FAMILIES.values() for k in family.kernels})) + "}" in train
    assert "--prior {" + ",".join(sorted({p for names in _PRIORS.values() for p in names})) + "}" in train
    assert "<out without its extension>.metrics.csv" in " ".join(train.split())
    sample = commands["sample"].format_help()
    assert "--hmc-per-step {auto,K}" in sample and "--fallback" not in sample
    assert parser.parse_args(["sample", "--model", "m.pt", "--out", "e.h5"]).hmc_per_step is None  # auto
    assert parser.parse_args(["sample", "--model", "m.pt", "--out", "e.h5", "--hmc-per-step", "3"]).hmc_per_step == 3
    assert parser.parse_args(["sample", "--model", "m.pt", "--out", "e.h5", "--fallback", "auto"]).hmc_per_step is None


def test_device_auto_takes_cuda_then_xpu_then_cpu(monkeypatch):
    import torch

    from gaugeflow.lattice.backend import auto_device, resolve_device

    parser, _ = _subcommands()
    hmc = ["hmc", "--theory", "u1", "--lattice", "4x4", "--out", "e.h5"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "xpu", type("NoXPU", (), {"is_available": staticmethod(lambda: False)}), raising=False)
    assert auto_device() == "cpu" and resolve_device("auto") == torch.device("cpu")
    assert parser.parse_args(hmc).device == "cpu"  # auto is the default
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    assert auto_device() == "xpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_device() == "cuda" and parser.parse_args(hmc).device == "cuda"
    assert parser.parse_args([*hmc, "--device", "cpu"]).device == "cpu"
