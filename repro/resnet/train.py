"""The one training loop that serves every stage: the stage config decides the net, the LR
schedule, the loss, the parameter groups, the loader, weight averaging and TTA; this loop never
branches on the stage name.

A run is ``prepare`` (net, loader, whitening, optimiser, the untimed warm-up step) ->
``run_epoch`` once per epoch -> ``final_evaluation`` (the TTA pass, for stages with one) ->
``finish``, which builds the run's ``records.RunResult`` once from what the epochs measured;
``train_stage`` strings them together. How a run is carried out (device, precision, timing,
...) is one frozen ``TrainSettings``, the same for every stage of a command."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import CifarArrays
from ..devices import Amp, PhaseTimer
from ..errors import UserError, signals_deferred
from . import loaders
from .averaging import WeightAverage
from .clocks import CLOCKS, FINAL, PHASES, seconds_on, training_seconds
from .config import OptimizerSection, Preset, StageConfig, run_epochs, total_steps
from .evaluation import TTA_VIEWS, evaluate
from .filtering import ProxyFilter, build_proxy_net, kept_images
from .loaders import Shard, batch_sizes, eval_batches, make_train_loader, normalise_transpose
from .muon import FilterMuon
from .nets import PatchWhitening, batch_norm_over_ranks, build_stage_net, fit_whitening
from .records import EpochRow, RunResult

# torch.compile's modes (--compile-mode): "reduce-overhead" adds CUDA graphs (a CPU has none to
# add), "max-autotune" also benchmarks kernel choices while compiling
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# --phase-timing, and what its per-phase seconds mean (said in every record)
TIMING_MODES = {
    "sync": "sync (per-phase seconds of a CUDA run serialise the loader with the GPU)",
    "deferred": "deferred (one synchronisation per epoch; per-phase seconds on CUDA are host launch times)",
}


@dataclass(frozen=True)
class TrainSettings:
    """How a run is carried out, whatever the stage: the command line, resolved once.

    ``precision``: the resolved --precision (fp32 | bf16 | fp16 | fp64); ``phase_timing``:
    ``sync`` times every phase (on CUDA a synchronisation per phase, which serialises loader and
    GPU) and checks each step's loss at once, ``deferred`` keeps the step statistics on the
    device and synchronises once per epoch (see ``PhaseTimer``); ``eval_every``: the per-epoch
    test pass after every N-th epoch and the last; ``compile_mode``: train and evaluate
    ``torch.compile(net, mode=compile_mode)`` (None: eager), its one-time compilation (and CUDA
    graph capture) timed as the ``compile`` phase;
    ``peak_flops``: the machine's matmul rate that training's FLOP/s is a share of; ``shard``:
    this rank's part of one run spread over ranks (``--ddp``, the process group already formed)."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    channels_last: bool = False
    phase_timing: str = "sync"
    eval_every: int = 1
    compile_mode: str | None = None
    peak_flops: float | None = None
    shard: Shard = Shard()

    def __post_init__(self):
        if self.phase_timing not in TIMING_MODES:
            raise ValueError(f"phase_timing must be one of {tuple(TIMING_MODES)}, not {self.phase_timing!r}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be at least 1, not {self.eval_every}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES} or None, not {self.compile_mode!r}")

    @property
    def compile_net(self) -> bool:
        return self.compile_mode is not None


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, epoch: int, value: float):
        super().__init__(f"loss became {value} at step {step} (epoch {epoch})")
        self.step, self.epoch, self.value = step, epoch, value


@dataclass
class Hooks:
    """What the caller is told as a run goes: its planned step count once prepared, the steps
    done after each step, each epoch's per-step mean losses (read once per epoch) and its row,
    and, once, what the run measured, whether it finished or stopped part-way."""

    on_start: Callable[[int], None] = lambda steps_planned: None
    on_step: Callable[[int], None] = lambda steps_done: None
    on_step_losses: Callable[[list[float]], None] = lambda losses: None
    on_epoch: Callable[[EpochRow], None] = lambda row: None
    on_end: Callable[[RunResult], None] = lambda result: None


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
                   peak_lr: float = 1.0, total_steps: int = 1, ns_dtype: torch.dtype = torch.float32):
    """SGD over the two parameter groups. ``implementation``: ``fused`` (one kernel for all the
    parameters: the same update; on a 2-core CPU no measurable gain, the optimizer step being
    ~0.2% of an airbench94 step, see scripts/bench_step.py; on a GPU it saves kernel launches),
    ``foreach``, or torch's ``default`` loop over the parameters. A torch without fused SGD for
    the device gets the default.

    ``opt.kind = "muon"``: the trainable conv filters go to ``muon.FilterMuon`` instead, whose LR
    follows the schedule's shape (``muon_lr`` at the schedule's ``peak_lr``), whose re-normalisation
    interval follows the run's progress over ``total_steps``, and whose batched Newton-Schulz runs
    in ``ns_dtype``."""
    flags = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[implementation]
    filters = [p for p in net.parameters() if p.ndim == 4 and p.requires_grad] if opt.kind == "muon" else []
    groups = param_groups(net, opt, batch_size, exclude=frozenset(map(id, filters)))
    try:
        sgd = torch.optim.SGD(groups, lr=0.0, momentum=opt.momentum, nesterov=opt.nesterov, **flags)
    except RuntimeError:  # "fused=True requires all the params to be floating point Tensors of supported devices"
        sgd = torch.optim.SGD(groups, lr=0.0, momentum=opt.momentum, nesterov=opt.nesterov)
    if sgd.defaults.get("fused") and opt.momentum:  # "fused" is None unless asked for
        # Fused SGD makes its momentum buffers with empty_like and fills them on its first step. When a
        # GradScaler skips that step (an fp16 overflow, routine at the scaler's first scale) they stay
        # uninitialised and the next step blows the weights up (torch 2.14; the other implementations skip
        # cleanly). Zero buffers give the same first step: momentum * 0 + grad = grad, the buffer torch starts from.
        for group in sgd.param_groups:
            for param in group["params"]:
                sgd.state[param]["momentum_buffer"] = torch.zeros_like(param)
    if not filters:
        return sgd
    muon = FilterMuon(filters, lr=0.0, momentum=opt.muon_momentum, ns_steps=opt.muon_ns_steps,
                      lr_scale=opt.muon_lr / peak_lr, ns_coefficients=opt.muon_ns_coefficients,
                      weight_decay=opt.muon_weight_decay, renorm_every=tuple(map(int, opt.muon_renorm_every)),
                      total_steps=total_steps, batched=opt.muon_batched, ns_dtype=ns_dtype)
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


def cast_batch_norm(net: nn.Module, amp: Amp, keep_fp32: bool) -> str:
    """Keep BN in fp32 (post 3) or, like the blog's ``model.half()``, cast it to the autocast dtype.

    Returns what BN runs in, for the record."""
    if amp.autocast_dtype is None:
        return f"{amp.precision} ({amp.precision} run)"
    if keep_fp32:
        return "fp32 (autocast already keeps BN parameters in fp32 here)"
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.to(amp.autocast_dtype)
    return f"{amp.precision} (cast, as the blog's half-precision model)"


def check_precision(stage: StageConfig, precision: str) -> None:
    """A UserError now, before any data, if ``stage`` cannot train in ``precision``: fp16's
    GradScaler steps torch optimizers only, and the Muon stages' optimizer is not one."""
    if precision == "fp16" and stage.optimizer.kind == "muon":
        raise UserError(f"stage {stage.name}: Muon stages run in bf16 or fp32, not fp16 (GradScaler steps torch "
                        "optimizers only); use --precision bf16 or fp32")


def warm_up_and_count_flops(net: nn.Module, opt: OptimizerSection, batch_size: int, device, channels_last: bool,
                            amp: Amp, backward: bool = True) -> int:
    """One untimed fwd+bwd (fwd only without ``backward``) on random data with a throwaway copy
    (cuDNN autotuning, oneDNN primitive creation), as the blog did before starting its clock;
    torch's counter reads the step's FLOPs on the way."""
    from torch.utils.flop_counter import FlopCounterMode

    spare = copy.deepcopy(net).train()
    x = torch.randn(batch_size, 3, 32, 32, device=device, dtype=amp.weights_dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch_size, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(backward):
        with amp.autocast():
            loss = loss_fn(spare(x), y, opt)
        if backward:
            loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return int(counter.get_total_flops())


def count_step_flops(net: nn.Module, proxy: nn.Module | None, stage: StageConfig, batch: int, device,
                     channels_last: bool, amp: Amp) -> int:
    """FLOPs of one training step on ``batch`` images (warming the nets up on the way): the net's
    forward and backward on the images it trains on; with a data-filtering ``proxy``, also the
    proxy's forward on the whole batch and its backward on every ``proxy_step_every``-th."""
    opt = stage.optimizer
    trained = kept_images(stage.filter.keep, batch) if proxy is not None else batch
    flops = warm_up_and_count_flops(net, opt, trained, device, channels_last, amp)
    if proxy is not None:
        scoring = warm_up_and_count_flops(proxy, opt, batch, device, channels_last, amp, backward=False)
        stepping = warm_up_and_count_flops(proxy, opt, batch, device, channels_last, amp)
        flops += round(scoring + (stepping - scoring) / stage.filter.proxy_step_every)
    return flops


@torch.no_grad()
def recipe_flops(stage: StageConfig, preset: Preset, train_images: int = 50_000, test_images: int = 10_000
                 ) -> tuple[float, float]:
    """(training FLOPs, the final evaluation's FLOPs) of one run of ``stage`` under ``preset``,
    without training: torch's counter on two-image batches, scaled (FLOPs grow linearly with
    the batch), times the run's steps; the final pass is the TTA views of every test image (or,
    selective, a plain pass and the views for the chosen share)."""
    cpu, amp = torch.device("cpu"), Amp(torch.device("cpu"), "fp32")
    net = build_stage_net(stage, preset)
    proxy = build_proxy_net(stage, preset) if stage.filter.keep < 1 else None
    batch = min(stage.optimizer.batch_size, train_images)
    with torch.enable_grad():
        per_step = count_step_flops(net, proxy, stage, 2, cpu, False, amp) * batch / 2
    steps = total_steps(run_epochs(preset, stage), len(batch_sizes(train_images, batch, stage.loader.drop_last)))
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        net.eval()(torch.zeros(2, 3, 32, 32))
    per_image = counter.get_total_flops() / 2
    evaluation = stage.evaluation
    views = TTA_VIEWS[evaluation.tta]
    passes = views if evaluation.tta_fraction == 1 else 1 + views * evaluation.tta_fraction
    return per_step * steps, per_image * passes * test_images


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


def compile_for_shapes(net: nn.Module, opt: OptimizerSection, amp: Amp, device: torch.device,
                       channels_last: bool, *, train_sizes: set[int], eval_sizes: set[int],
                       mode: str = "default") -> nn.Module:
    """``torch.compile(net, mode=mode)`` (static shapes), compiled now for every batch size the
    run will train and evaluate on, so that no step pays for it later (CUDA graphs, with
    ``reduce-overhead``, are recorded on the first calls: two warm-up calls per shape). The
    warm-up steps on random data leave the weights, BN statistics and gradients as they were."""
    compiled = torch.compile(net, dynamic=False, mode=mode)
    calls = 1 if mode in ("default", "max-autotune-no-cudagraphs") or device.type != "cuda" else 3
    saved = copy.deepcopy(net.state_dict())

    def batch(n):
        x = torch.randn(n, 3, 32, 32, device=device, dtype=amp.weights_dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    net.train()
    for n in sorted(train_sizes):
        for _ in range(calls):
            with amp.autocast():
                loss = loss_fn(compiled(batch(n)), torch.zeros(n, dtype=torch.long, device=device), opt)
            loss.backward()
    net.zero_grad(set_to_none=True)
    net.eval()
    with torch.no_grad(), amp.autocast():
        for n in sorted(eval_sizes):
            for _ in range(calls):
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
        if stage.filter.keep < 1 and ranks > 1:
            raise UserError("--ddp cannot spread data filtering ([filter] keep) over ranks yet; run it on one")
        loaders.check_split_over_ranks(stage.loader.backend)
        loaders.check_batch_over_ranks(min(stage.optimizer.batch_size, preset.train_images or stage.optimizer.batch_size),
                                       ranks)
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
class Run:
    """One run between its epochs: the parts ``prepare`` built, and what the epochs have measured
    so far (``rows``, ``steps``, ``final_accuracy``), from which ``finish`` builds the result."""

    stage: StageConfig
    settings: TrainSettings
    net: nn.Module
    model: nn.Module  # ``net``, under DistributedDataParallel or torch.compile where the settings ask
    compiled: nn.Module | None  # torch.compile of ``net`` (``--compile``), which trains and evaluates it
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None
    proxy_filter: ProxyFilter | None  # [filter]: which images of each batch the net trains on
    amp: Amp
    timer: PhaseTimer
    train: object  # the loader backend's batches
    test: list
    epochs: float  # planned
    steps_per_epoch: int
    steps_planned: int
    whole_batches: list[int]  # each step's batch size over all ranks
    flops_per_step: int
    target: float | None
    batch_norm_dtype: str
    whitening: bool
    steps: int = 0
    rows: list[EpochRow] = field(default_factory=list)
    final_accuracy: float | None = None

    def to_device(self, x, y):
        return _to_device(x, y, self.settings.device, self.settings.channels_last, self.amp.weights_dtype)

    def evaluated_net(self) -> nn.Module:
        evaluated = self.average.model_to_evaluate() if self.average else self.net
        return self.compiled if evaluated is self.net and self.compiled is not None else evaluated

    def evaluates_after(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with a test pass: every ``eval_every``-th, and the last."""
        return (epoch + 1) % self.settings.eval_every == 0 or epoch + 1 >= math.ceil(self.epochs)


def _placed(net: nn.Module, stage: StageConfig, settings: TrainSettings, amp: Amp) -> tuple[nn.Module, str]:
    """``net`` on the run's device, dtype and memory format, its BN cast as the stage says; and
    what BN runs in (``cast_batch_norm``)."""
    net = net.to(settings.device, amp.weights_dtype)
    if settings.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, cast_batch_norm(net, amp, stage.batch_norm.keep_fp32)


def prepare(stage: StageConfig, preset: Preset, data: CifarArrays, seed: int, settings: TrainSettings) -> Run:
    """The net, loader, whitening, optimiser and EMA of one run, and one untimed warm-up step.

    Under ``settings.shard`` each rank trains on its slice of every batch under
    DistributedDataParallel, with BN statistics and loss weights that keep the whole-batch
    arithmetic of one process."""
    check_precision(stage, settings.precision)
    torch.manual_seed(seed)
    device, shard, opt_cfg = settings.device, settings.shard, stage.optimizer
    amp = Amp(device, settings.precision)
    timer = PhaseTimer(device, sync_phases=settings.phase_timing == "sync")
    ranks = shard.world_size
    net = build_stage_net(stage, preset)
    if ranks > 1:
        net = batch_norm_over_ranks(net, ranks)
    net, batch_norm_dtype = _placed(net, stage, settings, amp)
    proxy = _placed(build_proxy_net(stage, preset), stage, settings, amp)[0] if stage.filter.keep < 1 else None

    with timer.phase("preprocessing"):  # DAWNBench and airbench count data preparation and whitening
        train = make_train_loader(stage.loader, data.train_images, data.train_labels,
                                  batch_size=opt_cfg.batch_size, seed=seed, device=device, shard=shard)
        whitening_images = torch.from_numpy(normalise_transpose(data.train_images[:10_000]))
        whitening = fit_whitening(net, whitening_images)
        if proxy is not None:
            fit_whitening(proxy, whitening_images)
    epochs = run_epochs(preset, stage)
    whole_batches = batch_sizes(len(data.train_labels), train.batch_size, stage.loader.drop_last, ranks)
    steps_per_epoch = len(train)
    steps_planned = total_steps(epochs, steps_per_epoch)
    average = (WeightAverage(net, stage.ema.kind, stage.ema.momentum, stage.ema.every, steps_planned,
                             start_step=round(stage.ema.start_epochs * steps_per_epoch),
                             copy_back_each_epoch=stage.ema.copy_back_each_epoch)
               if stage.ema.kind != "none" else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    peak_lr, ns_dtype = max(stage.schedule.lrs), amp.autocast_dtype or amp.weights_dtype
    proxy_filter = None
    if proxy is not None:
        proxy_filter = ProxyFilter(proxy, make_optimizer(proxy, opt_cfg, train.batch_size, peak_lr=peak_lr,
                                                         total_steps=steps_planned, ns_dtype=ns_dtype),
                                   stage.filter, opt_cfg.label_smoothing, opt_cfg.loss_reduction, amp)
    # every rank counts its own slice's FLOPs; the run's are the ranks' together
    flops_per_step = ranks * count_step_flops(net, proxy, stage, shard_size(train.batch_size, shard),
                                              device, settings.channels_last, amp)
    test = eval_batches(data.test_images, data.test_labels, opt_cfg.batch_size)
    compiled = None
    if settings.compile_net:
        with timer.phase("compile"):
            compiled = compile_for_shapes(net, opt_cfg, amp, device, settings.channels_last,
                                          train_sizes={shard_size(kept_images(stage.filter.keep, n), shard)
                                                       for n in whole_batches},
                                          eval_sizes={len(y) for _, y in test}, mode=settings.compile_mode)
    net.train()
    return Run(stage=stage, settings=settings, net=net,
               model=compiled if compiled is not None else data_parallel(net, device, ranks), compiled=compiled,
               optimizer=make_optimizer(net, opt_cfg, train.batch_size, peak_lr=peak_lr, total_steps=steps_planned,
                                        ns_dtype=ns_dtype),
               average=average, proxy_filter=proxy_filter, amp=amp, timer=timer, train=train, test=test, epochs=epochs,
               steps_per_epoch=steps_per_epoch, steps_planned=steps_planned, whole_batches=whole_batches, flops_per_step=flops_per_step,
               target=preset.target_accuracy, batch_norm_dtype=batch_norm_dtype, whitening=whitening)


def _freeze_whitening_bias(run: Run, epoch: int) -> None:
    """airbench: the whitening bias trains for its first epochs only."""
    after = run.stage.optimizer.freeze_whitening_bias_after
    if not after or epoch < after:
        return
    frozen = [bias for bias in _whitening_bias(run.net) if bias.requires_grad]
    for bias in frozen:
        bias.requires_grad_(False)  # SGD skips a parameter without a gradient
    if frozen and run.compiled is None:  # DDP fixes its trained parameters when it wraps
        run.model = data_parallel(run.net, run.settings.device, run.settings.shard.world_size)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, step_in_epoch: int, stats: EpochStats, epoch: int) -> float:
    """One optimiser step on the batch (x, y) at the schedule's LR for the run's step count:
    forward and backward, the loss into ``stats``, the step, the weight average. The LR."""
    opt_cfg, timer, ranks = run.stage.optimizer, run.timer, run.settings.shard.world_size
    schedule, epoch_now = run.stage.schedule, run.steps / run.steps_per_epoch
    lr, peak = schedule.lr_at(epoch_now, run.epochs), max(schedule.lrs)
    set_lr(run.optimizer, lr, epoch_now, peak)  # run epochs, as the bias freezing counts them
    if run.proxy_filter is not None:
        with timer.phase("filtering"):
            set_lr(run.proxy_filter.optimizer, lr, epoch_now, peak)
            keep = run.proxy_filter.select(x, y)
            x, y = x[keep], y[keep]
            if run.settings.channels_last:  # indexing gives NCHW back
                x = x.contiguous(memory_format=torch.channels_last)
    with timer.phase("forward_backward"):
        with run.amp.autocast():
            logits = run.model(x)
            loss = loss_fn(logits, y, opt_cfg)
        run.amp.backward(loss if ranks == 1 else
                         loss * rank_loss_weight(len(y), run.whole_batches[step_in_epoch], ranks, opt_cfg))
    stats.add(run.steps, loss / len(y) if opt_cfg.loss_reduction == "sum" else loss, logits, y)
    if run.settings.phase_timing == "sync" and not math.isfinite(last := stats.last_loss()):
        raise NonFiniteLoss(run.steps, epoch + 1, last)
    with timer.phase("optimizer_step"):
        run.amp.step(run.optimizer)
        run.optimizer.zero_grad(set_to_none=True)
        run.steps += 1
        if run.average:
            run.average.after_step(run.steps)
    return lr


def run_epoch(run: Run, epoch: int, hooks: Hooks = Hooks()) -> EpochRow:
    """Train epoch ``epoch`` (0-based) up to the run's last step, then the test pass (if this
    epoch has one); the epoch's row, also kept in ``run.rows``."""
    timer, settings = run.timer, run.settings
    _freeze_whitening_bias(run, epoch)
    before = timer.snapshot()
    rng_calls_before = run.train.rng_calls
    epoch_start = timer.now(sync=True)
    stats = EpochStats(settings.device, across_ranks=settings.shard.world_size > 1)
    lr = 0.0
    for step_in_epoch, (x, y) in enumerate(_timed(run.train, timer, settings.device, settings.channels_last,
                                                  run.amp.weights_dtype)):
        lr = train_step(run, x, y, step_in_epoch, stats, epoch)
        hooks.on_step(run.steps)
        if run.steps >= run.steps_planned:
            break
    if run.average:
        run.average.end_epoch()
    losses, sizes, correct, bad_step = stats.read()
    hooks.on_step_losses(losses)
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
    row = EpochRow(
        epoch=epoch + 1, lr=lr, train_loss=sum(l * n for l, n in zip(losses, sizes)) / max(seen, 1),
        train_accuracy=correct / max(seen, 1), test_loss=test_loss, test_accuracy=test_acc, seconds=seconds,
        elapsed_seconds=sum(after.values()), phases={p: after.get(p, 0.0) - before.get(p, 0.0) for p in PHASES},
        rng_calls=None if rng_calls_before is None else run.train.rng_calls - rng_calls_before)
    run.rows.append(row)
    return row


def final_evaluation(run: Run) -> None:
    """The final TTA pass, for stages that ask for one."""
    if run.stage.evaluation.tta != "none":
        with run.timer.phase("final_evaluation"):
            _, run.final_accuracy = evaluate(run.evaluated_net(), run.test, to_device=run.to_device,
                                             autocast=run.amp.autocast, tta=run.stage.evaluation.tta,
                                             tta_fraction=run.stage.evaluation.tta_fraction)


def finish(run: Run) -> RunResult:
    """The run's result, built once from what its epochs measured (all of them, or as far as
    it got): each source's clock, the first epoch at the target, FLOPs, and the share of the
    machine's matmul rate (``settings.peak_flops``) that training achieved."""
    totals = run.timer.snapshot()
    training = training_seconds(totals)
    last = run.rows[-1] if run.rows else None
    reached = next((r for r in run.rows if run.target is not None and r.test_accuracy is not None
                    and r.test_accuracy >= run.target), None)
    train_flops = run.flops_per_step * run.steps
    flops_per_second = train_flops / training if training > 0 else None
    peak = run.settings.peak_flops if flops_per_second else None
    return RunResult(
        phase_timing=TIMING_MODES[run.settings.phase_timing], batch_norm_dtype=run.batch_norm_dtype,
        whitening=run.whitening, batch_size=run.train.batch_size, steps_per_epoch=run.steps_per_epoch,
        steps_planned=run.steps_planned, steps=run.steps, epochs=tuple(run.rows),
        phases={p: totals.get(p, 0.0) for p in PHASES + FINAL + (("compile",) * ("compile" in totals))},
        total_seconds=sum(totals.values()), seconds_by_timing={clock: seconds_on(clock, totals) for clock in CLOCKS},
        test_accuracy=run.final_accuracy if run.final_accuracy is not None else last and last.test_accuracy,
        test_accuracy_no_tta=last.test_accuracy if run.final_accuracy is not None else None,
        target_epoch=reached and reached.epoch, target_seconds=reached and reached.elapsed_seconds,
        train_flops=train_flops, flops_per_second=flops_per_second, peak_flops=peak,
        utilisation=flops_per_second / peak if peak else None, compile_seconds=totals.get("compile"))


def train_stage(stage: StageConfig, preset: Preset, data: CifarArrays, seed: int, settings: TrainSettings,
                hooks: Hooks = Hooks()) -> RunResult:
    """One run of ``stage``: prepare, every epoch, the final TTA pass; its result. ``hooks.on_end``
    gets the result even when the run fails or is interrupted part-way (then the error goes on)."""
    run = prepare(stage, preset, data, seed, settings)
    hooks.on_start(run.steps_planned)
    try:
        for epoch in range(math.ceil(run.epochs)):
            hooks.on_epoch(run_epoch(run, epoch, hooks))
        final_evaluation(run)
    finally:
        result = finish(run)
        hooks.on_end(result)
    return result
