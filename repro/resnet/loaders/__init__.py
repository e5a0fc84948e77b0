"""Training batches: post 1's DataLoader modes, and post 8's whole-set-on-the-device loader.

Both backends yield ``(images, labels)`` batches for one epoch per ``iter()``, know their
``len()`` in steps and count their random draws (``rng_calls``); ``make_train_loader`` picks
one from a stage's ``[loader]`` table.

**DataLoader backend** (post 1), from one dataset class.

The three loader keys of a stage map onto three independent switches here:

* ``preprocess``: ``per_sample`` pads (reflect 4), normalises and transposes every image
  every epoch; ``once`` does that to the whole set up front, leaving only crop + flip.
* ``rng``: ``per_sample`` draws each image's crop offset and flip as it is fetched (two RNG
  calls per image); ``bulk`` draws the whole epoch's choices in one call per augmentation
  at the start of the epoch (cifar10-fast's ``set_random_choices``).
* ``workers``: torch DataLoader worker processes, started afresh every epoch as PyTorch
  0.4 did (0 = main thread).

Augmentations are tiny immutable objects with ``draw`` (random choices for n images) and
``apply`` (one image, one choice).

**Device backend** (post 8 step 1, airbench's loader): the padded uint8 set is one tensor on the
training device; each epoch draws every image's crop, flip and cutout in bulk, either grouped
(post 8: a random permutation of the images split into at most ``max_groups`` even groups, one
choice per group, so each image's choice is still uniform) or per image (airbench), and each
batch is cut out, flipped and normalised by one gather. No DataLoader, no workers.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

# CIFAR-10 channel statistics on the 0-255 scale (the blog's numbers)
MEAN = np.array([125.31, 122.95, 113.87], dtype=np.float32)
STD = np.array([62.99, 62.09, 66.70], dtype=np.float32)
PAD = 4
SIZE = 32


class CountingRNG:
    """A numpy Generator that counts its calls: the quantity post 1's stage 4 reduces."""

    def __init__(self, seed: int):
        self._gen = np.random.default_rng(seed)
        self.calls = 0

    def integers(self, *args, **kwargs):
        self.calls += 1
        return self._gen.integers(*args, **kwargs)


@dataclass(frozen=True)
class Crop:
    size: int = 32

    def draw(self, rng: CountingRNG, n: int, in_size: int) -> np.ndarray:
        return rng.integers(0, in_size - self.size + 1, size=(n, 2))

    def apply(self, x: np.ndarray, choice) -> np.ndarray:  # x: (C, H, W)
        dy, dx = int(choice[0]), int(choice[1])
        return x[:, dy:dy + self.size, dx:dx + self.size]


@dataclass(frozen=True)
class FlipLR:
    def draw(self, rng: CountingRNG, n: int, in_size: int) -> np.ndarray:
        return rng.integers(0, 2, size=n).astype(bool)

    def apply(self, x: np.ndarray, choice) -> np.ndarray:
        return x[:, :, ::-1] if choice else x


@dataclass(frozen=True)
class Cutout:
    """Zero one ``size`` x ``size`` square that lies inside the cropped image (post 3)."""

    size: int = 8

    def draw(self, rng: CountingRNG, n: int, in_size: int) -> np.ndarray:
        return rng.integers(0, SIZE - self.size + 1, size=(n, 2))

    def apply(self, x: np.ndarray, choice) -> np.ndarray:
        y0, x0 = int(choice[0]), int(choice[1])
        x = x.copy()
        x[:, y0:y0 + self.size, x0:x0 + self.size] = 0.0
        return x


AUGMENTATIONS = (Crop(SIZE), FlipLR())


def augmentations_for(flip: str, cutout: int) -> tuple:
    """The per-image augmentations of a [loader] table, in the order cifar10-fast applied them."""
    return (Crop(SIZE),) + ((FlipLR(),) if flip == "random" else ()) + ((Cutout(cutout),) if cutout else ())


def normalise_pad_transpose(images: np.ndarray, pad: int = PAD) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H + 2 pad, W + 2 pad), normalised and reflect-padded."""
    x = (images.astype(np.float32) - MEAN) / STD
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def normalise_transpose(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W): the test set, which is never padded."""
    return np.ascontiguousarray(((images.astype(np.float32) - MEAN) / STD).transpose(0, 3, 1, 2))


class AugmentedTrainSet(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, preprocess: str, rng: str, seed: int,
                 augmentations=AUGMENTATIONS, pad: int = PAD):
        if preprocess not in ("per_sample", "once") or rng not in ("per_sample", "bulk"):
            raise ValueError(f"unknown loader mode preprocess={preprocess!r} rng={rng!r}")
        self.preprocess, self.rng_mode, self.pad = preprocess, rng, pad
        self.images = normalise_pad_transpose(images, pad) if preprocess == "once" else images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.augmentations = augmentations
        self.rng = CountingRNG(seed)
        self.choices: list[np.ndarray] | None = None
        self.padded_size = images.shape[1] + 2 * pad

    def __len__(self) -> int:
        return len(self.labels)

    def set_random_choices(self) -> None:
        """Bulk mode: every choice of the epoch, one RNG call per augmentation."""
        self.choices = [aug.draw(self.rng, len(self), self.padded_size) for aug in self.augmentations]

    def __getitem__(self, index: int):
        if self.preprocess == "once":
            x = self.images[index]
        else:
            x = normalise_pad_transpose(self.images[index:index + 1], self.pad)[0]
        if self.rng_mode == "bulk":
            if self.choices is None:
                raise RuntimeError("bulk RNG mode: call set_random_choices() at the start of each epoch")
            picks = [c[index] for c in self.choices]
        else:
            picks = [aug.draw(self.rng, 1, self.padded_size)[0] for aug in self.augmentations]
        for aug, choice in zip(self.augmentations, picks):
            x = aug.apply(x, choice)
        return torch.from_numpy(np.ascontiguousarray(x)), int(self.labels[index])


@dataclass(frozen=True)
class Shard:
    """One rank's part of every batch when one run is spread over ranks (``--ddp``).

    Every rank draws the same permutation and augmentation choices (same seed) and keeps its
    contiguous slice of each batch, so the ranks' slices are disjoint and together the batch."""

    rank: int = 0
    world_size: int = 1

    def take(self, batch):
        """This rank's slice of ``batch`` (a list or a tensor of image indices)."""
        n = len(batch)
        return batch[n * self.rank // self.world_size:n * (self.rank + 1) // self.world_size]


def batch_sizes(n: int, batch_size: int, drop_last: bool, ranks: int = 1) -> list[int]:
    """Each step's whole-batch size in an epoch of ``n`` images. A last, partial batch is kept
    unless ``drop_last``, or unless it is too small to give every rank an image."""
    sizes = [batch_size] * (n // batch_size)
    rest = n % batch_size
    if rest and not drop_last and rest >= ranks:
        sizes.append(rest)
    return sizes


class _ShardedBatchSampler:
    """torch's shuffled batches of image indices, cut to this rank's slice of each."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, generator: torch.Generator, shard: Shard):
        self.sampler = torch.utils.data.RandomSampler(range(n), generator=generator)
        self.sizes = batch_sizes(n, batch_size, drop_last, shard.world_size)
        self.batch_size, self.shard = batch_size, shard

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self):
        batches = torch.utils.data.BatchSampler(self.sampler, self.batch_size, drop_last=False)
        for batch, _ in zip(batches, self.sizes):
            yield self.shard.take(batch)


def _seed_worker(worker_id: int) -> None:
    # Each worker gets its own stream, derived from the loader's seeded base seed.
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = CountingRNG(torch.initial_seed() % 2**32)


@contextlib.contextmanager
def _allow_more_workers_than_cores():
    """The baseline asks for more workers than a small machine has cores, on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        yield


class TrainBatches:
    """Iterable of (images, labels) batches for one stage's loader settings."""

    def __init__(self, images, labels, *, preprocess: str, rng: str, workers: int, batch_size: int,
                 seed: int, pin_memory: bool = False, augmentations=AUGMENTATIONS, pad: int = PAD,
                 drop_last: bool = False, shard: Shard = Shard()):
        self.dataset = AugmentedTrainSet(images, labels, preprocess, rng, seed, augmentations, pad)
        self.workers, self.batch_size = workers, batch_size
        generator = torch.Generator().manual_seed(seed)  # the order, then the workers' base seed
        with _allow_more_workers_than_cores():
            self.loader = torch.utils.data.DataLoader(
                self.dataset, num_workers=workers, pin_memory=pin_memory, persistent_workers=False,
                batch_sampler=_ShardedBatchSampler(len(self.dataset), batch_size, drop_last, generator, shard),
                generator=generator, worker_init_fn=_seed_worker if workers > 0 else None,
            )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.dataset.rng_mode == "bulk":
            self.dataset.set_random_choices()
        with _allow_more_workers_than_cores():
            return iter(self.loader)

    @property
    def rng_calls(self) -> int | None:
        """Draws made in this process; per-sample draws inside worker processes are not seen."""
        return self.dataset.rng.calls if self.workers == 0 or self.dataset.rng_mode == "bulk" else None


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
    flipped the epoch before. ``last_choices`` keeps the epoch's per-image choices (crop offset
    index, flip, cutout index) in data order.

    The reflect padding, the crop and the flip only move pixels, so for a batch they are one
    index computed from the choices and one ``index_select`` of bytes from the unpadded set,
    which comes out already in (B, 3, 32, 32) order; then the batch is normalised in float32.
    Nothing is padded or copied up front, and nothing of the epoch is materialised but its choices.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                 device: torch.device, pad: int = PAD, flip: str = "random", cutout: int = 0,
                 choices: str = "grouped", max_groups: int = 200, drop_last: bool = False,
                 shard: Shard = Shard()):
        if choices not in ("grouped", "per_image"):
            raise ValueError(f"unknown choices {choices!r}: \"grouped\" or \"per_image\"")
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.shape[1:] != (SIZE, SIZE, 3) or not 0 <= pad < SIZE:
            raise ValueError(f"expected uint8 images (N, {SIZE}, {SIZE}, 3) and 0 <= pad < {SIZE}, "
                             f"got {images.shape} and pad {pad}")
        self.device, self.batch_size, self.drop_last = device, batch_size, drop_last
        self.pad, self.flip, self.cutout = pad, flip, cutout
        self.choices, self.max_groups, self.shard = choices, max_groups, shard
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
        self.last_choices: dict[str, torch.Tensor] = {}
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
        self.last_choices = choices
        self._on_device = {k: v.to(self.device, torch.bool if k == "flip" else self.index_dtype)
                           for k, v in choices.items()}
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
        if self.cutout:  # zero after normalising: the square becomes the data mean, as in post 3
            square, side = c["cutout"][index, None], SIZE - self.cutout + 1
            y0, x0 = square // side, square % side
            inside_rows = (span >= y0) & (span < y0 + self.cutout)
            inside_cols = (span >= x0) & (span < x0 + self.cutout)
            x = x.mul_(~(inside_rows[:, None, :, None] & inside_cols[:, None, None, :]))
        return x

    def augment_epoch(self) -> torch.Tensor:
        """Draw an epoch's choices and return every image augmented, in data order (for inspection)."""
        self.draw_epoch_choices()
        return self.augment(torch.arange(len(self.labels), device=self.device))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.draw_epoch_choices()
        order = torch.randperm(len(self.labels), generator=self.generator).to(self.device)
        self.rng_calls += 1
        for step in range(len(self)):
            idx = self.shard.take(order[step * self.batch_size:(step + 1) * self.batch_size])
            yield self.augment(idx), self.labels[idx]


def make_train_loader(loader, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                      device: torch.device, shard: Shard = Shard()):
    """The training batches a stage's [loader] table (``repro.config.LoaderSection``) asks for;
    with a ``shard``, this rank's slice of each."""
    batch_size = min(batch_size, len(labels))  # a tiny subset still gets one full batch
    if batch_size < shard.world_size:
        raise ValueError(f"a batch of {batch_size} cannot be split over {shard.world_size} ranks")
    if loader.backend == "device":
        return DeviceBatches(images, labels, batch_size=batch_size, seed=seed, device=device, pad=loader.pad,
                             flip=loader.flip, cutout=loader.cutout, choices=loader.choices,
                             max_groups=loader.max_groups, drop_last=loader.drop_last, shard=shard)
    if loader.backend == "dali":
        from repro.dali_loader import DaliBatches  # optional dependency: repro[dali]
        if loader.cutout:
            raise ValueError("cutout needs loader.backend = \"device\" or \"dataloader\", not \"dali\"")
        if shard.world_size > 1:
            raise ValueError("one run over several ranks (--ddp) needs loader.backend = \"device\" or "
                             "\"dataloader\", not \"dali\"")
        return DaliBatches(images, labels, batch_size=batch_size, seed=seed, device=device, pad=loader.pad,
                           flip=loader.flip, drop_last=loader.drop_last)
    if loader.flip == "alternating":
        raise ValueError("alternating flip needs loader.backend = \"device\"")
    return TrainBatches(images, labels, preprocess=loader.preprocess, rng=loader.rng, workers=loader.workers,
                        batch_size=batch_size, seed=seed, pin_memory=device.type == "cuda",
                        augmentations=augmentations_for(loader.flip, loader.cutout), pad=loader.pad,
                        drop_last=loader.drop_last, shard=shard)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """The test set, normalised once, in order (Page used the training batch size here too)."""
    x = torch.from_numpy(normalise_transpose(images))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
