"""Run records -> a ladder: one row per stage with measured time and accuracy (mean ± std over
runs), the source's numbers beside them, ratios to the first stage, runs reaching the target,
and Welch t-tests against the previous stage.

The CLI table (``repro.resnet``), the report (``repro.report``) and the rn-* claims all read
ladders through this module, so a ratio means the same thing everywhere.

Measured seconds are taken on the same clock as the source's (``[source] timing``): the blog's
posts 1-4 counted every epoch's test pass, DAWNBench (post 8) counted no validation, airbench
counts whitening + training + the final TTA pass. A record also keeps the suite's own total.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field

from ..errors import UserError
from .config import CLOCKS, StageConfig, available_stages, load_stage


def target_help(default: str) -> str:
    """``--target``'s help, the same for every command that takes it."""
    return (f"the accuracy (a fraction, e.g. 0.905) that time to target, runs reaching it and the one-sided "
            f"p-value are measured against (default: {default})")


def check_target(target: float | None, option: str = "--target") -> float | None:
    """A target accuracy from the command line: a fraction of the test set, 0 < target < 1."""
    if target is not None and not 0 < target < 1:
        hint = f" (for {target:g}% write {target / 100:g})" if 1 < target < 100 else ""
        raise UserError(f"{option} is a fraction of the test set between 0 and 1, e.g. 0.905 for 90.5%; "
                        f"got {target:g}{hint}")
    return target


def measured_seconds(record: dict, timing: str = "blog") -> float:
    """The record's seconds on ``timing``'s clock (records from before clocks were kept: the total)."""
    by_timing = record.get("seconds_by_timing") or {}
    return float(by_timing.get(timing, record["total_seconds"]))


def target_epoch(record: dict, target: float | None = None) -> int | None:
    """The first epoch whose test pass reached ``target``: the record's own ``target_epoch`` when
    ``target`` is the one the run was made with (or the record names none), else read from the
    per-epoch test accuracies (a report's ``--target``)."""
    own = record.get("target_accuracy")
    if target is None or own is None or target == own:
        return record.get("target_epoch")
    return next((e["epoch"] for e in record.get("epochs") or []
                 if e.get("test_accuracy") is not None and e["test_accuracy"] >= target), None)


def seconds_to_target(record: dict, timing: str, target: float | None = None) -> float | None:
    """Seconds on ``timing``'s clock at the end of the epoch whose test pass first reached the
    target (the run's own, or ``target``; None if none did): the run's preparation and compilation,
    the training of every epoch up to it, and its test passes where the clock counts them. Records
    without per-epoch phases give the suite clock's ``target_seconds``."""
    epoch = target_epoch(record, target)
    if epoch is None:
        return None
    rows = record.get("epochs") or []
    if not all(isinstance(e.get("phases"), dict) for e in rows[:epoch]) or len(rows) < epoch:
        return record.get("target_seconds") if epoch == record.get("target_epoch") else None
    counted = CLOCKS.get(timing, CLOCKS["blog"])
    phases = record.get("phases") or {}
    seconds = sum(phases.get(p, 0.0) for p in ("preprocessing", "compile") if p in counted)
    for e in rows[:epoch]:
        seconds += sum(e["phases"].get(p, 0.0) for p in ("data_wait", "forward_backward", "optimizer_step"))
        if "evaluation" in counted:
            seconds += e["phases"].get("evaluation", 0.0)
    return seconds


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value, None with fewer than 2 values on a side (or no spread)."""
    if len(a) < 2 or len(b) < 2 or (statistics.stdev(a) == 0 and statistics.stdev(b) == 0):
        return None
    from scipy import stats

    with warnings.catch_warnings():  # near-identical samples: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def one_sample_p(values: list[float], target: float) -> float | None:
    """One-sided p-value for 'mean > target' (the speedrun records' test), None with < 2 runs."""
    if len(values) < 2 or statistics.stdev(values) == 0:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_1samp(values, target, alternative="greater").pvalue)


@dataclass
class StageRow:
    stage: str
    compiled: bool  # runs trained through torch.compile (--compile): a row of their own
    description: str
    timing: str
    seconds: list[float]
    accuracy: list[float]
    total_seconds: list[float]
    source_seconds: float | None
    source_accuracy: float | None
    source_note: str = ""
    accuracy_no_tta: list[float] = field(default_factory=list)
    ratio: float | None = None  # mean seconds / first stage's mean seconds
    source_ratio: float | None = None
    reached: int | None = None  # runs at or above the target
    target_seconds: list[float] = field(default_factory=list)  # per run that reached it, on the source's clock
    target_ratio: float | None = None  # mean seconds to target / the first stage's (both reached it in every run)
    target_recorded: bool = True  # False for records older than time to target
    p_time: float | None = None  # Welch, against the previous stage
    p_accuracy: float | None = None
    p_target: float | None = None  # one-sided, mean accuracy above the target
    flops: float | None = None
    epoch_seconds: list[float] = field(default_factory=list)  # per run: mean wall seconds of an epoch (suite clock)
    utilisation: list[float] = field(default_factory=list)  # per run: training FLOP/s / the machine's matmul rate

    @property
    def label(self) -> str:
        """The row's name: the stage, with " (compiled)" for torch.compile runs."""
        return self.stage + (" (compiled)" if self.compiled else "")

    @property
    def runs(self) -> int:
        return len(self.seconds)

    @property
    def reached_all(self) -> bool:
        """Every run reached the target: only then is the time to target this stage's."""
        return bool(self.runs) and len(self.target_seconds) == self.runs

    @property
    def seconds_mean_std(self):
        return _mean_std(self.seconds)

    @property
    def accuracy_mean_std(self):
        return _mean_std(self.accuracy)


def _stage_config(name: str) -> StageConfig | None:
    try:
        return load_stage(name)
    except Exception:  # noqa: BLE001 (a record of a custom or since-renamed stage still shows)
        return None


def group_by_stage(records: list[dict]) -> dict[tuple[str, bool], list[dict]]:
    """ok records per (stage, trained through torch.compile), stages in ladder order, each stage's
    eager runs before its compiled ones (unknown stages last, in log order). Compiled runs are kept
    apart: their clock counts the compilation, so averaging them with eager runs would describe neither."""
    order = {s: i for i, s in enumerate(available_stages())}
    groups: dict[tuple[str, bool], list[dict]] = {}
    for rec in records:
        if rec.get("status", "ok") == "ok" and rec.get("total_seconds") is not None:
            groups.setdefault((rec["stage"], bool(rec.get("compiled"))), []).append(rec)
    return dict(sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1])))


def ladder_rows(records: list[dict], target: float | None = None) -> list[StageRow]:
    rows: list[StageRow] = []
    for (stage, compiled), recs in group_by_stage(records).items():
        config = _stage_config(stage)
        source = config.source if config else None
        timing = source.timing if source else "blog"
        accs = [r["test_accuracy"] for r in recs if r.get("test_accuracy") is not None]
        row = StageRow(
            stage=stage, compiled=compiled, description=config.description if config else "", timing=timing,
            seconds=[measured_seconds(r, timing) for r in recs], accuracy=accs,
            total_seconds=[r["total_seconds"] for r in recs],
            source_seconds=source.seconds if source else recs[0].get("blog_seconds"),
            source_accuracy=source.accuracy if source else None, source_note=source.note if source else "",
            accuracy_no_tta=[r["test_accuracy_no_tta"] for r in recs if r.get("test_accuracy_no_tta") is not None],
            target_seconds=[s for r in recs if (s := seconds_to_target(r, timing, target)) is not None],
            target_recorded=all("target_epoch" in r for r in recs),
            flops=statistics.fmean(r["train_flops"] for r in recs) if all(r.get("train_flops") for r in recs) else None,
            epoch_seconds=[statistics.fmean(e["seconds"] for e in r["epochs"]) for r in recs if r.get("epochs")],
            utilisation=[r["utilisation"] for r in recs if r.get("utilisation") is not None],
        )
        if target is not None:
            row.reached = sum(a >= target for a in accs)
            row.p_target = one_sample_p(accs, target)
        rows.append(row)
    first, prev = (rows[0] if rows else None), None
    for row in rows:
        if first and first.seconds:
            row.ratio = statistics.fmean(row.seconds) / statistics.fmean(first.seconds)
        if first and first.source_seconds and row.source_seconds:
            row.source_ratio = row.source_seconds / first.source_seconds
        if first and first.reached_all and row.reached_all:
            row.target_ratio = statistics.fmean(row.target_seconds) / statistics.fmean(first.target_seconds)
        if prev is not None:
            row.p_time = welch_p(prev.seconds, row.seconds)
            row.p_accuracy = welch_p(prev.accuracy, row.accuracy)
        # every row is compared with the nearest eager row above it (for a compiled row: its own
        # stage's eager runs, just above it); a compiled variant is no rung of the ladder
        if not row.compiled:
            prev = row
    return rows


def fmt_mean_std(values: list[float], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    mean, std = _mean_std([v * scale for v in values])
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}{unit}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table_cells(row: StageRow, target: float | None, llm: dict[str, list[str]] | None = None) -> dict[str, str]:
    """One row as text cells, shared by the terminal table and the markdown report. ``llm``: per
    stage, what LLM assistants reported for it with the audit's verdict (``repro.claims.stage_reports``)."""
    cells = {"stage": row.label, "runs": str(row.runs)}
    if target is not None:  # the headline: when each stage first reached the target, beside the source's ratio
        cells["to target s"] = ("-" if not row.target_recorded else fmt_mean_std(row.target_seconds)
                                if row.reached_all else f"never ({len(row.target_seconds)}/{row.runs})")
        cells["to target ÷first"] = f"{row.target_ratio:.3f}" if row.target_ratio is not None else "-"
        cells["source ÷first"] = f"{row.source_ratio:.3f}" if row.source_ratio is not None else "-"
    cells |= {
        "seconds": fmt_mean_std(row.seconds),
        "clock": row.timing,
        "s/epoch": fmt_mean_std(row.epoch_seconds) if row.epoch_seconds else "-",
        "accuracy": fmt_mean_std(row.accuracy, 100, 2, "%"),
        "no TTA": fmt_mean_std(row.accuracy_no_tta, 100, 2, "%") if row.accuracy_no_tta else "-",
        "÷first": f"{row.ratio:.3f}" if row.ratio is not None else "-",
        "source s": f"{row.source_seconds:g}" if row.source_seconds else "-",
        "source acc": f"{100 * row.source_accuracy:.2f}%" if row.source_accuracy else "-",
        "p(time)": fmt_p(row.p_time),
        "p(acc)": fmt_p(row.p_accuracy),
        "TFLOP": f"{row.flops / 1e12:.2f}" if row.flops else "-",
        "util": fmt_mean_std(row.utilisation, 100, 0, "%") if row.utilisation else "-",
    }
    if target is not None:
        cells[f"≥{100 * target:g}%"] = f"{row.reached}/{row.runs}"
        cells["p(>target)"] = fmt_p(row.p_target)
    else:
        cells["source ÷first"] = f"{row.source_ratio:.3f}" if row.source_ratio is not None else "-"
    if llm is not None:
        cells["LLM reported"] = "; ".join(llm.get(row.stage, [])) or "-"
    return cells


def rich_table(records: list[dict], target: float | None, title: str, llm: dict[str, list[str]] | None = None):
    from rich.table import Table

    rows = ladder_rows(records, target)
    table = Table(title=title)
    cells = [table_cells(r, target, llm) for r in rows]
    for col in (cells[0] if cells else {}):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for c in cells:
        table.add_row(*c.values())
    return table


def markdown_table(records: list[dict], target: float | None, llm: dict[str, list[str]] | None = None) -> list[str]:
    cells = [table_cells(r, target, llm) for r in ladder_rows(records, target)]
    if not cells:
        return []
    head = list(cells[0])
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(c.values()) + " |" for c in cells]
