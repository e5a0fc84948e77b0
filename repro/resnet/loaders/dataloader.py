"""The DataLoader backend (post 1): one dataset class whose three switches are the three
loader stages of post 1.

* ``preprocess``: ``per_sample`` pads (reflect 4), normalises and transposes every image
  every epoch; ``once`` does that to the whole set up front, leaving only crop + flip.
* ``rng``: ``per_sample`` draws each image's crop offset and flip as it is fetched (two RNG
  calls per image); ``bulk`` draws the whole epoch's choices in one call per augmentation
  at the start of the epoch (cifar10-fast's ``set_random_choices``).
* ``workers``: torch DataLoader worker processes, started afresh every epoch as PyTorch
  0.4 did (0 = main thread).

Augmentations are tiny immutable objects with ``draw`` (random choices for n images) and
``apply`` (one image, one choice).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .base import PAD, SIZE, Accepts, CountingRNG, Shard, batch_sizes, normalise_pad_transpose

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



class AugmentedTrainSet(torch.utils.data.Dataset):
    PREPROCESS_MODES = ("per_sample", "once")
    RNG_MODES = ("per_sample", "bulk")

    def __init__(self, images: np.ndarray, labels: np.ndarray, preprocess: str, rng: str, seed: int,
                 augmentations=AUGMENTATIONS, pad: int = PAD):
        if preprocess not in self.PREPROCESS_MODES or rng not in self.RNG_MODES:
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

    ACCEPTS = Accepts(reads=frozenset({"preprocess", "rng", "workers", "pad", "flip", "cutout", "drop_last"}),
                      flips=("random", "none"), cutout=True, split_over_ranks=True)

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


