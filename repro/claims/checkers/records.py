"""The records' own claims (airbench, hiverge): each record stage's published accuracy (a mean
over n runs), time on its card and FLOPs per run, read from the stage's ``[source]`` and judged
on the suite's runs of that stage; and hiverge's statistics, recomputed from its own figures.

Verdicts need comparable evidence: an accuracy only on the official CIFAR-10 at full size (the
JPEG q75 copy costs the 94% recipes about 3.4 points, so runs there are shown, not judged), a
time only on the card the record names. FLOPs are a property of the recipe: counted by torch's
FLOP counter on the stage's nets (``repro.resnet.train.recipe_flops``), no training needed.
"""

from __future__ import annotations

import functools
import math
import statistics

from .common import COMPUTED, NA, NO, YES, Finding, fmt

from repro.resnet.config import load_preset, load_stage
from repro.resnet.ladder import fmt_mean_std
from repro.resnet.records import LoggedRun, logged_runs

FLOPS_TOLERANCE = 0.05  # the published counts have two or three significant figures
TIME_SLACK = 1.10  # timings move about 10% between runs and drivers on one card
RUN_COMMAND = "python -m repro.resnet --stage {stage} --preset full --runs 5 --data PATH"


def _runs(ctx, stage: str) -> list[LoggedRun]:
    """The stage's ok runs at full size on real data, eager and compiled alike."""
    from .resnet import ok_records

    return [r for r in logged_runs(ok_records(ctx))
            if r.stage == stage and r.preset == "full" and not r.synthetic and r.test_accuracy is not None]


def _summary(runs: list[LoggedRun], values: list[float], scale: float, digits: int, unit: str) -> str:
    machines = sorted({r.hardware.get("gpu") or r.hardware.get("cpu") or "?" for r in runs})
    return f"{fmt_mean_std(values, scale, digits, unit)} (n = {len(values)}; {', '.join(machines)})"


def published_accuracy(claim, ctx) -> Finding:
    """The record's mean accuracy against the suite's full-size runs on the official CIFAR-10: ✗ when
    their mean lies significantly below it (one-sample one-sided t-test, p < 0.05)."""
    from scipy import stats

    stage = claim.params["stage"]
    source = load_stage(stage).source
    runs = _runs(ctx, stage)
    official = [r for r in runs if "official" in (r.data_source or "")]
    others = [r for r in runs if r not in official]
    label = "JPEG copy" if all("jpeg" in (r.data_source or "").lower() for r in others) else "other data"
    shown = f"{label}: {_summary(others, [r.test_accuracy for r in others], 100, 2, '%')}" if others else ""
    if len(official) < 2:
        why = ("runs on other data (the JPEG q75 copy: 94% recipes reach about 90.6% there) are not comparable"
               if others else
               f"no full-size runs; run: {RUN_COMMAND.format(stage=stage)} on the official CIFAR-10")
        measured = shown or "no runs"
        return Finding(measured, NA, f"needs n >= 2 full-size runs on the official CIFAR-10; {why}", basis=COMPUTED)
    accuracies = [r.test_accuracy for r in official]
    below = (stats.ttest_1samp(accuracies, source.accuracy, alternative="less").pvalue if statistics.stdev(accuracies)
             else float(statistics.fmean(accuracies) < source.accuracy))
    return Finding(f"official: {_summary(official, accuracies, 100, 2, '%')}, one-sided p(below) = {fmt(below, 2)}"
                   + (f"; {shown}" if shown else ""),
                   NO if below < 0.05 else YES, f"published {100 * source.accuracy:.2f}% over {source.runs} runs",
                   basis=COMPUTED)


def published_time(claim, ctx) -> Finding:
    """The record's time on its card against the suite's runs on the same card model (its clock)."""
    stage = claim.params["stage"]
    source = load_stage(stage).source
    runs = _runs(ctx, stage)
    same_card = [r for r in runs if source.hardware in str(r.hardware.get("gpu") or "")]
    if not same_card:
        shown = []
        for compiled in (False, True):
            group = [r for r in runs if r.compiled == compiled and source.timing in r.seconds_by_timing]
            if group:
                seconds = [r.seconds_by_timing[source.timing] for r in group]
                shown.append(("compiled " if compiled else "") + _summary(group, seconds, 1, 2, " s"))
        return Finding("; ".join(shown) or "no runs", NA,
                       f"no full-size run on an {source.hardware}; other machines' seconds are not comparable",
                       basis=COMPUTED)
    seconds = [r.seconds_by_timing[source.timing] for r in same_card]
    return Finding(_summary(same_card, seconds, 1, 2, " s"),
                   YES if statistics.fmean(seconds) <= source.seconds * TIME_SLACK else NO,
                   f"published {source.seconds:g} s on an {source.hardware}; ✓ within {TIME_SLACK:.2f}x of it",
                   basis=COMPUTED)


@functools.lru_cache(maxsize=None)
def _counted_flops(stage: str) -> tuple[float, float]:
    from repro.resnet.train import recipe_flops

    return recipe_flops(load_stage(stage), load_preset("full"))


def published_flops(claim, ctx) -> Finding:
    """The record's FLOPs per run against torch's count of the stage's training and final TTA pass."""
    stage = claim.params["stage"]
    source = load_stage(stage).source
    training, evaluation = _counted_flops(stage)
    counted = (training + evaluation) / 1e15
    off = counted / source.pflops - 1
    runs = [r for r in _runs(ctx, stage) if r.train_flops]
    logged = f"; the runs' own count of training: {runs[-1].train_flops / 1e15:.3f} P" if runs else ""
    return Finding(f"counted {counted:.3f} P (training {training / 1e15:.3f} P + final pass {evaluation / 1e15:.4f} P), "
                   f"{off:+.1%} from the published {source.pflops:g} P" + logged,
                   YES if abs(off) <= FLOPS_TOLERANCE else NO,
                   f"torch's FLOP counter on the full-size nets (conv and matmul FLOPs); ✓ within "
                   f"{FLOPS_TOLERANCE:.0%}", basis=COMPUTED)


def significance(claim, ctx) -> Finding:
    """hiverge's one-sided t-test against 94%, recomputed from its mean, std and n."""
    from scipy import stats

    source = load_stage(claim.params["stage"]).source
    target, claimed = claim.params["target"], claim.params["p"]
    t = (source.accuracy - target) / (source.accuracy_std / math.sqrt(source.runs))
    p = float(stats.t.sf(t, source.runs - 1))
    same = f"{p:.2g}" == f"{claimed:.2g}"
    return Finding(f"t = {t:.2f}, p = {p:.4f} from mean {100 * source.accuracy:.3f}%, std "
                   f"{100 * source.accuracy_std:.3f}%, n = {source.runs}", YES if same else NO,
                   f"claimed p = {claimed}; ✓ when equal to its two significant figures", basis=COMPUTED)


def share_at_target(claim, ctx) -> Finding:
    """hiverge's share of runs at or above 94% against what a normal spread with its mean and std
    gives (accuracies on 10,000 test images step by 0.01 points, so 94% means above 93.995%):
    ✓ when within 2 binomial standard errors of the claimed share over its n runs."""
    from scipy import stats

    source = load_stage(claim.params["stage"]).source
    target, claimed = claim.params["target"], claim.params["share"]
    expected = float(stats.norm.sf(target - 0.5e-4, source.accuracy, source.accuracy_std))
    se = math.sqrt(claimed * (1 - claimed) / source.runs)
    z = (claimed - expected) / se
    return Finding(f"normal with mean {100 * source.accuracy:.3f}% and std {100 * source.accuracy_std:.3f}%: "
                   f"{expected:.1%} of runs at >= {100 * target:g}% (claimed {claimed:.1%}, z = {z:+.1f})",
                   YES if abs(z) <= 2 else NO, f"n = {source.runs} runs; binomial SE {se:.1%}", basis=COMPUTED)
