"""Weight averaging: post 8's EMA copy for evaluation and airbench's lookahead-style EMA.

Both keep ``average`` = a copy of every floating-point parameter and buffer (BN statistics
included) and, every ``every`` steps, move it towards the live weights:
``average <- decay * average + (1 - decay) * weights``.

* ``eval_copy`` (post 8 step 8): decay = momentum ** every; the live weights train on and the
  average is what gets evaluated. The average is bias-corrected (Adam-style: as if it started at
  zero, divided by 1 - decay^k after k updates), so it holds no trace of the random initial
  weights: over post 8's 250 updates that changes nothing (0.95^250 ~ 1e-6), but a short run of a
  scaled-down preset would otherwise evaluate a net still dominated by its initialisation.
* ``lookahead`` (airbench): decay = momentum ** every * (step / total_steps) ** 3, and the live
  weights are then set to the average; at the last step decay = 1, so training ends on the average.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


KINDS = ("eval_copy", "lookahead")


def _float_state(module: nn.Module) -> list[torch.Tensor]:
    return [t for t in module.state_dict(keep_vars=True).values() if t.is_floating_point()]


class WeightAverage:
    def __init__(self, net: nn.Module, kind: str, momentum: float, every: int, total_steps: int, *,
                 start_step: int = 0, copy_back_each_epoch: bool = False):
        """``start_step`` (airbench95): no averaging during the first steps; the first update
        after them starts the average afresh from the weights. ``copy_back_each_epoch``
        (airbench95): ``end_epoch`` sets the weights to the average."""
        if kind not in KINDS:
            raise ValueError(f"EMA kind must be one of {KINDS}, not {kind!r}")
        self.kind, self.momentum, self.every, self.total_steps = kind, momentum, every, total_steps
        self.start_step, self.copy_back_each_epoch = start_step, copy_back_each_epoch
        self.started = start_step == 0
        self.updates = 0
        self.net = net
        self.average = copy.deepcopy(net)
        for p in self.average.parameters():
            p.requires_grad_(False)

    def decay(self, step: int) -> float:
        base = self.momentum ** self.every
        if self.kind == "eval_copy":
            return base
        return 1.0 if step >= self.total_steps else base * (step / self.total_steps) ** 3

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Call after optimiser step number ``step`` (1-based)."""
        last = step >= self.total_steps
        if step % self.every and not (last and self.kind == "lookahead"):
            return
        if step - 1 < self.start_step:  # this step belonged to the epochs before the average starts
            return
        if not self.started:
            for avg, live in zip(_float_state(self.average), _float_state(self.net)):
                avg.copy_(live.detach())
            self.started = True
            return
        decay = self.decay(step)
        self.updates += 1
        # eval_copy: the bias-corrected weight of the new sample, 1 at the first update
        weight = (1.0 - decay) / (1.0 - decay ** self.updates) if self.kind == "eval_copy" else 1.0 - decay
        for avg, live in zip(_float_state(self.average), _float_state(self.net)):
            avg.lerp_(live.detach(), weight)
            if self.kind == "lookahead":
                live.copy_(avg)

    @torch.no_grad()
    def end_epoch(self) -> None:
        if self.copy_back_each_epoch and self.started:
            for avg, live in zip(_float_state(self.average), _float_state(self.net)):
                live.copy_(avg)

    def model_to_evaluate(self) -> nn.Module:
        return self.average if self.kind == "eval_copy" else self.net
