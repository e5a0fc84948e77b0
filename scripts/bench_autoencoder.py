"""Steps and seconds to reach the closed form, per lam/s_k, for `--optimizer gd` (plain GD over the
rows) and the default (momentum), side by side in one run (the machine may be shared: read the
ratios, not the seconds).

    python scripts/bench_autoencoder.py                         # default synthetic problem
    python scripts/bench_autoencoder.py --data digits --k 5
    python scripts/bench_autoencoder.py --m 100 --n 3000 --k 10 --spectrum geometric

Variants, each from PyTorch's default init, full batch, float64, one torch thread:
  gd, rows        nn.MSELoss over the n rows, SGD without momentum at 0.9 of the GD stability
                  bound (what `python -m repro.autoencoder --optimizer gd` runs);
  C, no momentum  the same SGD, the objective written through C = XX^T/n (identical iterates,
                  cheaper steps): separates the per-step saving from the step-count saving;
  momentum        C plus heavy-ball momentum tuned to the curvature, adaptive restart (the
                  default, `--optimizer momentum`).
"Reached" = every claim-B check of `python -m repro.autoencoder` passes against the closed form
(sigma(W2) to 0.1% of lam/s_k, ||W2^T W2 - I||_2 to 1%, angles <= 1e-8, ||W1 - W2^T|| to 0.1%,
L - L*), tested every --every steps; the time spent in that test is not counted. A variant that
has not reached it after --max-seconds is reported as "> steps"; where "gd, rows" stopped short
but "C, no momentum" (the same iterates) got there, the "gd, rows" cells show those steps at
"gd, rows"'s measured cost per step, marked "≈".
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from repro.autoencoder import checks, theory
from repro.autoencoder.data import load, named_spectrum
from repro.autoencoder.train import TrainConfig, build_model, train

VARIANTS = ("gd, rows", "C, no momentum", "momentum")


class ReachedClosedForm:
    """on_check callback: stops the run once every claim-B check passes, or after max_seconds of
    training; keeps the time it spends itself out of the run's time."""

    def __init__(self, lam, s, U, k, X, max_seconds):
        self.args = (lam, s, U, k, X)
        self.max_seconds = max_seconds
        self.start = time.perf_counter()
        self.own_seconds = 0.0
        self.reached_at = None

    def __call__(self, step, model) -> bool:
        t0 = time.perf_counter()
        lam, s, U, k, X = self.args
        W1, W2 = model.weights()
        passed = all(c.verdict == "PASS" for c in checks.closed_form_checks(lam, W1, W2, s, U, k, X, torch.float64))
        if passed:
            self.reached_at = step
        self.own_seconds += time.perf_counter() - t0
        return passed or time.perf_counter() - self.start - self.own_seconds > self.max_seconds


def variant_config(name: str, plan: checks.SweepPlan, lr_gd: float, every: int) -> TrainConfig:
    base = dict(k=plan.config.k, lam=plan.lam, steps=10**9, check_every=every)
    if name == "momentum":
        return TrainConfig(**{**plan.config.__dict__, "steps": 10**9, "grad_tol": None, "check_every": every})
    return TrainConfig(lr=lr_gd, objective="rows" if name == "gd, rows" else "covariance", **base)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", choices=("synthetic", "digits", "cifar"))
    p.add_argument("--m", type=int, default=20)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--spectrum", default=None, help="geometric[:SPAN], power[:A] or m comma-separated values")
    p.add_argument("--cifar-path", default=None)
    p.add_argument("--ratios", default="1e-3,1e-2,1e-1", help="lam/s_k values")
    p.add_argument("--max-seconds", type=float, default=120.0, help="per variant and ratio")
    p.add_argument("--every", type=int, default=25, help="steps between closed-form tests")
    args = p.parse_args(argv)
    k = args.k or (4 if args.data == "cifar" else 5)
    n = args.n or (2000 if args.data == "cifar" else 500)
    eigenvalues = None
    if args.spectrum:
        eigenvalues = named_spectrum(args.spectrum, args.m)
        if eigenvalues is None:
            eigenvalues = np.array([float(v) for v in args.spectrum.split(",")])
    data = load(args.data, m=args.m, n=n, k=k, eigenvalues=eigenvalues, cifar_path=args.cifar_path, patch=4)
    X, m = data.X, data.m
    s, U = theory.spectrum(X)
    ratios = [float(r) for r in args.ratios.split(",")]
    lams = [r * s[k - 1] for r in ratios]
    lr_gd, B = checks.default_lr(s, m, k, 0, lams)
    W1_0, W2_0 = build_model(m, k, 0).weights()
    D0 = float(np.linalg.norm(W1_0 @ W1_0.T - W2_0.T @ W2_0))
    console = Console(width=max(150, Console().width))
    console.print(f"{data.description}: m={m}, n={data.n}, k={k}; s_1/s_k = {s[0] / s[k - 1]:.3g}; "
                  f"GD lr {lr_gd:.4g}; at most {args.max_seconds:g} s per variant and ratio")

    table = Table(title="steps and seconds to reach the closed form (every claim-B check passes)")
    table.add_column("lam/s_k")
    for name in VARIANTS:
        table.add_column(f"{name}\nsteps", justify="right")
        table.add_column("s", justify="right")
    table.add_column("gd / momentum\nsteps", justify="right")
    table.add_column("gd / momentum\nseconds", justify="right")
    for ratio, lam in zip(ratios, lams):
        plan = checks.plan_sweep_point(X, s, k, lam, checks.Settings(k=k), B, lr_gd, D0)
        row, measured = [f"{ratio:g}"], {}
        for name in VARIANTS:
            stop = ReachedClosedForm(lam, s, U, k, X, args.max_seconds)
            result = train(X, variant_config(name, plan, lr_gd, args.every), on_check=stop)
            seconds = result.seconds - stop.own_seconds
            reached = stop.reached_at is not None
            measured[name] = (result.steps, seconds, reached)
            row += [f"{result.steps}" if reached else f"> {result.steps}", f"{seconds:.2f}" if reached else f"> {seconds:.1f}"]
            console.print(f"  lam/s_k={ratio:g} {name}: {result.steps} steps, {seconds:.2f} s"
                          + ("" if reached else " (not reached)"))
        gd, same, fast = measured["gd, rows"], measured["C, no momentum"], measured["momentum"]
        if gd[2]:
            row += [f"{gd[0] / fast[0]:.1f}x", f"{gd[1] / fast[1]:.1f}x"]
        elif same[2]:  # identical iterates: "gd, rows" needs C-no-momentum's steps, at its own cost per step
            steps, seconds = same[0], same[0] * gd[1] / gd[0]
            row[1:3] = [f"≈ {steps}", f"≈ {seconds:.0f}"]
            row += [f"≈ {steps / fast[0]:.1f}x", f"≈ {seconds / fast[1]:.0f}x"]
        else:  # neither got there: "gd, rows" needs more than the larger of the two step counts
            steps = max(gd[0], same[0])
            seconds = steps * gd[1] / gd[0]
            row[1:3] = [f"> {steps}", f"> {seconds:.0f}"]
            row += [f"> {steps / fast[0]:.1f}x", f"> {seconds / fast[1]:.0f}x"]
        table.add_row(*row)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
