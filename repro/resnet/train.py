"""The one training loop that serves every stage: the stage config decides the net, the LR
schedule, the loss, the parameter groups, the loader, weight averaging and TTA; this loop never
branches on the stage name."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .averaging import WeightAverage
from .config import OptimizerSection, Preset, StageConfig, run_epochs, total_steps
from .data import CifarArrays
from .devices import PhaseTimer, Precision
from .errors import UserError, signals_deferred
from .evaluation import evaluate
from .loaders import Shard, batch_sizes, eval_batches, make_train_loader, normalise_transpose
from .nets import PatchWhitening, batch_norm_over_ranks, build_net, fit_whitening

PHASES = ("preprocessing", "data_wait", "forward_backward", "optimizer_step", "evaluation")
# which measured seconds each source's clock corresponds to (see SourceSection.timing)
TIMINGS = {
    "blog": ("preprocessing", "training", "evaluation", "final_evaluation"),  # posts 1-4: test passes included
    "dawnbench": ("preprocessing", "training"),  # post 8: no validation
    "airbench": ("preprocessing", "training", "final_evaluation"),  # whitening + training + final TTA pass
}


TIMING_MODES = ("sync", "deferred")


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
    summary: dict = field(default_factory=dict)  # end-of-run numbers: TTA accuracy, FLOPs, target, timings

    @property
    def test_accuracy(self) -> float | None:
        if "test_accuracy" in self.summary:
            return self.summary["test_accuracy"]
        return self.epochs[-1]["test_accuracy"] if self.epochs else None


def build_stage_net(stage: StageConfig, preset: Preset) -> nn.Module:
    return build_net(width_divisor=preset.width_divisor, **stage.net)


def is_bias(name: str, param: nn.Parameter) -> bool:
    """BN shifts and the whitening bias: the parameters post 8 and airbench give their own LR."""
    return name.endswith("bias") and param.ndim == 1


def param_groups(net: nn.Module, opt: OptimizerSection, batch_size: int) -> list[dict]:
    """Two groups (weights, biases) with LR and weight decay in torch's units.

    Mean-loss values from the config; ``loss_reduction = "sum"`` divides the LR by the batch
    size and multiplies the weight decay by it (Page's convention), which is the same update.
    """
    lr_unit, wd_unit = (1.0 / batch_size, float(batch_size)) if opt.loss_reduction == "sum" else (1.0, 1.0)
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not is_bias(n, p)], "lr_scale": lr_unit,
         "weight_decay": opt.weight_decay * wd_unit},
        {"params": [p for n, p in named if is_bias(n, p)], "lr_scale": lr_unit * opt.bias_lr_factor,
         "weight_decay": opt.weight_decay * wd_unit * opt.bias_wd_factor},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(net: nn.Module, opt: OptimizerSection, batch_size: int) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(net, opt, batch_size), lr=0.0, momentum=opt.momentum, nesterov=opt.nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, opt: OptimizerSection) -> torch.Tensor:
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 loss under autocast
    return F.cross_entropy(logits, labels, label_smoothing=opt.label_smoothing, reduction=opt.loss_reduction)


def cast_batch_norm(net: nn.Module, precision: Precision, bn_fp32: bool) -> str:
    """Keep BN in fp32 (post 3) or, like the blog's ``model.half()``, cast it to the reduced dtype.

    Returns what BN runs in, for the record."""
    if precision.dtype is None:
        return "fp32 (fp32 run)"
    if bn_fp32:
        return "fp32 (autocast already keeps BN parameters in fp32 here)"
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.to(precision.dtype)
    return f"{precision.name} (cast, as the blog's half-precision model)"


def warm_up_and_count_flops(net: nn.Module, opt: OptimizerSection, batch_size: int, device, channels_last: bool,
                            precision: Precision) -> int:
    """One untimed fwd+bwd on random data with a throwaway copy (cuDNN autotuning, oneDNN
    primitive creation), as the blog did before starting its clock; torch's counter reads the
    step's FLOPs on the way."""
    from torch.utils.flop_counter import FlopCounterMode

    spare = copy.deepcopy(net).train()
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch_size, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        with precision.autocast():
            loss = loss_fn(spare(x), y, opt)
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return int(counter.get_total_flops())


class EpochStats:
    """An epoch's training losses and correct count, kept on the device.

    Nothing here reads a value back to the host: ``read`` does, once per epoch (cifar10-fast's
    way), unless the caller asks for ``last_loss`` after every step (the sync mode). In a
    run spread over ranks, ``read`` first sums every rank's numbers (one all-reduce), so the
    losses and counts are the whole batches'."""

    def __init__(self, device: torch.device, across_ranks: bool = False):
        self.loss_sums: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.first_step: int | None = None
        self.across_ranks = across_ranks

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """``loss``: this step's mean loss per example (a 0-d tensor); ``step``: the run's step index."""
        loss = loss.detach().float()
        if self.first_step is None:
            self.first_step = step
        self.loss_sums.append(loss.double() * len(labels))  # exact: loss_sum / size gives back the fp32 loss
        self.sizes.append(len(labels))
        self.correct += (logits.detach().argmax(1) == labels).sum()

    def last_loss(self) -> float:
        return (self.loss_sums[-1] / self.sizes[-1]).item()

    def read(self) -> tuple[list[float], list[int], int, int | None]:
        """(per-step mean losses, per-step batch sizes, correct count, first non-finite step or
        None): one host read."""
        if not self.loss_sums:
            return [], [], 0, None
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=self.correct.device)
        values = torch.cat([torch.stack(self.loss_sums), sizes, self.correct.double().view(1)])
        if self.across_ranks:
            import torch.distributed as dist

            dist.all_reduce(values)
        values, steps = values.tolist(), len(self.sizes)
        totals = [int(n) for n in values[steps:2 * steps]]
        losses = [loss_sum / n for loss_sum, n in zip(values[:steps], totals)]
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        return losses, totals, int(values[-1]), None if bad is None else self.first_step + bad


def _to_device(x, y, device, channels_last):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _timed(batches, timer: PhaseTimer, device, channels_last):
    """Yield device batches; the wait for each (loader + copy), and starting the epoch's loader
    (worker processes, the device loader's augmentation pass), is the data_wait phase."""
    start = timer.now()
    with signals_deferred():  # a Ctrl-C inside a half-started DataLoader iterator would orphan its workers
        iterator = iter(batches)
    while True:
        try:
            x, y = next(iterator)
        except StopIteration:
            timer.totals["data_wait"] += timer.now() - start
            return
        x, y = _to_device(x, y, device, channels_last)
        timer.totals["data_wait"] += timer.now() - start
        yield x, y
        start = timer.now()


def check_split_over_ranks(stage: StageConfig, preset: Preset, ranks: int) -> None:
    """A UserError now, before any data or training, if ``stage`` cannot be one run over
    ``ranks`` ranks (``--ddp``): the loader must be able to shard, every rank needs images, and
    ghost BN's splits must divide among the ranks (checked by the conversion itself)."""
    if stage.loader.backend == "dali":
        raise UserError(f"stage {stage.name}: --ddp needs loader.backend = \"device\" or \"dataloader\", "
                        "not \"dali\"")
    batch = min(stage.optimizer.batch_size, preset.train_images or stage.optimizer.batch_size)
    if batch < ranks:
        raise UserError(f"stage {stage.name}: a batch of {batch} cannot be split over {ranks} ranks")
    try:
        batch_norm_over_ranks(build_stage_net(stage, preset), ranks)
    except UserError as exc:
        raise UserError(f"stage {stage.name}: {exc}") from None


def data_parallel(net: nn.Module, device: torch.device, ranks: int) -> nn.Module:
    """``net`` under DistributedDataParallel when the run is spread over ranks (it averages the
    ranks' gradients during the backward pass); ``net`` itself otherwise."""
    if ranks == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)


def rank_loss_weight(rank_images: int, batch_images: int, ranks: int, opt: OptimizerSection) -> float:
    """What a rank's loss is multiplied by so that DDP's average of the ranks' gradients is the
    gradient of the whole batch's loss: a mean over this rank's images becomes its share of the
    mean over the batch; a sum needs only DDP's division by the number of ranks undone."""
    return ranks * (rank_images / batch_images if opt.loss_reduction == "mean" else 1.0)


def _whitening_bias(net: nn.Module) -> list[nn.Parameter]:
    return [m.bias for m in net.modules() if isinstance(m, PatchWhitening) and m.bias is not None]


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
    phase_timing: str = "sync",
    shard: Shard = Shard(),
) -> RunProgress:
    """``phase_timing``: ``sync`` times every phase (on CUDA a synchronisation per phase, which
    serialises loader and GPU) and checks each step's loss at once; ``deferred`` keeps the step
    statistics on the device and synchronises once per epoch (see ``PhaseTimer``).

    ``shard``: this rank's part of one run spread over ranks (``--ddp``, the process group
    already formed): each rank trains on its slice of every batch under DistributedDataParallel,
    with BN statistics and loss weights that keep the whole-batch arithmetic of one process."""
    if phase_timing not in TIMING_MODES:
        raise ValueError(f"phase_timing must be one of {TIMING_MODES}, not {phase_timing!r}")
    torch.manual_seed(seed)
    opt_cfg = stage.optimizer
    amp = Precision(device, precision)
    timer = PhaseTimer(device, sync_phases=phase_timing == "sync")
    progress.summary["phase_timing"] = phase_timing + (
        " (per-phase seconds of a CUDA run serialise the loader with the GPU)" if phase_timing == "sync"
        else " (one synchronisation per epoch; per-phase seconds on CUDA are host launch times)")
    ranks = shard.world_size
    net = build_stage_net(stage, preset)
    if ranks > 1:
        net = batch_norm_over_ranks(net, ranks)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    progress.summary["bn_precision"] = cast_batch_norm(net, amp, stage.precision.bn_fp32)

    with timer.phase("preprocessing"):  # DAWNBench and airbench count data preparation and whitening
        train = make_train_loader(stage.loader, data.train_images, data.train_labels,
                                  batch_size=opt_cfg.batch_size, seed=seed, device=device, shard=shard)
        whitened = fit_whitening(net, torch.from_numpy(normalise_transpose(data.train_images[:10_000])))
    batch_size = train.batch_size
    test = eval_batches(data.test_images, data.test_labels, opt_cfg.batch_size)
    optimizer = make_optimizer(net, opt_cfg, batch_size)
    epochs = run_epochs(preset, stage)
    steps_per_epoch = len(train)
    steps_total = total_steps(epochs, steps_per_epoch)
    average = (WeightAverage(net, stage.ema.kind, stage.ema.momentum, stage.ema.every, steps_total)
               if stage.ema.kind != "none" else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # every rank counts its own slice's FLOPs; the run's are the ranks' together
    flops_per_step = ranks * warm_up_and_count_flops(net, opt_cfg, len(shard.take(range(batch_size))), device,
                                                     channels_last, amp)
    progress.summary.update(steps_planned=steps_total, steps_per_epoch=steps_per_epoch, epochs_planned=epochs,
                            batch_size=batch_size, whitening=whitened)
    model = data_parallel(net, device, ranks)
    whole_batches = batch_sizes(len(data.train_labels), batch_size, stage.loader.drop_last, ranks)

    def to_device(x, y):
        return _to_device(x, y, device, channels_last)

    target = preset.target_accuracy
    net.train()
    for epoch in range(math.ceil(epochs)):
        if opt_cfg.freeze_whitening_bias_after and epoch >= opt_cfg.freeze_whitening_bias_after:
            frozen = [bias for bias in _whitening_bias(net) if bias.requires_grad]
            for bias in frozen:
                bias.requires_grad_(False)  # SGD skips a parameter without a gradient
            if frozen:
                model = data_parallel(net, device, ranks)  # DDP fixes its trained parameters when it wraps
        before = timer.snapshot()
        rng_calls_before = train.rng_calls
        epoch_start = timer.now(sync=True)
        stats = EpochStats(device, across_ranks=ranks > 1)
        for step_in_epoch, (x, y) in enumerate(_timed(train, timer, device, channels_last)):
            lr = stage.schedule.lr_at(progress.steps_done / steps_per_epoch, epochs)
            set_lr(optimizer, lr)
            with timer.phase("forward_backward"):
                with amp.autocast():
                    logits = model(x)
                    loss = loss_fn(logits, y, opt_cfg)
                amp.backward(loss if ranks == 1 else
                             loss * rank_loss_weight(len(y), whole_batches[step_in_epoch], ranks, opt_cfg))
            stats.add(progress.steps_done, loss / len(y) if opt_cfg.loss_reduction == "sum" else loss, logits, y)
            if phase_timing == "sync" and not math.isfinite(last := stats.last_loss()):
                raise NonFiniteLoss(progress.steps_done, epoch + 1, last)
            with timer.phase("optimizer_step"):
                amp.step(optimizer)
                optimizer.zero_grad(set_to_none=True)
                progress.steps_done += 1
                if average:
                    average.after_step(progress.steps_done)
            if on_step:
                on_step(progress.steps_done)
            if progress.steps_done >= steps_total:
                break
        losses, sizes, correct, bad_step = stats.read()
        progress.step_losses += losses
        if bad_step is not None:
            raise NonFiniteLoss(bad_step, epoch + 1, losses[bad_step - stats.first_step])
        seen = sum(sizes)
        train_loss = sum(l * n for l, n in zip(losses, sizes)) / max(seen, 1)
        with timer.phase("evaluation"):
            evaluated = average.model_to_evaluate() if average else net
            test_loss, test_acc = evaluate(evaluated, test, to_device=to_device, autocast=amp.autocast)
        seconds = timer.now(sync=True) - epoch_start
        after = timer.snapshot()
        progress.total_seconds = sum(after.values())
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_accuracy": correct / max(seen, 1),
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "seconds": seconds,
            "elapsed_seconds": progress.total_seconds,
            "phases": {p: after.get(p, 0.0) - before.get(p, 0.0) for p in PHASES},
            "rng_calls": None if rng_calls_before is None else train.rng_calls - rng_calls_before,
        }
        progress.epochs.append(row)
        progress.phases = {p: after.get(p, 0.0) for p in PHASES}
        if target is not None and test_acc >= target and "target_epoch" not in progress.summary:
            progress.summary.update(target_epoch=epoch + 1, target_seconds=progress.total_seconds)
        if on_epoch:
            on_epoch(row)

    evaluated = average.model_to_evaluate() if average else net
    final_eval_seconds = 0.0
    if stage.evaluation.tta != "none":
        with timer.phase("final_evaluation"):
            _, tta_acc = evaluate(evaluated, test, to_device=to_device, autocast=amp.autocast, tta=stage.evaluation.tta)
        final_eval_seconds = timer.totals["final_evaluation"]
        progress.summary.update(test_accuracy=tta_acc, test_accuracy_no_tta=progress.epochs[-1]["test_accuracy"])
    totals = timer.snapshot()
    training = sum(totals.get(p, 0.0) for p in ("data_wait", "forward_backward", "optimizer_step"))
    parts = {"preprocessing": totals.get("preprocessing", 0.0), "training": training,
             "evaluation": totals.get("evaluation", 0.0), "final_evaluation": final_eval_seconds}
    progress.total_seconds = sum(totals.values())
    progress.phases = {p: totals.get(p, 0.0) for p in PHASES + ("final_evaluation",)}
    progress.summary.update(
        seconds_by_timing={name: sum(parts[p] for p in included) for name, included in TIMINGS.items()},
        train_flops=flops_per_step * progress.steps_done,
        flops_per_second=flops_per_step * progress.steps_done / training if training > 0 else None,
    )
    progress.summary.setdefault("target_epoch", None)
    progress.summary.setdefault("target_seconds", None)
    return progress
