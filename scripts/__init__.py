"""gaugeflow.cli -- the ``gaugeflow`` command (installed from the repository's ``scripts/``).

Thin wrappers: every subcommand parses its options, calls the library
(:mod:`gaugeflow.lattice`, :mod:`gaugeflow.flows`, :mod:`gaugeflow.hmc`) and reports.
"""

from .commands import main

__all__ = ["main"]
