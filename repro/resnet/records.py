"""What a ResNet run produces, defined once, and the one reader of it.

* ``RunResult``: what training measured, built once by ``train.finish`` from the run's epochs.
* ``RunRecord``: which run it was (stage, seed, options, outcome) around its ``RunResult``;
  ``to_dict()`` is the line appended to ``logs/runs.jsonl``.
* ``LoggedRun``: a record read back from a log, typed, whichever version of the suite wrote it.
  The command's ladder table, the report and the claims read records only through it.

docs/records.md documents every field (name, type, unit, clock).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import runlog
from .clocks import BEFORE_EPOCHS, CLOCKS, EPOCH_PHASES, PHASES

STATUSES = ("running", "ok", "failed", "interrupted")
# a field with this metadata is left out of the record while it is None (it applies to some runs only)
OPTIONAL = {"omit_if_none": True}


@dataclass(frozen=True)
class EpochRow:
    """One epoch: its last LR, training loss and accuracy (over the steps it ran), the test
    pass after it, wall seconds, per-phase seconds and random draws of the loader."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    test_loss: float | None  # None: no test pass after this epoch (--eval-every)
    test_accuracy: float | None
    seconds: float
    elapsed_seconds: float
    phases: dict[str, float]
    rng_calls: int | None


@dataclass(frozen=True)
class RunResult:
    """What one run measured (all of it, or as far as it got)."""

    phase_timing: str = ""
    batch_norm_dtype: str = ""
    whitening: bool = False
    batch_size: int = 0
    steps_per_epoch: int = 0
    steps_planned: int = 0
    steps: int = 0
    epochs: tuple[EpochRow, ...] = ()
    phases: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    total_seconds: float = 0.0
    seconds_by_timing: dict[str, float] = field(default_factory=dict)
    test_accuracy: float | None = None  # the final TTA pass's, else the last epoch's test pass
    test_accuracy_no_tta: float | None = field(default=None, metadata=OPTIONAL)
    target_epoch: int | None = None
    target_seconds: float | None = None
    train_flops: int | None = None
    flops_per_second: float | None = None
    peak_flops: float | None = None  # the machine's dense matmul FLOP/s in the run's precision
    utilisation: float | None = None  # flops_per_second / peak_flops
    compile_seconds: float | None = None  # torch.compile's one-time work (in total_seconds and every clock)


@dataclass
class RunRecord:
    """One run of one stage with one seed: made when the run starts (its header says when, from
    which commit), given its result and outcome once when it ends."""

    stage: str
    seed: int
    group_id: str
    preset: str | None = None
    preset_reason: str | None = None
    device: str | None = None
    precision: str | None = None
    precision_reason: str | None = None  # requested, or why auto chose it
    channels_last: bool | None = None
    data_source: str | None = None
    synthetic: bool | None = None
    train_images: int | None = None
    test_images: int | None = None
    width_divisor: int | None = None
    epochs_planned: float | None = None
    blog_seconds: float | None = None
    target_accuracy: float | None = None
    config: dict[str, Any] | None = None
    config_files: dict[str, str] | None = field(default=None, metadata=OPTIONAL)  # file -> its sha256[:16]
    eval_every: int = 1  # the per-epoch test pass ran after every N-th epoch (and the last)
    compiled: bool = False  # trained through torch.compile (--compile)
    compile_mode: str | None = field(default=None, metadata=OPTIONAL)  # torch.compile's mode, when compiled
    ddp_ranks: int | None = field(default=None, metadata=OPTIONAL)
    rank: int | None = field(default=None, metadata=OPTIONAL)
    world_size: int | None = field(default=None, metadata=OPTIONAL)
    status: str = "running"
    error: str | None = field(default=None, metadata=OPTIONAL)
    failed_step: int | None = field(default=None, metadata=OPTIONAL)  # where a non-finite loss appeared
    result: RunResult = field(default_factory=RunResult)
    header: dict[str, Any] = field(default_factory=lambda: runlog.record_header("resnet"))

    def to_dict(self) -> dict[str, Any]:
        """The record as written: the common header, this run's fields, then the result's."""
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        out = dict(self.header, status=self.status)
        for obj in (self, self.result):
            for f in dataclasses.fields(obj):
                if f.name in ("result", "header"):
                    continue
                value = getattr(obj, f.name)
                if value is None and f.metadata.get("omit_if_none"):
                    continue
                out[f.name] = [dataclasses.asdict(v) for v in value] if f.name == "epochs" else value
        return out


# ---- reading records back


@dataclass(frozen=True)
class LoggedEpoch:
    epoch: int
    test_accuracy: float | None
    seconds: float
    phases: dict[str, float] | None  # None in records older than per-epoch phases


def _number(value) -> float | None:
    """A measured number as logged (JSON keeps NaN and inf as strings), or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class LoggedRun:
    """A ResNet record as read back from a log. Fields a version of the suite did not write are
    None (or empty), never guessed; ``raw`` is the line itself."""

    run_id: str
    stage: str
    seed: int
    status: str
    group_id: str | None
    preset: str | None
    compiled: bool
    synthetic: bool
    device: str | None
    precision: str | None
    data_source: str | None
    hardware: dict[str, Any]
    config: dict[str, Any] | None
    error: str | None
    rank: int | None
    test_accuracy: float | None
    test_accuracy_no_tta: float | None
    total_seconds: float | None
    seconds_by_timing: dict[str, float]
    phases: dict[str, float]
    epochs: tuple[LoggedEpoch, ...]
    target_accuracy: float | None
    target_epoch: int | None
    target_seconds: float | None
    train_flops: float | None
    utilisation: float | None
    blog_seconds: float | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "LoggedRun":
        if isinstance(record, LoggedRun):
            return record
        epochs = tuple(LoggedEpoch(epoch=int(e.get("epoch", i + 1)), test_accuracy=_number(e.get("test_accuracy")),
                                   seconds=_number(e.get("seconds")) or 0.0,
                                   phases=e["phases"] if isinstance(e.get("phases"), dict) else None)
                       for i, e in enumerate(record.get("epochs") or []))
        return cls(
            run_id=str(record.get("run_id", "")), stage=str(record["stage"]), seed=int(record.get("seed", 0)),
            status=str(record.get("status", "ok")), group_id=record.get("group_id"), preset=record.get("preset"),
            compiled=bool(record.get("compiled")), synthetic=bool(record.get("synthetic")),
            device=record.get("device"), precision=record.get("precision"), data_source=record.get("data_source"),
            hardware=dict(record.get("hardware") or {}), config=record.get("config"), error=record.get("error"),
            rank=record.get("rank"), test_accuracy=_number(record.get("test_accuracy")),
            test_accuracy_no_tta=_number(record.get("test_accuracy_no_tta")),
            total_seconds=_number(record.get("total_seconds")),
            seconds_by_timing=dict(record.get("seconds_by_timing") or {}), phases=dict(record.get("phases") or {}),
            epochs=epochs, target_accuracy=_number(record.get("target_accuracy")),
            target_epoch=record.get("target_epoch"), target_seconds=_number(record.get("target_seconds")),
            train_flops=_number(record.get("train_flops")), utilisation=_number(record.get("utilisation")),
            blog_seconds=_number(record.get("blog_seconds")), raw=record)

    @property
    def measured(self) -> bool:
        """An ok run with a time: what the ladder averages."""
        return self.status == "ok" and self.total_seconds is not None

    def seconds_on(self, clock: str) -> float:
        """Seconds on ``clock`` (a record without per-clock seconds: the suite's total)."""
        return float(self.seconds_by_timing.get(clock, self.total_seconds or 0.0))

    def target_epoch_for(self, target: float | None = None) -> int | None:
        """The first epoch whose test pass reached ``target``: the record's own ``target_epoch``
        when ``target`` is the one the run was made with (or None), else read from the epochs."""
        if target is None or self.target_accuracy is None or target == self.target_accuracy:
            return self.target_epoch
        return next((e.epoch for e in self.epochs if e.test_accuracy is not None and e.test_accuracy >= target),
                    None)

    def seconds_to_target(self, clock: str, target: float | None = None) -> float | None:
        """Seconds on ``clock`` at the end of the epoch whose test pass first reached the target
        (the run's own, or ``target``; None if none did): the run's preparation and compilation,
        then every epoch up to it, each with the phases the clock counts. Records without
        per-epoch phases give the suite clock's ``target_seconds``."""
        epoch = self.target_epoch_for(target)
        if epoch is None:
            return None
        rows = self.epochs[:epoch]
        if len(rows) < epoch or any(e.phases is None for e in rows):
            return self.target_seconds if epoch == self.target_epoch else None
        counted = CLOCKS.get(clock, CLOCKS["blog"])
        before = sum(self.phases.get(p, 0.0) for p in BEFORE_EPOCHS if p in counted)
        return before + sum(e.phases.get(p, 0.0) for e in rows for p in EPOCH_PHASES if p in counted)


def logged_runs(records) -> list[LoggedRun]:
    """Every ResNet record of ``records`` (dicts as read from logs, or LoggedRuns), typed."""
    return [LoggedRun.from_dict(r) for r in records
            if isinstance(r, LoggedRun) or r.get("experiment", "resnet") == "resnet"]
