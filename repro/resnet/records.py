"""What a ResNet run produces, defined once: ``RunResult`` (what training measured) inside a
``RunRecord`` (which run it was). ``RunRecord.to_dict()`` is the line appended to
``logs/runs.jsonl``; docs/records.md documents every field (name, type, unit, clock).

A ``RunResult`` is filled in as training goes, so an interrupted or failed run still records
the epochs and seconds it got through.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .. import runlog

PHASES = ("preprocessing", "data_wait", "forward_backward", "optimizer_step", "evaluation")
# a field with this metadata is left out of the record while it is None (it applies to some runs only)
OPTIONAL = {"omit_if_none": True}
# a field with this metadata is kept in memory (tests, callers) but never written
NOT_RECORDED = {"recorded": False}


@dataclass
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


@dataclass
class RunResult:
    phase_timing: str = ""
    bn_precision: str = ""
    whitening: bool = False
    batch_size: int = 0
    steps_per_epoch: int = 0
    steps_planned: int = 0
    steps: int = 0
    epochs: list[EpochRow] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    total_seconds: float = 0.0
    seconds_by_timing: dict[str, float] = field(default_factory=dict)
    final_accuracy: float | None = field(default=None, metadata=NOT_RECORDED)  # the TTA pass's
    test_accuracy_no_tta: float | None = field(default=None, metadata=OPTIONAL)
    target_epoch: int | None = None
    target_seconds: float | None = None
    train_flops: int | None = None
    flops_per_second: float | None = None
    peak_flops: float | None = None  # the machine's dense matmul FLOP/s in the run's precision
    utilisation: float | None = None  # flops_per_second / peak_flops
    compile_seconds: float | None = None  # torch.compile's one-time work (in total_seconds and every clock)
    failed_step: int | None = field(default=None, metadata=OPTIONAL)
    step_losses: list[float] = field(default_factory=list, metadata=NOT_RECORDED)

    @property
    def test_accuracy(self) -> float | None:
        """The run's accuracy: the final TTA pass's, else the last epoch's test pass."""
        if self.final_accuracy is not None:
            return self.final_accuracy
        return self.epochs[-1].test_accuracy if self.epochs else None


@dataclass
class RunRecord:
    """One run of one stage with one seed. ``status``: running | ok | failed | interrupted."""

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
    eval_every: int = 1  # the per-epoch test pass ran after every N-th epoch (and the last)
    compiled: bool = False  # trained through torch.compile (--compile)
    ddp_ranks: int | None = field(default=None, metadata=OPTIONAL)
    rank: int | None = field(default=None, metadata=OPTIONAL)
    world_size: int | None = field(default=None, metadata=OPTIONAL)
    status: str = "running"
    error: str | None = field(default=None, metadata=OPTIONAL)
    result: RunResult = field(default_factory=RunResult)
    header: dict[str, Any] = field(default_factory=lambda: runlog.record_header("resnet"))

    def to_dict(self) -> dict[str, Any]:
        """The record as written: the common header, this run's fields, then the result's."""
        out = dict(self.header, status=self.status)
        for obj in (self, self.result):
            for f in dataclasses.fields(obj):
                if f.name in ("result", "header") or not f.metadata.get("recorded", True):
                    continue
                value = getattr(obj, f.name)
                if value is None and f.metadata.get("omit_if_none"):
                    continue
                out[f.name] = [dataclasses.asdict(v) for v in value] if f.name == "epochs" else value
        out["test_accuracy"] = self.result.test_accuracy
        return out
