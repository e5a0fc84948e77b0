"""HW7 Q4 against the text of post 1 ("How to Train Your ResNet", D. Page, 2018), and the
post's own arithmetic.

The text searched is the full post when ``--blog-text FILE`` names it (the transcript
004_2ca81225e9ca24a0.txt pastes it whole); otherwise the sentences of the post quoted
verbatim in the claims catalogue (its section on post 1), kept below. The stage times come from
the stage configs, through ``resnet.blog_seconds``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import COMPUTED, NO, PARTLY, TEXT, YES, Finding, fmt

# Verbatim sentences (or sentence parts) of post 1 (David Page, "How to Train Your ResNet 1", 2018).
POST1_QUOTES: tuple[str, ...] = (
    "reproduce a baseline to train CIFAR10 in 6 minutes and then speed it up a little",
    "took a week to train on 16 GPUs",
    "reduce training times more than 100-fold and bring iterations down below a day on a single GPU",
    "94% test accuracy on CIFAR10 and 93% top-5 accuracy on ImageNet",
    "the fastest single GPU entry, from fast.ai student Ben Johnson, reached 94% accuracy in under 6 minutes (341s)",
    "an 18-layer Residual network",
    "trained for 35 epochs using SGD with momentum",
    "A forward and backward pass … on a 32×32 CIFAR10 image, requires approximately 2.8×10^9 FLOPs",
    "35 epochs of training on the 50,000 image dataset should complete in approximately 5×10^15 FLOPs",
    "Equipped with 640 Tensor Cores, Tesla V100 delivers 125 TeraFLOPS",
    "training should complete in... 40 seconds",
    "AWS p3.2xlarge instance with a single V100 GPU, 3/5 runs reach a final test accuracy of 94% in 356s",
    "the strange kink in the learning rate at epoch 15",
    "4/5 runs reach 94% final test accuracy in a time of 323s! New record!",
    "PyTorch dataloaders (as of version 0.4) launch fresh processes for each iteration",
    "a further 15s saving in training time (almost half a second per epoch!) and a new training time of 308s",
    "several million individual calls to random number generators",
    "shave a further 7s",
    "save a further 4s … final training time for today of 297s",
    "shouldn't impact training time",
)
QUOTES_LABEL = ("the post-1 sentences quoted here (pass --blog-text with transcript "
                "004_2ca81225e9ca24a0.txt to search the whole post)")


def post_text(ctx) -> tuple[str, str]:
    """The post-1 text to search, and what it is."""
    if ctx.blog_text:
        return Path(ctx.blog_text).read_text(encoding="utf-8", errors="replace"), f"the text in {ctx.blog_text}"
    return "\n".join(POST1_QUOTES), QUOTES_LABEL


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def sentences_with(text: str, stem: str) -> list[str]:
    return [s for s in sentences(text) if stem.lower() in s.lower()]


def key_learnings(claim, ctx) -> Finding:
    """rn-learn1: is each named lesson in the post? Searched by a stem per lesson."""
    text, label = post_text(ctx)
    hits = {lesson: sentences_with(text, stem) for lesson, stem in claim.params["stems"].items()}
    found = [lesson for lesson, where in hits.items() if where]
    verdict = YES if len(found) == len(hits) else (PARTLY if found else NO)
    rows = [f"{lesson} ('{stem}'): " + (f"{len(hits[lesson])} sentence(s), e.g. “{hits[lesson][0][:80]}”"
                                         if hits[lesson] else "absent")
            for lesson, stem in claim.params["stems"].items()]
    return Finding(
        measured="; ".join(rows),
        verdict=verdict,
        basis=TEXT,
        evidence=f"searched {len(sentences(text))} sentences: {label}",
        data={"found": found},
    )


# "3x", "3×", "3-fold", "three times faster": a speed-up factor written in a sentence.
_NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "ten": 10}
_FACTOR = re.compile(r"(\d+(?:\.\d+)?)\s*(?:x|×)(?![\w])|(\d+(?:\.\d+)?)-fold|\b(\d+|two|three|four|five|ten) "
                     r"times (?:faster|quicker|speed)", re.IGNORECASE)


def speedup_factors(sentence: str) -> list[float]:
    out = []
    for m in _FACTOR.finditer(sentence):
        word = next(g for g in m.groups() if g)
        out.append(float(_NUMBER_WORDS.get(word.lower(), word) if not word[0].isdigit() else word))
    return out


def _timing_context(ctx) -> str:
    """This machine's fp32 vs autocast step time: context only, so a failure is reported, not raised."""
    from . import precision

    try:
        res = precision.time_precisions(repetitions=ctx.size(4, 3), steps=ctx.size(2, 1), seed=ctx.seed)
    except Exception as exc:  # noqa: BLE001 (context; it cannot change the verdict)
        return f"timing here failed ({type(exc).__name__}: {exc})"
    ratios = res["ratios"]
    mean = sum(ratios) / len(ratios)
    return (f"context, not the verdict: on {res['hardware']} ({res['device']}, {res['threads']} threads) "
            f"{res['low']} autocast runs at ×{fmt(mean, 3)} the fp32 step speed (ResNet-18 width/4, batch 64, "
            f"{len(ratios)} interleaved reps, TF32 off); this machine is not the blog's V100")


def mixed_precision_speedup(claim, ctx) -> Finding:
    """rn-3x: '3x speedup from mixed precision': which factor does the post give for mixed precision?"""
    text, label = post_text(ctx)
    about = [s for s in sentences(text) if re.search(r"precision|fp16|half-precision", s, re.IGNORECASE)]
    stated = sorted({f for s in about for f in speedup_factors(s)})
    claimed = float(claim.params["factor"])
    if claimed in stated:
        verdict, what = YES, f"the post gives ×{fmt(claimed)} for mixed precision"
    elif stated:
        verdict, what = NO, "the post gives " + ", ".join(f"×{fmt(f)}" for f in stated) + f", not ×{fmt(claimed)}"
    else:
        verdict, what = NO, (f"unsupported: no factor for mixed precision in the post "
                             f"({len(about)} sentence(s) mention precision)")
    return Finding(
        measured=what,
        verdict=verdict,
        basis=TEXT,
        evidence=f"searched {label}; " + _timing_context(ctx),
        data={"stated_factors": stated, "precision_sentences": about},
    )


# ---- the post's own arithmetic


def rounds_to(value: float, claimed: float, significant: int) -> bool:
    """'approximately X': value written with X's number of significant figures is X."""
    return float(f"{value:.{significant}g}") == float(f"{claimed:.{significant}g}")


def approximately(measured: str, value: float, claimed: float, significant: int, how: str, data: dict) -> Finding:
    """A computed finding on "approximately ``claimed``": ✓ when ``value`` rounds to it."""
    return Finding(
        measured=measured,
        verdict=YES if rounds_to(value, claimed, significant) else NO,
        basis=COMPUTED,
        evidence=f"{how}; 'approximately {fmt(claimed)}' read as the same {significant} significant figure(s)",
        data=data,
    )


def count_flops_per_image(batch: int = 2, seed: int = 0) -> dict:
    """FLOPs of one forward and one forward+backward pass per 32×32 image of the post-1 ResNet-18
    (full width, training mode), counted by torch.utils.flop_counter (convolutions and matmuls,
    a multiply-add = 2 FLOPs; BN, ReLU and pooling are not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from repro.resnet.nets import build_net

    torch.manual_seed(seed)
    net = build_net()  # the default: the DAWNBench ResNet-18 of post 1, without the duplicate BN-ReLU
    x = torch.randn(batch, 3, 32, 32)
    with FlopCounterMode(display=False) as forward:
        out = net(x)
    with FlopCounterMode(display=False) as backward:
        torch.nn.functional.cross_entropy(out, torch.zeros(batch, dtype=torch.long)).backward()
    fwd, bwd = forward.get_total_flops() / batch, backward.get_total_flops() / batch
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


def _flops(ctx) -> dict:
    return ctx.memo("rn-flops", count_flops_per_image)


def _epochs() -> float:
    """The post's 35 epochs: the last knot of the LR schedule in the stage configs."""
    from repro.resnet.config import load_stage

    return float(load_stage("final").schedule.knots[-1])


def flops_per_image(claim, ctx) -> Finding:
    """rn-blog-flops: ≈2.8e9 FLOPs for a forward and backward pass of one image."""
    f = _flops(ctx)
    return approximately(
        f"counted {fmt(f['total'], 3)} FLOP/image (forward {fmt(f['forward'], 3)}, backward "
        f"{fmt(f['backward'], 3)}; backward/forward {f['backward'] / f['forward']:.2f})",
        f["total"], float(claim.params["flops"]), claim.params["significant"],
        "torch.utils.flop_counter.FlopCounterMode on repro.resnet.nets dawn_resnet18 (post 1's net; convs and "
        "matmuls only)", f)


def training_flops(claim, ctx) -> Finding:
    """rn-blog-total: 2.8e9 FLOP/image × 50,000 images × 35 epochs ≈ 5e15 FLOPs."""
    p = claim.params
    epochs = _epochs()
    total = p["flops_per_image"] * p["images"] * epochs
    counted = _flops(ctx)["total"] * p["images"] * epochs
    return approximately(
        f"{fmt(p['flops_per_image'])} × {p['images']} × {fmt(epochs)} = {fmt(total, 2)} "
        f"(with the counted FLOPs: {fmt(counted, 2)})",
        total, p["total"], p["significant"], "epochs from the stage configs' LR schedule",
        {"total": total, "counted_total": counted})


def peak_seconds(claim, ctx) -> Finding:
    """rn-blog-40s: 5e15 FLOPs at the V100's 125 TFLOPS ≈ 40 s."""
    from .resnet import blog_seconds

    p = claim.params
    seconds = p["total"] / p["peak"]
    final = blog_seconds()["final"]
    return approximately(
        f"{fmt(p['total'])} / {fmt(p['peak'])} FLOP/s = {fmt(seconds, 3)} s; the post's final "
        f"{fmt(final)} s would run at {seconds / final:.1%} of peak",
        seconds, p["seconds"], p["significant"], "final time from the stage configs", {"seconds": seconds})


def saving_per_epoch(claim, ctx) -> Finding:
    """rn-blog-per-epoch: a 15 s saving over the 35 epochs is "almost half a second per epoch"."""
    p = claim.params
    epochs = _epochs()
    per_epoch = p["saving"] / epochs
    low, high = p["almost"]
    return Finding(
        measured=f"{fmt(p['saving'])} s / {fmt(epochs)} epochs = {per_epoch:.3f} s per epoch",
        verdict=YES if low <= per_epoch < high else NO,
        basis=COMPUTED,
        evidence=f"epochs from the stage configs' LR schedule; 'almost half a second' taken as [{low}, {high}) s",
        data={"per_epoch": per_epoch},
    )


def savings_add_up(claim, ctx) -> Finding:
    """rn-blog-297: 323 s − 15 − 7 − 4 = 297 s, each saving against the stage times in the configs."""
    from .resnet import blog_seconds

    b = blog_seconds()
    start, steps = claim.params["start"], claim.params["savings"]  # ((stage, saving s), ...)
    t, rows, ok = b[start], [], True
    for stage, saving in steps:
        t -= saving
        ok &= t == b[stage]
        rows.append(f"−{fmt(saving)} = {fmt(t)} ({stage}: {fmt(b[stage])})")
    return Finding(
        measured=f"{start} {fmt(b[start])} s " + " ".join(rows),
        verdict=YES if ok else NO,
        basis=COMPUTED,
        evidence="stage times from the stage configs; the 301 s of bulk_rng is only implied by the post "
        "(308 − 7), its figure comes from the notebook",
        data={"final": t},
    )
