"""Hand an ensemble's measurements to ``pyerrors`` (Joswig, Kuberski, Kuhlmann, Neuendorf,
arXiv:2209.14371), so that an analysis can continue there: derived quantities, fits,
combinations across ensembles, all with the Gamma method's error propagation.

Every primary observable becomes a ``pyerrors.Obs``: one replica per Markov chain, named
``<ensemble>|r<chain>`` (pyerrors' replica convention), with the chain's stored Monte Carlo
steps as configuration numbers (``idl``), so a thinned ensemble (``save_every > 1``) keeps its
spacing.  The file is pyerrors' own JSON (``pyerrors.input.json.dump_dict_to_json``, gzipped),
read back with ``pyerrors.input.json.load_json_dict``.  Because
:mod:`gaugeflow.hmc.autocorrelation` follows pyerrors' conventions, ``gamma_method(S=1.5)``
there gives the means, errors and ``tau_int`` that ``gaugeflow analyze`` prints.
"""

from __future__ import annotations

import os
import re
import tempfile

from gaugeflow.lattice.ensemble import open_ensemble
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.storage import write_atomically


def _pyerrors():
    try:
        import pyerrors
    except ImportError:
        raise InputError("pyerrors export needs pyerrors: pip install pyerrors") from None
    return pyerrors


def ensemble_name(path) -> str:
    """The ensemble's name in pyerrors: the file name without its extension, with the characters
    pyerrors reserves (``|``) and blanks replaced."""
    return re.sub(r"[|\s]", "_", os.path.splitext(os.path.basename(os.fspath(path)))[0]) or "ensemble"


def pyerrors_observables(path, name: str | None = None) -> dict:
    """``{observable: pyerrors.Obs}`` for every primary observable of the ensemble at ``path``."""
    pe = _pyerrors()
    name = name or ensemble_name(path)
    with open_ensemble(path) as ensemble:
        if len(ensemble) == 0:
            raise InputError(f"{path} holds no configurations yet")
        chain, step = ensemble.column("chain"), ensemble.column("step")
        chains = sorted(set(chain.tolist()))
        steps = [sorted(step[chain == c].tolist()) for c in chains]
        if min(len(s) for s in steps) < 5:  # pyerrors' own minimum for a replica
            raise InputError(f"{path}: pyerrors needs at least 5 configurations in every chain; the shortest has "
                             f"{min(len(s) for s in steps)}")
        replicas = [f"{name}|r{c:03d}" for c in chains]
        return {observable: pe.Obs([values for values in ensemble.per_chain(ensemble.column(observable))], replicas,
                                   idl=steps)
                for observable in ensemble.observable_names}


def export_pyerrors(path, out, name: str | None = None) -> list[str]:
    """Write every primary observable of the ensemble at ``path`` to ``out`` (pyerrors' gzipped
    JSON; never overwritten, written atomically); returns the observables' names."""
    pe = _pyerrors()
    out = os.fspath(out)
    if os.path.exists(out):
        raise InputError(f"{out} already exists; refusing to overwrite it")
    if not out.endswith(".json.gz"):
        raise InputError(f"{out}: a pyerrors file ends in .json.gz")
    observables = pyerrors_observables(path, name)
    with tempfile.TemporaryDirectory() as folder:  # pyerrors writes to a name; the bytes are committed atomically
        scratch = os.path.join(folder, "export.json.gz")
        pe.input.json.dump_dict_to_json(observables, scratch,
                                        description=f"gaugeflow ensemble {os.path.abspath(os.fspath(path))}")
        with open(scratch, "rb") as f:
            write_atomically(out, f.read())
    return list(observables)
