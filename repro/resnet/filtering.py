"""Data filtering by a small proxy net (airbench96_faster, 2024): the main net trains on each
batch's hardest images only, as a proxy trained alongside it judges them.

For every batch the proxy (the stage's net with the ``[filter] proxy_net`` keys changed: smaller
widths) scores each image by its label-smoothed loss in training mode, and the main net trains
on the share ``keep`` with the highest losses (airbench96_faster: 512 of 1024); on every
``proxy_step_every``-th batch the proxy first trains on those same images (their summed or mean
loss, as the stage's loss). The proxy follows the stage's optimiser, LR schedule and whitening;
its whitening bias stays at zero, as the source's.

The source trains the proxy over the whole run first and keeps one mask per step, then the main
net replays the same batches; since the proxy's step i sees only batches 0..i, scoring each
batch just before the main net trains on it gives the same masks without storing the batches
twice. Its time counts in the stage's time (the ``filtering`` phase), as the source's clock
counts the proxy's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import Amp
from .config import FilterSection, Preset, StageConfig
from .nets import PatchWhitening, build_stage_net


def kept_images(keep: float, batch: int) -> int:
    """How many images of a batch of ``batch`` the net trains on (at least one)."""
    return max(1, round(keep * batch))


def build_proxy_net(stage: StageConfig, preset: Preset) -> nn.Module:
    """The stage's net with ``[filter] proxy_net``'s keys changed, at the preset's width divisor;
    its whitening bias frozen."""
    proxy = build_stage_net(stage, preset, stage.filter.proxy_net)
    for layer in proxy.modules():  # its whitening bias stays at zero (fitting zeroes it), out of the optimiser
        if isinstance(layer, PatchWhitening) and layer.bias is not None:
            layer.bias.requires_grad_(False)
    return proxy


class ProxyFilter:
    """Chooses which images of each batch the main net trains on (see the module's notes)."""

    def __init__(self, net: nn.Module, optimizer, filtering: FilterSection, label_smoothing: float,
                 loss_reduction: str, amp: Amp):
        self.net, self.optimizer, self.amp = net, optimizer, amp
        self.keep, self.step_every = filtering.keep, filtering.proxy_step_every
        self.label_smoothing, self.loss_reduction = label_smoothing, loss_reduction
        self.steps = 0
        net.train()

    def select(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Indices (in batch order) of the share ``keep`` of (x, y) the proxy finds hardest;
        on every ``proxy_step_every``-th call the proxy first takes a step on them. The caller
        has set the optimiser's LR for this step."""
        trains = self.steps % self.step_every == 0
        self.steps += 1
        with torch.set_grad_enabled(trains), self.amp.autocast():
            logits = self.net(x)
        losses = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing, reduction="none")
        keep = losses.detach().topk(kept_images(self.keep, len(y))).indices.sort().values
        if trains:
            kept = losses[keep]
            self.amp.backward(kept.sum() if self.loss_reduction == "sum" else kept.mean())
            self.amp.step(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
        return keep
