"""What every loader backend shares: CIFAR-10's channel statistics, normalisation, the rank
slice of a batch under ``--ddp``, the epoch's batch sizes, and the declaration each backend
makes of what it accepts (``Accepts``), which ``repro.resnet.config`` checks every stage against."""

from __future__ import annotations

from dataclasses import dataclass

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


def normalise_pad_transpose(images: np.ndarray, pad: int = PAD) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H + 2 pad, W + 2 pad), normalised and reflect-padded."""
    x = (images.astype(np.float32) - MEAN) / STD
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def normalise_transpose(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W): the test set, which is never padded."""
    return np.ascontiguousarray(((images.astype(np.float32) - MEAN) / STD).transpose(0, 3, 1, 2))



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



def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """The test set, normalised once, in order (Page used the training batch size here too)."""
    x = torch.from_numpy(normalise_transpose(images))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


@dataclass(frozen=True)
class Accepts:
    """What a loader backend can do, declared once on its class.

    ``reads``: the [loader] keys it uses; a stage that sets any other key away from its default
    is refused, since the backend would silently ignore it. ``flips``: the flip modes it
    implements; ``cutout``: whether it can cut out; ``split_over_ranks``: whether one run can
    be spread over torchrun ranks (``--ddp``) with it."""

    reads: frozenset[str]
    flips: tuple[str, ...]
    cutout: bool
    split_over_ranks: bool

