"""What ``gaugeflow analyze``, ``reweight`` and ``sample`` print: value(error) as papers write it,
exact values with pulls, and the composite sampler's choice in words."""

import doctest
import json
import math

import pytest
import torch

from gaugeflow.hmc import analysis
from gaugeflow.hmc.analysis import format_table, format_value_error, with_exact_values
from gaugeflow.hmc.composite import describe_run, describe_steps
from gaugeflow.lattice import exact
from gaugeflow.lattice.exact import expectation_values


@pytest.mark.parametrize("function", [format_value_error, expectation_values])
def test_docstring_examples_hold(function):
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for test in finder.find(function, globs={function.__name__: function}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


@pytest.mark.parametrize("value, error, written", [
    (0.70041, 0.00342, "0.7004(34)"),   # two significant digits of the error, in units of the last digit
    (0.70041, 0.003451, "0.7004(35)"),
    (0.7, 0.0001, "0.70000(10)"),
    (-1.41168, 0.00971, "-1.4117(97)"),
    (0.69992, 0.009961, "0.700(10)"),   # the error rounds up to a power of ten: one digit less
    (0.5, 0.0996, "0.50(10)"),
    (12.34, 4.47, "12.3(4.5)"),         # an error of 1 or more is written as a number
    (1.0, 1.0, "1.0(1.0)"),
    (123.4, 12.3, "123(12)"),
    (1234.5, 123.4, "1230(120)"),       # both rounded to tens
    (62.5884, 0.0026, "62.5884(26)"),
    (-0.00004, 0.0012, "0.0000(12)"),   # no sign on a value that rounds to zero
    (1.2345e-5, 5.6e-7, "1.234(56)e-05"),
    (1.5e10, 2e8, "1.500(20)e+10"),
    (1.0, 0.0, "1"),                    # exact
    (0.5, math.nan, "0.5(nan)"),
    (math.nan, 0.1, "nan"),
])
def test_value_error_notation(value, error, written):
    assert format_value_error(value, error) == written


def test_exact_values_and_pulls():
    names = ["plaquette", "action_density", "wilson_loop_1x2", "wilson_loop_2x2", "topological_charge",
             "topological_charge_squared", "topological_susceptibility", "polyakov_loop_re", "polyakov_loop_abs"]
    u1 = expectation_values("u1", (4, 4), {"beta": 2.0}, names)
    assert u1 == pytest.approx({
        "plaquette": exact.u1_plaquette(2.0, 16), "action_density": -2.0 * exact.u1_plaquette(2.0, 16),
        "wilson_loop_1x2": exact.u1_wilson_loop(2.0, 16, 2), "wilson_loop_2x2": exact.u1_wilson_loop(2.0, 16, 4),
        "topological_charge": 0.0, "polyakov_loop_re": 0.0,
        "topological_charge_squared": exact.u1_topological_charge_squared(2.0, 16),
        "topological_susceptibility": exact.u1_topological_charge_squared(2.0, 16) / 16}, rel=1e-14)
    assert expectation_values("su3", (4, 4), {"beta": 3.0}, names) == pytest.approx(
        {"plaquette": exact.su3_plaquette(3.0, 16), "action_density": -3.0 * exact.su3_plaquette(3.0, 16),
         "polyakov_loop_re": 0.0}, rel=1e-14)
    assert expectation_values("su2", (4, 4), {"beta": 1.5}, ["plaquette"]) == {"plaquette": exact.su2_plaquette(1.5, 16)}
    free = expectation_values("phi4", (8, 8), {"m2": 0.5, "lam": 0.0}, ["chi_2pt", "action_density", "ising_energy"])
    propagator = exact.free_scalar_propagator((8, 8), 0.5)
    assert free == pytest.approx({"chi_2pt": 1.0, "action_density": 0.5,
                                  "ising_energy": (propagator[1, 0] + propagator[0, 1]) / 2}, rel=1e-12)
    # nothing known: 3D, interacting phi^4, the Schwinger model, a theory of one's own
    for name, shape, couplings in [("u1", (4, 4, 4), {"beta": 1.0}), ("phi4", (4, 4), {"m2": -4.0, "lam": 8.0}),
                                   ("schwinger", (4, 4), {"beta": 1.0, "kappa": 0.2}), ("rotor", (4,), {"beta": 1.0})]:
        assert expectation_values(name, shape, couplings, ["plaquette", "chi_2pt", "action_density"]) == {}

    results = {"plaquette": {"mean": 0.71, "error": 0.01}, "acceptance": {"mean": 1.0, "error": 0.0},
               "polyakov_loop_re": {"mean": 0.02, "error": 0.0}}
    compared = with_exact_values(results, {"plaquette": 0.7, "polyakov_loop_re": 0.0})
    assert compared["plaquette"]["exact"] == 0.7 and compared["plaquette"]["pull"] == pytest.approx(1.0)
    assert compared["acceptance"] == {"mean": 1.0, "error": 0.0, "exact": None, "pull": None}
    assert compared["polyakov_loop_re"]["pull"] is None  # no pull without an error


def test_table_leaves_out_empty_columns():
    rows = {"plaquette": {"mean": 0.70041, "error": 0.00342, "tau_int": 2.36, "tau_int_error": 0.41},
            "chi_2pt": {"mean": 12.34, "error": 4.47, "tau_int": None, "tau_int_error": None}}
    lines = format_table(rows).splitlines()
    assert [line.split() for line in lines] == [["observable", "estimate", "tau_int"],
                                                ["plaquette", "0.7004(34)", "2.36(41)"], ["chi_2pt", "12.3(4.5)"]]
    lines = format_table(with_exact_values(rows, {"plaquette": 0.6985214})).splitlines()
    assert [line.split() for line in lines] == [["observable", "estimate", "tau_int", "exact", "pull"],
                                                ["plaquette", "0.7004(34)", "2.36(41)", "0.698521", "+0.6"],
                                                ["chi_2pt", "12.3(4.5)"]]
    assert len({len(line) for line in lines[:2]}) == 1  # aligned
    plain = format_table({"log_partition_function": {"mean": 62.58841, "error": 0.0026}})
    assert plain.splitlines()[1].split() == ["log_partition_function", "62.5884(26)"]
    assert "tau_int" not in plain and "exact" not in plain


def test_composite_run_in_words():
    assert describe_steps(False, 1) == "HMC alone"
    assert describe_steps(True, 0) == "flow proposals alone"
    assert describe_steps(True, 1) == "a flow proposal and 1 HMC trajectory per step"
    assert describe_run({"K": "hmc", "hmc_acc": "0.95", "steps": 7}, 0.951) == (
        "the composite sampler ran HMC alone, as chosen during thermalisation (the ensemble's fallback_reason says "
        "why): HMC acceptance 0.951, 7 steps per trajectory")
    assert describe_run({"K": 0, "hmc_acc": "-", "steps": 7}, 0.875).endswith("ran flow proposals alone, as chosen "
                                                                             "during thermalisation (the ensemble's "
                                                                             "fallback_reason says why): flow "
                                                                             "acceptance 0.875")
    assert describe_run({"K": 4, "hmc_acc": "0.91", "steps": 5}, 0.3, chosen=False) == (
        "the composite sampler ran a flow proposal and 4 HMC trajectories per step, as asked: flow acceptance 0.300, "
        "HMC acceptance 0.91, 5 steps per trajectory")


def test_reweight_prints_the_ess_and_exact_log_z_beside_the_estimate(tmp_path, capsys):
    from gaugeflow.cli.commands import main
    from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow
    from gaugeflow.lattice.theories import make_theory

    theory = make_theory("u1", "4x4", beta=1.0)
    torch.manual_seed(0)
    model = build_flow(architecture(theory, n_layers=2, hidden_channels=[4]))
    path = tmp_path / "m.pt"
    train_flow(model, TrainConfig(steps=2, batch_size=8, log_every=2, checkpoint_every=2), path, progress=False)
    assert main(["reweight", "--model", str(path), "--n-samples", "64", "--batch-size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("64 independent flow samples, effective sample size 0.")
    assert lines[1].split() == ["observable", "estimate", "exact", "pull"]  # no tau_int column
    log_z = lines[2].split()
    assert log_z[0] == "log_partition_function" and "(" in log_z[1] and len(log_z) == 4
    assert float(log_z[2]) == pytest.approx(theory.exact_log_partition_function(), abs=1e-4)
    assert not any(line.startswith(("ess", "log_partition_function_exact")) for line in lines)
    assert main(["reweight", "--model", str(path), "--n-samples", "64", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    estimate = results["log_partition_function"]
    assert estimate["exact"] == theory.exact_log_partition_function()
    assert estimate["pull"] == pytest.approx((estimate["mean"] - estimate["exact"]) / estimate["error"])
    assert results["plaquette"]["exact"] == exact.u1_plaquette(1.0, 16) and 0 < results["ess"]["mean"] <= 1
    assert "log_partition_function_exact" not in results


def test_analysis_module_documents_its_public_functions():
    for name in ("format_value_error", "format_table", "with_exact_values", "analyze_ensemble"):
        assert getattr(analysis, name).__doc__
