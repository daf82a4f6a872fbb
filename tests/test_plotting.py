"""Plots: training curves and ensemble figures are drawn with the expected panels, axes, labels,
titles and reference lines (checked on the matplotlib figures, not on pixels), under one file-name
convention; ``gaugeflow plot`` on anything else stops with one line."""

import csv
import math

import h5py
import numpy as np
import pytest
import torch

from gaugeflow.cli.commands import main as gaugeflow
from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow
from gaugeflow.flows.plotting import is_training_log, plot_training, training_figure, training_plot_path
from gaugeflow.hmc.autocorrelation import gamma_method
from gaugeflow.hmc.plotting import ensemble_figure, ensemble_plot_path
from gaugeflow.hmc.run import generate_ensemble
from gaugeflow.lattice.ensemble import open_ensemble
from gaugeflow.lattice.theories import make_theory

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A U(1) 4x4 model trained for 6 steps (log Z exact): ``(checkpoint, log)``."""
    out = tmp_path_factory.mktemp("train") / "u1.pt"
    torch.manual_seed(0)
    model = build_flow(architecture(make_theory("u1", "4x4", beta=2.0), n_layers=2, hidden_channels=[4])).double()
    summary = train_flow(model, TrainConfig(steps=6, batch_size=8, log_every=2, checkpoint_every=6, eval_batches=1),
                         out, progress=False)
    return out, summary.log_path


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A U(1) 4x4 HMC ensemble: 2 chains of 24 configurations."""
    path = tmp_path_factory.mktemp("hmc") / "ens.h5"
    generate_ensemble(make_theory("u1", "4x4", beta=1.0), path, n_configs=48, n_therm=5, n_chains=2, seed=3,
                      progress=False)
    return path


def labelled(ax) -> bool:
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_training_curves_show_kl_on_a_log_axis_with_targets_and_the_physics_in_the_title(trained):
    checkpoint, log = trained
    fig = training_figure(log)
    objective, ess, rate, acceptance = fig.axes
    assert all(labelled(ax) for ax in fig.axes)
    assert objective.get_yscale() == "log" and "KL" in objective.get_ylabel()
    assert "exact log Z" in objective.get_title()
    for ax in (ess, acceptance):
        assert ax.get_ylim() == pytest.approx((0, 1.02))
        assert any(set(line.get_ydata()) == {0.5} for line in ax.get_lines())  # the target line
    assert rate.get_ylabel() == "learning rate"
    title = fig._suptitle.get_text()
    assert "u1 on 4x4, beta=2" in title and "u1.pt" in title and "2 plaquette layers" in title
    assert plot_training(log) == training_plot_path(log) == str(checkpoint.with_suffix(".png"))
    assert checkpoint.with_suffix(".png").read_bytes()[:8] == PNG


def test_training_curves_without_exact_log_z_or_checkpoint_show_the_loss(tmp_path):
    log = tmp_path / "phi4.metrics.csv"
    columns = ["step", "loss", "loss_std", "kl", "ess_batch", "ess", "acceptance", "learning_rate", "grad_norm",
               "skipped", "seconds"]
    with open(log, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for step in range(1, 11):
            loss = 300.0 if step == 1 else -1.0 - 0.1 * step
            writer.writerow([step, loss, 1.0, math.nan, 0.1, 0.2, 0.3, 1e-3, 1.0, 0, step])
        writer.writerow([11, -2.0])  # a row cut short by a crash is left out
    fig = training_figure(log)
    objective = fig.axes[0]
    assert objective.get_yscale() == "linear" and objective.get_ylabel().startswith("loss")
    assert objective.get_ylim()[1] < 300  # the first step's loss is written, not drawn to scale
    assert any("above the frame" in text.get_text() for text in objective.texts)
    assert "no checkpoint phi4.pt" in fig._suptitle.get_text()
    assert all(labelled(ax) for ax in fig.axes)


def test_ensemble_figure_shows_histories_histograms_and_autocorrelation_windows(ensemble):
    fig = ensemble_figure(ensemble)
    with open_ensemble(ensemble) as e:
        names, chains = e.observable_names, e.per_chain(e.column("topological_charge"))
    assert len(fig.axes) == 3 * len(names)
    rows = [fig.axes[i:i + 3] for i in range(0, len(fig.axes), 3)]
    history, histogram, autocorrelation = rows[0]  # topology first
    assert history.get_ylabel() == "topological charge" and "trajectory" in history.get_xlabel()
    assert len([line for line in history.get_lines() if len(line.get_xdata()) > 2]) == 2  # one per chain
    widths = {round(patch.get_height(), 9) for patch in histogram.patches}  # horizontal bars: integer bins
    assert widths == {1.0} and histogram.get_title() == "Q distribution"
    window = gamma_method(chains).window
    assert any(list(line.get_xdata()) == [window, window] for line in autocorrelation.get_lines())
    assert autocorrelation.get_ylabel() == "ρ(t)" and "τ_int" in autocorrelation.get_legend().texts[0].get_text()
    assert all(labelled(ax) for row in rows for ax in (row[0], row[2])) and all(row[1].get_xlabel() for row in rows)
    plaquette = next(row for row in rows if row[0].get_ylabel() == "plaquette")[0]
    assert "exact" in plaquette.get_title(loc="left")  # 2D U(1): the exact plaquette is drawn beside the estimate
    assert "u1 on 4x4, beta=1" in fig._suptitle.get_text() and "2 chain(s)" in fig._suptitle.get_text()


def test_plot_command_picks_the_drawing_from_the_file(trained, ensemble, tmp_path, capsys):
    checkpoint, log = trained
    assert gaugeflow(["plot", str(ensemble)]) == 0
    assert capsys.readouterr().out.strip() == ensemble_plot_path(ensemble) == str(ensemble.with_suffix(".png"))
    out = tmp_path / "curves.png"
    assert gaugeflow(["plot", str(checkpoint), "--out", str(out)]) == 0  # a checkpoint: the log next to it
    assert out.read_bytes()[:8] == PNG and is_training_log(log)


@pytest.mark.parametrize("content, message", [
    ("notes\n", "is neither a training log"),
    (b"\x89PNG\r\n\x1a\n\x00\x01", "is neither a training log"),
    ("step,loss,loss_std,kl,ess_batch,ess,acceptance\n", "holds no metrics yet"),
    ("hdf5", "is not a gaugeflow ensemble"),
    (None, "no such file"),
])
def test_plot_command_refuses_other_files_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "input"
    if content == "hdf5":
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    elif content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert gaugeflow(["plot", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("gaugeflow plot: error: ")
