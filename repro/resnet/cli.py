"""``python -m repro.resnet``: run ladder stages, time every phase, compare with the sources.

    python -m repro.resnet --stage final                # the main job
    python -m repro.resnet --list                       # every stage, with its source's time and accuracy
    python -m repro.resnet --stage all                  # post 1's five stages, side by side
    python -m repro.resnet --ladder bag_of_tricks       # a named ladder (post1, dawnbench, bag_of_tricks, airbench, all)
    python -m repro.resnet --stage resnet9:tta          # a range of the ladder
    torchrun --nproc-per-node 2 -m repro.resnet --stage final --runs 4          # seeds shared over 2 ranks
    torchrun --nproc-per-node 2 -m repro.resnet --stage final --ddp             # one run over 2 ranks
"""

from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import replace

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import distributed, runlog
from .config import (Preset, StageConfig, available_presets, available_stages, load_ladders, load_preset, load_stage,
                     run_epochs)
from .data import SYNTHETIC, CifarArrays, load_cifar10
from .devices import PRECISIONS, resolve_device, resolve_precision
from .errors import UserError, cli_main, interrupt_exit_code, interrupt_message
from .ladder import rich_table
from .loaders import Shard
from .train import PHASES, NonFiniteLoss, RunProgress, check_split_over_ranks, train_stage

SYNTHETIC_DEFAULT_SIZES = (5000, 1000)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m repro.resnet", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="final",
                   help="a stage name (see --list), 'all' (post 1's five stages), a range FIRST:LAST of the "
                        "ladder, or a path to a stage .toml (default: final)")
    p.add_argument("--ladder", default=None,
                   help="run a named ladder instead of --stage: " + ", ".join(load_ladders()))
    p.add_argument("--list", action="store_true", help="list every stage with its source's time and accuracy, and exit")
    p.add_argument("--preset", default="auto",
                   help=f"auto | {' | '.join(available_presets())} (default auto: full on CUDA, cpu otherwise)")
    p.add_argument("--data", default=None,
                   help="directory with cifar-10-batches-py/, an image folder or .tar.gz of one, or 'synthetic' "
                        "(default: the cache directory, downloading if needed)")
    p.add_argument("--cache-dir", default=None, help="where downloads and decoded arrays live (default ~/.cache/repro)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto = fp16+GradScaler on CUDA, bf16 on a CPU with native bf16, else fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: the preset's choice)")
    p.add_argument("--epochs", type=float, default=None,
                   help="train every stage this many epochs (default: the stage's own epochs x the preset's scale)")
    p.add_argument("--runs", type=int, default=1, help="runs per stage, seeds s, s+1, ... (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase-timing", default="auto", choices=("auto", "sync", "deferred"),
                   help="sync: time every phase (on CUDA a synchronisation per phase, which removes the "
                        "loader/GPU overlap); deferred: statistics stay on the device, one synchronisation per "
                        "epoch; auto = deferred on CUDA, sync on a CPU (where both measure the same)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice, one per core); on a machine other "
                        "work is loading, 1 can be several times faster than 2")
    p.add_argument("--log-dir", default="logs", help="where runs.jsonl is appended (default logs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch rows")
    p.add_argument("--ddp", action="store_true",
                   help="under torchrun: train each run over all the ranks with DistributedDataParallel (each "
                        "rank a slice of every batch, the batch still the stage's) instead of sharing out seeds")
    p.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT,
                   help="under torchrun: seconds to wait for a rank that stopped reporting before giving up "
                        "on it (default 600)")
    args = p.parse_args(argv)
    if args.runs < 1:
        raise UserError("--runs must be at least 1")
    if args.epochs is not None and args.epochs <= 0:
        raise UserError("--epochs must be above 0")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    return args


def choose_preset(requested: str, device: torch.device) -> tuple[str, str]:
    if requested == "auto":
        if device.type == "cuda":
            return "full", "auto: CUDA device found, so the sources' full sizes"
        return "cpu", ("auto: no CUDA device, so a CPU-sized run (quarter widths, 10k images, epochs x 0.3); "
                       "--preset full runs the sources' sizes, which take hours on a CPU for the early stages")
    load_preset(requested)  # an unknown name is a one-line error listing the real presets
    return requested, "requested"


def phase_timing_for(args, device: torch.device) -> str:
    mode = getattr(args, "phase_timing", "auto")
    return ("deferred" if device.type == "cuda" else "sync") if mode == "auto" else mode


def select_stages(args) -> list[str]:
    """--ladder NAME, or --stage NAME | all | FIRST:LAST | path.toml."""
    ladders = load_ladders()
    if args.ladder is not None:
        if args.ladder not in ladders:
            raise UserError(f"unknown ladder {args.ladder!r}; valid ladders: {', '.join(ladders)}")
        return ladders[args.ladder]
    if args.stage == "all":
        return ladders["post1"]
    if ":" in args.stage and not args.stage.endswith(".toml"):
        order = available_stages()
        first, last = args.stage.split(":", 1)
        for name in (first, last):
            if name not in order:
                raise UserError(f"unknown stage {name!r} in range {args.stage}; valid stages: {', '.join(order)}")
        if order.index(first) > order.index(last):
            raise UserError(f"range {args.stage}: {first} comes after {last} in the ladder")
        return order[order.index(first):order.index(last) + 1]
    return [args.stage]


def print_stage_list(console: Console) -> None:
    table = Table(title="stages, in ladder order (each extends the one above)")
    for col in ("stage", "epochs", "source s", "clock", "source acc", "what it changes"):
        table.add_column(col, justify="left" if col in ("stage", "what it changes", "clock") else "right")
    for name in available_stages():
        st = load_stage(name)
        src = st.source
        table.add_row(name, f"{st.schedule.epochs:g}", f"{src.seconds:g}" if src.seconds else "-",
                      f"{src.timing} ({src.hardware})", f"{100 * src.accuracy:.2f}%" if src.accuracy else "-",
                      st.description)
    console.print(table)
    console.print("ladders: " + "; ".join(f"{k} = {v[0]} … {v[-1]}" for k, v in load_ladders().items()))


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
            args, group_id, preset_reason, console: Console, show: bool, append=None, shard: Shard = Shard()) -> dict:
    """Train one stage once and append its record (``append(record, log_dir)``, default
    runlog.append_record), whatever happens. ``shard``: this rank's part of a ``--ddp`` run."""
    record = runlog.new_record(
        "resnet", stage=stage.name, preset=preset.name, preset_reason=preset_reason, seed=seed,
        device=str(device), precision=precision, channels_last=channels_last,
        data_source=data.source_label, synthetic=data.synthetic,
        train_images=int(len(data.train_labels)), test_images=int(len(data.test_labels)),
        width_divisor=preset.width_divisor, epochs_planned=run_epochs(preset, stage), group_id=group_id,
        blog_seconds=stage.source.seconds, target_accuracy=preset.target_accuracy, config=stage.as_dict(),
        **({"ddp_ranks": shard.world_size} if shard.world_size > 1 else {}),
    )
    progress = RunProgress()
    steps_per_epoch = -(-len(data.train_labels) // stage.optimizer.batch_size)
    bar = _progress(console, show and console.is_terminal)
    task = bar.add_task(f"{stage.name} seed {seed}", total=round(steps_per_epoch * run_epochs(preset, stage)))

    def on_epoch(row):
        if show:
            console.print(
                f"  {stage.name:<12} epoch {row['epoch']:>3}  lr {row['lr']:.4f}  train loss {row['train_loss']:.3f}  "
                f"test acc {100 * row['test_accuracy']:5.1f}%  {row['seconds']:6.1f}s  "
                + "  ".join(f"{p.split('_')[0][:4]} {row['phases'][p]:.1f}s" for p in PHASES)
            )

    status, error, interruption = "failed", None, None
    try:
        with bar:
            train_stage(stage, preset, data, device=device, precision=precision, channels_last=channels_last,
                        seed=seed, progress=progress, on_step=lambda n: bar.update(task, completed=n),
                        on_epoch=on_epoch, phase_timing=phase_timing_for(args, device), shard=shard)
        status = "ok"
    except NonFiniteLoss as exc:
        error = str(exc)
        record["failed_step"] = exc.step
    except RuntimeError as exc:  # under --ddp: a collective failed, because another rank died or hung
        if shard.world_size == 1:
            raise
        error = f"a collective of the {shard.world_size}-rank run failed ({str(exc).splitlines()[0][:200]})"
    except KeyboardInterrupt as exc:
        status, error, interruption = "interrupted", interrupt_message(exc), exc
    finally:
        record.update(status=status, total_seconds=progress.total_seconds, phases=progress.phases,
                      epochs=progress.epochs, test_accuracy=progress.test_accuracy, steps=progress.steps_done,
                      **{k: v for k, v in progress.summary.items() if k != "test_accuracy"})
        if error:
            record["error"] = error
        (append or runlog.append_record)(record, args.log_dir)
    if status == "interrupted":
        raise interruption
    if status == "failed":
        raise UserError(f"stage {stage.name} seed {seed}: {error}; record {record['run_id']} written as failed")
    return record


def ladder_title(records: list[dict]) -> str:
    first = records[0]
    return (f"ladder, preset {first['preset']}, {first['device']} ({_hardware(first)}), precision {first['precision']}, "
            f"data: {first['data_source']}; seconds on each source's clock, p-values against the stage above")


def _hardware(record: dict) -> str:
    hw = record.get("hardware") or {}
    return hw.get("gpu") or f"{hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores"


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    # rich assumes 80 columns when output is piped; the ladder table needs more
    console = Console(width=None if sys.stdout.isatty() else 200)
    if args.list:
        print_stage_list(console)
        return 0
    show = not args.quiet
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = distributed.init_from_env(args.device, args.dist_timeout, args.threads)  # None without torchrun
    try:
        return _main(args, console, show, ctx)
    finally:
        distributed.teardown(ctx)


def _main(args, console: Console, show: bool, ctx) -> int:
    if args.ddp and ctx is None:
        raise UserError("--ddp spreads each run over the ranks torchrun starts: "
                        "torchrun --nproc-per-node P -m repro.resnet ... --ddp")
    if ctx is not None and not ctx.is_main:
        console.quiet = True  # ranks > 0 print nothing but errors (stderr)
    device = ctx.device if ctx is not None else resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    preset_name, preset_reason = choose_preset(args.preset, device)
    preset = load_preset(preset_name)
    if args.epochs is not None:
        preset = replace(preset, epochs=args.epochs)
    channels_last = preset.channels_last if args.channels_last is None else args.channels_last
    stages = [load_stage(name) for name in select_stages(args)]  # every config is checked before any training
    if args.ddp:
        for stage in stages:
            check_split_over_ranks(stage, preset, ctx.world_size)
    runlog.check_log_dir(args.log_dir)  # a bad log dir fails now, not after the training it would lose

    if ctx is not None and ctx.local_rank != 0:
        distributed.barrier(ctx)  # one download / decode per node: local rank 0 first
    data = load_data(args, preset)
    if ctx is not None and ctx.local_rank == 0:
        distributed.barrier(ctx)
    epochs = (f"{preset.epochs:g} epochs" if preset.epochs is not None
              else f"each stage's epochs x {preset.epoch_scale:g}")
    console.print(f"[bold]preset {preset.name}[/bold] ({preset_reason}): {epochs}, "
                  f"width /{preset.width_divisor}, {len(data.train_labels)} train / {len(data.test_labels)} test images")
    console.print(f"device {device}, precision {precision}, channels_last {channels_last}, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    console.print(f"data: {'[bold red]' if data.synthetic else ''}{data.source_label}{'[/]' if data.synthetic else ''}")

    group_id = uuid.uuid4().hex[:12]
    if args.ddp:
        group_id = distributed.broadcast(ctx, group_id)
        shard = Shard(ctx.rank, ctx.world_size)
        console.print(f"--ddp: every run over {ctx.world_size} ranks ({ctx.backend}), each a slice of every batch")

        def append_on_rank0(record, log_dir):
            if ctx.is_main:
                runlog.append_record(record, log_dir)
        code = _run_all(args, stages, preset, data, console, show, device=device, precision=precision,
                        channels_last=channels_last, group_id=group_id, preset_reason=preset_reason,
                        append=append_on_rank0, shard=shard)
        if code == 0:
            distributed.barrier(ctx)  # no rank tears the group down while another still uses it
        return code
    if ctx is not None:
        group_id = distributed.broadcast(ctx, group_id)  # one group over all ranks

        def run(stage, seed, append):
            return run_one(stage, preset, data, device=device, precision=precision, channels_last=channels_last,
                           seed=seed, args=args, group_id=group_id, preset_reason=preset_reason, console=console,
                           show=show, append=append)
        return distributed.main_loop(ctx, stages, args, run, console, group_id=group_id,
                                     target=preset.target_accuracy, title=ladder_title, synthetic=data.synthetic)
    return _run_all(args, stages, preset, data, console, show, device=device, precision=precision,
                    channels_last=channels_last, group_id=group_id, preset_reason=preset_reason)


def _run_all(args, stages, preset, data, console, show, *, append=None, shard: Shard = Shard(), **run_kwargs) -> int:
    """Every stage, ``--runs`` seeds each, one after another in this process (under ``--ddp``
    every rank does this together); then the ladder table."""
    records = []
    try:
        for stage in stages:
            if show:
                console.print(f"[bold]{stage.name}[/bold]: {stage.description}")
            for r in range(args.runs):
                records.append(run_one(stage, preset, data, seed=args.seed + r, args=args, console=console,
                                       show=show, append=append, shard=shard, **run_kwargs))
    except KeyboardInterrupt as exc:
        console.print(f"[yellow]{interrupt_message(exc)}[/yellow]: the unfinished run was logged with status "
                      "'interrupted'")
        if records:
            console.print(rich_table(records, preset.target_accuracy, ladder_title(records)))
        return interrupt_exit_code(exc)
    console.print(rich_table(records, preset.target_accuracy, ladder_title(records)))
    if data.synthetic:
        console.print("[bold red]SYNTHETIC data[/bold red]: accuracies say nothing about CIFAR-10")
    console.print(f"records appended to {runlog.log_path(args.log_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
