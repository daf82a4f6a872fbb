"""``gaugeflow slurm render`` and ``gaugeflow pbs render``: a ready batch script from a template.

    gaugeflow slurm render hmc --time 04:00:00 --account A --partition P --out hmc-su3.sbatch \\
        -- --theory su3 --lattice 8x8x8x16 --beta 6.0 --n-configs 2000
    gaugeflow pbs render aurora-train --nodes 8 --time 02:00:00 --account A --out train.pbs -- --lattice 32x32 ...

The templates (``slurm/`` in the repository, installed with the package) are ordinary batch
scripts, so editing one by hand works just as well; rendering sets the same places: the job
header (``#SBATCH`` / ``#PBS`` lines; a disabled ``##SBATCH`` line is enabled when its option
is given), the site block between ``# >>> site`` and ``# <<< site`` (``--site FILE``), the
run directory (``--run-dir``) and the gaugeflow options (everything after ``--``, quoted for
bash, so values with commas or spaces survive).  Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from importlib import resources

SUFFIX = {"slurm": ".sbatch", "pbs": ".pbs"}
DIRECTIVE = {"slurm": "SBATCH", "pbs": "PBS"}
DISPLAY_NAME = {"slurm": "Slurm", "pbs": "PBS"}


def template_directory():
    return resources.files("gaugeflow").joinpath("slurm")


def template_names(system: str) -> list[str]:
    return sorted(p.name[: -len(SUFFIX[system])] for p in template_directory().iterdir() if p.name.endswith(SUFFIX[system]))


def template_summary(system: str, name: str) -> str:
    """What a template is for: its first comment line after the shebang, up to a colon or parenthesis."""
    lines = read_template(system, name).splitlines()
    first = next((line[1:].strip() for line in lines[1:] if line.startswith("# ")), "")
    return re.split(r":| \(", first, maxsplit=1)[0].rstrip(",. ")


def read_template(system: str, name: str) -> str:
    if os.path.isfile(name):
        with open(name) as f:
            return f.read()
    path = template_directory().joinpath(name if name.endswith(SUFFIX[system]) else name + SUFFIX[system])
    if not path.is_file():
        raise ValueError(f"unknown {system} template {name!r}; the templates are: {', '.join(template_names(system))} "
                         f"(or give a file)")
    return path.read_text()


def _last_directive(lines: list[str], system: str) -> int:
    pattern = re.compile(rf"^#{{1,2}}{DIRECTIVE[system]}\s")
    return max((i for i, line in enumerate(lines) if pattern.match(line)), default=0)


def set_sbatch(lines: list[str], key: str, value) -> None:
    """``#SBATCH --key=value`` (enabling a disabled ``##SBATCH`` line); ``value=None`` removes it."""
    pattern = re.compile(rf"^#{{1,2}}SBATCH\s+--{re.escape(key)}(=|\s|$)")
    found = [i for i, line in enumerate(lines) if pattern.match(line)]
    for i in reversed(found[1:] if value is not None else found):
        del lines[i]
    if value is None:
        return
    line = f"#SBATCH --{key}={value}"
    if found:
        lines[found[0]] = line
    else:
        lines.insert(_last_directive(lines, "slurm") + 1, line)


def set_pbs(lines: list[str], flag: str, value: str, resource: str | None = None) -> None:
    """``#PBS -flag value`` (``-l resource=value`` where ``resource`` is given)."""
    if resource:
        pattern, line = re.compile(rf"^#{{1,2}}PBS\s+-l\s+{resource}="), f"#PBS -l {resource}={value}"
    else:
        pattern, line = re.compile(rf"^#{{1,2}}PBS\s+{flag}(\s|$)"), f"#PBS {flag} {value}"
    found = [i for i, text in enumerate(lines) if pattern.match(text)]
    if found:
        lines[found[0]] = line
    else:
        lines.insert(_last_directive(lines, "pbs") + 1, line)


def _replace_block(text: str, start: str, end: str, body: str) -> str:
    pattern = re.compile(rf"(^# >>> {start}[^\n]*\n).*?(^# <<< {end}[^\n]*$)", re.S | re.M)
    if not pattern.search(text):
        raise ValueError(f"the template has no '# >>> {start}' ... '# <<< {end}' block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text, count=1)


def _bash_double_quoted(text: str) -> str:
    return re.sub(r'(["`\\])', r"\\\1", text)  # $ stays: $USER, $SCRATCH expand in the job


def render(system: str, text: str, options: argparse.Namespace, job_arguments: list[str]) -> str:
    """The template ``text`` with ``options`` (those of :func:`build_parser`) applied."""
    lines = text.splitlines()
    header = [(options.job_name, "job-name", "-N"), (options.account, "account", "-A"),
              (options.partition, "partition", "-q"), (options.qos, "qos", None), (options.constraint, "constraint", None)]
    for value, key, flag in header:
        if value is None:
            continue
        if system == "slurm":
            set_sbatch(lines, key, value)
        elif flag is None:
            raise ValueError(f"--{key} is a Slurm option; for PBS give it as --header")
        else:
            set_pbs(lines, flag, value)
    if options.time and system == "slurm":
        set_sbatch(lines, "time", options.time)
    elif options.time:
        set_pbs(lines, "-l", options.time, "walltime")
    if system == "slurm":
        _slurm_resources(lines, options)
    else:
        _pbs_resources(lines, options)
    for entry in options.header:
        if system == "slurm":
            key, _, value = entry.lstrip("-").partition("=")
            set_sbatch(lines, key, value or None)
        else:
            lines.insert(_last_directive(lines, "pbs") + 1, f"#PBS {entry}")
    text = "\n".join(lines) + "\n"
    if options.site:
        with open(options.site) as f:
            text = _replace_block(text, "site", "site", f.read())
    if job_arguments:
        text = _replace_block(text, "gaugeflow options", "gaugeflow options", f"ARGS=({shlex.join(job_arguments)})")
    if options.run_dir:
        text, n = re.subn(r'^RUN_DIR="\$\{RUN_DIR:-.*?\}"', lambda _: f'RUN_DIR="${{RUN_DIR:-{_bash_double_quoted(options.run_dir)}}}"',
                          text, count=1, flags=re.M)
        if not n:
            raise ValueError("the template has no RUN_DIR line")
    if system == "pbs" and options.out:
        text = re.sub(r'^export GAUGEFLOW_JOB_SCRIPT=.*$', lambda _: "export GAUGEFLOW_JOB_SCRIPT="
                      f'"${{GAUGEFLOW_JOB_SCRIPT:-{_bash_double_quoted(os.path.abspath(options.out))}}}"',
                      text, count=1, flags=re.M)
    return text


def _sbatch_value(text: str, key: str) -> str | None:
    """The value of an active ``#SBATCH --key=value`` line of ``text`` (``None`` if there is none)."""
    match = re.search(rf"^#SBATCH\s+--{re.escape(key)}[=\s](\S+)", text, flags=re.M)
    return match.group(1) if match else None


def _job_device(text: str) -> str | None:
    """The ``--device`` of the rendered script's gaugeflow options (``None``: not given, i.e. auto)."""
    match = re.search(r"^ARGS=\((.*)\)\s*$", text, flags=re.M)
    words = shlex.split(match.group(1)) if match else []
    for i, word in enumerate(words):
        if word.startswith("--device="):
            return word.split("=", 1)[1]
        if word == "--device" and i + 1 < len(words):
            return words[i + 1]
    return None


def choose_template(system: str, name: str, text: str, options) -> tuple[str, str, str | None]:
    """``(name, text, note)``: the template to render.  A one-GPU Slurm template (one task, one GPU)
    asked for several nodes or GPUs per node without ``--tasks-per-node`` becomes its MPI
    sibling ``<name>-mpi`` where there is one (``note`` says so); otherwise it is refused."""
    if system != "slurm":
        return name, text, None
    one_gpu = _sbatch_value(text, "gpus-per-node") == "1" and _sbatch_value(text, "ntasks-per-node") in (None, "1")
    nodes = options.nodes if options.nodes is not None else int(_sbatch_value(text, "nodes") or 1)
    gpus = options.gpus_per_node if options.gpus_per_node is not None else 1
    if not one_gpu or options.tasks_per_node is not None or (nodes <= 1 and gpus <= 1):
        return name, text, None
    asked = f"{nodes} node(s) with {gpus} GPU(s) each"
    sibling = f"{name}-mpi"
    if not os.path.isfile(name) and sibling in template_names(system):
        return sibling, read_template(system, sibling), (f"{name} is a one-GPU template; rendering {sibling} "
                                                         f"(one MPI rank per GPU) for {asked}")
    multi = [t for t in template_names(system) if _sbatch_value(read_template(system, t), "gpus-per-node") not in
             (None, "0", "1")]
    raise ValueError(f"{name} is a one-GPU template (one task, one GPU) and cannot use {asked}: one process would "
                     f"hold them all; give --tasks-per-node {gpus} for one MPI rank per GPU (the job then runs with "
                     f"--mpi), or render a multi-rank template ({', '.join(multi) or 'none installed'})")


def check_devices(system: str, text: str) -> None:
    """Refuse a Slurm script whose GPUs would sit idle (more GPUs per node than tasks, or GPUs
    with ``--device cpu``) or that names a GPU device without asking for a GPU."""
    if system != "slurm":  # PBS headers do not count GPUs (select=N takes whole nodes)
        return
    device = (_job_device(text) or "auto").split(":")[0]
    gpus = int(_sbatch_value(text, "gpus-per-node") or 0)
    ranks = int(_sbatch_value(text, "ntasks-per-node") or 1)
    if gpus > ranks:
        raise ValueError(f"{gpus} GPUs per node but {ranks} task(s) per node: {gpus - ranks} GPU(s) would sit idle "
                         f"(one gaugeflow process uses one GPU); give --tasks-per-node {gpus}")
    if gpus and device == "cpu":
        raise ValueError(f"the job holds {gpus} GPU(s) per node but its options say --device cpu; drop --device "
                         "(the default, auto, uses the GPU) or give --gpus-per-node 0")
    if not gpus and device in ("cuda", "xpu"):
        raise ValueError(f"the job asks for no GPU but its options say --device {device}; give --gpus-per-node, "
                         "or drop --device (auto: the GPU if there is one, else the CPU)")


def _slurm_resources(lines: list[str], options) -> None:
    if options.nodes is not None:
        set_sbatch(lines, "nodes", options.nodes)
    tasks = options.tasks_per_node
    if options.gpus_per_node is not None:
        gpus = options.gpus_per_node
        for key in ("gpus-per-node", "gpus-per-task", "gres", "gpus"):
            set_sbatch(lines, key, None)
        if gpus:
            set_sbatch(lines, "gpus-per-node", gpus)
            multi_rank = any(re.match(r"#SBATCH --ntasks-per-node=([2-9]|\d\d)", line) for line in lines)
            tasks = tasks if tasks is not None else (gpus if multi_rank else None)  # one rank per GPU
    if tasks is not None:
        set_sbatch(lines, "ntasks-per-node", tasks)
    if options.cpus_per_task is not None:
        set_sbatch(lines, "cpus-per-task", options.cpus_per_task)


def _pbs_resources(lines: list[str], options) -> None:
    if options.nodes is not None:
        for i, line in enumerate(lines):
            if re.match(r"^#PBS\s+-l\s+select=\d+", line):
                lines[i] = re.sub(r"select=\d+", f"select={options.nodes}", line)
    ranks = options.tasks_per_node if options.tasks_per_node is not None else options.gpus_per_node
    if ranks is not None:
        for i, line in enumerate(lines):
            lines[i] = re.sub(r"--ranks-per-node \d+", f"--ranks-per-node {ranks}", line)


def _templates_listing(system: str) -> str:
    names = template_names(system)
    width = max(len(name) for name in names)
    return "\n".join(f"  {name:<{width}}  {template_summary(system, name)}" for name in names)


EXAMPLES = {
    "slurm": ["gaugeflow slurm render hmc --time 04:00:00 --account A --partition P --out hmc-su3.sbatch \\",
              "    -- --theory su3 --lattice 8x8x8x16 --beta 6.0 --n-configs 2000 --out su3.h5",
              "gaugeflow slurm render train --time 02:00:00 --account A -- --theory u1 --lattice 16x16 --beta 2.0 "
              "--minutes 100 --out u1.pt",
              "gaugeflow slurm render train-mpi --nodes 2 --gpus-per-node 4 --time 04:00:00 -- --theory u1 ...",
              "gaugeflow slurm render train --gpus-per-node 0 --cpus-per-task 8 -- ...   # CPU only"],
    "pbs": ["gaugeflow pbs render polaris-train --nodes 2 --time 01:00:00 --account A --out train.pbs \\",
            "    -- --theory u1 --lattice 32x32 --beta 4.0 --minutes 50 --out u1.pt",
            "gaugeflow pbs render aurora-train --nodes 8 --time 02:00:00 --account A --out train.pbs -- ..."],
}


def _epilog(system: str) -> str:
    return (f"templates (in the package's slurm/ folder; or give a file of your own):\n{_templates_listing(system)}\n\n"
            "examples:\n" + "\n".join("  " + line for line in EXAMPLES[system]))


def build_system_parser(system: str) -> argparse.ArgumentParser:
    """``gaugeflow slurm`` / ``gaugeflow pbs``: the commands (one: ``render``), for ``--help``."""
    parser = argparse.ArgumentParser(
        prog=f"gaugeflow {system}", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog(system),
        description=f"{DISPLAY_NAME[system]} batch scripts for gaugeflow jobs that survive time limits: the job "
                    f"saves its state at the\nwarning signal, requeues itself and resumes (gaugeflow batch).  'gaugeflow {system} render "
                    "--help'\nlists the options.")
    commands = parser.add_subparsers(dest="action", required=True, metavar="command")
    commands.add_parser("render", help=f"write a ready {system} batch script from a template; the gaugeflow options "
                                       "follow '--'")
    return parser


def build_parser(system: str) -> argparse.ArgumentParser:
    keep = " (default: the template's)"
    parser = argparse.ArgumentParser(
        prog=f"gaugeflow {system} render", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog(system),
        usage=f"gaugeflow {system} render [-h] TEMPLATE [options] [-- gaugeflow options]",
        description=f"Write a ready {DISPLAY_NAME[system]} batch script from a template; the gaugeflow options "
                    "follow '--' and replace\nthe template's.  A GPU job uses its GPU without --device (the default, auto)."
                    + ("  A one-GPU template\nasked for several nodes or GPUs becomes its -mpi sibling (train -> "
                       "train-mpi) or is refused." if system == "slurm" else ""))
    parser.add_argument("template", metavar="TEMPLATE",
                        help=f"template name ({', '.join(template_names(system))}) or file")
    parser.add_argument("--out", help="the script to write, never overwritten (default: print it)")
    parser.add_argument("--job-name", help="the job's name" + keep)
    parser.add_argument("--account", help="charged account / project" + keep)
    parser.add_argument("--partition", "--queue", dest="partition", help="partition (Slurm) or queue (PBS)" + keep)
    parser.add_argument("--time", help="time limit, HH:MM:SS" + keep)
    parser.add_argument("--nodes", type=int, help="nodes" + keep)
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node; 0 for a CPU-only job (removes the GPU "
                                                          "request)" + keep)
    parser.add_argument("--tasks-per-node", type=int,
                        help="MPI ranks per node (default: one per GPU for the multi-rank templates, else the "
                             "template's)")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per task" + keep)
    parser.add_argument("--qos", help="(Slurm) quality of service" + keep)
    parser.add_argument("--constraint", help="(Slurm) node features, e.g. gpu or cpu on Perlmutter" + keep)
    parser.add_argument("--header", action="append", default=[], metavar="LINE",
                        help="another header line: Slurm 'array=0-7'; PBS '-l filesystems=home:eagle' (repeatable)")
    parser.add_argument("--site", help="a file whose lines replace the template's site block (modules, environment)")
    parser.add_argument("--run-dir", help="where the job writes its outputs (default: $SCRATCH/gaugeflow-runs/JOB)")
    return parser


def main(system: str, argv: list[str]) -> int:
    build_system_parser(system).parse_args(argv[:1])  # --help, or an unknown command: exits (0 or 2)
    argv = argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    options = build_parser(system).parse_args(argv[:split])
    try:
        name, text, note = choose_template(system, options.template, read_template(system, options.template), options)
        text = render(system, text, options, argv[split + 1 :])
        check_devices(system, text)
    except (ValueError, OSError) as error:
        print(f"gaugeflow {system} render: error: {error}", file=sys.stderr)
        return 2
    if note:
        print(f"gaugeflow {system} render: {note}", file=sys.stderr)
    if options.out is None:
        sys.stdout.write(text)
        return 0
    if os.path.exists(options.out):
        print(f"gaugeflow {system} render: error: {options.out} exists; refusing to overwrite it", file=sys.stderr)
        return 2
    with open(options.out, "w") as f:
        f.write(text)
    os.chmod(options.out, 0o755)
    print(f"{options.out}: submit with {'sbatch' if system == 'slurm' else 'qsub'} {options.out}", file=sys.stderr)
    return 0
