"""Every layout an earlier gaugeflow wrote stays readable: stored files of each (format 1; format
2 segmented with a measurement, single, distributed), written by ``tests/data/layouts/make.py``
and kept as they are, are read, verified and continued by today's reader and writer."""

import json
import os
import shutil

import numpy as np
import pytest

from gaugeflow.hmc.hmc import HMCParameters, HMCSampler
from gaugeflow.hmc.run import run_chains
from gaugeflow.lattice.ensemble import compact_ensemble, open_ensemble
from gaugeflow.lattice.storage import digest
from gaugeflow.lattice.theories import make_theory

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "layouts")
EXPECTED = json.load(open(os.path.join(HERE, "expected.json")))


def copy_of(name, folder):
    for entry in os.listdir(HERE):
        if entry == name or entry.startswith(name + "."):
            source = os.path.join(HERE, entry)
            (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, os.path.join(folder, entry))
    return os.path.join(folder, name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_stored_layout_reads_verifies_and_compacts_as_written(tmp_path, name):
    path = copy_of(name, tmp_path)  # never written to in place
    expected = EXPECTED[name]
    with open_ensemble(path) as ensemble:
        assert ensemble.layout == expected["layout"] and len(ensemble) == expected["rows"]
        assert ensemble.verify()["rows"] == expected["rows"]
        assert digest(ensemble.configs()) == expected["configs"]
        assert {o: digest(np.asarray(ensemble.column(o))) for o in ensemble.observable_names} == expected["observables"]
        assert ensemble.column("step").tolist() == expected["steps"]
    single = tmp_path / "single.h5"
    compact_ensemble(path, single)
    with open_ensemble(single) as compacted:
        assert digest(compacted.configs()) == expected["configs"]


@pytest.mark.parametrize("name", ["ens-segmented.h5", "ens-single.h5"])
def test_a_stored_ensemble_is_continued(tmp_path, name):
    path = copy_of(name, tmp_path)
    theory = make_theory("u1", "4x4", beta=1.0)
    run_chains(theory, path, HMCSampler(theory, HMCParameters(1.0, 4), False), n_configs=8, n_chains=2, n_therm=2,
               seed=1, progress=False, commit_every=0, resume=True)
    with open_ensemble(path) as ensemble:
        assert ensemble.verify()["rows"] == 8
        assert digest(ensemble.configs(0, 4)) == EXPECTED[name]["configs"]
