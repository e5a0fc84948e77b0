"""The one training loop that serves every stage: the stage config decides the net variant,
the LR schedule and the loader mode; this loop never branches on the stage name."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .config import Preset, StageConfig
from .data import CifarArrays
from .devices import PhaseTimer, Precision
from .loaders import TrainBatches, eval_batches
from .nets import DawnResNet18, NetConfig

PHASES = ("data_wait", "forward_backward", "optimizer_step", "evaluation")


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, epoch: int, value: float):
        super().__init__(f"loss became {value} at step {step} (epoch {epoch})")
        self.step, self.epoch, self.value = step, epoch, value


@dataclass
class RunProgress:
    """Filled in as training goes, so an interrupted or failed run still has its numbers."""

    epochs: list[dict] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    total_seconds: float = 0.0
    steps_done: int = 0
    step_losses: list[float] = field(default_factory=list)

    @property
    def test_accuracy(self) -> float | None:
        return self.epochs[-1]["test_accuracy"] if self.epochs else None


def build_stage_net(stage: StageConfig, preset: Preset) -> DawnResNet18:
    return DawnResNet18(NetConfig(duplicate_bn_relu=stage.net.duplicate_bn_relu,
                                  bn_weight_init=stage.net.bn_weight_init,
                                  width_divisor=preset.width_divisor))


def _to_device(x, y, device, channels_last):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _timed(batches, timer: PhaseTimer, device, channels_last):
    """Yield device batches; the wait for each (loader + copy) is the data_wait phase."""
    iterator = iter(batches)
    while True:
        start = timer.now()
        try:
            x, y = next(iterator)
        except StopIteration:
            return
        x, y = _to_device(x, y, device, channels_last)
        timer.totals["data_wait"] += timer.now() - start
        yield x, y


def _warm_up(net, batch_size, device, precision: Precision, channels_last) -> None:
    """One untimed fwd+bwd on random data with a throwaway copy (cuDNN autotuning, oneDNN
    primitive creation), as the blog did before starting its clock."""
    spare = copy.deepcopy(net).train()
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with precision.autocast():
        loss = spare(x).float().sum()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate(net, batches, device, precision: Precision, channels_last) -> tuple[float, float]:
    net.eval()
    correct, loss_sum, count = 0, 0.0, 0
    for x, y in batches:
        x, y = _to_device(x, y, device, channels_last)
        with precision.autocast():
            logits = net(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    net.train()
    return loss_sum / count, correct / count


def train_stage(
    stage: StageConfig,
    preset: Preset,
    data: CifarArrays,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool,
    seed: int,
    progress: RunProgress,
    on_step: Callable[[int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> RunProgress:
    torch.manual_seed(seed)
    net = build_stage_net(stage, preset).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    amp = Precision(device, precision)
    opt_cfg = stage.optimizer
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=opt_cfg.momentum,
                                nesterov=opt_cfg.nesterov, weight_decay=opt_cfg.weight_decay)
    train = TrainBatches(data.train_images, data.train_labels, preprocess=stage.loader.preprocess,
                         rng=stage.loader.rng, workers=stage.loader.workers,
                         batch_size=opt_cfg.batch_size, seed=seed, pin_memory=device.type == "cuda")
    test = eval_batches(data.test_images, data.test_labels, opt_cfg.batch_size)
    steps_per_epoch = len(train)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _warm_up(net, opt_cfg.batch_size, device, amp, channels_last)

    timer = PhaseTimer(device)
    net.train()
    for epoch in range(preset.epochs):
        before = timer.snapshot()
        rng_calls_before = train.dataset.rng.calls
        epoch_start = timer.now()
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (x, y) in enumerate(_timed(train, timer, device, channels_last)):
            lr = stage.schedule.lr_at(epoch + step / steps_per_epoch, preset.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with timer.phase("forward_backward"):
                with amp.autocast():
                    logits = net(x)
                    loss = F.cross_entropy(logits.float(), y)
                amp.backward(loss)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(progress.steps_done, epoch + 1, loss_value)
            with timer.phase("optimizer_step"):
                amp.step(optimizer)
                optimizer.zero_grad(set_to_none=True)
            progress.steps_done += 1
            progress.step_losses.append(loss_value)
            loss_sum += loss_value * len(y)
            correct += (logits.detach().argmax(1) == y).sum().item()
            seen += len(y)
            if on_step:
                on_step(progress.steps_done)
        with timer.phase("evaluation"):
            test_loss, test_acc = evaluate(net, test, device, amp, channels_last)
        seconds = timer.now() - epoch_start
        after = timer.snapshot()
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "seconds": seconds,
            "phases": {p: after.get(p, 0.0) - before.get(p, 0.0) for p in PHASES},
            # draws made in this process; per-sample draws inside worker processes are not seen
            "rng_calls": (train.dataset.rng.calls - rng_calls_before
                          if train.workers == 0 or stage.loader.rng == "bulk" else None),
        }
        progress.epochs.append(row)
        progress.total_seconds += seconds
        progress.phases = {p: after.get(p, 0.0) for p in PHASES}
        if on_epoch:
            on_epoch(row)
    return progress

