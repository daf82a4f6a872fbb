"""Flow training / sampling benchmark for gaugeflow on the CPU.

For each case it

1. builds the flow (``gaugeflow.flows.architecture`` + ``gaugeflow.flows.build_flow``; theory defaults unless
   overridden) and trains it in float32 with ``gaugeflow.flows.train_flow`` for a fixed number of
   steps (``--steps``) or for a wall-clock budget (``--minutes``: the step count is set from
   the time of a few untimed probe steps on a throw-away copy, so the cosine schedule
   still runs to its end);
2. evaluates the trained model in float64 (``model.double()``) on ``--eval-samples``
   samples drawn in batches of 256: the ESS of reweighting ``q`` to ``p`` and the
   acceptance of an independence-Metropolis chain over those proposals
   (``gaugeflow.hmc.flow_metropolis``);
3. measures the sampling throughput (samples/s, median of several timed blocks) of
   ``model.sample(256)`` (forward: prior draw + flow) and ``model.log_prob(x)`` (inverse),
   in float32 and float64, without autograd.

Cases (``--cases``): ``phi4-8`` (phi^4 8x8, m2=-4, lam=8), ``u1-8`` (U(1) 8x8, beta=2),
``u1-16-b2``/``u1-16-b4``/``u1-16-b6`` (U(1) 16x16, beta 2/4/6), ``su2-8`` (SU(2) 8x8,
beta=2), ``su3-8`` (SU(3) 8x8, beta=4).

Examples::

    python benchmarks/flow_benchmark.py --quick                       # smoke test (~1 min)
    python benchmarks/flow_benchmark.py --cases phi4-8 --minutes 12 --markdown
    python benchmarks/flow_benchmark.py --cases u1-8 --steps 1500 --layers 16 --hidden 32,32 \
        --lr 5e-3 --results results.jsonl --tag wide
    python benchmarks/flow_benchmark.py --collect results.jsonl --markdown   # table of stored rows

Progress goes to stderr, the table to stdout.  ``--results FILE`` appends one JSON line per
case, so separately bounded runs can be tabulated together with ``--collect``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow
from gaugeflow.flows.diagnostics import acceptance_rate, effective_sample_size
from gaugeflow.flows.estimators import estimator_names
from gaugeflow.flows.train import default_estimator, reverse_kl_step_terms
from gaugeflow.lattice.theories import make_theory

CASES = {  # name: (theory, lattice, couplings)
    "phi4-8": ("phi4", "8x8", {"m2": -4.0, "lam": 8.0}),
    "u1-8": ("u1", "8x8", {"beta": 2.0}),
    "u1-8-b6": ("u1", "8x8", {"beta": 6.0}),
    "u1-16-b2": ("u1", "16x16", {"beta": 2.0}),
    "u1-16-b4": ("u1", "16x16", {"beta": 4.0}),
    "u1-16-b6": ("u1", "16x16", {"beta": 6.0}),
    "su2-8": ("su2", "8x8", {"beta": 2.0}),
    "su3-8": ("su3", "8x8", {"beta": 4.0}),
}
THROUGHPUT_BATCH = 256


def log(message):
    print(message, file=sys.stderr, flush=True)


def make_model(case, args, seed):
    name, lattice, couplings = CASES[case]
    theory = make_theory(name, lattice, **couplings)
    hidden = [int(c) for c in args.hidden.split(",")] if args.hidden else None
    arch = architecture(theory, n_layers=args.layers, kernel=args.kernel, hidden_channels=hidden,
                        kernel_size=args.kernel_size, n_bins=args.bins, n_mixture=args.mixture,
                        rectangles=args.rectangles, prior=args.prior, symmetrise=args.symmetrise,
                        momentum_scaling=args.momentum_scaling)
    torch.manual_seed(seed)
    return build_flow(arch).to(torch.float32)


def probe_step_time(model, args, estimator, n_steps=5):
    """Seconds per optimizer step (forward + backward + Adam) on a throw-away copy."""
    probe = copy.deepcopy(model)
    optimizer = torch.optim.Adam(probe.parameters(), lr=args.lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        surrogate, *_ = reverse_kl_step_terms(probe, args.batch, estimator)
        surrogate.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up
    began = time.perf_counter()
    for _ in range(n_steps):
        step()
    return (time.perf_counter() - began) / n_steps


@torch.no_grad()
def evaluate_float64(model, n_samples, batch=256, seed=12345):
    """ESS and independence-Metropolis acceptance of the float64 model on n_samples proposals."""
    torch.manual_seed(seed)
    log_weights = []
    for start in range(0, n_samples, batch):
        x, log_q = model.sample(min(batch, n_samples - start))
        log_weights.append(model.p.log_prob(x).to(torch.float64) - log_q)
    log_weights = torch.cat(log_weights)
    generator = torch.Generator().manual_seed(seed)
    n_bad = int((~torch.isfinite(log_weights)).sum())
    return {
        "ess": effective_sample_size(log_weights),
        "acceptance": acceptance_rate(log_weights, generator),
        "mean_log_q_minus_log_p": float(-log_weights[torch.isfinite(log_weights)].mean()),
        "nonfinite": n_bad,
    }


@torch.no_grad()
def throughput(model, batch, repeats, block):
    """Median samples/s of model.sample(batch) and model.log_prob(x) over `repeats` blocks."""
    x, _ = model.sample(batch)  # warm-up, and the configurations for log_prob
    model.log_prob(x)

    def rate(fn):
        began = time.perf_counter()
        fn()
        once = max(time.perf_counter() - began, 1e-6)
        calls = max(1, int(block / once))
        rates = []
        for _ in range(repeats):
            began = time.perf_counter()
            for _ in range(calls):
                fn()
            rates.append(calls * batch / (time.perf_counter() - began))
        return statistics.median(rates)

    return rate(lambda: model.sample(batch)), rate(lambda: model.log_prob(x))


def evaluate_checkpoint(path, case, args):
    """Float64 evaluation and throughput of an already trained checkpoint (no training)."""
    from gaugeflow.flows import load_checkpoint, load_flow
    from gaugeflow.flows.train import metrics_log_path

    payload = load_checkpoint(path)
    model = load_flow(path)
    config = payload["train_config"]
    history = []
    if os.path.exists(metrics_log_path(path)):
        import csv
        with open(metrics_log_path(path)) as f:
            history = [{k: float(r[k]) for k in ("step", "loss", "ess", "acceptance", "seconds")} for r in csv.DictReader(f)]
    seconds = history[-1]["seconds"] if history else float("nan")
    return finish_case(case, args, model, payload["architecture"], int(payload["step"]), config["batch_size"],
                       config["learning_rate"], config["estimator"], seconds, payload["metrics"], history, None)


def run_case(case, args, workdir):
    model = make_model(case, args, args.seed)
    arch = model.architecture
    estimator = args.estimator or default_estimator(model)
    n_params = sum(p.numel() for p in model.parameters())
    steps = args.steps
    probe = None
    if args.minutes:
        probe = probe_step_time(model, args, estimator)
        # ~3% of the time goes to the periodic evaluation in train_flow
        steps = max(1, int(args.minutes * 60 / (probe * 1.03)))
        log(f"[{case}] probe: {probe * 1e3:.0f} ms/step -> {steps} steps for {args.minutes:g} min")
    config = TrainConfig(steps=steps, batch_size=args.batch, learning_rate=args.lr, estimator=estimator, warmup=args.warmup,
                         log_every=args.log_every, checkpoint_every=max(steps, 1), eval_batches=args.eval_batches,
                         seed=args.seed)
    log(f"[{case}] {arch['theory']} {'x'.join(map(str, arch['lattice']))} {arch['couplings']}: "
        f"{arch['n_layers']} {arch['kernel']} layers, hidden {arch['hidden_channels']}, k={arch['kernel_size']}, "
        f"{n_params} parameters; {steps} steps x batch {args.batch}, lr {args.lr:g}, {estimator}")
    checkpoint = os.path.join(workdir, f"{case}-{args.tag or 'default'}-{os.getpid()}.pt")
    summary = train_flow(model, config, checkpoint, progress=args.progress)
    m = summary.metrics
    log(f"[{case}] trained in {summary.seconds:.1f} s ({summary.seconds / steps * 1e3:.0f} ms/step): loss {m['loss']:.4f}, "
        f"batch-eval ESS {m['ess']:.3f}, acceptance {m['acceptance']:.3f}")
    history = []
    with open(summary.log_path) as f:
        import csv
        for row in csv.DictReader(f):
            history.append({k: float(row[k]) for k in ("step", "loss", "ess", "acceptance", "seconds")})

    return finish_case(case, args, model, arch, steps, args.batch, args.lr, estimator, summary.seconds, m, history,
                       probe)


def finish_case(case, args, model, arch, steps, batch, lr, estimator, seconds, m, history, probe):
    n_params = sum(p.numel() for p in model.parameters())
    model = model.double().eval()
    result = evaluate_float64(model, args.eval_samples)
    log(f"[{case}] float64, {args.eval_samples} samples: ESS {result['ess']:.3f}, acceptance {result['acceptance']:.3f}")
    rates = {}
    for dtype in (torch.float32, torch.float64):
        model = model.to(dtype)
        rates[str(dtype).removeprefix("torch.")] = throughput(model, THROUGHPUT_BATCH, args.repeats, args.block)
    log(f"[{case}] samples/s fwd/inv: float32 {rates['float32'][0]:.0f}/{rates['float32'][1]:.0f}, "
        f"float64 {rates['float64'][0]:.0f}/{rates['float64'][1]:.0f}")
    log_z = model.theory.exact_log_partition_function()
    return {
        "case": case, "tag": args.tag or "",
        "layers": arch["n_layers"], "kernel": arch["kernel"], "hidden": arch["hidden_channels"],
        "kernel_size": arch["kernel_size"], "parameters": n_params,
        "steps": steps, "batch": batch, "lr": lr, "estimator": estimator,
        "train_seconds": seconds, "ms_per_step": seconds / steps * 1e3,
        "probe_ms_per_step": probe * 1e3 if probe else None,
        "loss": m["loss"], "kl": m["loss"] + log_z if log_z is not None else None,
        **result,
        "fwd32": rates["float32"][0], "inv32": rates["float32"][1],
        "fwd64": rates["float64"][0], "inv64": rates["float64"][1],
        "history": history, "threads": torch.get_num_threads(),
    }


COLUMNS = [
    ("case", "case", "{}"),
    ("arch", "layers/kernel/hidden", "{}"),
    ("steps", "steps", "{}"),
    ("batch", "batch", "{}"),
    ("lr", "lr", "{:g}"),
    ("estimator", "est.", "{}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("ms_per_step", "ms/step", "{:.0f}"),
    ("loss", "final loss", "{:.3f}"),
    ("ess", "ESS", "{:.3f}"),
    ("acceptance", "acc.", "{:.3f}"),
    ("fwd32", "fwd/s f32", "{:.0f}"),
    ("inv32", "inv/s f32", "{:.0f}"),
    ("fwd64", "fwd/s f64", "{:.0f}"),
    ("inv64", "inv/s f64", "{:.0f}"),
]


def format_table(rows, markdown):
    cells = []
    for r in rows:
        r = {**r, "arch": f"{r['layers']}/{r['kernel']}/{','.join(map(str, r['hidden']))}"}
        cells.append([fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt in COLUMNS])
    header = [title for _, title, _ in COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def plot_curves(rows, png_path):
    """KL (where log Z is exact) and training-sample acceptance against training seconds, one
    curve per stored row: acceptance per unit of training cost at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (kl_axis, acceptance_axis) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    # KL needs log Z (known for the exact cases); otherwise the loss, KL - log Z, shows the same curve shifted.
    show_kl = all(r.get("kl") is not None for r in rows)
    for r in rows:
        label = f"{r['case']} {r['tag']}".strip()
        seconds = [h["seconds"] for h in r["history"]]
        if show_kl:  # log Z = KL - loss of the final batch
            log_z = r["kl"] - r["loss"]
            kl_axis.plot(seconds, [max(h["loss"] + log_z, 1e-3) for h in r["history"]], label=label)
        else:
            kl_axis.plot(seconds, [h["loss"] for h in r["history"]], label=label)
        acceptance_axis.plot(seconds, [h["acceptance"] for h in r["history"]], label=label)
    if show_kl:
        kl_axis.set(xlabel="training CPU seconds", ylabel="KL(q || p) (one batch)", yscale="log")
    else:
        losses = [h["loss"] for r in rows for h in r["history"]]
        floor = min(losses)
        kl_axis.set(xlabel="training CPU seconds", ylabel="reverse-KL loss = KL - log Z (one batch)",
                    ylim=(floor - 0.5, floor + 5))
    acceptance_axis.set(xlabel="training CPU seconds", ylabel="Metropolis acceptance (training evaluation)", ylim=(0, 1))
    acceptance_axis.legend(fontsize=7, loc="lower right")
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    log(f"wrote {png_path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE",
                        help=f"cases to run (default: all): {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 30 steps, batch 64, 512 evaluation samples, short timing blocks")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="training steps per case (default: 1000)")
    budget.add_argument("--minutes", type=float, help="training wall-clock budget per case; sets --steps from probe steps")
    parser.add_argument("--batch", type=int, default=256, help="training batch size (default: 256)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: 2e-3)")
    parser.add_argument("--estimator", choices=estimator_names(),
                        help="default: train.default_estimator (path; reparam for 2D U(1) plaquette-prior models conditioned on beta)")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of training with a linear learning-rate rise (default: 0.1)")
    parser.add_argument("--layers", type=int, help="coupling layers (default: the theory's default)")
    parser.add_argument("--hidden", help="hidden channels, comma separated (default: the theory's default)")
    parser.add_argument("--kernel", help="spline / affine (phi4) / ncp (u1)")
    parser.add_argument("--kernel-size", type=int)
    parser.add_argument("--bins", type=int)
    parser.add_argument("--mixture", type=int)
    parser.add_argument("--prior", help="plaquette (2D U(1) default) / haar / normal")
    parser.add_argument("--rectangles", action=argparse.BooleanOptionalAction, default=None,
                        help="U(1): condition on the 1x2 loops through the active links (default: the theory's default)")
    parser.add_argument("--symmetrise", action=argparse.BooleanOptionalAction, default=None,
                        help="phi4: the density averaged over phi -> -phi (default: the theory's default)")
    parser.add_argument("--momentum-scaling", action=argparse.BooleanOptionalAction, default=None,
                        help="phi4: a learned propagator before the couplings (default: the theory's default)")
    parser.add_argument("--eval-samples", type=int, default=4096, help="float64 evaluation sample (default: 4096)")
    parser.add_argument("--eval-batches", type=int, default=4, help="train_flow's periodic evaluation batches (default: 4)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per throughput number (default: 5)")
    parser.add_argument("--block", type=float, default=0.5, help="seconds per timed block (default: 0.5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tag", help="label stored with the results (e.g. the variant tried)")
    parser.add_argument("--results", help="append one JSON line per case to this file")
    parser.add_argument("--collect", nargs="+", metavar="FILE", help="only print the table of rows stored in these files")
    parser.add_argument("--evaluate", metavar="CHECKPOINT",
                        help="skip training: evaluate this trained checkpoint (e.g. from gaugeflow train) as case --cases")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--plot", metavar="PNG", help="with --collect: training curves (KL, acceptance vs seconds)")
    parser.add_argument("--progress", action="store_true", help="show train_flow's progress bar")
    args = parser.parse_args(argv)

    if args.collect:
        rows = [json.loads(line) for path in args.collect for line in open(path) if line.strip()]
        print(format_table(rows, args.markdown))
        if args.plot:
            plot_curves(rows, args.plot)
        return 0
    if args.quick:
        args.steps = args.steps or 30
        args.batch, args.eval_samples, args.repeats, args.block, args.log_every = 64, 512, 3, 0.2, 10
    if args.steps is None and args.minutes is None:
        args.steps = 1000
    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}")
    rows = []
    if args.evaluate:
        rows.append(evaluate_checkpoint(args.evaluate, args.cases[0], args))
        rows[-1]["tag"] = args.tag or ""
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
        print(format_table(rows, args.markdown))
        return 0
    with tempfile.TemporaryDirectory(prefix="flow_benchmark_") as workdir:
        for case in args.cases:
            row = run_case(case, args, workdir)
            rows.append(row)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(row) + "\n")
    log(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(format_table(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
