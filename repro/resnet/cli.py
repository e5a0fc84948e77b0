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
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ..data import SYNTHETIC, CifarArrays, load_cifar10
from ..devices import PRECISIONS, choose_precision, compiler_missing, peak_flops, resolve_device
from ..errors import UserError, cli_main
from .. import runlog
from . import distributed
from .config import (ConfigDirs, Preset, StageConfig, available_presets, available_stages, load_ladders, load_preset,
                     load_stage)
from .ladder import check_target, target_help
from .plan import DataParallel, Local, Plan, RunOptions, SeedsOverRanks, run_plan
from .train import COMPILE_MODES, TIMING_MODES, TrainSettings, check_precision, check_split_over_ranks

SYNTHETIC_DEFAULT_SIZES = (5000, 1000)


def add_common_arguments(p: argparse.ArgumentParser, *, data_default: str | None = None) -> None:
    """Where stages, presets and data come from, and what runs them: the options the CLI shares with
    the scripts that run a stage's steps (scripts/bench_step.py, scripts/profile_stage.py)."""
    p.add_argument("--config-dir", default=None,
                   help="a directory of your own stage files (DIR/*.toml) and presets (DIR/presets/*.toml), "
                        "searched before the built-in ones; also $REPRO_CONFIG_DIR")
    p.add_argument("--data", default=data_default,
                   help="directory with cifar-10-batches-py/, an image folder or .tar.gz of one, or 'synthetic' "
                        + (f"(default: {data_default})" if data_default else
                           "(default: the cache directory, downloading if needed)"))
    p.add_argument("--cache-dir", default=None, help="where downloads and decoded arrays live (default ~/.cache/repro)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto = bf16 on a GPU or CPU with native bf16; fp16 + GradScaler on a GPU without it; "
                        "else fp32; fp64 (never auto) is the reference arithmetic every CPU kind reproduces")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: the preset's choice)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice, one per core); on a machine other "
                        "work is loading, 1 can be several times faster than 2")


def check_common_arguments(args) -> None:
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m repro.resnet", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="final",
                   help="a stage name (see --list), 'all' (post 1's five stages), a range FIRST:LAST of the "
                        "ladder, or a path to a stage .toml (default: final)")
    p.add_argument("--ladder", default=None,
                   help="run a named ladder instead of --stage: " + ", ".join(load_ladders()))
    p.add_argument("--list", action="store_true", help="list every stage with its source's time and accuracy, and exit")
    p.add_argument("--preset", default="auto",
                   help=f"auto | {' | '.join(available_presets())} (default auto: full on CUDA, cpu otherwise; "
                        "--list says which only measure)")
    add_common_arguments(p)
    p.add_argument("--epochs", type=float, default=None,
                   help="train every stage this many epochs (default: the stage's own epochs x the preset's scale)")
    p.add_argument("--runs", type=int, default=1, help="runs per stage, seeds s, s+1, ... (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase-timing", default="auto", choices=("auto", *TIMING_MODES),
                   help="sync: time every phase (on CUDA a synchronisation per phase, which removes the "
                        "loader/GPU overlap); deferred: statistics stay on the device, one synchronisation per "
                        "epoch; auto = deferred on CUDA, sync on a CPU (where both measure the same)")
    p.add_argument("--eval-every", type=int, default=1,
                   help="the per-epoch test pass after every N-th epoch and the last (default 1: every epoch); "
                        "the final TTA pass always runs")
    p.add_argument("--compile", action="store_true",
                   help="train and evaluate torch.compile(net) (inductor; needs a C++ compiler on a CPU, Triton on "
                        "CUDA); its one-time compilation is timed apart as the compile phase and counted in every "
                        "clock. Without a compiler: one line, and the run goes on eager")
    p.add_argument("--compile-mode", default=None, metavar="MODE",
                   help=f"--compile with torch.compile's mode: {', '.join(COMPILE_MODES)} (default: default). "
                        "reduce-overhead captures the step in CUDA graphs on a GPU (on a CPU it is default); the "
                        "capture counts in the compile phase")
    p.add_argument("--target", type=float, default=None, help=target_help("the preset's target"))
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
    check_common_arguments(args)
    if args.eval_every < 1:
        raise UserError("--eval-every must be at least 1")
    check_target(args.target)
    if args.compile_mode is not None and args.compile_mode not in COMPILE_MODES:
        raise UserError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, not {args.compile_mode!r}")
    args.compile = args.compile or args.compile_mode is not None
    if args.compile and args.ddp:
        raise UserError("--compile with --ddp is not supported: DistributedDataParallel re-wraps the net mid-run")
    return args


def choose_preset(requested: str, device: torch.device, configs: ConfigDirs) -> tuple[Preset, str]:
    if requested == "auto":
        if device.type == "cuda":
            return load_preset("full", configs), "auto: CUDA device found, so the sources' full sizes"
        return load_preset("cpu", configs), (
            "auto: no CUDA device, so a CPU-sized run (quarter widths, 10k images, epochs x 0.3); "
            "--preset full runs the sources' sizes, which take hours on a CPU for the early stages")
    return load_preset(requested, configs), "requested"  # an unknown name: one line listing the real presets


def select_stages(args, configs: ConfigDirs) -> list[str]:
    """--ladder NAME, or --stage NAME | all | FIRST:LAST | path.toml."""
    ladders = load_ladders(configs)
    if args.ladder is not None:
        if args.ladder not in ladders:
            raise UserError(f"unknown ladder {args.ladder!r}; valid ladders: {', '.join(ladders)}")
        return ladders[args.ladder]
    if args.stage == "all":
        return ladders["post1"]
    if ":" in args.stage and not args.stage.endswith(".toml"):
        order = available_stages(configs)
        first, last = args.stage.split(":", 1)
        for name in (first, last):
            if name not in order:
                raise UserError(f"unknown stage {name!r} in range {args.stage}; valid stages: {', '.join(order)}")
        if order.index(first) > order.index(last):
            raise UserError(f"range {args.stage}: {first} comes after {last} in the ladder")
        return order[order.index(first):order.index(last) + 1]
    return [args.stage]


def print_stage_list(console: Console, configs: ConfigDirs) -> None:
    table = Table(title="stages, in ladder order (each extends the one above; a stage of your own follows the "
                        "one it extends)")
    for col in ("stage", "extends", "epochs", "source s", "clock", "source acc", "what it changes"):
        table.add_column(col, justify="left" if col in ("stage", "extends", "what it changes", "clock") else "right")
    for name in available_stages(configs):
        try:
            st = load_stage(name, configs)
        except UserError as exc:  # e.g. the Muon stage on a torch without torch.optim.Muon: the others still list
            table.add_row(name, "-", "-", "-", "-", "-", f"cannot be loaded here: {exc}")
            continue
        src = st.source
        table.add_row(name, st.extends or "-", f"{st.schedule.epochs:g}", f"{src.seconds:g}" if src.seconds else "-",
                      f"{src.timing} ({src.hardware})", f"{100 * src.accuracy:.2f}%" if src.accuracy else "-",
                      st.description)
    console.print(table)
    console.print("ladders: " + "; ".join(f"{k} = {v[0]} … {v[-1]}" for k, v in load_ladders(configs).items()))
    measuring = configs.measurement_presets()
    console.print("presets: " + ", ".join(p for p in available_presets(configs) if p not in measuring)
                  + "; measurement presets (the docs' measurements): " + ", ".join(measuring))


def load_data(args, preset: Preset, synthetic_seed: int = 0) -> CifarArrays:
    """The preset's share of ``--data``: its training subset (seed 0, the same for every run) and test
    images; ``synthetic_seed`` draws the images when ``--data synthetic``."""
    if args.data == SYNTHETIC:
        sizes = (preset.train_images or SYNTHETIC_DEFAULT_SIZES[0], preset.test_images or SYNTHETIC_DEFAULT_SIZES[1])
        return load_cifar10(SYNTHETIC, synthetic_sizes=sizes, seed=synthetic_seed)
    data = load_cifar10(args.data, args.cache_dir)
    return data.subset(preset.train_images, preset.test_images, seed=0)


def load_one_stage(args) -> tuple[StageConfig, Preset, TrainSettings, CifarArrays]:
    """What the scripts that run one stage's steps need from ``add_common_arguments`` plus their
    ``--stage`` and ``--preset``: the stage, its preset, the settings (the device, the precision
    ``auto`` means there, ``--channels-last`` or the preset's) and the preset's data. Bad input is
    a ``UserError``."""
    check_common_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = ConfigDirs.from_env(args.config_dir)
    stage, preset = load_stage(args.stage, configs), load_preset(args.preset, configs)
    device = resolve_device(args.device)
    precision, _ = choose_precision(args.precision, device)
    check_precision(stage, precision)
    settings = TrainSettings(device=device, precision=precision,
                             channels_last=preset.channels_last if args.channels_last is None else args.channels_last)
    return stage, preset, settings, load_data(args, preset)


def resolve_options(args, device: torch.device, configs: ConfigDirs) -> RunOptions:
    """The command line, decided once: what ``auto`` means here, the preset, the seeds (the
    matmul rate is measured later, once the stages have passed their checks)."""
    precision, precision_reason = choose_precision(args.precision, device)
    preset, reason = choose_preset(args.preset, device, configs)
    if args.epochs is not None:
        preset = replace(preset, epochs=args.epochs)
    if args.target is not None:
        preset = replace(preset, target_accuracy=args.target)
    timing = args.phase_timing if args.phase_timing != "auto" else ("deferred" if device.type == "cuda" else "sync")
    compile_mode = (args.compile_mode or "default") if args.compile else None
    if compile_mode and (missing := compiler_missing(device)):
        print(f"warning: --compile: {missing}; running eager", file=sys.stderr)
        compile_mode = None
    settings = TrainSettings(
        device=device, precision=precision, phase_timing=timing, eval_every=args.eval_every,
        channels_last=preset.channels_last if args.channels_last is None else args.channels_last,
        compile_mode=compile_mode)
    return RunOptions(settings=settings, precision_reason=precision_reason, preset=preset, preset_reason=reason,
                      log_dir=Path(args.log_dir), seeds=tuple(range(args.seed, args.seed + args.runs)),
                      configs=configs, show=not args.quiet)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    # rich assumes 80 columns when output is piped; the ladder table needs more
    console = Console(width=None if sys.stdout.isatty() else 200)
    configs = ConfigDirs.from_env(args.config_dir)
    if args.list:
        print_stage_list(console, configs)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = distributed.init_from_env(args.device, args.dist_timeout, args.threads)  # None without torchrun
    try:
        return _main(args, console, configs, ctx)
    finally:
        distributed.teardown(ctx)


def _main(args, console: Console, configs: ConfigDirs, ctx) -> int:
    if args.ddp and ctx is None:
        raise UserError("--ddp spreads each run over the ranks torchrun starts: "
                        "torchrun --nproc-per-node P -m repro.resnet ... --ddp")
    if ctx is not None and not ctx.is_main:
        console.quiet = True  # ranks > 0 print nothing but errors (stderr)
    options = resolve_options(args, ctx.device if ctx is not None else resolve_device(args.device), configs)
    settings = options.settings
    plan = Plan(tuple(load_stage(name, configs) for name in select_stages(args, configs)), options.seeds)
    for stage in plan.stages:
        check_precision(stage, settings.precision)
    if args.ddp:  # every stage and the log dir are checked before any data is read
        for stage in plan.stages:
            check_split_over_ranks(stage, options.preset, ctx.world_size)
    runlog.check_log_dir(options.log_dir)
    # the machine's matmul rate, measured (once per machine, then cached) only when the runs can go ahead
    settings = replace(settings, peak_flops=peak_flops(settings.device, settings.precision, args.cache_dir)[0])
    options = replace(options, settings=settings)

    if ctx is not None and ctx.local_rank != 0:
        distributed.barrier(ctx)  # one download / decode per node: local rank 0 first
    data = load_data(args, options.preset, synthetic_seed=args.seed)
    if ctx is not None and ctx.local_rank == 0:
        distributed.barrier(ctx)
    preset = options.preset
    epochs = (f"{preset.epochs:g} epochs" if preset.epochs is not None
              else f"each stage's epochs x {preset.epoch_scale:g}")
    console.print(f"[bold]preset {preset.name}[/bold] ({options.preset_reason}): {epochs}, "
                  f"width /{preset.width_divisor}, {len(data.train_labels)} train / {len(data.test_labels)} test images")
    console.print(f"device {settings.device}, precision {settings.precision}, channels_last {settings.channels_last}, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    console.print(f"data: {'[bold red]' if data.synthetic else ''}{data.source_label}{'[/]' if data.synthetic else ''}")

    group_id = uuid.uuid4().hex[:12]
    if ctx is None:
        execution = Local(options.log_dir)
    else:
        group_id = distributed.broadcast(ctx, group_id)  # one group over all ranks
        if args.ddp:
            execution = DataParallel(options.log_dir, ctx=ctx)
            console.print(f"--ddp: every run over {ctx.world_size} ranks ({ctx.backend}), each a slice of every batch")
        else:
            execution = SeedsOverRanks(ctx, options.log_dir, group_id)
            console.print(f"torchrun: {ctx.world_size} ranks ({ctx.backend}), {args.runs} run(s) per stage as seeds "
                          f"{args.seed}..{args.seed + args.runs - 1}; rank r runs seeds s+r, s+r+{ctx.world_size}, ...")
    return run_plan(plan, options, data, execution=execution, group_id=group_id, console=console)
