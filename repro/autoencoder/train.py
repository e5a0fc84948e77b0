"""Training the linear autoencoder with nn.MSELoss + SGD(weight_decay): a plain loop and a
PyTorch Lightning trainer that share the model, the objective, the optimiser, the batch order
and the per-step monitor, so the same seed gives the same weights in both.

PyTorch objective vs L_lam (see theory.py): MSELoss(mean) + (wd/2)(||W1||^2 + ||W2||^2) equals
L_lam / m when wd = 2 lam / m, so a torch step with learning rate lr is a GD step on L_lam of
size lr / m.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError

TRAINERS = ("plain", "lightning")


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


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)


class BatchOrder:
    """Batches of rows of X: the whole set each step (full batch), or per-epoch random
    permutations cut into equal slices (drop_last keeps every step's scale the same)."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int):
        self.rows = rows
        self.batch_size = min(batch_size, len(rows)) if batch_size > 0 else len(rows)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def full_batch(self) -> bool:
        return self.batch_size >= len(self.rows)

    def __len__(self) -> int:
        return len(self.rows) // self.batch_size

    def __iter__(self):
        if self.full_batch:
            yield self.rows
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

    def weight_decay(self, m: int) -> float:
        return 2.0 * self.lam / m


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


class StepMonitor:
    """Called after every optimiser step by both trainers: catches divergence, averages D."""

    def __init__(self, cfg: TrainConfig, s1: float | None, m: int):
        self.cfg, self.s1, self.m = cfg, s1, m
        self.log_every = max(1, cfg.steps // 100)
        self.history: list = []
        self.balance_sum = None
        self.balance_count = 0

    def after_step(self, step: int, model: LinearAutoencoder, loss: torch.Tensor) -> None:
        if step % self.log_every == 0 or step == self.cfg.steps:
            value = float(loss)
            if not np.isfinite(value):
                bound = f" (the stability bound is about m/(2 s_1) = {self.m / (2 * self.s1):.3g})" if self.s1 else ""
                raise UserError(f"training diverged at step {step} with lr={self.cfg.lr:.4g}: lower --lr{bound}")
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


def _setup(X: np.ndarray, cfg: TrainConfig, s1: float | None):
    """What both trainers share: model, batch order, optimiser, monitor, initial weights."""
    m = X.shape[0]
    model = build_model(m, cfg.k, cfg.seed, cfg.dtype, cfg.init_scale)
    W1_0, W2_0 = model.weights()
    batches = BatchOrder(_rows(X, cfg.dtype), cfg.batch_size, cfg.seed)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay(m))
    return model, batches, optimizer, StepMonitor(cfg, s1, m), W1_0, W2_0


def _result(model, cfg, monitor, W1_0, W2_0, final_loss, seconds, trainer) -> TrainResult:
    W1, W2 = model.weights()
    return TrainResult(W1, W2, W1_0, W2_0, cfg.steps, final_loss, seconds, trainer,
                       monitor.balance_mean(), monitor.history)


def train_plain(X: np.ndarray, cfg: TrainConfig, s1: float | None = None) -> TrainResult:
    """randperm + slicing, no DataLoader: the fast path."""
    model, batches, optimizer, monitor, W1_0, W2_0 = _setup(X, cfg, s1)
    start = time.perf_counter()
    step, loss = 0, torch.tensor(float("nan"))
    while step < cfg.steps:
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = torch_objective(model, batch)
            loss.backward()
            optimizer.step()
            step += 1
            monitor.after_step(step, model, loss.detach())
            if step == cfg.steps:
                break
    return _result(model, cfg, monitor, W1_0, W2_0, float(loss.detach()), time.perf_counter() - start, "plain")


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
                    log_dir: str | Path = "logs") -> TrainResult:
    """The same model/objective/optimiser/batches inside a LightningModule and Trainer.

    Metrics (batch loss every log interval) go to a CSVLogger under log_dir.
    """
    pl, CSVLogger = _import_lightning()
    model, batches, optimizer, monitor, W1_0, W2_0 = _setup(X, cfg, s1)

    class AutoencoderModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.last_loss = torch.tensor(float("nan"))

        def training_step(self, batch, batch_idx):
            loss = torch_objective(self.model, batch)
            self.last_loss = loss.detach()
            return loss

        def on_train_batch_end(self, outputs, batch, batch_idx):
            step = self.trainer.global_step
            monitor.after_step(step, self.model, self.last_loss)
            if step % monitor.log_every == 0:
                self.log("train_mse", self.last_loss, on_step=True, prog_bar=False)

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
    return _result(model, cfg, monitor, W1_0, W2_0, float(module.last_loss), seconds, "lightning")


def train(X: np.ndarray, cfg: TrainConfig, trainer: str = "plain", s1: float | None = None,
          log_dir: str | Path = "logs") -> TrainResult:
    if trainer == "plain":
        return train_plain(X, cfg, s1)
    if trainer == "lightning":
        return train_lightning(X, cfg, s1, log_dir)
    raise UserError(f"unknown trainer {trainer!r}: choose one of {', '.join(TRAINERS)}")
