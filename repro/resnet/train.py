"""The one training loop that serves every stage: the stage config decides the net, the LR
schedule, the loss, the parameter groups, the loader, weight averaging and TTA; this loop never
branches on the stage name.

A run is ``prepare`` (net, loader, whitening, optimiser, the untimed warm-up step) ->
``run_epoch`` once per epoch -> ``finish`` (the final TTA pass, the clocks, FLOPs);
``train_stage`` strings them together. What it measures goes into a ``records.RunResult``."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import CifarArrays
from ..devices import PhaseTimer, Precision
from ..errors import UserError, signals_deferred
from . import loaders
from .averaging import WeightAverage
from .config import CLOCKS, OptimizerSection, Preset, StageConfig, run_epochs, total_steps
from .evaluation import evaluate
from .loaders import Shard, batch_sizes, eval_batches, make_train_loader, normalise_transpose
from .muon import FilterMuon
from .nets import PatchWhitening, batch_norm_over_ranks, build_net, fit_whitening
from .records import PHASES, EpochRow, RunResult

TIMING_MODES = ("sync", "deferred")


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, epoch: int, value: float):
        super().__init__(f"loss became {value} at step {step} (epoch {epoch})")
        self.step, self.epoch, self.value = step, epoch, value


@dataclass
class Hooks:
    """What the caller is told as a run goes: its planned step count once prepared, the steps
    done after each step, and each epoch's row."""

    on_start: Callable[[int], None] = lambda steps_planned: None
    on_step: Callable[[int], None] = lambda steps_done: None
    on_epoch: Callable[[EpochRow], None] = lambda row: None


def build_stage_net(stage: StageConfig, preset: Preset) -> nn.Module:
    return build_net(width_divisor=preset.width_divisor, **stage.net)


def is_bias(name: str, param: nn.Parameter) -> bool:
    """BN shifts and the whitening bias: the parameters post 8 and airbench give their own LR."""
    return name.endswith("bias") and param.ndim == 1


def param_groups(net: nn.Module, opt: OptimizerSection, batch_size: int, exclude: frozenset = frozenset()
                 ) -> list[dict]:
    """The SGD groups (weights, biases; the whitening bias with whichever ``whitening_bias_group``
    says, in a group of its own when its LR decays apart) with LR and weight decay in torch's
    units; parameters in ``exclude`` (Muon's filters) are left out.

    Mean-loss values from the config; ``loss_reduction = "sum"`` divides the LR by the batch
    size and multiplies the weight decay by it (Page's convention), which is the same update.
    """
    lr_unit, wd_unit = (1.0 / batch_size, float(batch_size)) if opt.loss_reduction == "sum" else (1.0, 1.0)
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad and id(p) not in exclude]
    whitening = {id(b) for b in _whitening_bias(net)}
    as_bias = opt.whitening_bias_group == "biases"
    weights = {"lr_scale": lr_unit, "weight_decay": opt.weight_decay * wd_unit}
    biases = {"lr_scale": lr_unit * opt.bias_lr_factor, "weight_decay": opt.weight_decay * wd_unit * opt.bias_wd_factor}
    groups = [
        {"params": [p for n, p in named if not is_bias(n, p) or (id(p) in whitening and not as_bias)], **weights},
        {"params": [p for n, p in named if is_bias(n, p) and id(p) not in whitening], **biases},
        {"params": [p for n, p in named if id(p) in whitening and as_bias], **biases},
    ]
    if opt.whitening_bias_decay == "linear":  # airbench94_muon: its LR falls to 0 by the time it freezes
        groups[-1]["until_epoch"] = opt.freeze_whitening_bias_after
    else:
        groups[1]["params"] += groups.pop()["params"]
    return [g for g in groups if g["params"]]


class OptimizerSet:
    """A stage's optimizers stepped as one: SGD, and Muon for the conv filters where it asks."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def make_optimizer(net: nn.Module, opt: OptimizerSection, batch_size: int, *, implementation: str = "fused",
                   peak_lr: float = 1.0):
    """SGD over the two parameter groups. ``implementation``: ``fused`` (one kernel for all the
    parameters: the same update; on a 2-core CPU no measurable gain, the optimizer step being
    ~0.2% of an airbench94 step, see scripts/bench_step.py; on a GPU it saves kernel launches),
    ``foreach``, or torch's ``default`` loop over the parameters. A torch without fused SGD for
    the device gets the default.

    ``opt.kind = "muon"``: the trainable conv filters go to ``muon.FilterMuon`` instead, whose LR
    follows the schedule's shape (``muon_lr`` at the schedule's ``peak_lr``)."""
    flags = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[implementation]
    filters = [p for p in net.parameters() if p.ndim == 4 and p.requires_grad] if opt.kind == "muon" else []
    groups = param_groups(net, opt, batch_size, exclude=frozenset(map(id, filters)))
    try:
        sgd = torch.optim.SGD(groups, lr=0.0, momentum=opt.momentum, nesterov=opt.nesterov, **flags)
    except RuntimeError:  # "fused=True requires all the params to be floating point Tensors of supported devices"
        sgd = torch.optim.SGD(groups, lr=0.0, momentum=opt.momentum, nesterov=opt.nesterov)
    if not filters:
        return sgd
    muon = FilterMuon(filters, lr=0.0, momentum=opt.muon_momentum, ns_steps=opt.muon_ns_steps,
                      lr_scale=opt.muon_lr / peak_lr)
    return OptimizerSet(sgd, muon)


def set_lr(optimizer, lr: float, epoch: float = 0.0, peak_lr: float | None = None) -> None:
    """Every group at ``lr`` times its scale; a group with ``until_epoch`` instead falls linearly
    from ``peak_lr`` to 0 at that epoch, on its own clock."""
    for group in optimizer.param_groups:
        if "until_epoch" in group:
            group["lr"] = (peak_lr or lr) * group["lr_scale"] * max(0.0, 1.0 - epoch / group["until_epoch"])
        else:
            group["lr"] = lr * group["lr_scale"]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, opt: OptimizerSection) -> torch.Tensor:
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 loss under autocast
    return F.cross_entropy(logits, labels, label_smoothing=opt.label_smoothing, reduction=opt.loss_reduction)


def cast_batch_norm(net: nn.Module, precision: Precision, bn_fp32: bool) -> str:
    """Keep BN in fp32 (post 3) or, like the blog's ``model.half()``, cast it to the reduced dtype.

    Returns what BN runs in, for the record."""
    if precision.dtype is None:
        return f"{precision.name} ({precision.name} run)"
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
    x = torch.randn(batch_size, 3, 32, 32, device=device, dtype=precision.weights_dtype)
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
        loss = loss.detach().to(torch.promote_types(loss.dtype, torch.float32))
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


def _to_device(x, y, device, channels_last, dtype=torch.float32):
    x = x.to(device, dtype, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _timed(batches, timer: PhaseTimer, device, channels_last, dtype):
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
        x, y = _to_device(x, y, device, channels_last, dtype)
        timer.totals["data_wait"] += timer.now() - start
        yield x, y
        start = timer.now()


def shard_size(n: int, shard: Shard) -> int:
    """How many of a batch of ``n`` images this rank gets."""
    return len(shard.take(range(n)))


def compile_for_shapes(net: nn.Module, opt: OptimizerSection, amp: Precision, device: torch.device,
                       channels_last: bool, *, train_sizes: set[int], eval_sizes: set[int]) -> nn.Module:
    """``torch.compile(net)`` (static shapes), compiled now for every batch size the run will
    train and evaluate on, so that no step pays for it later. The warm-up steps on random data
    leave the weights, BN statistics and gradients as they were."""
    compiled = torch.compile(net, dynamic=False)
    saved = copy.deepcopy(net.state_dict())

    def batch(n):
        x = torch.randn(n, 3, 32, 32, device=device, dtype=amp.weights_dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    net.train()
    for n in sorted(train_sizes):
        with amp.autocast():
            loss = loss_fn(compiled(batch(n)), torch.zeros(n, dtype=torch.long, device=device), opt)
        loss.backward()
    net.zero_grad(set_to_none=True)
    net.eval()
    with torch.no_grad(), amp.autocast():
        for n in sorted(eval_sizes):
            compiled(batch(n))
    net.train()
    net.load_state_dict(saved)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return compiled


def check_split_over_ranks(stage: StageConfig, preset: Preset, ranks: int) -> None:
    """A UserError now, before any data or training, if ``stage`` cannot be one run over
    ``ranks`` ranks (``--ddp``): the loader must be able to shard, every rank needs images, and
    ghost BN's splits must divide among the ranks (checked by the conversion itself)."""
    try:
        loaders.check_split_over_ranks(stage.loader.backend)
        batch = min(stage.optimizer.batch_size, preset.train_images or stage.optimizer.batch_size)
        if batch < ranks:
            raise UserError(f"a batch of {batch} cannot be split over {ranks} ranks")
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


@dataclass
class PreparedRun:
    """Everything one run needs between its epochs."""

    stage: StageConfig
    net: nn.Module
    model: nn.Module  # ``net``, or ``net`` under DistributedDataParallel
    optimizer: torch.optim.Optimizer
    train: object  # the loader backend's batches
    test: list
    average: WeightAverage | None
    amp: Precision
    timer: PhaseTimer
    device: torch.device
    channels_last: bool
    phase_timing: str
    shard: Shard
    epochs: float
    steps_per_epoch: int
    steps_planned: int
    flops_per_step: int
    whole_batches: list[int]
    target: float | None
    eval_every: int = 1
    compiled: nn.Module | None = None  # torch.compile of ``net`` (``--compile``), which trains and evaluates it

    def to_device(self, x, y):
        return _to_device(x, y, self.device, self.channels_last, self.amp.weights_dtype)

    def evaluated_net(self) -> nn.Module:
        evaluated = self.average.model_to_evaluate() if self.average else self.net
        return self.compiled if evaluated is self.net and self.compiled is not None else evaluated

    def evaluates_after(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with a test pass: every ``eval_every``-th, and the last."""
        return (epoch + 1) % self.eval_every == 0 or epoch + 1 >= math.ceil(self.epochs)


def prepare(stage: StageConfig, preset: Preset, data: CifarArrays, result: RunResult, *, device: torch.device,
            precision: str, channels_last: bool, seed: int, phase_timing: str = "sync",
            shard: Shard = Shard(), eval_every: int = 1, compile_net: bool = False) -> PreparedRun:
    """The net, loader, whitening, optimiser and EMA of one run, and one untimed warm-up step.

    ``phase_timing``: ``sync`` times every phase (on CUDA a synchronisation per phase, which
    serialises loader and GPU) and checks each step's loss at once; ``deferred`` keeps the step
    statistics on the device and synchronises once per epoch (see ``PhaseTimer``).
    ``shard``: this rank's part of one run spread over ranks (``--ddp``, the process group
    already formed): each rank trains on its slice of every batch under DistributedDataParallel,
    with BN statistics and loss weights that keep the whole-batch arithmetic of one process.
    ``eval_every``: the per-epoch test pass runs after every N-th epoch and the last.
    ``compile_net``: train and evaluate ``torch.compile(net)``; its one-time compilation for
    every batch shape the run will meet is timed as the ``compile`` phase."""
    if phase_timing not in TIMING_MODES:
        raise ValueError(f"phase_timing must be one of {TIMING_MODES}, not {phase_timing!r}")
    torch.manual_seed(seed)
    opt_cfg = stage.optimizer
    amp = Precision(device, precision)
    timer = PhaseTimer(device, sync_phases=phase_timing == "sync")
    result.phase_timing = phase_timing + (
        " (per-phase seconds of a CUDA run serialise the loader with the GPU)" if phase_timing == "sync"
        else " (one synchronisation per epoch; per-phase seconds on CUDA are host launch times)")
    ranks = shard.world_size
    net = build_stage_net(stage, preset)
    if ranks > 1:
        net = batch_norm_over_ranks(net, ranks)
    net = net.to(device, amp.weights_dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    result.bn_precision = cast_batch_norm(net, amp, stage.precision.bn_fp32)

    with timer.phase("preprocessing"):  # DAWNBench and airbench count data preparation and whitening
        train = make_train_loader(stage.loader, data.train_images, data.train_labels,
                                  batch_size=opt_cfg.batch_size, seed=seed, device=device, shard=shard)
        result.whitening = fit_whitening(net, torch.from_numpy(normalise_transpose(data.train_images[:10_000])))
    batch_size = train.batch_size
    epochs = run_epochs(preset, stage)
    steps_per_epoch = len(train)
    steps_planned = total_steps(epochs, steps_per_epoch)
    average = (WeightAverage(net, stage.ema.kind, stage.ema.momentum, stage.ema.every, steps_planned,
                             start_step=round(stage.ema.start_epochs * steps_per_epoch),
                             copy_back_each_epoch=stage.ema.copy_back_each_epoch)
               if stage.ema.kind != "none" else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # every rank counts its own slice's FLOPs; the run's are the ranks' together
    flops_per_step = ranks * warm_up_and_count_flops(net, opt_cfg, len(shard.take(range(batch_size))), device,
                                                     channels_last, amp)
    result.batch_size, result.steps_per_epoch, result.steps_planned = batch_size, steps_per_epoch, steps_planned
    whole_batches = batch_sizes(len(data.train_labels), batch_size, stage.loader.drop_last, ranks)
    test = eval_batches(data.test_images, data.test_labels, opt_cfg.batch_size)
    compiled = None
    if compile_net:
        with timer.phase("compile"):
            compiled = compile_for_shapes(net, opt_cfg, amp, device, channels_last,
                                          train_sizes={shard_size(n, shard) for n in whole_batches},
                                          eval_sizes={len(y) for _, y in test})
        result.compile_seconds = timer.totals["compile"]
    net.train()
    return PreparedRun(
        stage=stage, net=net, model=compiled if compiled is not None else data_parallel(net, device, ranks),
        optimizer=make_optimizer(net, opt_cfg, batch_size, peak_lr=max(stage.schedule.lrs)), train=train,
        test=test, average=average, amp=amp,
        timer=timer, device=device, channels_last=channels_last, phase_timing=phase_timing, shard=shard,
        epochs=epochs, steps_per_epoch=steps_per_epoch, steps_planned=steps_planned, flops_per_step=flops_per_step,
        whole_batches=whole_batches, target=preset.target_accuracy, eval_every=eval_every, compiled=compiled)


def _freeze_whitening_bias(run: PreparedRun, epoch: int) -> None:
    """airbench: the whitening bias trains for its first epochs only."""
    after = run.stage.optimizer.freeze_whitening_bias_after
    if not after or epoch < after:
        return
    frozen = [bias for bias in _whitening_bias(run.net) if bias.requires_grad]
    for bias in frozen:
        bias.requires_grad_(False)  # SGD skips a parameter without a gradient
    if frozen and run.compiled is None:  # DDP fixes its trained parameters when it wraps
        run.model = data_parallel(run.net, run.device, run.shard.world_size)


def train_step(run: PreparedRun, x: torch.Tensor, y: torch.Tensor, step_in_epoch: int, result: RunResult,
               stats: EpochStats, epoch: int) -> float:
    """One optimiser step on the batch (x, y) at the schedule's LR for the run's step count:
    forward and backward, the loss into ``stats``, the step, the weight average. The LR."""
    opt_cfg, timer, ranks = run.stage.optimizer, run.timer, run.shard.world_size
    schedule, epoch_now = run.stage.schedule, result.steps / run.steps_per_epoch
    lr = schedule.lr_at(epoch_now, run.epochs)
    set_lr(run.optimizer, lr, epoch_now, max(schedule.lrs))  # run epochs, as the bias freezing counts them
    with timer.phase("forward_backward"):
        with run.amp.autocast():
            logits = run.model(x)
            loss = loss_fn(logits, y, opt_cfg)
        run.amp.backward(loss if ranks == 1 else
                         loss * rank_loss_weight(len(y), run.whole_batches[step_in_epoch], ranks, opt_cfg))
    stats.add(result.steps, loss / len(y) if opt_cfg.loss_reduction == "sum" else loss, logits, y)
    if run.phase_timing == "sync" and not math.isfinite(last := stats.last_loss()):
        raise NonFiniteLoss(result.steps, epoch + 1, last)
    with timer.phase("optimizer_step"):
        run.amp.step(run.optimizer)
        run.optimizer.zero_grad(set_to_none=True)
        result.steps += 1
        if run.average:
            run.average.after_step(result.steps)
    return lr


def run_epoch(run: PreparedRun, epoch: int, result: RunResult, on_step: Callable[[int], None]) -> EpochRow:
    """Train epoch ``epoch`` (0-based) up to the run's last step, then the test pass (if this
    epoch has one)."""
    timer = run.timer
    _freeze_whitening_bias(run, epoch)
    before = timer.snapshot()
    rng_calls_before = run.train.rng_calls
    epoch_start = timer.now(sync=True)
    stats = EpochStats(run.device, across_ranks=run.shard.world_size > 1)
    lr = 0.0
    for step_in_epoch, (x, y) in enumerate(_timed(run.train, timer, run.device, run.channels_last, run.amp.weights_dtype)):
        lr = train_step(run, x, y, step_in_epoch, result, stats, epoch)
        on_step(result.steps)
        if result.steps >= run.steps_planned:
            break
    if run.average:
        run.average.end_epoch()
    losses, sizes, correct, bad_step = stats.read()
    result.step_losses += losses
    if bad_step is not None:
        raise NonFiniteLoss(bad_step, epoch + 1, losses[bad_step - stats.first_step])
    seen = sum(sizes)
    test_loss = test_acc = None
    if run.evaluates_after(epoch):
        with timer.phase("evaluation"):
            test_loss, test_acc = evaluate(run.evaluated_net(), run.test, to_device=run.to_device,
                                           autocast=run.amp.autocast)
    seconds = timer.now(sync=True) - epoch_start
    after = timer.snapshot()
    result.total_seconds = sum(after.values())
    row = EpochRow(
        epoch=epoch + 1, lr=lr, train_loss=sum(l * n for l, n in zip(losses, sizes)) / max(seen, 1),
        train_accuracy=correct / max(seen, 1), test_loss=test_loss, test_accuracy=test_acc, seconds=seconds,
        elapsed_seconds=result.total_seconds, phases={p: after.get(p, 0.0) - before.get(p, 0.0) for p in PHASES},
        rng_calls=None if rng_calls_before is None else run.train.rng_calls - rng_calls_before)
    result.epochs.append(row)
    result.phases = {p: after.get(p, 0.0) for p in PHASES}
    if run.target is not None and test_acc is not None and test_acc >= run.target and result.target_epoch is None:
        result.target_epoch, result.target_seconds = epoch + 1, result.total_seconds
    return row


def finish(run: PreparedRun, result: RunResult, peak_flops: float | None = None) -> None:
    """The final TTA pass (stages that ask for one), each source's clock, FLOPs, and the
    share of ``peak_flops`` (the machine's matmul rate) that training achieved."""
    timer = run.timer
    final_eval_seconds = 0.0
    if run.stage.evaluation.tta != "none":
        with timer.phase("final_evaluation"):
            _, result.final_accuracy = evaluate(run.evaluated_net(), run.test, to_device=run.to_device,
                                                autocast=run.amp.autocast, tta=run.stage.evaluation.tta)
        final_eval_seconds = timer.totals["final_evaluation"]
        result.test_accuracy_no_tta = result.epochs[-1].test_accuracy
    totals = timer.snapshot()
    training = sum(totals.get(p, 0.0) for p in ("data_wait", "forward_backward", "optimizer_step"))
    parts = {"preprocessing": totals.get("preprocessing", 0.0), "training": training,
             "evaluation": totals.get("evaluation", 0.0), "final_evaluation": final_eval_seconds,
             "compile": totals.get("compile", 0.0)}
    result.total_seconds = sum(totals.values())
    result.phases = {p: totals.get(p, 0.0) for p in PHASES + ("final_evaluation",) + (("compile",) * (
        "compile" in totals))}
    result.seconds_by_timing = {clock: sum(parts[p] for p in included) for clock, included in CLOCKS.items()}
    result.train_flops = run.flops_per_step * result.steps
    result.flops_per_second = result.train_flops / training if training > 0 else None
    if peak_flops and result.flops_per_second:
        result.peak_flops, result.utilisation = peak_flops, result.flops_per_second / peak_flops


def train_stage(stage: StageConfig, preset: Preset, data: CifarArrays, *, device: torch.device, precision: str,
                channels_last: bool, seed: int, phase_timing: str = "sync", shard: Shard = Shard(),
                result: RunResult | None = None, hooks: Hooks = Hooks(), eval_every: int = 1,
                compile_net: bool = False, peak_flops: float | None = None) -> RunResult:
    """One run of ``stage``: prepare, every epoch, finish. Pass ``result`` to keep what was
    measured when the run fails or is interrupted part-way."""
    result = RunResult() if result is None else result
    run = prepare(stage, preset, data, result, device=device, precision=precision, channels_last=channels_last,
                  seed=seed, phase_timing=phase_timing, shard=shard, eval_every=eval_every, compile_net=compile_net)
    hooks.on_start(run.steps_planned)
    for epoch in range(math.ceil(run.epochs)):
        hooks.on_epoch(run_epoch(run, epoch, result, hooks.on_step))
    finish(run, result, peak_flops)
    return result
