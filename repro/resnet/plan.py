"""A plan of stages x seeds, run one way out of three, with its end printed in one place.

* ``Local``: one process runs every run and appends each record as it finishes.
* ``SeedsOverRanks`` (under torchrun): rank r runs seeds s + r, s + r + P, ... of every stage;
  rank 0 collects every rank's records, appends each once, and speaks for the command.
* ``DataParallel`` (under torchrun with ``--ddp``): every rank runs every run, each on its slice
  of every batch; rank 0 appends the records.

The three differ only in which runs a process does (``runs``), with which slice of a batch
(``shard``), where a finished record goes (``keep``) and how the command's records are gathered
at the end (``gather``); ``run_plan`` is the same loop for all of them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import runlog
from ..data import CifarArrays
from ..errors import EXIT_USER_ERROR, UserError, interrupt_exit_code, interrupt_message
from . import distributed
from .clocks import PHASES
from .config import ConfigDirs, Preset, StageConfig, run_epochs
from .ladder import extra_columns, ladder_rows, rich_table
from .loaders import Shard
from .records import EpochRow, LoggedRun, RunRecord, RunResult
from .train import Hooks, NonFiniteLoss, TrainSettings, train_stage


@dataclass(frozen=True)
class RunOptions:
    """Everything the command line decided, resolved once: how each run trains (``settings``),
    and the rest of the command."""

    settings: TrainSettings
    precision_reason: str
    preset: Preset
    preset_reason: str
    log_dir: Path
    seeds: tuple[int, ...]
    configs: ConfigDirs = ConfigDirs()
    show: bool = True


@dataclass(frozen=True)
class Plan:
    stages: tuple[StageConfig, ...]
    seeds: tuple[int, ...]

    def runs(self) -> list[tuple[StageConfig, int]]:
        return [(stage, seed) for stage in self.stages for seed in self.seeds]


# ---- the three ways of running a plan


@dataclass
class Local:
    """Every run in this process, one after another."""

    log_dir: Path
    shard: Shard = Shard()
    records: list[LoggedRun] = field(default_factory=list)
    is_main: bool = True
    source: str = ""  # where the records came from, for the command's last line

    def runs(self, plan: Plan) -> list[tuple[StageConfig, int]]:
        return plan.runs()

    def starting(self, stage: StageConfig, seed: int) -> None:
        pass

    def alive(self) -> None:
        """Training made progress (a step, an epoch): nobody is watching in one process."""

    def keep(self, record: RunRecord) -> None:
        written = record.to_dict()
        if self.is_main:
            runlog.append_record(written, self.log_dir)
        self.records.append(LoggedRun.from_dict(written))

    def gather(self, plan: Plan, outcome: str, interrupted: bool) -> tuple[list[LoggedRun], list[str]]:
        return self.records, []


@dataclass
class DataParallel(Local):
    """Every run over every rank (``--ddp``); rank 0 appends the records."""

    ctx: distributed.DistContext | None = None

    def __post_init__(self):
        self.shard, self.is_main = Shard(self.ctx.rank, self.ctx.world_size), self.ctx.is_main

    def keep(self, record: RunRecord) -> None:
        record.ddp_ranks = self.ctx.world_size
        super().keep(record)

    def gather(self, plan: Plan, outcome: str, interrupted: bool) -> tuple[list[LoggedRun], list[str]]:
        if outcome == "ok":
            distributed.barrier(self.ctx)  # no rank tears the group down while another still uses it
        return self.records, []


@dataclass
class SeedsOverRanks:
    """Each rank its share of the seeds; rank 0 collects and appends every record once."""

    ctx: distributed.DistContext
    log_dir: Path
    group_id: str
    shard: Shard = Shard()

    def __post_init__(self):
        self.reporter = distributed.Reporter(self.ctx)
        self.is_main = self.ctx.is_main
        self.source = f" from {self.ctx.world_size} ranks"

    def runs(self, plan: Plan) -> list[tuple[StageConfig, int]]:
        return distributed.share(plan.runs(), plan.seeds, self.ctx.rank, self.ctx.world_size)

    def starting(self, stage: StageConfig, seed: int) -> None:
        self.reporter.starting(stage.name, seed)

    def alive(self) -> None:
        distributed.beat(self.ctx)  # rank 0 gives up on a rank whose training stops moving

    def keep(self, record: RunRecord) -> None:
        record.rank, record.world_size = self.ctx.rank, self.ctx.world_size
        self.reporter.finished(record.to_dict())

    def gather(self, plan: Plan, outcome: str, interrupted: bool) -> tuple[list[LoggedRun], list[str]]:
        self.reporter.done(outcome)
        if not self.is_main:
            distributed.wait_collected(self.ctx)
            return [], []
        shares = {r: [(st.name, s) for st, s in distributed.share(plan.runs(), plan.seeds, r, self.ctx.world_size)]
                  for r in range(self.ctx.world_size)}
        # an interrupted rank 0 is being stopped (torchrun gives ~30 s before SIGKILL): wait briefly for the rest
        patience = min(self.ctx.timeout, 10.0) if interrupted else None
        records, errors = distributed.collect(self.ctx, self.reporter.records, shares, self.group_id,
                                              patience=patience)
        order = {st.name: i for i, st in enumerate(plan.stages)}
        records.sort(key=lambda r: (order.get(r["stage"], len(order)), r["seed"]))
        for record in records:
            runlog.append_record(record, self.log_dir)
        distributed.mark_collected(self.ctx)
        return [LoggedRun.from_dict(r) for r in records], errors


# ---- one run


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console, disable=not enabled, transient=True)


def epoch_line(stage: str, row: EpochRow) -> str:
    test = "     -" if row.test_accuracy is None else f"{100 * row.test_accuracy:5.1f}%"
    return (f"  {stage:<12} epoch {row.epoch:>3}  lr {row.lr:.4f}  train loss {row.train_loss:.3f}  "
            f"test acc {test}  {row.seconds:6.1f}s  "
            + "  ".join(f"{p.split('_')[0][:4]} {row.phases[p]:.1f}s" for p in PHASES
                        if p != "filtering" or row.phases[p]))  # only for stages that filter


def new_record(stage: StageConfig, seed: int, options: RunOptions, data: CifarArrays, group_id: str) -> RunRecord:
    """The record of a run about to start: its header (time, the checkout's commit now), what
    runs, and the stage and preset files it was read from with their digests."""
    preset, settings = options.preset, options.settings
    return RunRecord(
        stage=stage.name, seed=seed, group_id=group_id, preset=preset.name, preset_reason=options.preset_reason,
        device=str(settings.device), precision=settings.precision, precision_reason=options.precision_reason,
        channels_last=settings.channels_last,
        data_source=data.source_label, synthetic=data.synthetic, train_images=int(len(data.train_labels)),
        test_images=int(len(data.test_labels)), width_divisor=preset.width_divisor,
        epochs_planned=run_epochs(preset, stage), blog_seconds=stage.source.seconds,
        target_accuracy=preset.target_accuracy, config=stage.as_dict(),
        config_files=runlog.file_digests(stage.files + ((preset.file,) if preset.file else ())),
        eval_every=settings.eval_every, compiled=settings.compile_net, compile_mode=settings.compile_mode)


def run_one(stage: StageConfig, seed: int, options: RunOptions, data: CifarArrays, *, group_id: str,
            console: Console, execution) -> None:
    """Train ``stage`` once with ``seed`` and hand its record to ``execution.keep``, whatever
    happens; a failed run raises UserError after its record is kept."""
    record = new_record(stage, seed, options, data, group_id)
    shard = execution.shard
    settings = replace(options.settings, shard=shard)
    bar = _progress(console, options.show and console.is_terminal)
    task = bar.add_task(f"{stage.name} seed {seed}", total=None)
    def on_epoch(row):
        execution.alive()
        if options.show:
            console.print(epoch_line(stage.name, row))

    def on_step(steps_done):
        execution.alive()
        bar.update(task, completed=steps_done)

    def on_end(result: RunResult):
        record.result = result

    hooks = Hooks(on_start=lambda steps: execution.alive() or bar.update(task, total=steps), on_step=on_step,
                  on_epoch=on_epoch, on_end=on_end)
    interruption = None
    try:
        with bar:
            train_stage(stage, options.preset, data, seed, settings, hooks)
        record.status = "ok"
    except NonFiniteLoss as exc:
        record.status, record.error, record.failed_step = "failed", str(exc), exc.step
    except RuntimeError as exc:  # under --ddp: a collective failed, because another rank died or hung
        if shard.world_size == 1:
            raise
        record.status = "failed"
        record.error = f"a collective of the {shard.world_size}-rank run failed ({str(exc).splitlines()[0][:200]})"
    except KeyboardInterrupt as exc:
        record.status, record.error, interruption = "interrupted", interrupt_message(exc), exc
    finally:
        if record.status == "running":  # an unexpected exception: still recorded
            record.status = "failed"
        execution.keep(record)
    if interruption is not None:
        raise interruption
    if record.status == "failed":
        raise UserError(f"stage {stage.name} seed {seed}: {record.error}; record {record.header['run_id']} "
                        "written as failed")


# ---- the plan, and the end of the command


def run_plan(plan: Plan, options: RunOptions, data: CifarArrays, *, execution, group_id: str,
             console: Console) -> int:
    """Every run ``execution`` gives this process, then the end of the command; the exit status."""
    outcome, interruption, failure = "ok", None, None
    try:
        current = None
        for stage, seed in execution.runs(plan):
            if options.show and stage is not current:
                console.print(f"[bold]{stage.name}[/bold]: {stage.description}")
                current = stage
            execution.starting(stage, seed)
            run_one(stage, seed, options, data, group_id=group_id, console=console, execution=execution)
    except KeyboardInterrupt as exc:
        outcome, interruption = "interrupted", exc
    except UserError as exc:
        outcome, failure = "failed", str(exc)
    records, errors = execution.gather(plan, outcome, interruption is not None)
    if not execution.is_main:
        if failure:
            print(f"error: rank {execution.ctx.rank}: {failure}", file=sys.stderr)
        if interruption is not None:
            return interrupt_exit_code(interruption)
        return EXIT_USER_ERROR if failure else 0
    return finish_command(records, errors, options, data, console, interruption=interruption, failure=failure,
                          source=execution.source)


def ladder_title(records: list[LoggedRun]) -> str:
    first = records[0]
    hw = first.hardware
    where = hw.get("gpu") or f"{hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores"
    return (f"ladder, preset {first.preset}, {first.device} ({where}), precision {first.precision}, "
            f"data: {first.data_source}; seconds on each source's clock, p-values against the stage above")


def finish_command(records: list[LoggedRun], errors: list[str], options: RunOptions, data: CifarArrays,
                   console: Console, *, interruption=None, failure: str | None = None, source: str = "") -> int:
    """The end of every command: the ladder table (with the columns other packages add, judged
    on the whole log), the SYNTHETIC warning, where the records went, one error line per failed
    run or lost rank; the exit status."""
    ok = [r for r in records if r.status == "ok"]
    if ok:
        target = options.preset.target_accuracy
        rows = ladder_rows(ok, target, options.configs)
        columns = extra_columns(runlog.read_records(options.log_dir))
        console.print(rich_table(rows, target, ladder_title(ok), columns))
        for row in rows if target is not None else []:
            if row.target_recorded and not row.reached_all:
                console.print(f"[yellow]warning[/yellow]: {row.label} reached the preset's target {100 * target:g}% "
                              f"in {len(row.target_seconds)} of {row.runs} run(s) (best "
                              f"{100 * max(row.accuracy, default=0):.1f}%): its time to target is not comparable", highlight=False)
    if data.synthetic:
        console.print("[bold red]SYNTHETIC data[/bold red]: accuracies say nothing about CIFAR-10")
    if records:
        console.print(f"{len(records)} records{source} appended to {runlog.log_path(options.log_dir)}")
    reported = set()
    for r in records:
        if r.status == "failed":
            line = (f"{r.stage} seed {r.seed}" + (f" (rank {r.rank})" if r.rank is not None else "")
                    + ": failed" + (f": {r.error}" if r.error else ""))
            reported.add((r.stage, r.seed))
            print(f"error: {line}; record {r.run_id} written as failed", file=sys.stderr)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if failure and not reported:
        print(f"error: {failure}", file=sys.stderr)
    if interruption is not None:
        console.print(f"[yellow]{interrupt_message(interruption)}[/yellow]: unfinished runs logged as 'interrupted'")
        return interrupt_exit_code(interruption)
    return EXIT_USER_ERROR if (failure or errors or len(ok) < len(records)) else 0
