"""The DAWNBench pre-activation ResNet-18 of post 1 (Ben Johnson's net, as Page reproduced it).

Widths 64/128/256/256 (the last stage is 256, not 512), two pre-activation blocks per stage,
an average-pool ‖ max-pool head and a Linear layer with bias. The one switch that separates
the baseline from the later stages is ``duplicate_bn_relu``: the original prep layer ends
in BN-ReLU, immediately followed by the first block's own BN-ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BASE_WIDTHS = (64, 128, 256, 256)


@dataclass(frozen=True)
class NetConfig:
    duplicate_bn_relu: bool = False
    width_divisor: int = 1
    # PyTorch 0.4 initialised BN scales as U(0, 1); modern PyTorch uses 1.
    bn_weight_init: str = "uniform"
    num_classes: int = 10

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(max(1, w // self.width_divisor) for w in BASE_WIDTHS)


def bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus a shortcut taken after the first BN-ReLU (Page's DAWN_net)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.pre = bn_relu(c_in)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.mid = bn_relu(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        needs_projection = stride != 1 or c_in != c_out
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        return self.shortcut(x) + self.conv2(self.mid(self.conv1(x)))


class ConcatPool(nn.Module):
    """Global average pool and global max pool, side by side: 2C features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class DawnResNet18(nn.Module):
    def __init__(self, config: NetConfig = NetConfig()):
        super().__init__()
        self.config = config
        w = config.widths
        prep = [conv3x3(3, w[0])]
        if config.duplicate_bn_relu:
            prep += list(bn_relu(w[0]))
        self.prep = nn.Sequential(*prep)
        blocks, c_in = [], w[0]
        for stage, c_out in enumerate(w):
            for i in range(2):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(PreActBlock(c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = ConcatPool()
        self.linear = nn.Linear(2 * w[-1], config.num_classes, bias=True)
        if config.bn_weight_init == "uniform":
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    nn.init.uniform_(m.weight, 0.0, 1.0)
        elif config.bn_weight_init != "ones":
            raise ValueError(f"bn_weight_init must be 'uniform' or 'ones', not {config.bn_weight_init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.blocks(self.prep(x))))


def build_net(**kwargs) -> DawnResNet18:
    return DawnResNet18(NetConfig(**kwargs))

