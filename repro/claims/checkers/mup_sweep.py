"""HW3 Q3(a): a small CPU reproduction of Tensor Programs V Fig. 1 (LR transfer across width).

The paper sweeps Transformers; here a 3-hidden-layer ReLU MLP (no biases) is trained with Adam
on a fixed synthetic classification task, over a log2 LR grid, at several widths n, in two
parametrisations. ``b`` is the base width (the narrowest), where both coincide.

SP (standard): every weight W ~ N(0, c/fan_in) (c = 2 for layers followed by ReLU, 1 for the
readout), logits = W_out h, one global Adam LR η for all layers.

μP (Adam, TP5 Table 3 / the ``mup`` package's MuReadout + MuAdam):
  * input layer  W_in  (d_in → n):  init N(0, 2/d_in), Adam LR η          (fan_in fixed)
  * hidden layers W    (n → n):     init N(0, 2/n),    Adam LR η · b/n     (∝ 1/fan_in)
  * readout      W_out (n → C):     init N(0, 1/n),    Adam LR η, forward logits = (b/n) · W_out h
    (the "readout multiplier": output effectively initialised and updated ∝ 1/width)

Every (width, LR) cell of one seed starts from the same data and minibatch order; all LRs of
one width are trained at once as a batch of independent networks (one bmm per layer). The
measured quantity is the training loss (cross-entropy on the whole training set) after the
last step (Adam β=(0.9, 0.999), ε=1e-8, minibatch 128, no schedule, no weight decay); a run that
diverges (non-finite loss) counts as +inf. The optimum per width is the grid argmin of log2 LR,
and, for the shift comparison, also the vertex of a parabola through the argmin and its neighbours.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch

from .common import COMPUTED, JUDGEMENT, NO, PARTLY, TEXT, YES, Finding, fmt

# TP5 (arXiv 2203.03466) Fig. 1, as the paper prints it.
FIG1_AXES = "TP5 Fig. 1 plots training loss (y) against log2 learning rate (x), one curve per width"

D_IN, CLASSES, N_TRAIN, BATCH = 32, 10, 4096, 128
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


def _setting(quick: bool) -> dict:
    if quick:
        return dict(widths=(64, 128, 256), log2_lrs=tuple(range(-12, -3)), steps=120, seeds=(0,))
    return dict(widths=(64, 128, 256, 512), log2_lrs=tuple(range(-12, -3)), steps=150, seeds=(0, 1))


def _task(gen: torch.Generator):
    """4096 inputs N(0, I_32), labels = argmax of a fixed random tanh teacher (width 128), 10% flipped."""
    x = torch.randn(N_TRAIN, D_IN, generator=gen)
    w1 = torch.randn(D_IN, 128, generator=gen) / math.sqrt(D_IN)
    w2 = torch.randn(128, CLASSES, generator=gen) / math.sqrt(128)
    y = (torch.tanh(2 * x @ w1) @ w2).argmax(dim=1)
    flip = torch.rand(N_TRAIN, generator=gen) < 0.1
    y[flip] = torch.randint(0, CLASSES, (int(flip.sum()),), generator=gen)
    return x, y


def _train(param: str, width: int, base: int, lrs: torch.Tensor, x, y, batches, gen) -> np.ndarray:
    """Train len(lrs) copies (same init) of one MLP; return the final training loss of each."""
    k = lrs.numel()
    dims = [D_IN, width, width, width, CLASSES]
    weights, lr_mult = [], []
    for i, (fi, fo) in enumerate(zip(dims[:-1], dims[1:])):
        readout = i == len(dims) - 2
        w = torch.randn(fi, fo, generator=gen) * math.sqrt((1.0 if readout else 2.0) / fi)
        weights.append(w.expand(k, fi, fo).clone().requires_grad_(True))
        hidden = 0 < i < len(dims) - 2
        lr_mult.append(base / width if (param == "mup" and hidden) else 1.0)
    out_mult = base / width if param == "mup" else 1.0
    m = [torch.zeros_like(w) for w in weights]
    v = [torch.zeros_like(w) for w in weights]
    lr = lrs.view(k, 1, 1)

    def logits(inp):
        h = inp.expand(k, *inp.shape)
        for w in weights[:-1]:
            h = torch.relu(h @ w)
        return out_mult * (h @ weights[-1])

    def loss_per_net(inp, target):
        z = logits(inp)
        return torch.nn.functional.cross_entropy(
            z.reshape(-1, CLASSES), target.repeat(k), reduction="none").view(k, -1).mean(dim=1)

    for t, idx in enumerate(batches, start=1):
        loss = loss_per_net(x[idx], y[idx])
        grads = torch.autograd.grad(loss.sum(), weights)  # nets are independent: sum = per-net grads
        with torch.no_grad():
            for w, g, mi, vi, mult in zip(weights, grads, m, v, lr_mult):
                g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                mi.mul_(ADAM_B1).add_(g, alpha=1 - ADAM_B1)
                vi.mul_(ADAM_B2).addcmul_(g, g, value=1 - ADAM_B2)
                # torch.optim.Adam's update: w -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + ε)
                denom = vi.sqrt().div_(math.sqrt(1 - ADAM_B2**t)).add_(ADAM_EPS)
                w.addcdiv_(mi * (lr * (mult / (1 - ADAM_B1**t))), denom, value=-1.0)
    with torch.no_grad():
        final = loss_per_net(x, y).numpy().astype(np.float64)
    final[~np.isfinite(final)] = np.inf
    return final


@functools.lru_cache(maxsize=4)
def lr_sweep(quick: bool, seed: int) -> dict:
    """The whole sweep, run once per (quick, seed) in a process: losses[param][width] over the LR grid."""
    s = _setting(quick)
    widths, log2_lrs, steps = s["widths"], s["log2_lrs"], s["steps"]
    lrs = torch.tensor([2.0**e for e in log2_lrs])
    start = time.perf_counter()
    losses = {p: {n: np.zeros(len(log2_lrs)) for n in widths} for p in ("sp", "mup")}
    for rep in s["seeds"]:
        gen = torch.Generator().manual_seed(10_007 * seed + rep)
        x, y = _task(gen)
        batches = [torch.randperm(N_TRAIN, generator=gen)[:BATCH] for _ in range(steps)]
        for n in widths:
            init_state = gen.get_state()  # SP and μP start from the same draws at each width
            for p in ("sp", "mup"):
                gen.set_state(init_state)
                losses[p][n] += _train(p, n, widths[0], lrs, x, y, batches, gen) / len(s["seeds"])
    return dict(s, losses=losses, seconds=time.perf_counter() - start)


def _vertex(grid: np.ndarray, loss: np.ndarray) -> float:
    """Sub-grid optimum: vertex of the parabola through the grid argmin and its two neighbours."""
    i = int(np.argmin(loss))
    if i == 0 or i == len(loss) - 1 or not np.all(np.isfinite(loss[i - 1:i + 2])):
        return float(grid[i])
    lo, mid, hi = loss[i - 1:i + 2]
    curv = lo - 2 * mid + hi
    step = grid[1] - grid[0]
    return float(grid[i] + (0.5 * (lo - hi) / curv * step if curv > 0 else 0.0))


def _summary(sweep: dict) -> dict:
    widths, grid = sweep["widths"], np.array(sweep["log2_lrs"])
    out = {}
    for p in ("sp", "mup"):
        best = {n: int(grid[np.argmin(sweep["losses"][p][n])]) for n in widths}
        fine = {n: _vertex(grid, sweep["losses"][p][n]) for n in widths}
        best_loss = {n: float(np.min(sweep["losses"][p][n])) for n in widths}
        out[p] = dict(best=best, fine=fine, best_loss=best_loss, shift=best[widths[-1]] - best[widths[0]],
                      fine_shift=fine[widths[-1]] - fine[widths[0]],
                      monotone=all(best_loss[a] >= best_loss[b] for a, b in zip(widths, widths[1:])))
    return out


def _facts(sweep: dict, summary: dict) -> dict:
    sp, mup = summary["sp"], summary["mup"]
    step = sweep["log2_lrs"][1] - sweep["log2_lrs"][0]
    return {
        # SP's optimum moves to a smaller LR with width, further than μP's (sub-grid vertices);
        # μP's grid argmin moves by at most one grid step.
        "sp_shifts": sp["shift"] < 0 and abs(sp["fine_shift"]) > abs(mup["fine_shift"]),
        "mup_stable": abs(mup["shift"]) <= step,
        "mup_monotone": mup["monotone"],
        # "wider is not always better" in SP: at some LR a wider net ends worse than a narrower one.
        "sp_crossing": _sp_crossing(sweep),
    }


def _sp_crossing(sweep: dict) -> bool:
    w, L = sweep["widths"], sweep["losses"]["sp"]
    return any(L[b][i] > L[a][i] for i in range(len(sweep["log2_lrs"])) for a, b in zip(w, w[1:]))


def _evidence(sweep: dict, summary: dict) -> str:
    lo, hi = sweep["log2_lrs"][0], sweep["log2_lrs"][-1]
    step = sweep["log2_lrs"][1] - sweep["log2_lrs"][0]
    tables = "; ".join(
        f"{p.upper().replace('MUP', 'μP')} argmin log2 LR by width "
        + ", ".join(f"{n}:{summary[p]['best'][n]}" for n in sweep["widths"])
        + " (sub-grid " + ", ".join(f"{summary[p]['fine'][n]:.2f}" for n in sweep["widths"])
        + "; loss " + ", ".join(fmt(summary[p]["best_loss"][n], 3) for n in sweep["widths"]) + ")"
        for p in ("sp", "mup"))
    return (f"3-hidden-layer ReLU MLP, Adam, widths {list(sweep['widths'])}, LR 2^{lo}…2^{hi} every "
            f"{step}, {sweep['steps']} steps (batch {BATCH}, {N_TRAIN} points), seeds averaged "
            f"{len(sweep['seeds'])}; {tables}; sweep {sweep['seconds']:.1f}s")


def _measured(sweep: dict, summary: dict) -> str:
    sp, mup = summary["sp"], summary["mup"]
    w0, w1 = sweep["widths"][0], sweep["widths"][-1]
    mono = "decreasing" if mup["monotone"] else "NOT monotone"
    return (f"optimal log2 LR shift {w0}→{w1}: SP {sp['shift']:+d} (sub-grid {sp['fine_shift']:+.2f}), "
            f"μP {mup['shift']:+d} (sub-grid {mup['fine_shift']:+.2f}) "
            f"(log2 width ratio {int(round(math.log2(w1 / w0)))}); μP best loss {mono} in width")


def fig1_reading(claim, ctx) -> Finding:
    """q3a-fig1/*: the figure's two facts measured on a small MLP.

    ``reading`` (claim param) says what the answer described:
      full        SP optimum shifts with width / wider not always better; μP stable and monotone → ✓ iff measured
      shift-only  the LR shift, without answering the width question → at best ~
      wrong-axes  loss (or norm) plotted against width → ✗ from the paper: Fig. 1's x-axis is log2 LR
    """
    sweep = lr_sweep(bool(ctx.quick), int(ctx.seed))
    summary = _summary(sweep)
    facts = _facts(sweep, summary)
    reading = claim.params["reading"]
    note = ""
    if reading == "full":
        verdict = YES if all(facts.values()) else (PARTLY if facts["sp_shifts"] or facts["mup_monotone"] else NO)
        basis = COMPUTED
    elif reading == "shift-only":
        verdict = PARTLY if facts["sp_shifts"] and facts["mup_stable"] else NO
        # Measured facts confirm the half that was said; that the width question went unanswered is a reading.
        basis = JUDGEMENT if verdict == PARTLY else COMPUTED
        if verdict == PARTLY:
            note = "~: the measured shift is what the answer says, but it leaves the width question unanswered; "
    elif reading == "wrong-axes":
        verdict, basis = NO, TEXT
        note = f"{FIG1_AXES}; the sweep below is context: "
    else:
        raise ValueError(f"unknown reading {reading!r}")
    return Finding(
        measured=_measured(sweep, summary),
        verdict=verdict,
        basis=basis,
        evidence=note + _evidence(sweep, summary) + "; facts " + ", ".join(f"{k}={v}" for k, v in facts.items()),
        data={"summary": summary, "facts": facts, "log2_lrs": list(sweep["log2_lrs"]),
              "widths": list(sweep["widths"]), "seconds": sweep["seconds"]},
    )
