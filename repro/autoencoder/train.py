"""Training the linear autoencoder with nn.MSELoss + SGD(weight_decay): a plain loop and a
PyTorch Lightning trainer that share the model, the objective, the optimiser, the batch order
and the per-step monitor, so the same seed gives the same weights in both.

PyTorch objective vs L_lam (see theory.py): MSELoss(mean) + (wd/2)(||W1||^2 + ||W2||^2) equals
L_lam / m when wd = 2 lam / m, so a torch step with learning rate lr is a GD step on L_lam of
size lr / m.

Full batch, the MSELoss depends on X only through C = X X^T / n, so the default full-batch
objective is the same MSELoss written through C: O(m^2 k) per step instead of O(n m k), the same
gradient up to rounding (a test compares the iterates). Optional SGD momentum with an adaptive
restart (the momentum buffer is zeroed when the gradient opposes the last move) and a stop on
convergence (gradient norm and balance-mode size under tolerance) keep the minimiser unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import UserError

TRAINERS = ("plain", "lightning")
OBJECTIVES = ("auto", "covariance", "rows")  # auto: covariance for full batch, rows for minibatches


class LinearAutoencoder(nn.Module):
    """x -> W2 W1 x for row vectors x: encoder W1 = encoder.weight (k x m), decoder W2 (m x k)."""

    def __init__(self, m: int, k: int, dtype=torch.float64):
        super().__init__()
        self.encoder = nn.Linear(m, k, bias=False, dtype=dtype)
        self.decoder = nn.Linear(k, m, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(W1, W2) as float64 numpy copies."""
        return (self.encoder.weight.detach().double().numpy().copy(),
                self.decoder.weight.detach().double().numpy().copy())


def build_model(m: int, k: int, seed: int, dtype=torch.float64, init_scale: float | None = None):
    """The default nn.Linear init (U(+-1/sqrt(fan_in))) or, with init_scale, N(0, init_scale^2).

    Seeded without touching the global RNG, so both trainers start from the same weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LinearAutoencoder(m, k, dtype)
        if init_scale is not None:
            with torch.no_grad():
                for layer in (model.encoder, model.decoder):
                    layer.weight.normal_(0.0, init_scale)
    return model


def torch_objective(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The data part of the PyTorch objective; weight decay lives in the optimiser."""
    return nn.functional.mse_loss(model(batch), batch)


def covariance_objective(model: LinearAutoencoder, C: torch.Tensor) -> torch.Tensor:
    """``torch_objective`` of the full batch, written through C = X X^T / n (m x m):

        MSELoss = (1/m) tr((I - W2 W1) C (I - W2 W1)^T)
                = (1/m) [tr C - 2 tr(W1 C W2) + tr((W1 C W1^T)(W2^T W2))],

    O(m^2 k) per evaluation, independent of n; autograd gives the same gradient up to rounding.
    """
    W1, W2 = model.encoder.weight, model.decoder.weight
    CW1t = model.encoder(C)  # C W1^T (C is symmetric), m x k
    return (torch.trace(C) - 2 * (CW1t * W2).sum() + ((W1 @ CW1t) * (W2.T @ W2)).sum()) / C.shape[0]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.0,
                   nesterov: bool = False) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay, momentum=momentum,
                           nesterov=nesterov)


class BatchOrder:
    """Batches of rows of X: the whole set each step (full batch), or per-epoch random
    permutations cut into equal slices (drop_last keeps every step's scale the same).
    With ``covariance`` given, the full batch is handed out as C = X X^T / n instead."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int, covariance: torch.Tensor | None = None):
        self.rows = rows
        self.batch_size = min(batch_size, len(rows)) if batch_size > 0 else len(rows)
        self.generator = torch.Generator().manual_seed(seed)
        self.covariance = covariance

    @property
    def full_batch(self) -> bool:
        return self.batch_size >= len(self.rows)

    def __len__(self) -> int:
        return len(self.rows) // self.batch_size

    def __iter__(self):
        if self.full_batch:
            yield self.rows if self.covariance is None else self.covariance
            return
        order = torch.randperm(len(self.rows), generator=self.generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.rows[order[start:start + self.batch_size]]


@dataclass
class TrainConfig:
    k: int  # code size
    lam: float  # in L_lam units
    lr: float  # torch learning rate
    steps: int
    batch_size: int = 0  # 0: full batch
    seed: int = 0
    dtype: torch.dtype = torch.float64
    init_scale: float | None = None  # None: PyTorch's default nn.Linear init
    average_last: int = 0  # steps at the end over which W1W1^T - W2^T W2 is averaged
    momentum: float = 0.0  # SGD heavy-ball momentum
    nesterov: bool = False
    restart: bool = False  # zero the momentum buffer whenever grad . buffer < 0 (adaptive restart)
    objective: str = "auto"  # see OBJECTIVES
    # Stop early once ||grad L_lam||_F <= grad_tol and ||W1W1^T - W2^TW2||_F <= balance_tol (checked
    # every check_every steps), or once the balance is under tolerance (in float32: whatever it is)
    # and the gradient has not improved 10-fold in `patience` steps (its rounding floor). None: run
    # all `steps`.
    grad_tol: float | None = None
    balance_tol: float = float("inf")
    patience: int = 2000
    check_every: int = 25

    def weight_decay(self, m: int) -> float:
        return 2.0 * self.lam / m

    def resolved_objective(self, n: int) -> str:
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        full = self.batch_size <= 0 or self.batch_size >= n
        if self.objective == "auto":
            return "covariance" if full else "rows"
        if self.objective == "covariance" and not full:
            raise UserError("the covariance objective is the full-batch loss: it needs batch_size 0")
        return self.objective

    def optimizer_settings(self, m: int, n: int) -> dict:
        """What the record says about how this run was optimised."""
        return {"optimizer": "SGD", "lr": self.lr, "weight_decay": self.weight_decay(m), "momentum": self.momentum,
                "nesterov": self.nesterov, "dampening": 0.0, "adaptive_restart": self.restart,
                "objective": self.resolved_objective(n), "batch_size": self.batch_size or n,
                "max_steps": self.steps, "grad_tol": self.grad_tol,
                "balance_tol": None if math.isinf(self.balance_tol) else self.balance_tol}


@dataclass
class TrainResult:
    W1: np.ndarray
    W2: np.ndarray
    W1_init: np.ndarray
    W2_init: np.ndarray
    steps: int
    final_batch_loss: float
    seconds: float
    trainer: str
    balance_mean: np.ndarray | None = None  # time-averaged D = W1W1^T - W2^T W2
    history: list = field(default_factory=list)  # (step, batch loss) every log interval
    stop_reason: str = "steps"  # steps (ran them all), converged, floor (gradient stalled), callback
    restarts: int = 0  # momentum restarts
    grad_norm: float = float("nan")  # ||grad L_lam||_F at the last check (L_lam units)
    balance_norm: float = float("nan")  # ||W1W1^T - W2^TW2||_F at the last check
    optimizer: dict = field(default_factory=dict)  # TrainConfig.optimizer_settings

    @property
    def converged(self) -> bool:
        return self.stop_reason in ("converged", "floor")


class StepMonitor:
    """Called by both trainers around every optimiser step: restarts momentum, checks convergence
    (before the step, from the gradient just computed), catches divergence, averages D.

    ``on_check(step, model)`` is called every ``check_every`` steps (a progress bar); returning
    True stops the run (reason "callback").
    """

    def __init__(self, cfg: TrainConfig, s1: float | None, m: int, optimizer: torch.optim.SGD,
                 on_check: Callable | None = None):
        self.cfg, self.s1, self.m, self.optimizer, self.on_check = cfg, s1, m, optimizer, on_check
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.wd = cfg.weight_decay(m)
        self.log_every = max(1, cfg.steps // 100)
        self.history: list = []
        self.balance_sum = None
        self.balance_count = 0
        self.stop_reason = None
        self.restarts = torch.zeros((), dtype=torch.int64)
        self.grad_norm = self.balance_norm = float("nan")
        self.best_grad, self.best_step = float("inf"), 0

    def _full_grads(self):
        return [p.grad + self.wd * p for p in self.params]  # what SGD steps along (before momentum)

    def before_step(self, step: int, model: LinearAutoencoder) -> None:
        """``step``: the number the step about to be taken will have (1-based)."""
        with torch.no_grad():
            if self.cfg.restart and self.cfg.momentum > 0:
                buffers = [self.optimizer.state[p].get("momentum_buffer") for p in self.params]
                if buffers[0] is not None:  # no host sync: the buffer is multiplied by 0 or 1
                    dot = sum((g * b).sum() for g, b in zip(self._full_grads(), buffers))
                    keep = (dot >= 0).to(buffers[0].dtype)
                    for b in buffers:
                        b.mul_(keep)
                    self.restarts += (dot < 0).to(torch.int64)
            if step % self.cfg.check_every == 0 and (self.cfg.grad_tol is not None or self.on_check):
                self._check(step, model)

    def _check(self, step: int, model: LinearAutoencoder) -> None:
        with torch.no_grad():
            self.grad_norm = self.m * float(torch.sqrt(sum((g**2).sum() for g in self._full_grads())))
            W1, W2 = model.encoder.weight, model.decoder.weight
            self.balance_norm = float(torch.linalg.norm(W1 @ W1.T - W2.T @ W2))
        if not math.isfinite(self.grad_norm):
            self._diverged(step)
        if self.on_check is not None and self.on_check(step, model):
            self.stop_reason = "callback"
        if self.cfg.grad_tol is None or self.stop_reason:
            return
        if self.grad_norm < 0.1 * self.best_grad:
            self.best_grad, self.best_step = self.grad_norm, step
        balanced = self.balance_norm <= self.cfg.balance_tol
        stalled = step - self.best_step >= self.cfg.patience
        if balanced and self.grad_norm <= self.cfg.grad_tol:
            self.stop_reason = "converged"
        elif stalled and (balanced or self.cfg.dtype != torch.float64):  # float32: D has a rounding floor too
            self.stop_reason = "floor"

    def _diverged(self, step: int):
        bound = f" (the stability bound is about m/(2 s_1) = {self.m / (2 * self.s1):.3g})" if self.s1 else ""
        raise UserError(f"training diverged at step {step} with lr={self.cfg.lr:.4g}: lower --lr{bound}")

    def after_step(self, step: int, model: LinearAutoencoder, loss: torch.Tensor) -> None:
        if step % self.log_every == 0 or step == self.cfg.steps:
            value = float(loss)
            if not np.isfinite(value):
                self._diverged(step)
            self.history.append((step, value))
        if self.cfg.average_last and step > self.cfg.steps - self.cfg.average_last:
            with torch.no_grad():
                W1, W2 = model.encoder.weight.double(), model.decoder.weight.double()
                D = W1 @ W1.T - W2.T @ W2
            self.balance_sum = D if self.balance_sum is None else self.balance_sum + D
            self.balance_count += 1

    def balance_mean(self):
        return None if self.balance_sum is None else (self.balance_sum / self.balance_count).numpy()


def _rows(X: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(X.T)).to(dtype)


def _setup(X: np.ndarray, cfg: TrainConfig, s1: float | None, on_check: Callable | None):
    """What both trainers share: model, batch order, objective, optimiser, monitor, initial weights."""
    m, n = X.shape
    model = build_model(m, cfg.k, cfg.seed, cfg.dtype, cfg.init_scale)
    W1_0, W2_0 = model.weights()
    covariance = cfg.resolved_objective(n) == "covariance"
    C = torch.from_numpy(X @ X.T / n).to(cfg.dtype) if covariance else None
    batches = BatchOrder(_rows(X, cfg.dtype), cfg.batch_size, cfg.seed, C)
    objective = covariance_objective if covariance else torch_objective
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay(m), cfg.momentum, cfg.nesterov)
    monitor = StepMonitor(cfg, s1, m, optimizer, on_check)
    return model, batches, objective, optimizer, monitor, W1_0, W2_0


def _result(X, model, cfg, monitor, W1_0, W2_0, steps, final_loss, seconds, trainer) -> TrainResult:
    W1, W2 = model.weights()
    return TrainResult(W1, W2, W1_0, W2_0, steps, final_loss, seconds, trainer,
                       monitor.balance_mean(), monitor.history, monitor.stop_reason or "steps",
                       int(monitor.restarts), monitor.grad_norm, monitor.balance_norm,
                       cfg.optimizer_settings(*X.shape))


def train_plain(X: np.ndarray, cfg: TrainConfig, s1: float | None = None,
                on_check: Callable | None = None) -> TrainResult:
    """randperm + slicing, no DataLoader: the fast path."""
    model, batches, objective, optimizer, monitor, W1_0, W2_0 = _setup(X, cfg, s1, on_check)
    start = time.perf_counter()
    step, loss = 0, torch.tensor(float("nan"))
    while step < cfg.steps and not monitor.stop_reason:
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = objective(model, batch)
            loss.backward()
            monitor.before_step(step + 1, model)
            optimizer.step()
            step += 1
            monitor.after_step(step, model, loss.detach())
            if step == cfg.steps or monitor.stop_reason:
                break
    return _result(X, model, cfg, monitor, W1_0, W2_0, step, float(loss.detach()), time.perf_counter() - start,
                   "plain")


def _import_lightning():
    """pytorch-lightning is the optional extra 'lightning'; import it only when asked for."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*_pytree.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*_pytree.*", category=DeprecationWarning)
            import pytorch_lightning as pl
            from pytorch_lightning.loggers import CSVLogger
    except ImportError:
        raise UserError(
            "--trainer lightning needs pytorch-lightning: pip install -e \".[lightning]\""
        ) from None
    return pl, CSVLogger


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's banners, tips and deprecation chatter say nothing about this experiment."""
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for pattern in (".*treespec.*", ".*_pytree.*", ".*litlogger.*", ".*LitLogger.*",
                            ".*does not have many workers.*", ".*num_workers.*", ".*logging interval.*"):
                warnings.filterwarnings("ignore", message=pattern)
            warnings.filterwarnings("ignore", module=".*_pytree")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def train_lightning(X: np.ndarray, cfg: TrainConfig, s1: float | None = None,
                    log_dir: str | Path = "logs", on_check: Callable | None = None) -> TrainResult:
    """The same model/objective/optimiser/batches/monitor inside a LightningModule and Trainer.

    Metrics (batch loss every log interval) go to a CSVLogger under log_dir.
    """
    pl, CSVLogger = _import_lightning()
    model, batches, objective, optimizer, monitor, W1_0, W2_0 = _setup(X, cfg, s1, on_check)

    class AutoencoderModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.last_loss = torch.tensor(float("nan"))

        def training_step(self, batch, batch_idx):
            loss = objective(self.model, batch)
            self.last_loss = loss.detach()
            return loss

        def on_before_optimizer_step(self, optimizer):
            monitor.before_step(self.trainer.global_step + 1, self.model)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            step = self.trainer.global_step
            monitor.after_step(step, self.model, self.last_loss)
            if step % monitor.log_every == 0:
                self.log("train_mse", self.last_loss, on_step=True, prog_bar=False)
            if monitor.stop_reason:
                self.trainer.should_stop = True

        def configure_optimizers(self):
            return optimizer

    with _quiet_lightning():
        pl.seed_everything(cfg.seed, verbose=False)
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=cfg.steps, max_epochs=-1,
            precision="64-true" if cfg.dtype == torch.float64 else "32-true",
            logger=CSVLogger(str(log_dir), name="autoencoder_lightning"),
            log_every_n_steps=monitor.log_every, enable_checkpointing=False,
            enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
        )
        module = AutoencoderModule()
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=batches)
        seconds = time.perf_counter() - start
    return _result(X, model, cfg, monitor, W1_0, W2_0, trainer.global_step, float(module.last_loss), seconds,
                   "lightning")


@contextlib.contextmanager
def torch_threads(count: int):
    """Run with ``count`` intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(X: np.ndarray, cfg: TrainConfig, trainer: str = "plain", s1: float | None = None,
          log_dir: str | Path = "logs", on_check: Callable | None = None) -> TrainResult:
    """One training run, on ONE thread: every op here is a small matrix product, and on a shared
    2-core machine two threads made a step 30-70x slower (measured) without making it faster idle."""
    if trainer not in TRAINERS:
        raise UserError(f"unknown trainer {trainer!r}: choose one of {', '.join(TRAINERS)}")
    with torch_threads(1):
        if trainer == "plain":
            return train_plain(X, cfg, s1, on_check)
        return train_lightning(X, cfg, s1, log_dir, on_check)


def seconds_per_step(X: np.ndarray, cfg: TrainConfig, steps: int = 40) -> float:
    """Measured cost of one step of this configuration (a short throwaway run, plain loop)."""
    short = TrainConfig(**{**cfg.__dict__, "steps": steps, "grad_tol": None})
    return train(X, short, "plain").seconds / steps
