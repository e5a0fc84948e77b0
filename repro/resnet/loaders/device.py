"""The device backend (post 8 step 1, airbench's loader): the whole training set on the
training device as uint8; each epoch draws every image's crop, flip and cutout in bulk, either
grouped (post 8: a random permutation of the images split into at most ``max_groups`` even
groups, one choice per group, so each image's choice is still uniform) or per image (airbench),
and each batch is cut out, flipped and normalised by one gather. No DataLoader, no workers.
hiverge's colour jitter draws each image's brightness shift and contrast factor once per epoch
too, and applies them to the normalised batch."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .base import MEAN, PAD, SIZE, STD, Accepts, Shard, batch_sizes

def grouped_choices(n: int, options: int, max_groups: int, generator: torch.Generator) -> torch.Tensor:
    """One option index per image: a random permutation of the images split into
    min(options, max_groups) even groups, each group given a different random option.

    Each image's option is uniform over all ``options`` (P = groups/options x 1/groups)."""
    groups = min(options, max_groups, n)
    picked = torch.randperm(options, generator=generator)[:groups]
    order = torch.randperm(n, generator=generator)
    choice = torch.empty(n, dtype=torch.long)
    for option, members in zip(picked, torch.tensor_split(order, groups)):
        choice[members] = option
    return choice


class DeviceBatches:
    """The whole training set on ``device`` as its uint8 pixels; every epoch draws each image's
    crop offset, flip and cutout square, and every batch is cut out of the set by one gather.

    ``choices = "grouped"`` (post 8): each augmentation gives at most ``max_groups`` distinct
    choices per epoch, to even groups of images (``grouped_choices``); ``"per_image"`` (airbench):
    an independent uniform choice per image. ``flip = "alternating"`` (airbench): a random half
    flipped in the first epoch, and from then on each image flipped exactly when it was not
    flipped the epoch before. ``brightness = r`` and ``contrast = s`` (hiverge): each image's
    normalised pixels get a shift uniform in [-r, r] added, then are multiplied by a factor
    uniform in [1 - s, 1 + s], both drawn per image and epoch.

    The reflect padding, the crop and the flip only move pixels, so for a batch they are one
    index computed from the choices and one ``index_select`` of bytes from the unpadded set,
    which comes out already in (B, 3, 32, 32) order; then the batch is normalised in float32.
    Nothing is padded or copied up front, and nothing of the epoch is materialised but its choices.
    """

    CHOICE_MODES = ("grouped", "per_image")
    ACCEPTS = Accepts(reads=frozenset({"pad", "flip", "cutout", "choices", "max_groups", "drop_last", "brightness",
                                       "contrast"}),
                      flips=("random", "alternating", "none"), cutout=True, split_over_ranks=True)

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                 device: torch.device, pad: int = PAD, flip: str = "random", cutout: int = 0,
                 choices: str = "grouped", max_groups: int = 200, drop_last: bool = False,
                 brightness: float = 0.0, contrast: float = 0.0, shard: Shard = Shard()):
        if choices not in self.CHOICE_MODES:
            raise ValueError(f"choices must be one of {self.CHOICE_MODES}, not {choices!r}")
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.shape[1:] != (SIZE, SIZE, 3) or not 0 <= pad < SIZE:
            raise ValueError(f"expected uint8 images (N, {SIZE}, {SIZE}, 3) and 0 <= pad < {SIZE}, "
                             f"got {images.shape} and pad {pad}")
        self.device, self.batch_size, self.drop_last = device, batch_size, drop_last
        self.pad, self.flip, self.cutout = pad, flip, cutout
        self.choices, self.max_groups, self.shard = choices, max_groups, shard
        self.brightness, self.contrast = brightness, contrast
        self.pixels = torch.from_numpy(images).reshape(-1).to(device)  # (N * 32 * 32 * 3,) bytes, HWC order
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        # int32 offsets halve the index arithmetic (2x faster on a CPU) wherever they reach every byte
        self.index_dtype = torch.int32 if self.pixels.numel() < 2**31 else torch.int64
        # source row/column of each padded row/column: numpy's "reflect" (edge not repeated)
        q = torch.arange(SIZE + 2 * pad) - pad
        reflect = torch.where(q < 0, -q, torch.where(q >= SIZE, 2 * (SIZE - 1) - q, q))
        self.reflect = reflect.to(device, self.index_dtype)
        self.span = torch.arange(SIZE, device=device, dtype=self.index_dtype)
        self.channel = torch.arange(3, device=device, dtype=self.index_dtype).view(1, 3, 1, 1)
        self.scale = torch.from_numpy(1 / STD).view(3, 1, 1).to(device)
        self.shift = torch.from_numpy(-MEAN / STD).view(3, 1, 1).to(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng_calls = 0
        self.flipped: torch.Tensor | None = None
        self._on_device: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(batch_sizes(len(self.labels), self.batch_size, self.drop_last, self.shard.world_size))

    def _draw(self, options: int) -> torch.Tensor:
        n = len(self.labels)
        if self.choices == "per_image":
            self.rng_calls += 1
            return torch.randint(options, (n,), generator=self.generator)
        self.rng_calls += 2  # one permutation of the options, one of the images
        return grouped_choices(n, options, self.max_groups, self.generator)

    def draw_epoch_choices(self) -> dict[str, torch.Tensor]:
        """Every image's crop offset index, flip and cutout index for one epoch (on the CPU)."""
        side = 2 * self.pad + 1
        choices = {"crop": self._draw(side * side)}
        if self.flip == "alternating" and self.flipped is not None:
            choices["flip"] = ~self.flipped
        elif self.flip != "none":
            choices["flip"] = self._draw(2).bool()
        self.flipped = choices.get("flip")
        if self.cutout:
            choices["cutout"] = self._draw((SIZE - self.cutout + 1) ** 2)
        for jitter, spread, centre in (("brightness", self.brightness, 0.0), ("contrast", self.contrast, 1.0)):
            if spread:
                self.rng_calls += 1
                choices[jitter] = centre + spread * (2 * torch.rand(len(self.labels), generator=self.generator) - 1)
        dtypes = {"flip": torch.bool, "brightness": torch.float32, "contrast": torch.float32}
        self._on_device = {k: v.to(self.device, dtypes.get(k, self.index_dtype)) for k, v in choices.items()}
        return choices

    def augment(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` (on the device) padded, cropped, flipped and cut out by this epoch's
        choices: float32 (B, 3, 32, 32), normalised."""
        c, span = self._on_device, self.span
        crop, index = c["crop"][index], index.to(self.index_dtype)
        dy, dx = crop // (2 * self.pad + 1), crop % (2 * self.pad + 1)
        rows = self.reflect[dy[:, None] + span]  # (B, 32) source rows
        cols = self.reflect[dx[:, None] + (torch.where(c["flip"][index, None], span.flip(0), span)
                                           if "flip" in c else span)]
        row_start = (index[:, None] * SIZE + rows) * (SIZE * 3)  # byte offset of each source row
        where = row_start[:, None, :, None] + self.channel + (cols * 3)[:, None, None, :]  # (B, 3, 32, 32)
        x = self.pixels.index_select(0, where.reshape(-1)).view(where.shape).float()
        x = x.mul_(self.scale).add_(self.shift)
        if "brightness" in c:
            x = x.add_(c["brightness"][index].view(-1, 1, 1, 1))
        if "contrast" in c:
            x = x.mul_(c["contrast"][index].view(-1, 1, 1, 1))
        if self.cutout:  # zero after normalising: the square becomes the data mean, as in post 3
            square, side = c["cutout"][index, None], SIZE - self.cutout + 1
            y0, x0 = square // side, square % side
            inside_rows = (span >= y0) & (span < y0 + self.cutout)
            inside_cols = (span >= x0) & (span < x0 + self.cutout)
            x = x.mul_(~(inside_rows[:, None, :, None] & inside_cols[:, None, None, :]))
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.draw_epoch_choices()
        order = torch.randperm(len(self.labels), generator=self.generator).to(self.device)
        self.rng_calls += 1
        for step in range(len(self)):
            idx = self.shard.take(order[step * self.batch_size:(step + 1) * self.batch_size])
            yield self.augment(idx), self.labels[idx]


