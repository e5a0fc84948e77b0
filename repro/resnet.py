"""``python -m repro.resnet``: run post-1 stages, time every phase, compare with the blog.

    python -m repro.resnet --stage final                # the main job
    python -m repro.resnet --stage all                  # the whole ladder, side by side
    python -m repro.resnet --stage all --preset smoke --data synthetic
"""

from __future__ import annotations

import argparse
import statistics
import sys
import uuid
from dataclasses import replace

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import runlog
from .config import PRESETS, Preset, StageConfig, available_stages, load_preset, load_stage
from .data import SYNTHETIC, CifarArrays, load_cifar10
from .devices import PRECISIONS, resolve_device, resolve_precision
from .errors import UserError, cli_main
from .train import PHASES, NonFiniteLoss, RunProgress, train_stage

SYNTHETIC_DEFAULT_SIZES = (5000, 1000)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m repro.resnet", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="final",
                   help="a stage name (baseline, simplified, preprocessed, bulk_rng, final), 'all', "
                        "or a path to a stage .toml (default: final)")
    p.add_argument("--preset", default="auto", help="auto | full | cpu | smoke (default auto: full on CUDA, cpu otherwise)")
    p.add_argument("--data", default=None,
                   help="directory with cifar-10-batches-py/, an image folder or .tar.gz of one, or 'synthetic' "
                        "(default: the cache directory, downloading if needed)")
    p.add_argument("--cache-dir", default=None, help="where downloads and decoded arrays live (default ~/.cache/repro)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto = fp16+GradScaler on CUDA, bf16 on a CPU with native bf16, else fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: the preset's choice)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epoch count")
    p.add_argument("--runs", type=int, default=1, help="runs per stage, seeds s, s+1, ... (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice, one per core); on a machine other "
                        "work is loading, 1 can be several times faster than 2")
    p.add_argument("--log-dir", default="logs", help="where runs.jsonl is appended (default logs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch rows")
    args = p.parse_args(argv)
    if args.runs < 1:
        raise UserError("--runs must be at least 1")
    if args.epochs is not None and args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    return args


def choose_preset(requested: str, device: torch.device) -> tuple[str, str]:
    if requested == "auto":
        if device.type == "cuda":
            return "full", "auto: CUDA device found, so the blog's full sizes"
        return "cpu", ("auto: no CUDA device, so a CPU-sized run (quarter widths, 10k images, 10 epochs); "
                       "--preset full runs the blog's sizes, which take hours on a CPU")
    if requested not in PRESETS:
        raise UserError(f"unknown preset {requested!r}; valid presets: auto, {', '.join(PRESETS)}")
    return requested, "requested"


def load_data(args, preset: Preset) -> CifarArrays:
    if args.data == SYNTHETIC:
        sizes = (preset.train_images or SYNTHETIC_DEFAULT_SIZES[0], preset.test_images or SYNTHETIC_DEFAULT_SIZES[1])
        return load_cifar10(SYNTHETIC, synthetic_sizes=sizes, seed=args.seed)
    data = load_cifar10(args.data, args.cache_dir)
    return data.subset(preset.train_images, preset.test_images, seed=0)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console, disable=not enabled, transient=True)


def run_one(stage: StageConfig, preset: Preset, data: CifarArrays, *, device, precision, channels_last, seed,
            args, group_id, preset_reason, console: Console, show: bool) -> dict:
    """Train one stage once and append its record, whatever happens."""
    record = runlog.new_record(
        "resnet", stage=stage.name, preset=preset.name, preset_reason=preset_reason, seed=seed,
        device=str(device), precision=precision, channels_last=channels_last,
        data_source=data.source_label, synthetic=data.synthetic,
        train_images=int(len(data.train_labels)), test_images=int(len(data.test_labels)),
        width_divisor=preset.width_divisor, epochs_planned=preset.epochs, group_id=group_id,
        blog_seconds=stage.blog.seconds, config=stage.as_dict(),
    )
    progress = RunProgress()
    steps_per_epoch = -(-len(data.train_labels) // stage.optimizer.batch_size)
    bar = _progress(console, show and console.is_terminal)
    task = bar.add_task(f"{stage.name} seed {seed}", total=steps_per_epoch * preset.epochs)

    def on_epoch(row):
        if show:
            console.print(
                f"  {stage.name:<12} epoch {row['epoch']:>3}  lr {row['lr']:.4f}  train loss {row['train_loss']:.3f}  "
                f"test acc {100 * row['test_accuracy']:5.1f}%  {row['seconds']:6.1f}s  "
                + "  ".join(f"{p.split('_')[0]} {row['phases'][p]:.1f}s" for p in PHASES)
            )

    status, error = "failed", None
    try:
        with bar:
            train_stage(stage, preset, data, device=device, precision=precision, channels_last=channels_last,
                        seed=seed, progress=progress, on_step=lambda n: bar.update(task, completed=n),
                        on_epoch=on_epoch)
        status = "ok"
    except NonFiniteLoss as exc:
        error = str(exc)
        record["failed_step"] = exc.step
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user (Ctrl-C)"
    finally:
        record.update(status=status, total_seconds=progress.total_seconds, phases=progress.phases,
                      epochs=progress.epochs, test_accuracy=progress.test_accuracy, steps=progress.steps_done)
        if error:
            record["error"] = error
        runlog.append_record(record, args.log_dir)
    if status == "interrupted":
        raise KeyboardInterrupt
    if status == "failed":
        raise UserError(f"stage {stage.name} seed {seed}: {error}; record {record['run_id']} written as failed")
    return record


def _fmt_seconds(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def ladder_table(records: list[dict], target: float | None) -> Table:
    """One row per stage (mean ± std over runs); ratios to the baseline stage, measured beside blog."""
    by_stage: dict[str, list[dict]] = {}
    for rec in records:
        by_stage.setdefault(rec["stage"], []).append(rec)
    first = records[0]
    table = Table(title=f"post-1 ladder, preset {first['preset']}, {first['device']} ({_hardware(first)}), "
                        f"precision {first['precision']}, data: {first['data_source']}")
    for col in ("stage", "runs", "total s", "data s", "fwd+bwd s", "opt s", "eval s", "test acc",
                "blog s", "÷baseline", "÷baseline (blog)"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    if target is not None:
        table.add_column(f"≥{100 * target:.0f}%", justify="right")
    base = by_stage.get("baseline")
    base_time = statistics.mean(r["total_seconds"] for r in base) if base else None
    base_blog = base[0]["blog_seconds"] if base else None
    for stage, recs in by_stage.items():
        times = [r["total_seconds"] for r in recs]
        accs = [100 * r["test_accuracy"] for r in recs]
        blog = recs[0]["blog_seconds"]
        row = [stage, str(len(recs)), _fmt_seconds(times),
               *(_fmt_seconds([r["phases"][p] for r in recs]) for p in PHASES),
               (f"{accs[0]:.2f}%" if len(accs) == 1 else f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}%"),
               f"{blog:.0f}" if blog else "-",
               f"{statistics.mean(times) / base_time:.3f}" if base_time else "-",
               f"{blog / base_blog:.3f}" if blog and base_blog else "-"]
        if target is not None:
            row.append(f"{sum(r['test_accuracy'] >= target for r in recs)}/{len(recs)}")
        table.add_row(*row)
    return table


def _hardware(record: dict) -> str:
    hw = record.get("hardware") or {}
    return hw.get("gpu") or f"{hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores"


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    # rich assumes 80 columns when output is piped; the ladder table needs more
    console = Console(width=None if sys.stdout.isatty() else 170)
    show = not args.quiet
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    preset_name, preset_reason = choose_preset(args.preset, device)
    preset = load_preset(preset_name)
    if args.epochs is not None:
        preset = replace(preset, epochs=args.epochs)
    channels_last = preset.channels_last if args.channels_last is None else args.channels_last
    stage_names = available_stages() if args.stage == "all" else [args.stage]
    stages = [load_stage(name) for name in stage_names]  # every config is checked before any training

    data = load_data(args, preset)
    console.print(f"[bold]preset {preset.name}[/bold] ({preset_reason}): {preset.epochs} epochs, "
                  f"width /{preset.width_divisor}, {len(data.train_labels)} train / {len(data.test_labels)} test images")
    console.print(f"device {device}, precision {precision}, channels_last {channels_last}, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    console.print(f"data: {'[bold red]' if data.synthetic else ''}{data.source_label}{'[/]' if data.synthetic else ''}")

    group_id = uuid.uuid4().hex[:12]
    records = []
    try:
        for stage in stages:
            if show:
                console.print(f"[bold]{stage.name}[/bold]: {stage.description}")
            for r in range(args.runs):
                records.append(run_one(stage, preset, data, device=device, precision=precision,
                                       channels_last=channels_last, seed=args.seed + r, args=args,
                                       group_id=group_id, preset_reason=preset_reason, console=console, show=show))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: the unfinished run was logged with status 'interrupted'")
        if records:
            console.print(ladder_table(records, preset.target_accuracy))
        return 130
    console.print(ladder_table(records, preset.target_accuracy))
    if data.synthetic:
        console.print("[bold red]SYNTHETIC data[/bold red]: accuracies say nothing about CIFAR-10")
    console.print(f"records appended to {runlog.log_path(args.log_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
