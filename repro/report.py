"""``python -m repro.report``: the ResNet ladder, multi-run statistics and autoencoder checks
from ``logs/runs.jsonl``, as a terminal table, ``report.md`` and PNG plots (matplotlib optional).

Exit status: 0 when a report was written; 2 (one-line message naming the commands that
produce records) when the log holds no usable record.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from .errors import UserError, cli_main
from .resnet import ladder as ladders
from .resnet.config import available_presets, load_preset, load_stage
from .resnet.records import LoggedRun, logged_runs
from .runlog import read_records, write_whole

PRODUCERS = ("python -m repro.resnet --stage all --preset cpu --data PATH/cifar10-jpeg.tar.gz",
             "python -m repro.autoencoder")
PRESET_ORDER = ("full", "cpu", "loaderbound", "smoke")


def by_preset(runs: list[LoggedRun]) -> dict[str, list[LoggedRun]]:
    """ok ResNet runs per preset, real data before synthetic, presets in PRESET_ORDER."""
    groups: dict[str, list[LoggedRun]] = {}
    for r in runs:
        key = str(r.preset) + (" (synthetic)" if r.synthetic else "")
        groups.setdefault(key, []).append(r)

    def rank(key):
        name = key.split(" ")[0]
        return ("synthetic" in key, PRESET_ORDER.index(name) if name in PRESET_ORDER else len(PRESET_ORDER), key)

    return {k: groups[k] for k in sorted(groups, key=rank)}


def target_of(runs: list[LoggedRun], override: float | None = None) -> float | None:
    """``--target`` when given, else the target the runs were made against (their preset's)."""
    if override is not None:
        return override
    target = runs[0].target_accuracy
    if target is None and runs[0].preset in available_presets():
        target = load_preset(runs[0].preset).target_accuracy
    return target


def describe(runs: list[LoggedRun]) -> str:
    first = runs[0]
    hw = first.hardware
    return (f"{first.device} ({hw.get('gpu') or hw.get('cpu')}, {hw.get('cpu_count')} CPUs), "
            f"precision {first.precision}, data {first.data_source}; "
            f"{len(runs)} runs in {len({r.group_id for r in runs})} invocation(s)")


class Ladder:
    """One preset's runs, the target they are judged against and their rows, computed once."""

    def __init__(self, runs: list[LoggedRun], target_override: float | None = None):
        self.runs, self.target = runs, target_of(runs, target_override)
        self.rows = ladders.ladder_rows(runs, self.target)


def markdown(tables: dict[str, Ladder], autoencoder, plots, note, columns=None) -> str:
    """The report's text, one ladder table per preset group."""
    entry = load_stage("baseline").source.entry_seconds
    out = ["# Reproduction report", ""]
    if tables:
        out += ["Measured seconds use each source's clock (blog: every test pass included; dawnbench: no "
                "validation; airbench: whitening + training + the final TTA pass); ratios are to the first stage "
                "in each table; p-values are Welch t-tests against the stage above (stages with ≥ 2 runs). "
                f"The series starts from Ben Johnson's DAWNBench entry, {entry:g} s; sources' times are on a V100 "
                "(airbench94: an A100).", ""]
    for name, table in tables.items():
        real = not name.endswith("(synthetic)") and not name.startswith("smoke")
        out += [f"## ResNet ladder, preset {name}", "", describe(table.runs)
                + ("" if real else " **Synthetic/smoke: pipeline evidence only.**"), ""]
        out += ladders.markdown_table(table.rows, table.target, columns) + [""]
    if autoencoder:
        from .autoencoder.table import markdown_sections

        out += markdown_sections(autoencoder)
    out += ["## Plots", ""] + ([f"![{p.stem}]({p.name})" for p in plots] or [note]) + [""]
    return "\n".join(out)


def write_plots(table: Ladder | None, out_dir: Path) -> tuple[list[Path], str]:
    """Time / first stage (measured beside the source) and accuracy against time, for every stage
    of ``table``, its target drawn as a line; [] with a note without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "Plots skipped: matplotlib is not installed (pip install 'repro[plots]')."
    if table is None:
        return [], "No ResNet records to plot."
    import io

    target, rows, preset = table.target, table.rows, table.runs[0].preset
    first = statistics.fmean(rows[0].seconds)
    y = list(range(len(rows)))[::-1]  # first stage on top
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.32 * len(rows)))
    ax.barh([v + 0.2 for v in y], [r.source_ratio or 0 for r in rows], 0.4, label="source (V100; airbench A100)",
            color="#999999")
    errors = [statistics.stdev(r.seconds) / first if r.runs > 1 else 0 for r in rows]
    ax.barh([v - 0.2 for v in y], [r.ratio for r in rows], 0.4, xerr=errors, capsize=2,
            label=f"measured, preset {preset} (± std over runs)", color="#1f77b4")
    ax.set_yticks(y, [r.label for r in rows])
    ratios = [v for r in rows for v in (r.ratio, r.source_ratio) if v]
    wide = max(ratios) / min(ratios) > 5  # the whole ladder spans 100x: only a log axis shows every bar
    if wide:
        ax.set_xscale("log")
    ax.set_xlabel("time / first stage's time" + (" (log scale)" if wide else ""))
    ax.set_title(f"Ladder: time relative to {rows[0].label}, each on its source's clock")
    # outside the axes, under the x label, so it hides no bar
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45 / (1 + 0.2 * len(rows)) - 0.1), ncol=2, fontsize=8,
              frameon=False)
    figures = [("stage_ratios.png", fig)]

    fig2, _ = accuracy_vs_time(rows, preset, target)
    figures.append(("accuracy_vs_time.png", fig2))
    written = []
    for name, figure in figures:
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        write_whole(out_dir / name, buf.getvalue())
        written.append(out_dir / name)
    return written, ""


def label_box(label, renderer):
    """The box of an annotation's text alone (its leader line left out), in display units."""
    from matplotlib.text import Text

    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def place_labels(fig, ax, points, labels, fontsize=8):
    """Label every (x, y) point of ``ax`` with its text at the first offset, on rings further and
    further out, whose box overlaps no label placed before it (a thin line then leads to the
    point). The labels, as placed."""
    renderer = fig.canvas.get_renderer()
    candidates = [(dx, dy, ha) for ring in range(12) for dy in (3 + 9 * ring, -(10 + 9 * ring))
                  for dx, ha in ((4, "left"), (-4, "right"))]
    placed, boxes = [], []
    for (x, y), text in zip(points, labels):
        best = None
        for dx, dy, ha in candidates:
            far = abs(dy) > 12
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=fontsize,
                                arrowprops=dict(arrowstyle="-", lw=0.4, color="#777777") if far else None)
            box = label_box(label, renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in boxes):
                best = (label, box)
                break
            label.remove()
        if best is None:  # every ring taken: the last candidate, overlapping (never seen at ladder sizes)
            best = (label := ax.annotate(text, (x, y), textcoords="offset points", xytext=candidates[-1][:2],
                                         fontsize=fontsize), label_box(label, renderer))
        placed.append(best[0])
        boxes.append(best[1])
    return placed


def accuracy_vs_time(rows, preset, target):
    """Measured accuracy against measured seconds for every stage, and each source's published
    accuracy against its published seconds (other hardware: compare shapes, not positions),
    numbered by stage with no two labels overlapping. (figure, labels)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    points, labels = [], []
    for i, r in enumerate(rows, 1):
        (sm, ss), (am, astd) = r.seconds_mean_std, r.accuracy_mean_std
        if am is None:
            continue
        ax.errorbar(sm, 100 * am, xerr=ss or 0, yerr=100 * (astd or 0), fmt="o", capsize=2, color="#1f77b4",
                    label="measured" if not points else None)
        points.append((sm, 100 * am))
        labels.append(str(i))
    sources = [(i, r) for i, r in enumerate(rows, 1) if r.source_seconds and r.source_accuracy]
    for n, (i, r) in enumerate(sources):
        ax.plot(r.source_seconds, 100 * r.source_accuracy, "s", color="#999999", ms=5,
                label="source (V100; airbench: A100)" if n == 0 else None)
        points.append((r.source_seconds, 100 * r.source_accuracy))
        labels.append(str(i))
    if target is not None:
        ax.axhline(100 * target, ls="--", color="grey", label=f"target {100 * target:g}%")
    xs = [x for x, _ in points]
    wide = max(xs) / min(xs) > 5
    if wide:
        ax.set_xscale("log")
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel("seconds (" + ("log scale, " if wide else "") + "each stage on its source's clock)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy against time, preset {preset} (error bars: std over runs)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)  # outside: hides no point
    key = "\n".join(f"{i:>2} {r.label} (n={r.runs})" for i, r in enumerate(rows, 1))
    fig.text(0.91, 0.5, key, va="center", fontsize=8, family="monospace")
    fig.subplots_adjust(right=0.88, bottom=0.2)
    fig.canvas.draw()  # the layout the labels are placed in
    return fig, place_labels(fig, ax, points, labels)


def print_summary(tables: dict[str, Ladder], autoencoder, out_dir, columns=None):
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200)
    for name, table in tables.items():
        console.print(ladders.rich_table(table.rows, table.target, f"ResNet ladder, preset {name}", columns))
    console.print(f"{sum(len(t.runs) for t in tables.values())} ResNet runs, {len(autoencoder)} autoencoder records; "
                  f"report written to {out_dir / 'report.md'}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m repro.report", description=__doc__)
    p.add_argument("--log-dir", action="append", default=None,
                   help="folder with runs.jsonl, or the .jsonl file itself (default logs); give it several times "
                        "to report logs of several sessions together")
    p.add_argument("--out", default=None, help="output folder (default the first log's folder/report)")
    p.add_argument("--target", type=float, default=None,
                   help=ladders.target_help("the target the runs were made with"))
    args = p.parse_args(argv)
    ladders.check_target(args.target)
    args.log_dir = args.log_dir or ["logs"]
    return args


@cli_main
def main(argv=None):
    args = parse_args(argv)
    logs = [read_records(path) for path in args.log_dir]
    # a record is counted once, even when two of the logs hold it (a copy, or one log named twice)
    records = list({r.get("run_id") or id(r): r for log in logs for r in log}.values())
    resnet = [r for r in logged_runs(records) if r.measured]
    autoencoder = [r for r in records if r.get("experiment") == "autoencoder" and r.get("status") == "ok"]
    if not resnet and not autoencoder:
        raise UserError(f"no ok run records in {', '.join(args.log_dir)}; produce some with: "
                        + " ; ".join(PRODUCERS))
    log_dir = Path(args.log_dir[0])
    out_dir = Path(args.out) if args.out else (log_dir.parent if log_dir.suffix == ".jsonl" else log_dir) / "report"
    tables = {name: Ladder(runs, args.target) for name, runs in by_preset(resnet).items()}
    # the first group: real data, largest preset
    plots, note = write_plots(next(iter(tables.values()), None), out_dir)
    torn = " ".join(filter(None, (log.torn_note() for log in logs)))
    if torn:
        print(torn, file=sys.stderr)
    columns = ladders.extra_columns(records)  # the LLM column, judged on every log given
    text = markdown(tables, autoencoder, plots, note, columns)
    if torn:
        text = text.replace("# Reproduction report\n", f"# Reproduction report\n\n{torn}\n", 1)
    write_whole(out_dir / "report.md", text.encode())
    print_summary(tables, autoencoder, out_dir, columns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
