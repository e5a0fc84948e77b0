"""The networks of the ladder, each built from a stage's ``[net]`` table.

``[net] arch`` names a builder in ``ARCHITECTURES``; every other key of the table is a keyword
argument of that builder, so a new switch is one keyword here and one line in a stage file
(``repro.resnet.config`` checks the table against the builder's signature).

* ``dawn_resnet18``: post 1's pre-activation ResNet-18 (Ben Johnson's DAWNBench net).
* ``resnet9``: post 4's ResNet-9 with every post-8 switch (pool before BN, CELU, ghost BN,
  frozen BN scales, 3x3 patch whitening, logit scale).
* ``airbench94``: the 2024 record's net (2x2 whitening with a bias, identity-initialised convs).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


def _width(channels: int, divisor: int) -> int:
    return max(1, channels // divisor)


# ---- normalisation and activation switches


class GhostBatchNorm(nn.BatchNorm2d):
    """Batch norm whose training statistics come from ``splits`` equal slices of the batch.

    Each slice is normalised with its own mean and variance (the noise post 8 step 5 wants);
    the running statistics are the average of the slices'. A batch that does not divide
    evenly is normalised as one (only a last partial batch can be like that).
    """

    def __init__(self, channels: int, splits: int, **kwargs):
        super().__init__(channels, **kwargs)
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if not self.training or n % self.splits or n == self.splits:
            return super().forward(x)
        s = self.splits
        # (s*m, C, H, W) -> (m, s*C, H, W): slice k's channel c becomes channel k*C + c
        grouped = x.reshape(s, n // s, c, h, w).transpose(0, 1).reshape(n // s, s * c, h, w)
        mean = self.running_mean.repeat(s)
        var = self.running_var.repeat(s)
        out = F.batch_norm(grouped, mean, var, self.weight.repeat(s), self.bias.repeat(s),
                           True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(0))
            self.running_var.copy_(var.view(s, c).mean(0))
            self.num_batches_tracked += 1
        return out.reshape(n // s, s, c, h, w).transpose(0, 1).reshape(n, c, h, w)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every rank's loss depends
    on the sum, so each rank's input gets the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossRankBatchNorm(nn.BatchNorm2d):
    """Batch norm whose training statistics are the whole batch's, over every rank of a run
    spread over ranks (``--ddp``), so the run is the single-process run's arithmetic.

    torch's ``nn.SyncBatchNorm`` does this on GPUs only; this one all-reduces each channel's
    count and sum, then its sum of squared deviations (two passes, as exact as one process's
    BN), which gloo does on a CPU too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c, shape = x.shape[1], (1, x.shape[1], 1, 1)
        x32 = x.float()
        sums = _SumOverRanks.apply(torch.cat([x32.sum((0, 2, 3)), x32.new_full((1,), x.numel() // c)]))
        n = sums[-1]
        centred = x32 - (sums[:c] / n).view(shape)
        var = _SumOverRanks.apply(centred.square().sum((0, 2, 3))) / n
        with torch.no_grad():  # running statistics as F.batch_norm keeps them (unbiased variance)
            self.num_batches_tracked += 1
            self.running_mean.lerp_((sums[:c] / n).to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), self.momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.float().view(shape) + self.bias.float().view(shape)
        return out.to(x.dtype)


def batch_norm_over_ranks(net: nn.Module, world_size: int) -> nn.Module:
    """``net`` with every BN normalising as it would in one process when each batch is split
    into ``world_size`` equal slices, one per rank: plain BN shares statistics over the ranks
    (``CrossRankBatchNorm``); ghost BN already normalises slices of the batch, so each rank
    keeps ``splits / world_size`` of them and nothing is shared (its running statistics are
    then rank 0's slices', which DDP broadcasts)."""
    from ..errors import UserError

    for name, child in net.named_children():
        if isinstance(child, GhostBatchNorm):
            if child.splits % world_size:
                raise UserError(f"ghost BN with {child.splits} splits cannot be shared by {world_size} ranks: "
                                "use a number of ranks that divides it")
            child.splits //= world_size
        elif type(child) is nn.BatchNorm2d:
            shared = CrossRankBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                                        affine=child.affine, track_running_stats=child.track_running_stats)
            shared.load_state_dict(child.state_dict())
            if child.affine:
                shared.weight.requires_grad_(child.weight.requires_grad)  # frozen scales stay frozen
            setattr(net, name, shared)
        else:
            batch_norm_over_ranks(child, world_size)
    return net


def batch_norm(channels: int, *, ghost_splits: int = 0, scale: str = "ones", eps: float = 1e-5,
               momentum: float = 0.1) -> nn.BatchNorm2d:
    """BN with the ladder's switches: ghost splits, and scale init ``uniform`` (PyTorch 0.4),
    ``ones`` or ``frozen`` (fixed at 1, no gradient: post 8 step 6)."""
    if ghost_splits > 1:
        bn = GhostBatchNorm(channels, ghost_splits, eps=eps, momentum=momentum)
    else:
        bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if scale == "uniform":
        nn.init.uniform_(bn.weight, 0.0, 1.0)
    elif scale == "frozen":
        bn.weight.requires_grad_(False)
    elif scale != "ones":
        raise ValueError(f"BN scale must be uniform, ones or frozen, not {scale!r}")
    return bn


def make_activation(name: str, celu_alpha: float = 0.075) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "celu":
        return nn.CELU(celu_alpha)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"activation must be relu, celu, gelu or silu, not {name!r}")


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class Scale(nn.Module):
    """Multiply by a constant: the logit scale of ResNet-9 (1/8, 1/16) and airbench (1/9)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


# ---- patch whitening (post 8 step 7; airbench's 2x2 variant)


class PatchWhitening(nn.Conv2d):
    """A frozen conv whose filters whiten the input's k x k patches.

    ``fit`` reads training images: patch covariance, eigendecomposition, filters =
    eigenvectors / sqrt(eigenvalue + eps), optionally stacked with their negatives (airbench).
    Until ``fit`` runs the filters are random, so the training loop calls it first.
    """

    def __init__(self, kernel: int, eps: float, *, negate: bool, centred: bool, bias: bool,
                 images: int, padding: int):
        c_out = 3 * kernel * kernel * (2 if negate else 1)
        super().__init__(3, c_out, kernel, padding=padding, bias=bias)
        self.eps, self.negate, self.centred, self.images = eps, negate, centred, images
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """``images``: normalised training images (N, 3, 32, 32); the first ``self.images`` are used."""
        x = images[: self.images].float()
        k = self.kernel_size[0]
        patches = F.unfold(x, k).transpose(1, 2).reshape(-1, 3 * k * k).double()  # (N * positions, 3kk)
        if self.centred:
            patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        filters = (eigenvectors / torch.sqrt(eigenvalues + self.eps)).T.reshape(-1, 3, k, k)
        if self.negate:
            filters = torch.cat([filters, -filters])
        self.weight.copy_(filters.to(self.weight.dtype))
        if self.bias is not None:
            self.bias.zero_()


def fit_whitening(net: nn.Module, images: torch.Tensor) -> bool:
    """Fit every PatchWhitening layer of ``net`` on ``images``; True if there was one."""
    layers = [m for m in net.modules() if isinstance(m, PatchWhitening)]
    for layer in layers:
        layer.fit(images.to(layer.weight.device))
    return bool(layers)


# ---- post 1: the DAWNBench pre-activation ResNet-18


class StridedPointwise(nn.Conv2d):
    """A 1x1 convolution with stride ``stride``, computed as a 1x1 convolution of every
    ``stride``-th pixel: the same products and sums. oneDNN's own strided 1x1 kernel never
    returns from its backward pass in fp32 channels_last on some CPUs (torch 2.14.1, oneDNN 3.12,
    an AMD EPYC with AVX2 and no AVX-512; a 1x1 stride-1 kernel on the subsampled input does)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__(c_in, c_out, 1, bias=False)
        self.subsample = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, ::self.subsample, ::self.subsample])


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus a shortcut taken after the first BN-ReLU (Page's DAWN_net)."""

    def __init__(self, c_in: int, c_out: int, stride: int, bn_scale: str):
        super().__init__()
        self.pre = nn.Sequential(batch_norm(c_in, scale=bn_scale), nn.ReLU(inplace=True))
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.mid = nn.Sequential(batch_norm(c_out, scale=bn_scale), nn.ReLU(inplace=True))
        self.conv2 = conv3x3(c_out, c_out)
        needs_projection = stride != 1 or c_in != c_out
        self.shortcut = StridedPointwise(c_in, c_out, stride) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        return self.shortcut(x) + self.conv2(self.mid(self.conv1(x)))


class ConcatPool(nn.Module):
    """Global average pool and global max pool, side by side: 2C features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class DawnResNet18(nn.Module):
    """Widths 64/128/256/256, two pre-activation blocks per stage, avg ‖ max-pool head, Linear with bias."""

    def __init__(self, duplicate_bn_relu: bool, bn_scale: str, width_divisor: int):
        super().__init__()
        w = [_width(c, width_divisor) for c in (64, 128, 256, 256)]
        prep: list[nn.Module] = [conv3x3(3, w[0])]
        if duplicate_bn_relu:  # the submitted net's prep ends in BN-ReLU, then block 1 opens with its own
            prep += [batch_norm(w[0], scale=bn_scale), nn.ReLU(inplace=True)]
        self.prep = nn.Sequential(*prep)
        blocks, c_in = [], w[0]
        for stage, c_out in enumerate(w):
            for i in range(2):
                blocks.append(PreActBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1, bn_scale))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = ConcatPool()
        self.linear = nn.Linear(2 * w[-1], NUM_CLASSES, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.blocks(self.prep(x))))


def dawn_resnet18(*, duplicate_bn_relu: bool = False, bn_scale: str = "uniform", width_divisor: int = 1) -> nn.Module:
    """``bn_scale = "uniform"`` is PyTorch 0.4's BN init, which the 2018 runs had."""
    return DawnResNet18(duplicate_bn_relu, bn_scale, width_divisor)


# ---- post 4 / post 8: ResNet-9


class ConvBlock(nn.Sequential):
    """conv-BN-act(-pool), or with ``pool_before_bn`` conv-pool-BN-act (post 8 step 2: the same
    function on a quarter of the pixels)."""

    def __init__(self, c_in: int, c_out: int, *, pool: bool, pool_before_bn: bool, make_bn, make_act):
        layers = [conv3x3(c_in, c_out)]
        if pool and pool_before_bn:
            layers += [nn.MaxPool2d(2), make_bn(c_out), make_act()]
        else:
            layers += [make_bn(c_out), make_act()] + ([nn.MaxPool2d(2)] if pool else [])
        super().__init__(*layers)


class Residual(nn.Module):
    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.branch = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.branch(x)


def resnet9(*, pool_before_bn: bool = False, activation: str = "relu", celu_alpha: float = 0.075,
            ghost_bn_splits: int = 0, bn_scale: str = "ones", logit_scale: float = 0.125,
            whitening: bool = False, width_divisor: int = 1) -> nn.Module:
    """Post 4's winner (Residual:L1+L3): prep 64, layer1 128 + residual, layer2 256, layer3 512 +
    residual, global max pool, Linear without bias, logits x ``logit_scale``.

    ``whitening`` replaces the prep conv by a frozen 3x3 patch-whitening conv (27 filters) and a
    learnable 1x1 conv, as in post 8 step 7.
    """
    w = [_width(c, width_divisor) for c in (64, 128, 256, 512)]

    def make_bn(c):
        return batch_norm(c, ghost_splits=ghost_bn_splits, scale=bn_scale)

    def make_act():
        return make_activation(activation, celu_alpha)

    def block(c_in, c_out, pool=False):
        return ConvBlock(c_in, c_out, pool=pool, pool_before_bn=pool_before_bn, make_bn=make_bn, make_act=make_act)

    if whitening:
        prep = nn.Sequential(
            PatchWhitening(3, 1e-2, negate=False, centred=True, bias=False, images=10_000, padding=1),
            nn.Conv2d(27, w[0], 1, bias=False), make_bn(w[0]), make_act())
    else:
        prep = block(3, w[0])
    return nn.Sequential(
        prep,
        block(w[0], w[1], pool=True), Residual(block(w[1], w[1]), block(w[1], w[1])),
        block(w[1], w[2], pool=True),
        block(w[2], w[3], pool=True), Residual(block(w[3], w[3]), block(w[3], w[3])),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w[3], NUM_CLASSES, bias=False), Scale(logit_scale),
    )


# ---- airbench94 (2024)


class IdentityInitConv(nn.Conv2d):
    """3x3 'same' conv whose first ``in_channels`` filters start as the identity (dirac)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding="same", bias=False)
        with torch.no_grad():
            n = min(c_in, c_out)
            nn.init.dirac_(self.weight[:n])


def airbench94(*, widths: tuple = (64, 256, 256), logit_scale: float = 1 / 9, bn_eps: float = 1e-12,
               bn_momentum: float = 0.4, whitening_eps: float = 5e-4, whitening_images: int = 5000,
               head_init: str = "default", convs_per_group: int = 2, activation: str = "gelu",
               width_divisor: int = 1) -> nn.Module:
    """2x2 whitening (12 eigenvectors and their negatives, with a bias) -> GELU -> three groups
    (conv, pool, BN, act, conv, BN, act) -> 3x3 max-pool -> Linear without bias x ``logit_scale``;
    ``activation`` is the groups' (hiverge: silu), the GELU after the whitening stays.
    BN scales are frozen at 1; ``bn_momentum`` is PyTorch's convention. ``head_init = "unit_std"``
    (airbench94_muon) rescales the Linear's initial weights to standard deviation 1.
    ``convs_per_group = 3`` (airbench96): after the pooled conv, two convs (each BN, GELU) with a
    residual connection over them."""
    if head_init not in ("default", "unit_std"):
        raise ValueError(f"head_init must be default or unit_std, not {head_init!r}")
    if convs_per_group not in (2, 3):
        raise ValueError(f"convs_per_group must be 2 or 3, not {convs_per_group!r}")
    w = [_width(int(c), width_divisor) for c in widths]

    def bn(c):
        return batch_norm(c, scale="frozen", eps=bn_eps, momentum=bn_momentum)

    layers: list[nn.Module] = [
        PatchWhitening(2, whitening_eps, negate=True, centred=False, bias=True, images=whitening_images, padding=0),
        nn.GELU()]
    c_in = 24
    for c_out in w:
        layers += [IdentityInitConv(c_in, c_out), nn.MaxPool2d(2), bn(c_out), make_activation(activation)]
        second = [IdentityInitConv(c_out, c_out), bn(c_out), make_activation(activation)]
        if convs_per_group == 3:
            layers.append(Residual(*second, IdentityInitConv(c_out, c_out), bn(c_out), make_activation(activation)))
        else:
            layers += second
        c_in = c_out
    head = nn.Linear(c_in, NUM_CLASSES, bias=False)
    if head_init == "unit_std":
        with torch.no_grad():
            head.weight.div_(head.weight.std())
    layers += [nn.MaxPool2d(3), nn.Flatten(), head, Scale(logit_scale)]
    return nn.Sequential(*layers)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "dawn_resnet18": dawn_resnet18,
    "resnet9": resnet9,
    "airbench94": airbench94,
}
# supplied by the preset, never by a stage's [net] table
PRESET_ARGUMENTS = ("width_divisor",)


def net_options(arch: str) -> dict[str, object]:
    """The keys a stage's [net] table may set for ``arch``, with their defaults."""
    params = inspect.signature(ARCHITECTURES[arch]).parameters
    return {name: p.default for name, p in params.items() if name not in PRESET_ARGUMENTS}


def build_net(arch: str = "dawn_resnet18", *, width_divisor: int = 1, **options) -> nn.Module:
    return ARCHITECTURES[arch](width_divisor=width_divisor, **options)


def build_stage_net(stage, preset, changes: dict | None = None) -> nn.Module:
    """A stage's net (its ``[net]`` table, with ``changes`` to it) at a preset's width divisor."""
    return build_net(width_divisor=preset.width_divisor, **{**stage.net, **(changes or {})})
