"""Writes the stored ensembles of every layout that tests/test_layouts.py reads (run once, from
the repository root, with the gaugeflow that introduced a layout; the files are then kept as
they are, so that later readers are tested against what earlier writers wrote)."""

import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from test_ensemble import write_format_1  # noqa: E402

from gaugeflow.flows.distributed import SingleProcess  # noqa: E402
from gaugeflow.hmc.distributed import generate_distributed  # noqa: E402
from gaugeflow.hmc.hmc import HMCParameters, HMCSampler  # noqa: E402
from gaugeflow.hmc.run import run_chains  # noqa: E402
from gaugeflow.lattice.ensemble import compact_ensemble, open_ensemble  # noqa: E402
from gaugeflow.lattice.observables import measure_ensemble  # noqa: E402
from gaugeflow.lattice.storage import digest  # noqa: E402
from gaugeflow.lattice.theories import make_theory  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
theory = make_theory("u1", "4x4", beta=1.0)
params = HMCParameters(1.0, 4)
for name in os.listdir(HERE):
    if name.startswith("ens-"):
        (shutil.rmtree if os.path.isdir(os.path.join(HERE, name)) else os.remove)(os.path.join(HERE, name))
segmented = os.path.join(HERE, "ens-segmented.h5")
run_chains(theory, segmented, HMCSampler(theory, params, False), n_configs=4, n_chains=2, n_therm=2, seed=1,
           progress=False, commit_every=0, observables=["plaquette", "topological_charge"])
measure_ensemble(segmented, ["wilson_loops"])
compact_ensemble(segmented, os.path.join(HERE, "ens-single.h5"))
generate_distributed(theory, os.path.join(HERE, "ens-streams.h5"), lambda: HMCSampler(theory, params, False),
                     SingleProcess(), n_configs=4, n_chains=2, n_therm=2, progress=False, commit_every=0)
with open_ensemble(segmented) as ensemble:
    write_format_1(os.path.join(HERE, "ens-v1.h5"), ensemble, 4, 0)
expected = {}
for name in ("ens-segmented.h5", "ens-single.h5", "ens-streams.h5", "ens-v1.h5"):
    with open_ensemble(os.path.join(HERE, name)) as ensemble:
        expected[name] = {"layout": ensemble.layout, "rows": len(ensemble), "configs": digest(ensemble.configs()),
                          "observables": {o: digest(np.asarray(ensemble.column(o))) for o in ensemble.observable_names},
                          "steps": ensemble.column("step").tolist()}
with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
