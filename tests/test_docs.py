"""The examples in README.md and docs/ run, print what the pages show, and parse.

Conventions for the Markdown pages (README.md and every ``docs/**/*.md``):

* Every fenced ```` ```python ```` block runs.  The blocks of one page run in order, in one
  namespace, in a fresh temporary working directory, so a later block may use the names and
  files of an earlier one (a page reads top to bottom, and so do its examples).  Theories,
  layer families, priors, samplers and estimators that a page registers are forgotten after the page.
* A fenced ```` ```text ```` block that follows a Python block directly (nothing but blank
  lines between) is that block's output: what the block prints to stdout must equal it,
  line for line (trailing spaces ignored).  Pages that show numbers show them this way, so
  they are exactly what the code prints; a Python block without such a block may print
  anything.
* ``<!-- docs-test: skip -->`` on the line before a fence leaves that block out: for examples
  that are deliberately long (a cluster job), or that need what CI lacks (a GPU, a scheduler).
  Use it sparingly; say in the page why the block is not small.
* In ```` ```bash ```` and ```` ```console ```` blocks, every command whose program is
  ``gaugeflow`` (also ``.venv/bin/gaugeflow``, or after ``mpiexec -n 4``, ``srun`` or ``VAR=value``) is parsed
  with the real argument parser (``gaugeflow.cli.commands.build_parser``); ``gaugeflow batch``
  and ``gaugeflow slurm|pbs render`` with their own parsers (``gaugeflow.cli.batch``,
  ``gaugeflow.cli.render``), and the gaugeflow options they pass on after ``--`` with the
  parser of the subcommand they run.  Commands are split at ``&&``, ``||``, ``;`` and ``|``;
  ``\\`` continues a line; ``#`` starts a comment; ``$`` prompts in console blocks are dropped.
  Synopses with placeholders (``...``, ``[--option]``) belong in ```` ```text ```` blocks,
  which are not parsed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SKIP = "<!-- docs-test: skip -->"
FENCE = re.compile(r"^```([\w-]*)\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    skipped: bool
    output: "Block | None" = None

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of a page, each Python block with its expected-output block."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i, previous_text = [], 0, []
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            if lines[i].strip():
                previous_text.append(lines[i])
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        marker = next((line for line in reversed(lines[:start]) if line.strip()), "")
        block = Block(page, start + 1, match.group(1), "\n".join(body) + "\n", marker.strip() == SKIP)
        follows_code = blocks and blocks[-1].language == "python" and not previous_text
        if block.language == "text" and follows_code and blocks[-1].output is None:
            blocks[-1].output = block
        blocks.append(block)
        previous_text = []
        i += 1
    return blocks


def python_pages() -> list[Path]:
    return [page for page in PAGES if any(b.language == "python" for b in blocks_of(page))]


@pytest.fixture
def registries(monkeypatch):
    """Registries a page may add to, restored after it."""
    from gaugeflow.flows import estimators, model, priors
    from gaugeflow.hmc import analysis, samplers
    from gaugeflow.lattice import observables, theories

    for module, name in ((theories, "_REGISTRY"), (model, "_FAMILIES"), (priors, "_PRIORS"),
                         (observables, "_REGISTRY"), (analysis, "_DERIVED"), (samplers, "_REGISTRY"),
                         (estimators, "_REGISTRY")):
        monkeypatch.setattr(module, name, copy.deepcopy(getattr(module, name)))


@pytest.mark.parametrize("page", python_pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_python_examples_run_and_print_what_the_page_shows(page, tmp_path, monkeypatch, registries):
    import torch

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {"__name__": "__docs__"}
    for block in blocks_of(page):
        if block.language != "python" or block.skipped:
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            try:
                exec(compile(block.text, block.where(), "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{block.where()}: the example raised {error!r}") from error
        if block.output is not None:
            got = [line.rstrip() for line in printed.getvalue().rstrip("\n").splitlines()]
            shown = [line.rstrip() for line in block.output.text.rstrip("\n").splitlines()]
            assert got == shown, (f"{block.where()}: the page shows (line {block.output.line})\n"
                                  + "\n".join(shown) + "\nbut the example prints\n" + "\n".join(got))


# --- command lines ------------------------------------------------------------------------------

OPERATORS = {"&&", "||", ";", "|", "&"}
LAUNCHERS = {"mpiexec", "mpirun", "srun", "time", "timeout"}
TEMPLATE_JOB = (("train", "train"), ("sample", "sample"), ("hmc", "hmc"))  # template name part -> subcommand


def commands_in(block: Block) -> list[list[str]]:
    """The ``gaugeflow`` argument lists of a shell block (program name dropped)."""
    text = re.sub(r"\\\n", " ", block.text)
    found = []
    for line in text.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words, simple = list(lexer), []
        for word in [*words, ";"]:
            if word in OPERATORS or set(word) <= set(";&|"):
                program = next((i for i, w in enumerate(simple) if os.path.basename(w) == "gaugeflow"), None)
                if program is not None and all(w in LAUNCHERS or w.startswith("-") or w.isdigit()
                                               or re.match(r"^[A-Z_][A-Z0-9_]*=", w) for w in simple[:program]):
                    found.append(simple[program + 1 :])
                simple = []
            else:
                simple.append(word)
    return found


def parse(argv: list[str]) -> None:
    """Parse one gaugeflow command line as the program would (SystemExit on an error)."""
    from gaugeflow.cli.commands import build_parser

    if argv[:1] == ["batch"]:
        from gaugeflow.cli.batch import build_parser as batch_parser

        job = batch_parser().parse_args(argv[1:]).job
        job = job[1:] if job[:1] == ["--"] else job
        assert job, "gaugeflow batch needs the job after --"
        parse(job)
    elif argv[:1] in (["slurm"], ["pbs"]):
        from gaugeflow.cli.render import build_parser as render_parser

        assert argv[1:2] == ["render"], f"gaugeflow {argv[0]} takes 'render'"
        rest = argv[2:]
        split = rest.index("--") if "--" in rest else len(rest)
        options = render_parser(argv[0]).parse_args(rest[:split])
        job = next(job for part, job in TEMPLATE_JOB if part in Path(options.template).stem)
        if rest[split + 1 :]:
            build_parser().parse_args([job, *rest[split + 1 :]])
    else:
        build_parser().parse_args(argv)


def shell_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks_of(page) if b.language in ("bash", "console") and not b.skipped]


def test_every_gaugeflow_command_line_in_the_pages_parses(capsys):
    checked, failures = 0, []
    for block in shell_blocks():
        for argv in commands_in(block):
            try:
                parse(argv)
            except SystemExit as stop:
                if stop.code not in (0, None):
                    failures.append(f"{block.where()}: gaugeflow {shlex.join(argv)}\n  {capsys.readouterr().err.strip()}")
            except (AssertionError, StopIteration) as error:
                failures.append(f"{block.where()}: gaugeflow {shlex.join(argv)}\n  {error!r}")
            checked += 1
    assert not failures, "command lines that do not parse:\n" + "\n".join(failures)
    assert checked >= 10, f"only {checked} gaugeflow command lines found in the pages"


def test_the_conventions_of_this_file_are_what_it_reads(tmp_path):
    page = tmp_path / "example.md"
    page.write_text("x\n\n```python\nprint(1)\n```\n\n```text\n1\n```\n\n" + SKIP + "\n```bash\ngaugeflow hmc\n```\n"
                    "\n```bash\nmpiexec -n 2 .venv/bin/gaugeflow verify a.h5 && echo ok # gaugeflow analyze\n```\n")
    blocks = blocks_of(page)
    python, text, skipped, shell = blocks
    assert python.output is text and text.text == "1\n"
    assert skipped.skipped and not shell.skipped
    assert commands_in(shell) == [["verify", "a.h5"]]
