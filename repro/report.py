"""``python -m repro.report``: the ResNet ladder, multi-run statistics and autoencoder checks
from ``logs/runs.jsonl``, as a terminal table, ``report.md`` and PNG plots (matplotlib optional).

Exit status: 0 when a report was written; 2 (one-line message naming the commands that
produce records) when the log holds no usable record.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from .claims.checkers.resnet import BLOG_ACCURACY, STAGES, blog_seconds, best_ladder, complete_ladders, is_real
from .errors import UserError, cli_main
from .runlog import read_records

# What Le Chat reported (transcript 004): first answer invented, second from the pasted blog.
LLM_REPORTED = {"baseline": "341 s, 94% (1st answer: ~18 h, ~68%)", "final": "297 s, 94% (1st answer: ~35 min, ~76%)"}
PRODUCERS = ("python -m repro.resnet --stage all --preset cpu --data ../shared/data/cifar10-jpeg.tar.gz",
             "python -m repro.autoencoder")


def atomic_write(path: Path, data: bytes):
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ladder_rows(ladder) -> list[dict]:
    base = ladder["baseline"]["total_seconds"]
    return [{
        "stage": s, "seconds": ladder[s]["total_seconds"], "ratio": ladder[s]["total_seconds"] / base,
        "blog_seconds": blog_seconds()[s], "blog_ratio": blog_seconds()[s] / blog_seconds()["baseline"],
        "accuracy": ladder[s].get("test_accuracy"), "llm": LLM_REPORTED.get(s, ""),
    } for s in STAGES]


def run_statistics(records) -> list[dict]:
    """Mean ± std of time and accuracy per (preset, stage), and how many runs reached 94%."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("preset"), r.get("stage")), []).append(r)
    rows = []
    for (preset, stage), runs in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), STAGES.index(kv[0][1])
                                                                         if kv[0][1] in STAGES else 9)):
        times = [r["total_seconds"] for r in runs]
        accs = [r["test_accuracy"] for r in runs if r.get("test_accuracy") is not None]
        rows.append({
            "preset": preset, "stage": stage, "runs": len(runs),
            "time_mean": statistics.fmean(times), "time_std": statistics.stdev(times) if len(times) > 1 else 0.0,
            "acc_mean": statistics.fmean(accs) if accs else None,
            "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "reached": sum(a >= BLOG_ACCURACY for a in accs), "synthetic": any(r.get("synthetic") for r in runs),
        })
    return rows


def markdown(ladder, stats, autoencoder, plots, note) -> str:
    out = ["# Reproduction report", ""]
    if ladder:
        base = ladder["baseline"]
        hw = base.get("hardware") or {}
        real = all(is_real(r) for r in ladder.values())
        out += ["## ResNet ladder (post 1)", "",
                f"Group `{base.get('group_id')}`, preset **{base.get('preset')}**, {base.get('precision')}, "
                f"{base.get('device')} ({hw.get('gpu') or hw.get('cpu')}, {hw.get('cpu_count')} CPUs), "
                f"data {base.get('data_source')}." + ("" if real else " **Synthetic/smoke: pipeline evidence only.**"),
                "", f"Blog: Ben Johnson's DAWNBench entry {blog_seconds()['ben_johnson']} s; stages on one V100.", "",
                "| stage | measured s | ratio to baseline | blog s | blog ratio | test acc | LLM reported |",
                "|---|---|---|---|---|---|---|"]
        for row in ladder_rows(ladder):
            acc = f"{row['accuracy']:.4f}" if row["accuracy"] is not None else "—"
            out.append(f"| {row['stage']} | {row['seconds']:.1f} | {row['ratio']:.3f} | {row['blog_seconds']} | "
                       f"{row['blog_ratio']:.3f} | {acc} | {row['llm']} |")
        out.append("")
    if stats:
        out += ["## All ok ResNet runs", "", "| preset | stage | runs | time s (mean ± std) | accuracy (mean ± std) "
                "| ≥ 94% |", "|---|---|---|---|---|---|"]
        for r in stats:
            acc = f"{r['acc_mean']:.4f} ± {r['acc_std']:.4f}" if r["acc_mean"] is not None else "—"
            flag = " (synthetic)" if r["synthetic"] else ""
            out.append(f"| {r['preset']}{flag} | {r['stage']} | {r['runs']} | {r['time_mean']:.1f} ± "
                       f"{r['time_std']:.1f} | {acc} | {r['reached']}/{r['runs']} |")
        out.append("")
    if autoencoder:
        from .autoencoder.table import markdown_sections

        out += markdown_sections(autoencoder)
    out += ["## Plots", ""] + ([f"![{p.stem}]({p.name})" for p in plots] or [note]) + [""]
    return "\n".join(out)


def write_plots(ladder, stats, out_dir: Path) -> tuple[list[Path], str]:
    """Stage time ratios (blog vs measured) and accuracy against time; [] with a note without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "Plots skipped: matplotlib is not installed (pip install 'repro[plots]')."
    if not ladder:
        return [], "No complete ladder to plot."
    import io

    rows = ladder_rows(ladder)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["blog_ratio"] for r in rows], 0.4, label="blog (V100)")
    ax.bar([i + 0.2 for i in x], [r["ratio"] for r in rows], 0.4, label=f"measured ({ladder['baseline'].get('preset')})")
    ax.set_xticks(list(x), [r["stage"] for r in rows])
    ax.set_ylabel("time / baseline time")
    ax.set_title("Post-1 ladder: time relative to the baseline stage")
    ax.legend()
    paths.append(("stage_ratios.png", fig))
    fig2, ax2 = plt.subplots(figsize=(6, 4))
    for r in stats:
        if r["acc_mean"] is not None and not r["synthetic"]:
            ax2.errorbar(r["time_mean"], r["acc_mean"], xerr=r["time_std"], yerr=r["acc_std"], fmt="o")
            ax2.annotate(f"{r['stage']} ({r['preset']})", (r["time_mean"], r["acc_mean"]), fontsize=7)
    ax2.axhline(BLOG_ACCURACY, ls="--", color="grey", label="94% target")
    ax2.set_xlabel("training time (s)")
    ax2.set_ylabel("test accuracy")
    ax2.legend()
    paths.append(("accuracy_vs_time.png", fig2))
    written = []
    for name, figure in paths:
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        atomic_write(out_dir / name, buf.getvalue())
        written.append(out_dir / name)
    return written, ""


def print_summary(ladder, stats, autoencoder, out_dir):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if ladder:
        t = Table(title=f"ResNet ladder ({ladder['baseline'].get('preset')}, group {ladder['baseline'].get('group_id')})")
        for col in ("stage", "measured s", "ratio", "blog s", "blog ratio", "test acc"):
            t.add_column(col)
        for r in ladder_rows(ladder):
            t.add_row(r["stage"], f"{r['seconds']:.1f}", f"{r['ratio']:.3f}", str(r["blog_seconds"]),
                      f"{r['blog_ratio']:.3f}", f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "—")
        console.print(t)
    console.print(f"{len(stats)} preset/stage groups, {len(autoencoder)} autoencoder records; "
                  f"report written to {out_dir / 'report.md'}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m repro.report", description=__doc__)
    p.add_argument("--log-dir", default="logs", help="folder with runs.jsonl, or the .jsonl file itself")
    p.add_argument("--out", default=None, help="output folder (default <log-dir>/report)")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    records = read_records(args.log_dir)
    resnet = [r for r in records if r.get("experiment") == "resnet" and r.get("status") == "ok"
              and isinstance(r.get("total_seconds"), (int, float))]
    autoencoder = [r for r in records if r.get("experiment") == "autoencoder" and r.get("status") == "ok"]
    if not resnet and not autoencoder:
        raise UserError(f"no ok run records in {args.log_dir}; produce some with: " + " ; ".join(PRODUCERS))
    log_dir = Path(args.log_dir)
    out_dir = Path(args.out) if args.out else (log_dir.parent if log_dir.suffix == ".jsonl" else log_dir) / "report"
    ladder = best_ladder(resnet)
    stats = run_statistics(resnet)
    plots, note = write_plots(ladder, stats, out_dir)
    if not ladder and resnet:
        note += f" No complete five-stage ladder yet ({len(complete_ladders(resnet))}); run: {PRODUCERS[0]}"
    atomic_write(out_dir / "report.md", markdown(ladder, stats, autoencoder, plots, note).encode())
    print_summary(ladder, stats, autoencoder, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
