"""MkDocs hooks: import the installed package for the API pages, and serve
``benchmarks/README.md`` (with its figures) and ``CHANGELOG.md`` as pages.

Those two files live outside ``docs/`` because they belong beside what they describe; the hook
adds them to the site as they are, so the repository keeps one copy of each.
"""

import importlib
import pkgutil
import sys
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("lattice", "flows", "hmc", "cli")


@event_priority(100)  # before mkdocstrings sets up its search paths
def on_config(config):
    # `.venv/bin/mkdocs` puts .venv/bin first on sys.path, where the console script `gaugeflow`
    # would shadow the package for mkdocstrings; the package is then imported from its installation.
    sys.path[:] = [entry for entry in sys.path if not (Path(entry or ".") / "gaugeflow").is_file()]
    # the API pages are built from the imported modules (the repository's folders are not named
    # like the subpackages they install as); import every module but the command's __main__
    for name in SUBPACKAGES:
        package = importlib.import_module(f"gaugeflow.{name}")
        for module in pkgutil.iter_modules(package.__path__, f"gaugeflow.{name}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    return config


def on_files(files, config):
    files.append(File.generated(config, "benchmarks/index.md", abs_src_path=str(ROOT / "benchmarks" / "README.md")))
    for figure in sorted((ROOT / "benchmarks").glob("*.png")):
        files.append(File.generated(config, f"benchmarks/{figure.name}", abs_src_path=str(figure)))
    files.append(File.generated(config, "changelog.md", abs_src_path=str(ROOT / "CHANGELOG.md")))
    return files
