"""Handing ensembles on: pyerrors export and provenance (what produced an ensemble)."""

import json
import os

import h5py
import pytest
import torch

from fault_classes import reseal
from gaugeflow.cli import main
from gaugeflow.hmc.analysis import analyze_ensemble
from gaugeflow.hmc.hmc import HMCParameters, HMCSampler
from gaugeflow.hmc.run import run_chains
from gaugeflow.lattice.ensemble import EnsembleError, open_ensemble, segment_directory
from gaugeflow.lattice.theories import make_theory

pe = pytest.importorskip("pyerrors")
THEORY = make_theory("u1", "4x4", beta=1.5)


def hmc(path, n_configs, resume=False, save_every=1):
    run_chains(THEORY, path, HMCSampler(THEORY, HMCParameters(1.0, 4), False), n_configs=n_configs, n_chains=3,
               n_therm=3, seed=2, save_every=save_every, progress=False, resume=resume, commit_every=0)


@pytest.mark.parametrize("save_every", [1, 2])
def test_pyerrors_reads_back_what_analyze_prints(tmp_path, capsys, save_every):
    path, out = tmp_path / "ens.h5", tmp_path / "ens.json.gz"
    hmc(path, 60, save_every=save_every)
    assert main(["analyze", str(path), "--pyerrors", str(out), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    loaded = pe.input.json.load_json_dict(str(out), verbose=False)
    with open_ensemble(path) as ensemble:
        assert set(loaded) == set(ensemble.observable_names)
    for name, obs in loaded.items():
        assert obs.names == ["ens|r000", "ens|r001", "ens|r002"]  # a replica per chain, named after the ensemble
        obs.gamma_method(S=1.5)
        assert obs.value == pytest.approx(results[name]["mean"], rel=1e-12, abs=1e-14)
        assert obs.dvalue == pytest.approx(results[name]["error"], rel=1e-10)
    assert main(["analyze", str(path), "--pyerrors", str(out)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


def test_every_segment_records_the_run_that_wrote_it(tmp_path, capsys):
    path = tmp_path / "ens.h5"
    hmc(path, 6)
    hmc(path, 9, resume=True)
    with open_ensemble(path) as ensemble:
        records = ensemble.run_records()
    runs = {record["run"] for _, record in records}
    assert len(records) == len(os.listdir(segment_directory(path))) and len(runs) == 2
    first = records[0][1]
    assert {"gaugeflow_version", "command", "host", "device", "started", "committed", "torch",
            "cpu_capability", "mkl_cbwr"} <= set(first)
    assert first["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert main(["info", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "u1 on 4x4 at beta=1.5; 9 configurations" in printed and printed.count("  run ") == 2
    assert f"device cpu ({first['cpu_capability']})" in printed
    assert analyze_ensemble(path)["plaquette"]["mean"] > 0

    last = os.path.join(segment_directory(path), sorted(os.listdir(segment_directory(path)))[-1])
    with h5py.File(last, "r+") as f:  # a record changed after the fact is refused
        record = json.loads(f["provenance"].attrs["record"])
        f["provenance"].attrs["record"] = json.dumps({**record, "host": "elsewhere"}, sort_keys=True)
    reseal(last)  # past the file digest, which refuses any changed byte: the record's own checksum
    with pytest.raises(EnsembleError, match="provenance: checksum mismatch"):
        open_ensemble(path).verify()
