"""Training batches, from one of three backends a stage's ``[loader] backend`` names:

* ``dataloader`` (post 1's DataLoader modes): ``dataloader.TrainBatches``;
* ``device`` (post 8 step 1, airbench): the whole set on the device, ``device.DeviceBatches``;
* ``dali`` (NVIDIA DALI, optional): ``dali.DaliBatches``.

Each yields ``(images, labels)`` batches for one epoch per ``iter()``, knows its ``len()`` in
steps and counts its random draws (``rng_calls``). Each declares what it accepts
(``ACCEPTS``, a ``base.Accepts``); ``check_loader`` holds a stage's [loader] table against that
declaration, and ``repro.resnet.config`` calls it when a stage file is loaded, before any data.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...errors import UserError
from .base import MEAN, PAD, SIZE, STD, Accepts, CountingRNG, Shard, batch_sizes, eval_batches, normalise_transpose
from .dali import DaliBatches
from .dataloader import AugmentedTrainSet, TrainBatches, augmentations_for
from .device import DeviceBatches

BACKENDS = {"dataloader": TrainBatches, "device": DeviceBatches, "dali": DaliBatches}


def accepts(backend: str) -> Accepts:
    return BACKENDS[backend].ACCEPTS


def check_loader(loader, defaults) -> None:
    """A UserError naming the key if the [loader] table ``loader`` asks its backend for
    something the backend does not declare; ``defaults`` is the table's default."""
    can = accepts(loader.backend)
    name = f'loader.backend = "{loader.backend}"'
    if loader.flip not in can.flips:
        others = [b for b, cls in BACKENDS.items() if loader.flip in cls.ACCEPTS.flips]
        raise UserError(f'loader.flip = "{loader.flip}" needs loader.backend = '
                        + " or ".join(f'"{b}"' for b in others) + f", not {name}")
    if loader.cutout and not can.cutout:
        others = [b for b, cls in BACKENDS.items() if cls.ACCEPTS.cutout]
        raise UserError("loader.cutout needs loader.backend = " + " or ".join(f'"{b}"' for b in others)
                        + f", not {name}")
    for field in dataclasses.fields(loader):
        value, default = getattr(loader, field.name), getattr(defaults, field.name)
        if field.name not in can.reads and field.name != "backend" and value != default:
            raise UserError(f"loader.{field.name} = {value!r} has no effect with {name} (it reads "
                            + ", ".join(f"loader.{k}" for k in sorted(can.reads)) + ")")


def check_split_over_ranks(backend: str) -> None:
    """A UserError if one run cannot be spread over torchrun ranks with ``backend``."""
    if not accepts(backend).split_over_ranks:
        others = [b for b, cls in BACKENDS.items() if cls.ACCEPTS.split_over_ranks]
        raise UserError("--ddp needs loader.backend = " + " or ".join(f'"{b}"' for b in others)
                        + f', not "{backend}"')


def check_batch_over_ranks(batch_size: int, ranks: int) -> None:
    """A UserError if a batch is too small to give every rank an image."""
    if batch_size < ranks:
        raise UserError(f"a batch of {batch_size} cannot be split over {ranks} ranks")


def make_train_loader(loader, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                      device: torch.device, shard: Shard = Shard()):
    """The training batches a stage's [loader] table (``repro.resnet.config.LoaderSection``,
    already checked by ``check_loader``) asks for; with a ``shard``, this rank's slice of each."""
    batch_size = min(batch_size, len(labels))  # a tiny subset still gets one full batch
    check_batch_over_ranks(batch_size, shard.world_size)
    if loader.backend == "device":
        return DeviceBatches(images, labels, batch_size=batch_size, seed=seed, device=device, pad=loader.pad,
                             flip=loader.flip, cutout=loader.cutout, choices=loader.choices,
                             max_groups=loader.max_groups, drop_last=loader.drop_last,
                             brightness=loader.brightness, contrast=loader.contrast, shard=shard)
    if loader.backend == "dali":
        return DaliBatches(images, labels, batch_size=batch_size, seed=seed, device=device, pad=loader.pad,
                           flip=loader.flip, drop_last=loader.drop_last)
    return TrainBatches(images, labels, preprocess=loader.preprocess, rng=loader.rng, workers=loader.workers,
                        batch_size=batch_size, seed=seed, pin_memory=device.type == "cuda",
                        augmentations=augmentations_for(loader.flip, loader.cutout), pad=loader.pad,
                        drop_last=loader.drop_last, shard=shard)


__all__ = ["BACKENDS", "AugmentedTrainSet", "MEAN", "PAD", "SIZE", "STD", "Accepts", "CountingRNG", "DaliBatches", "DeviceBatches", "Shard",
           "TrainBatches", "accepts", "batch_sizes", "check_batch_over_ranks", "check_loader", "check_split_over_ranks", "eval_batches",
           "make_train_loader", "normalise_transpose"]
