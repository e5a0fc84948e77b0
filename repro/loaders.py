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

**Device backend** (post 8 step 1, airbench's loader): the normalised, padded set is one tensor
on the training device; each epoch every augmentation splits a random permutation of the images
into at most ``max_groups`` even groups and applies one choice to each group, a vectorised slice
per group, so each image's choice is still uniform over all options. No DataLoader, no workers.
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
                 drop_last: bool = False):
        self.dataset = AugmentedTrainSet(images, labels, preprocess, rng, seed, augmentations, pad)
        self.workers, self.batch_size = workers, batch_size
        with _allow_more_workers_than_cores():
            self.loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                pin_memory=pin_memory, drop_last=drop_last, persistent_workers=False,
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
    """The whole training set on ``device``; per-epoch grouped crop / flip / cutout, then a shuffle.

    ``flip = "alternating"`` (airbench): a random half flipped in the first epoch, and from then
    on each image flipped exactly when it was not flipped the epoch before. ``last_choices``
    keeps the epoch's per-image choices (crop offset index, flip, cutout index) for inspection.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                 device: torch.device, pad: int = PAD, flip: str = "random", cutout: int = 0,
                 max_groups: int = 200, drop_last: bool = False):
        self.device, self.batch_size, self.drop_last = device, batch_size, drop_last
        self.pad, self.flip, self.cutout, self.max_groups = pad, flip, cutout, max_groups
        self.padded = torch.from_numpy(normalise_pad_transpose(images, pad)).to(device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng_calls = 0
        self.flipped: torch.Tensor | None = None
        self.last_choices: dict[str, torch.Tensor] = {}

    @property
    def images(self) -> torch.Tensor:
        """The normalised, unpadded images (what patch whitening is fitted on)."""
        p = self.pad
        return self.padded[:, :, p:p + SIZE, p:p + SIZE]

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _choices(self, options: int) -> torch.Tensor:
        self.rng_calls += 2  # one permutation of the options, one of the images
        return grouped_choices(len(self.labels), options, self.max_groups, self.generator)

    def _groups(self, choice: torch.Tensor):
        """(option, indices of the images given it) for each option used: one sort, not a mask per option."""
        order = torch.argsort(choice)
        options, counts = torch.unique_consecutive(choice[order], return_counts=True)
        for option, members in zip(options.tolist(), torch.split(order, counts.tolist())):
            yield option, members.to(self.device)

    def _flips(self) -> torch.Tensor:
        if self.flip == "alternating" and self.flipped is not None:
            return ~self.flipped
        return self._choices(2).bool()

    def augment_epoch(self) -> torch.Tensor:
        n, side = len(self.labels), 2 * self.pad + 1
        crop = self._choices(side * side)
        out = torch.empty((n, 3, SIZE, SIZE), dtype=self.padded.dtype, device=self.device)
        for option, members in self._groups(crop):
            dy, dx = divmod(option, side)
            out[members] = self.padded[members, :, dy:dy + SIZE, dx:dx + SIZE]
        self.last_choices = {"crop": crop}
        if self.flip != "none":
            flips = self._flips()
            self.flipped = flips
            idx = flips.nonzero().squeeze(1).to(self.device)
            out[idx] = out[idx].flip(3)
            self.last_choices["flip"] = flips
        if self.cutout:
            side_c = SIZE - self.cutout + 1
            where = self._choices(side_c * side_c)
            for option, members in self._groups(where):
                y0, x0 = divmod(option, side_c)
                out[members, :, y0:y0 + self.cutout, x0:x0 + self.cutout] = 0.0
            self.last_choices["cutout"] = where
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images = self.augment_epoch()
        order = torch.randperm(len(self.labels), generator=self.generator).to(self.device)
        self.rng_calls += 1
        for step in range(len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield images[idx], self.labels[idx]


def make_train_loader(loader, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                      device: torch.device):
    """The training batches a stage's [loader] table (``repro.config.LoaderSection``) asks for."""
    batch_size = min(batch_size, len(labels))  # a tiny subset still gets one full batch
    if loader.backend == "device":
        return DeviceBatches(images, labels, batch_size=batch_size, seed=seed, device=device, pad=loader.pad,
                             flip=loader.flip, cutout=loader.cutout, max_groups=loader.max_groups,
                             drop_last=loader.drop_last)
    if loader.backend == "dali":
        from repro.dali_loader import DaliBatches  # optional dependency: repro[dali]
        if loader.cutout:
            raise ValueError("cutout needs loader.backend = \"device\" or \"dataloader\", not \"dali\"")
        return DaliBatches(images, labels, batch_size=batch_size, seed=seed, device=device, pad=loader.pad,
                           flip=loader.flip, drop_last=loader.drop_last)
    if loader.flip == "alternating":
        raise ValueError("alternating flip needs loader.backend = \"device\"")
    return TrainBatches(images, labels, preprocess=loader.preprocess, rng=loader.rng, workers=loader.workers,
                        batch_size=batch_size, seed=seed, pin_memory=device.type == "cuda",
                        augmentations=augmentations_for(loader.flip, loader.cutout), pad=loader.pad,
                        drop_last=loader.drop_last)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """The test set, normalised once, in order (Page used the training batch size here too)."""
    x = torch.from_numpy(normalise_transpose(images))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
