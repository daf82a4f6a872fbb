"""Observables as registered objects, production's choice of them, and ``gaugeflow measure``:
computed on stored configurations, stored crash-consistently beside the segments, resumable,
checksummed and bound to the configurations they were computed on."""

import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from gaugeflow.flows.distributed import SingleProcess
from gaugeflow.hmc.analysis import DerivedQuantity, _DERIVED, analyze_ensemble, register_derived
from gaugeflow.hmc.composite import _slowest_mode
from gaugeflow.hmc.distributed import generate_distributed
from gaugeflow.hmc.hmc import HMCParameters, HMCSampler
from gaugeflow.hmc.run import run_chains
from gaugeflow.lattice import gauge
from gaugeflow.lattice.ensemble import EnsembleError, open_ensemble
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.jobcontrol import Interrupted
from gaugeflow.lattice.observables import (_REGISTRY, Observable, compute, measure_ensemble, production_names,
                                           register_observable)
from gaugeflow.lattice.theories import make_theory

THEORY = make_theory("u1", "6x6", beta=2.0)
PARAMS = HMCParameters(1.0, 4)


def hmc(path, n_configs=8, resume=False, **options):
    return run_chains(THEORY, path, HMCSampler(THEORY, PARAMS, False), n_configs=n_configs, n_chains=2, n_therm=2,
                      seed=3, progress=False, commit_every=0, resume=resume, **options)


def loops_directly(path):
    with open_ensemble(path) as ensemble:
        links = THEORY.links_as_matrices(torch.as_tensor(ensemble.configs()))
    return {f"wilson_loop_{r}x{t}": gauge.wilson_loop(links, r, t).double().numpy()
            for r in range(1, 4) for t in range(r, 4)}


def test_production_stores_what_was_asked_and_a_resume_keeps_it(tmp_path):
    path = tmp_path / "ens.h5"
    hmc(path, observables=["plaquette", "wilson_loops"])
    with open_ensemble(path) as ensemble:
        assert ensemble.observable_names == sorted(["plaquette", *loops_directly(path)])
    with pytest.raises(EnsembleError, match="gaugeflow measure"):
        hmc(path, n_configs=12, resume=True, observables=["topological_charge"])
    hmc(path, n_configs=12, resume=True)  # the file's own set
    with open_ensemble(path) as ensemble:
        assert "topological_charge" not in ensemble.observable_names and len(ensemble) == 12
        np.testing.assert_allclose(ensemble.column("wilson_loop_1x3"), loops_directly(path)["wilson_loop_1x3"],
                                   rtol=0, atol=1e-14)
    with pytest.raises(InputError, match="unknown observable 'nonsense'"):
        production_names(THEORY, ["plaquette", "nonsense"])
    with pytest.raises(InputError, match="does not apply"):
        production_names(make_theory("phi4", "4x4", m2=1.0, lam=0.0), ["wilson_loops"])


def test_measure_stores_checked_columns_that_every_reader_sees(tmp_path):
    path = tmp_path / "ens.h5"
    hmc(path, observables=["plaquette"])
    assert measure_ensemble(path, ["wilson_loops"]) == {"wilson_loops": 5}  # 4 segments of rows + the start
    direct = loops_directly(path)
    with open_ensemble(path) as ensemble:
        report = ensemble.verify()
        assert report["manifest_rows"] == 8
        for column, values in direct.items():
            np.testing.assert_allclose(ensemble.column(column), values, rtol=0, atol=1e-14)
    with h5py.File(path, "r") as f:  # plain h5py, through the manifest
        np.testing.assert_allclose(f["observables/wilson_loop_2x3"][()], direct["wilson_loop_2x3"], atol=1e-14)
    assert "wilson_loop_3x3" in analyze_ensemble(path)
    assert measure_ensemble(path, ["wilson_loops"]) == {"wilson_loops": 0}  # nothing twice

    hmc(path, n_configs=12, resume=True)  # new rows: the measurement is incomplete until measured again
    with open_ensemble(path) as ensemble:
        assert "wilson_loop_1x2" not in ensemble.observable_names
        ensemble.verify()
    assert measure_ensemble(path, ["wilson_loops"]) == {"wilson_loops": 2}
    with open_ensemble(path) as ensemble:
        np.testing.assert_allclose(ensemble.column("wilson_loop_1x2"), loops_directly(path)["wilson_loop_1x2"],
                                   atol=1e-14)


def test_an_interrupted_measurement_resumes_and_damage_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "ens.h5"
    hmc(path, observables=["plaquette"])
    calls = {"n": 0}
    original = _REGISTRY["wilson_loops"]

    def flaky(theory, field):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupted("stopped by SIGTERM while measuring wilson_loops")
        return original.compute(theory, field)

    monkeypatch.setitem(_REGISTRY, "wilson_loops", Observable("wilson_loops", flaky, original.applies_to))
    with pytest.raises(Interrupted):
        measure_ensemble(path, ["wilson_loops"])
    assert len(os.listdir(f"{path}.measurements/wilson_loops")) == 2  # what was done is stored
    assert measure_ensemble(path, ["wilson_loops"]) == {"wilson_loops": 3}
    with open_ensemble(path) as ensemble:
        np.testing.assert_allclose(ensemble.column("wilson_loop_1x1"), loops_directly(path)["wilson_loop_1x1"],
                                   atol=1e-14)

    # a measurement file of other configurations, or a damaged one, is refused
    files = sorted(os.listdir(f"{path}.measurements/wilson_loops"))
    first, second = (os.path.join(f"{path}.measurements/wilson_loops", n) for n in files[1:3])
    kept = open(second, "rb").read()
    shutil.copy(first, second)
    with pytest.raises(EnsembleError, match="measured on other configurations"):
        open_ensemble(path).verify()
    data = bytearray(kept)
    with h5py.File(second, "r") as f:
        chunk = f["observables/wilson_loop_1x1"].id.get_chunk_info(0)
    data[chunk.byte_offset + 2] ^= 0x40
    open(second, "wb").write(bytes(data))
    with pytest.raises(EnsembleError, match="checksum mismatch"):
        open_ensemble(path).verify()


def test_a_distributed_ensemble_is_measured_stream_by_stream(tmp_path):
    path = tmp_path / "ens.h5"
    generate_distributed(THEORY, path, lambda: HMCSampler(THEORY, PARAMS, False), SingleProcess(), n_configs=4,
                         n_chains=2, n_therm=2, progress=False, commit_every=0, observables=["plaquette"])
    measure_ensemble(path, ["wilson_loops"])
    with open_ensemble(path) as ensemble:
        ensemble.verify()
        np.testing.assert_allclose(ensemble.column("wilson_loop_1x2"), loops_directly(path)["wilson_loop_1x2"],
                                   atol=1e-14)
    with h5py.File(path, "r") as f:
        assert f["observables/wilson_loop_1x2"].shape == (4,)


def test_observables_and_derived_quantities_registered_from_outside(tmp_path, monkeypatch):
    monkeypatch.setattr("gaugeflow.lattice.observables._REGISTRY", dict(_REGISTRY))
    monkeypatch.setattr("gaugeflow.hmc.analysis._DERIVED", list(_DERIVED))

    def plaquette_squared(theory, field):
        return {"plaquette_squared": theory.observables(field)["plaquette"] ** 2}

    register_observable(Observable("plaquette_squared", plaquette_squared,
                                   lambda theory: theory.name == "u1", "the plaquette squared"))
    register_derived(DerivedQuantity(
        ("plaquette", "plaquette_squared"),
        lambda per_chain, volume, S: {"plaquette_variance": {"mean": float(np.mean(np.concatenate(
            per_chain["plaquette_squared"])) - np.mean(np.concatenate(per_chain["plaquette"])) ** 2),
            "error": float("nan"), "tau_int": None, "tau_int_error": None}}))
    path = tmp_path / "ens.h5"
    hmc(path, observables=["plaquette"])
    measure_ensemble(path, ["plaquette_squared"])
    results = analyze_ensemble(path)
    with open_ensemble(path) as ensemble:
        plaquette = ensemble.column("plaquette")
    assert results["plaquette_variance"]["mean"] == pytest.approx(plaquette.var(), rel=1e-10)
    field = THEORY.hot_start(3, generator=torch.Generator().manual_seed(1))
    both = compute(THEORY, field, ["plaquette", "plaquette_squared"])
    torch.testing.assert_close(both["plaquette_squared"], both["plaquette"] ** 2)


def test_the_composite_policy_takes_the_action_from_the_theory():
    phi4 = make_theory("phi4", "4x4", m2=1.0, lam=0.5)
    field = phi4.hot_start(3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_slowest_mode(phi4, field), phi4.action(field) / phi4.volume)
    links = THEORY.hot_start(3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_slowest_mode(THEORY, links), THEORY.topological_charge(links))


def test_the_wilson_flow_is_measured_stored_and_analysed_into_t0_and_w0(tmp_path):
    from gaugeflow.lattice.gradient_flow import flow_column, scale_t0, scale_w0, wilson_flow

    theory = make_theory("su2", "4x4x4x4", beta=1.5)  # rough enough for t^2 E to reach 0.3 by t = 1
    path = tmp_path / "ens.h5"
    run_chains(theory, path, HMCSampler(theory, PARAMS, False), n_configs=12, n_chains=3, n_therm=3, seed=1,
               progress=False, observables=["plaquette"])
    options = {"flow_time": 1.0, "n_times": 10, "flow_step": 0.02}
    measure_ensemble(path, ["wilson_flow"], options=options)
    with open_ensemble(path) as ensemble:
        configs, chain = torch.as_tensor(ensemble.configs()), ensemble.column("chain")
        direct = wilson_flow(configs, theory, 1.0, 0.02, measure_interval=0.1)
        stored = ensemble.column(flow_column("E_clover", 0.5))
    np.testing.assert_allclose(stored, direct.energy["clover"][:, 5], rtol=1e-12)
    results = analyze_ensemble(path)
    t2e = [direct.times**2 * direct.energy["clover"][chain == c] for c in range(3)]
    expected = scale_t0(direct.times, t2e)
    assert results["t0"]["mean"] == pytest.approx(expected.value, rel=1e-10)
    assert results["t0"]["error"] == pytest.approx(expected.error, rel=1e-6)
    t_d_t2e = [2 * direct.times**2 * e + direct.times**3 * np.gradient(e, direct.times, axis=1)
               for e in (direct.energy["clover"][chain == c] for c in range(3))]
    assert results["w0"]["mean"] == pytest.approx(scale_w0(direct.times, t_d_t2e).value, rel=1e-10)
    assert "t0_plaquette" in results and "flowed_topological_charge_t1.0000" in results
    assert not [name for name in results if name.startswith("flow_")]  # curves are summarised, not listed
    with pytest.raises(InputError, match="apply to none of the observables"):
        measure_ensemble(path, ["wilson_flow"], options={"flow_tme": 1.0})
    more = run_chains(theory, path, HMCSampler(theory, PARAMS, False), n_configs=15, n_chains=3, n_therm=3, seed=1,
                      progress=False, resume=True)
    assert more.n_configs == 15
    with pytest.raises(EnsembleError, match="was measured with"):
        measure_ensemble(path, ["wilson_flow"], options={**options, "flow_time": 0.8})
    assert measure_ensemble(path, ["wilson_flow"], options=options) == {"wilson_flow": 1}
