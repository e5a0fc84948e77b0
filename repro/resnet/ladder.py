"""Run records -> a ladder: one row per stage with measured time and accuracy (mean ± std over
runs), the source's numbers beside them, ratios to the first stage, runs reaching the target,
and Welch t-tests against the previous stage.

The CLI table (``repro.resnet``), the report (``repro.report``) and the rn-* claims all read
ladders through this module, so a ratio means the same thing everywhere. Other packages may add
columns to the table (``extra_columns``): the claims audit adds what LLM assistants reported.

Measured seconds are taken on the same clock as the source's (``[source] timing``): the blog's
posts 1-4 counted every epoch's test pass, DAWNBench (post 8) counted no validation, airbench
counts whitening + training + the final TTA pass. A record also keeps the suite's own total.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from ..errors import UserError
from .config import ConfigDirs, SourceSection, StageConfig, ladder_order, load_stage, stage_parents
from .records import LoggedRun, logged_runs

# entry points of this group add a column to the ladder table: each is a function taking every
# record of the logs (dicts) and returning (column title, {stage: text})
COLUMNS_GROUP = "repro.ladder_columns"


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


def _stage_of(name: str, runs: list[LoggedRun], configs: ConfigDirs | None) -> tuple[str, SourceSection | None]:
    """A stage's description and ``[source]``: from its file (``configs``: the built-in and the
    user's directories), else from the runs' own recorded config (a user's stage, or a renamed one)."""
    try:
        stage: StageConfig = load_stage(name, configs)
        return stage.description, stage.source
    except UserError:
        pass
    config = next((r.config for r in runs if r.config), None)
    if not config:
        return "", None
    known = {f for f in SourceSection.__dataclass_fields__}
    source = {k: tuple(v) if isinstance(v, list) else v for k, v in (config.get("source") or {}).items() if k in known}
    return str(config.get("description", "")), SourceSection(**source)


def group_by_stage(runs: list[LoggedRun], configs: ConfigDirs | None = None) -> dict[tuple[str, bool], list[LoggedRun]]:
    """Measured runs per (stage, trained through torch.compile), in ladder order: a stage whose
    file is not found (a user's, recorded with its config) sits after the stage it extends;
    each stage's eager runs before its compiled ones. Compiled runs are kept apart: their clock
    counts the compilation, so averaging them with eager runs would describe neither."""
    dirs = configs or ConfigDirs.from_env()
    parents = stage_parents(dirs)
    for run in runs:
        if run.stage not in parents:
            parents[run.stage] = (run.config or {}).get("extends")
    order = {name: i for i, name in enumerate(ladder_order(parents, dirs.builtin_stage_names()))}
    groups: dict[tuple[str, bool], list[LoggedRun]] = {}
    for run in runs:
        if run.measured:
            groups.setdefault((run.stage, run.compiled), []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1])))


def ladder_rows(records, target: float | None = None, configs: ConfigDirs | None = None) -> list[StageRow]:
    """One row per stage (and per compiled variant) of ``records`` (dicts as logged, or
    LoggedRuns); ``configs`` says where stage files are looked for (default: the environment's)."""
    rows: list[StageRow] = []
    for (stage, compiled), runs in group_by_stage(logged_runs(records), configs).items():
        description, source = _stage_of(stage, runs, configs)
        timing = source.timing if source else "blog"
        accs = [r.test_accuracy for r in runs if r.test_accuracy is not None]
        row = StageRow(
            stage=stage, compiled=compiled, description=description, timing=timing,
            seconds=[r.seconds_on(timing) for r in runs], accuracy=accs,
            total_seconds=[r.total_seconds for r in runs],
            source_seconds=source.seconds if source else runs[0].blog_seconds,
            source_accuracy=source.accuracy if source else None, source_note=source.note if source else "",
            accuracy_no_tta=[r.test_accuracy_no_tta for r in runs if r.test_accuracy_no_tta is not None],
            target_seconds=[s for r in runs if (s := r.seconds_to_target(timing, target)) is not None],
            target_recorded=all("target_epoch" in r.raw for r in runs),
            flops=statistics.fmean(r.train_flops for r in runs) if all(r.train_flops for r in runs) else None,
            epoch_seconds=[statistics.fmean(e.seconds for e in r.epochs) for r in runs if r.epochs],
            utilisation=[r.utilisation for r in runs if r.utilisation is not None],
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


def extra_columns(records: list[dict]) -> dict[str, dict[str, str]]:
    """The columns other installed packages add to the ladder table (entry point group
    ``repro.ladder_columns``), judged on ``records`` (every record of the logs shown): title ->
    {stage: text}. The claims audit's "LLM reported" column comes this way, so this package
    imports nothing of the audit's."""
    columns = {}
    for entry in sorted(entry_points(group=COLUMNS_GROUP), key=lambda e: e.name):
        title, cells = entry.load()(records)
        columns[title] = cells
    return columns


def fmt_mean_std(values: list[float], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    mean, std = _mean_std([v * scale for v in values])
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}{unit}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table_cells(row: StageRow, target: float | None, columns: dict[str, dict[str, str]] | None = None
                ) -> dict[str, str]:
    """One row as text cells, shared by the terminal table and the markdown report; ``columns``:
    the ``extra_columns`` (title -> {stage: text})."""
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
    for title, by_stage in (columns or {}).items():
        cells[title] = by_stage.get(row.stage) or "-"
    return cells


def rich_table(rows: list[StageRow], target: float | None, title: str,
               columns: dict[str, dict[str, str]] | None = None):
    from rich.table import Table

    table = Table(title=title)
    cells = [table_cells(r, target, columns) for r in rows]
    for col in (cells[0] if cells else {}):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for c in cells:
        table.add_row(*c.values())
    return table


def markdown_table(rows: list[StageRow], target: float | None,
                   columns: dict[str, dict[str, str]] | None = None) -> list[str]:
    cells = [table_cells(r, target, columns) for r in rows]
    if not cells:
        return []
    head = list(cells[0])
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(c.values()) + " |" for c in cells]
