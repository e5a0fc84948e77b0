"""Training batches for every post-1 loader mode, from one dataset class.

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
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch

# CIFAR-10 channel statistics on the 0-255 scale (the blog's numbers)
MEAN = np.array([125.31, 122.95, 113.87], dtype=np.float32)
STD = np.array([62.99, 62.09, 66.70], dtype=np.float32)
PAD = 4


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


AUGMENTATIONS = (Crop(32), FlipLR())


def normalise_pad_transpose(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H + 8, W + 8), normalised and reflect-padded."""
    x = (images.astype(np.float32) - MEAN) / STD
    x = np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def normalise_transpose(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W): the test set, which is never padded."""
    return np.ascontiguousarray(((images.astype(np.float32) - MEAN) / STD).transpose(0, 3, 1, 2))


class AugmentedTrainSet(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, preprocess: str, rng: str, seed: int,
                 augmentations=AUGMENTATIONS):
        if preprocess not in ("per_sample", "once") or rng not in ("per_sample", "bulk"):
            raise ValueError(f"unknown loader mode preprocess={preprocess!r} rng={rng!r}")
        self.preprocess, self.rng_mode = preprocess, rng
        self.images = normalise_pad_transpose(images) if preprocess == "once" else images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.augmentations = augmentations
        self.rng = CountingRNG(seed)
        self.choices: list[np.ndarray] | None = None
        self.padded_size = images.shape[1] + 2 * PAD

    def __len__(self) -> int:
        return len(self.labels)

    def set_random_choices(self) -> None:
        """Bulk mode: every choice of the epoch, one RNG call per augmentation."""
        self.choices = [aug.draw(self.rng, len(self), self.padded_size) for aug in self.augmentations]

    def __getitem__(self, index: int):
        if self.preprocess == "once":
            x = self.images[index]
        else:
            x = normalise_pad_transpose(self.images[index:index + 1])[0]
        if self.rng_mode == "bulk":
            if self.choices is None:
                raise RuntimeError("bulk RNG mode: call set_random_choices() at the start of each epoch")
            picks = [c[index] for c in self.choices]
        else:
            picks = [aug.draw(self.rng, 1, self.padded_size)[0] for aug in self.augmentations]
        for aug, choice in zip(self.augmentations, picks):
            x = aug.apply(x, choice)
        return torch.from_numpy(np.ascontiguousarray(x)), int(self.labels[index])


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
                 seed: int, pin_memory: bool = False):
        self.dataset = AugmentedTrainSet(images, labels, preprocess, rng, seed)
        self.workers = workers
        with _allow_more_workers_than_cores():
            self.loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                pin_memory=pin_memory, drop_last=False, persistent_workers=False,
                generator=torch.Generator().manual_seed(seed),
                worker_init_fn=_seed_worker if workers > 0 else None,
            )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.dataset.rng_mode == "bulk":
            self.dataset.set_random_choices()
        with _allow_more_workers_than_cores():
            return iter(self.loader)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """The test set, normalised once, in order (Page used the training batch size here too)."""
    x = torch.from_numpy(normalise_transpose(images))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
