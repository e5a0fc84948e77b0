"""python -m repro.autoencoder: train the l2-regularised linear autoencoder and check
(A) U_k is first-order critical for ||X - W2 W1 X||_F^2 and (B) small lam > 0 makes the decoder
W2 nearly orthonormal, sigma_i(W2) = sqrt(1 - lam/s_i)."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError, cli_main, interrupt_exit_code, interrupt_message
from ..runlog import append_record, check_log_dir, new_record
from . import checks as experiment
from . import theory
from .data import DATASETS, load, named_spectrum
from .table import fmt_value
from .train import TRAINERS

DEFAULT_PLOT = "logs/autoencoder_singular_values.png"
# Defaults per data set. Image patches have a dominant mean-brightness direction and small
# eigengaps past the 4th component, so: k = 4 (gap s4/s5 ~ 2) and 4x4x3 patches.
GENERIC_DEFAULTS = {"k": 5, "n": 500, "patch": 8}
DATASET_DEFAULTS = {"cifar": {"k": 4, "n": 2000, "patch": 4}}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m repro.autoencoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", help=f"one of {', '.join(DATASETS)} (default synthetic)")
    p.add_argument("--m", type=int, default=20, help="synthetic: dimension (default 20)")
    p.add_argument("--n", type=int, default=None, help="points: synthetic (default 500) or cifar patches (default 2000)")
    p.add_argument("--k", type=int, default=None, help="code size (default 5; cifar 4)")
    p.add_argument("--spectrum", default=None,
                   help="synthetic: m comma-separated distinct eigenvalues of C, or geometric[:SPAN] (1 down to "
                        "1/SPAN, default 1000) or power[:A] (s_i = i^-A, default 1)")
    p.add_argument("--cifar-path", default=None, help="cifar: CIFAR-10 source for repro.data.load_cifar10 ('synthetic' works offline)")
    p.add_argument("--patch", type=int, default=None, help="cifar: patch side (m = 3 patch^2, default 4)")
    p.add_argument("--lam", type=float, default=None, help="one lam (L_lam units); replaces the sweep")
    p.add_argument("--lams", default=None, help="comma-separated lam values for the sweep")
    p.add_argument("--lam-ratios", default=",".join(f"{r:g}" for r in experiment.DEFAULT_RATIOS),
                   help="default sweep as lam/s_k (default 1e-3,0.01,0.1)")
    p.add_argument("--optimizer", choices=experiment.OPTIMIZERS, default="momentum",
                   help="the sweep's optimiser: momentum (default: SGD heavy ball tuned to the curvature, adaptive "
                        "restart, full batch through C = XX^T/n, stop on convergence) or gd (plain GD: "
                        "no momentum, nn.MSELoss over the rows, a fixed step count)")
    p.add_argument("--lr", type=float, default=None,
                   help="torch SGD lr of the sweep (default: from the curvature; momentum follows from it)")
    p.add_argument("--steps", type=int, default=None, help="fixed steps per lam>0 run (default: stop on convergence)")
    p.add_argument("--max-steps", type=int, default=None,
                   help=f"cap on every run (default: sweep {experiment.SWEEP_MAX_STEPS}, lam=0 controls "
                        f"{'-'.join(map(str, experiment.CONTROL_MAX_STEPS))} by problem size, minibatch "
                        f"{experiment.MINIBATCH_MAX_STEPS})")
    p.add_argument("--batch-size", type=int, default=50, help="batch of the minibatch (noise-floor) run; 0 skips it")
    p.add_argument("--trainer", choices=TRAINERS, default="plain")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--float64", dest="dtype", action="store_const", const="float64", help="same as --dtype float64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default="logs")
    p.add_argument("--plot", default=DEFAULT_PLOT, help=f"PNG of sigma(W2) vs lam (default {DEFAULT_PLOT}); 'none' skips")
    p.add_argument("--quiet", action="store_true", help="only the check table and the verdict")
    args = p.parse_args(argv)
    for key, generic in GENERIC_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, DATASET_DEFAULTS.get(args.data, {}).get(key, generic))
    return args


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} wants comma-separated numbers, got {text!r}") from None


def validate(args, s: np.ndarray, m: int) -> list[float]:
    """Bad input -> UserError before anything is trained or logged; returns the lam sweep."""
    if not 0 < args.k < m:
        raise UserError(f"--k must satisfy 0 < k < m = {m}, got k={args.k}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be positive, got {args.lr}")
    for option in ("steps", "max_steps"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise UserError(f"--{option.replace('_', '-')} must be positive, got {value}")
    if args.lam is not None:
        lams = [args.lam]
    elif args.lams is not None:
        lams = _floats(args.lams, "--lams")
    else:
        ratios = _floats(args.lam_ratios, "--lam-ratios")
        if any(r <= 0 for r in ratios):
            raise UserError("--lam-ratios must be positive")
        lams = [r * s[args.k - 1] for r in ratios]
    if not lams or any(not math.isfinite(v) or v < 0 for v in lams):
        raise UserError(f"lam must be finite and >= 0, got {lams}")
    lams = sorted({v for v in lams if v > 0})
    if not lams:
        raise UserError("give at least one lam > 0 (lam = 0 is always run as the control)")
    for lam in lams:
        dead = theory.dead_directions(s, args.k, lam)
        if lam >= s[0]:
            warnings.warn(f"lam={lam:.4g} >= s_1={s[0]:.4g}: every direction is dead, the optimum is W = 0",
                          stacklevel=2)
        elif dead:
            warnings.warn(f"lam={lam:.4g}: directions {[i + 1 for i in dead]} are dead (s_i <= lam)", stacklevel=2)
    return lams


@contextlib.contextmanager
def progress_bars(quiet: bool):
    """A factory of rich progress bars, one per training run (none with --quiet). The total is the
    run's estimated step count; a run that stops on convergence ends the bar where it stopped."""
    if quiet:
        yield experiment._no_bar
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                  TimeElapsedColumn()) as progress:

        @contextlib.contextmanager
        def bar(label: str, total: int):
            task = progress.add_task(label, total=total)

            def update(step: int) -> None:
                progress.update(task, completed=step, total=max(total, step))

            yield update
            progress.update(task, total=progress.tasks[task].completed)

        yield bar


def print_table(checks, quiet: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="linear autoencoder: claims A and B", show_lines=False)
    for col in ("check", "measured", "predicted", "tolerance", "verdict"):
        table.add_column(col, no_wrap=col != "check")
    if not quiet:
        table.add_column("why", style="dim")
    colour = {"PASS": "green", "FAIL": "bold red", "INFO": "cyan"}
    for c in checks:
        row = [c.name, fmt_value(c.measured), fmt_value(c.predicted), c.tolerance, f"[{colour[c.verdict]}]{c.verdict}[/]"]
        table.add_row(*(row if quiet else row + [c.why]))
    Console(width=max(160, Console().width)).print(table)


def save_plot(path: Path, report, s: np.ndarray, k: int) -> str:
    """sigma_i(W2) against lam with the predicted curves sqrt(1 - lam/s_i)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -e \".[plots]\")"
    lams = np.array([p.lam for p in report.sweep])
    grid = np.geomspace(lams.min() / 3, max(lams.max() * 3, s[0] * 1.2), 400)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i in range(k):
        pred = np.sqrt(np.clip(1 - grid / s[i], 0, None))
        line, = ax.plot(grid, pred, lw=1, label=f"sqrt(1 - lam/s_{i + 1})")
        ax.plot(lams, [p.singular_values[i] for p in report.sweep], "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("lam (L_lam units; weight_decay = 2 lam / m)")
    ax.set_ylabel("singular values of W2")
    ax.set_title("trained (dots) vs theory (lines)")
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _one_line_warning  # restored when the block exits
        eigenvalues = None
        if args.spectrum:
            eigenvalues = named_spectrum(args.spectrum, args.m)
            if eigenvalues is None:
                eigenvalues = _floats(args.spectrum, "--spectrum")
        n = args.n
        if args.m <= 0 or n <= 0:
            raise UserError(f"--m and --n must be positive, got m={args.m}, n={n}")
        data = load(args.data, m=args.m, n=n, k=args.k, seed=args.seed, eigenvalues=eigenvalues,
                    cifar_path=args.cifar_path, patch=args.patch)
        X = data.X
        s, U = theory.spectrum(X)
        lams = validate(args, s, data.m)
        check_log_dir(args.log_dir)  # a bad log dir fails now, not after the training it would lose
        return _run(args, data, s, lams, say)


def _run(args, data, s, lams, say) -> int:
    import torch

    X, m, k = data.X, data.m, args.k
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    settings = experiment.Settings(k=k, lams=tuple(lams), default_sweep=args.lam is None and args.lams is None,
                                   lr=args.lr, steps=args.steps, max_steps=args.max_steps, optimizer=args.optimizer,
                                   batch_size=args.batch_size, seed=args.seed, dtype=dtype, trainer=args.trainer,
                                   log_dir=args.log_dir)
    say(f"data: {data.description}; m={m}, n={data.n}; centred (mean point subtracted)")
    say(f"spectrum of C = XX^T/n: s_1..s_{k} = {np.array2string(s[:k], precision=4)}, "
        f"s_{k + 1} = {s[k]:.4g}, tr C = {s.sum():.4g}")
    primary = lams[0]
    record_fields = {
        "lambda": primary, "weight_decay": theory.weight_decay_for(primary, m),
        "lambdas": lams, "weight_decays": [theory.weight_decay_for(v, m) for v in lams],
        "dataset": data.name, "data_description": data.description, "centred": True,
        "m": m, "n": data.n, "k": k, "trainer": args.trainer, "dtype": args.dtype, "seed": args.seed,
        "spectrum_top": s[: k + 1].tolist(),
    }
    report = experiment.Report()
    start = time.perf_counter()
    try:
        with progress_bars(args.quiet) as bars:
            experiment.run(X, settings, progress=say, partial=report, bars=bars)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (repro.errors.Terminated)
        record = new_record("autoencoder", status="interrupted", error=interrupt_message(exc), **record_fields,
                            checks=[c.as_record() for c in report.checks])
        append_record(record, args.log_dir)
        print(f"{interrupt_message(exc)}: partial record written", file=sys.stderr)
        return interrupt_exit_code(exc)
    seconds = time.perf_counter() - start

    for run in report.runs:
        say(f"{run['run']}: lam={fmt_value(run['weight_decay'] * m / 2)} -> weight_decay = 2 lam/m = "
            f"{run['weight_decay']:.4g}; SGD lr {run['lr']:.4g} (a GD step of lr/m = {run['lr'] / m:.3g} on L_lam), "
            f"momentum {run['momentum']:.4g}{' + restart' if run['adaptive_restart'] and run['momentum'] else ''}, "
            f"{run['objective']} objective, batch {run['batch_size']}: {run['steps']} steps ({run['stop']}), "
            f"{run['seconds']:.1f} s")
    say(f"(stability bound for GD on L_lam: 1/(2 s_1) = {1 / (2 * s[0]):.4g} at a balanced point)")
    for note in report.notes:
        print(f"note: {note}")
    print_table(report.checks, args.quiet)
    plot_note = "plot skipped (--plot none)"
    if args.plot.lower() != "none" and report.sweep:
        plot_note = save_plot(Path(args.plot), report, s, k)
    say(plot_note)
    failed = [c for c in report.checks if c.verdict == "FAIL"]
    status = "ok" if not failed else "failed"
    record = new_record(
        "autoencoder", status=status, **record_fields, lr=report.lr, seconds=seconds, optimizer=args.optimizer,
        steps={fmt_value(p.lam): p.steps for p in report.sweep},
        singular_values={fmt_value(p.lam): p.singular_values.tolist() for p in report.sweep},
        runs=report.runs, checks=[c.as_record() for c in report.checks], notes=report.notes,
    )
    path = append_record(record, args.log_dir)
    passed = sum(c.verdict == "PASS" for c in report.checks)
    print(f"{'ALL CHECKS PASS' if not failed else f'{len(failed)} CHECK(S) FAIL'}: {passed} pass, "
          f"{len(failed)} fail ({seconds:.1f} s training); record appended to {path}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
