"""One epoch of augmentation + batching for each loader of the ladder (post 1's DataLoader modes
and post 8's device-resident grouped loader), side by side, against a torchvision per-image
DataLoader. Prints images/s and the ratio to the torchvision loader.

    python scripts/bench_loaders.py --data PATH/cifar10-jpeg.tar.gz --images 20000
    python scripts/bench_loaders.py --data synthetic

No model runs: this isolates the data path that stages 3-5 of post 1 speed up. Modes run
interleaved, --repeats times each, and the best time is kept (the machine may be shared).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from repro.resnet.config import available_stages, load_stage
from repro.data import SYNTHETIC, load_cifar10
from repro.errors import UserError
from repro.resnet.loaders import MEAN, STD, make_train_loader


class TorchvisionPerImage(torch.utils.data.Dataset):
    """The textbook pipeline: PIL-free tensors, but one transforms.v2 call chain per image."""

    def __init__(self, images, labels):
        from torchvision.transforms import v2

        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 CHW views
        self.labels = labels
        self.transform = v2.Compose([
            v2.RandomCrop(32, padding=4, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=False),
            v2.Normalize(MEAN.tolist(), STD.tolist()),
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def loaders(images, labels, batch_size, seed):
    """Name -> a zero-argument factory of a fresh epoch iterable."""
    out = {}
    seen = set()
    for stage in available_stages():
        lc = load_stage(stage).loader
        if lc in seen:  # stages that share a loader configuration
            continue
        seen.add(lc)
        mode = f"device, {lc.choices.replace('_', ' ')}" if lc.backend == "device" else f"{lc.preprocess}/{lc.rng}/{lc.workers}w"
        extras = (f", cutout {lc.cutout}" if lc.cutout else "") + (f", {lc.flip} flip" if lc.flip != "random" else "")
        out[f"{stage} ({mode}{extras})"] = lambda lc=lc: make_train_loader(
            lc, images, labels, batch_size=batch_size, seed=seed, device=torch.device("cpu"))
    try:
        import nvidia.dali  # noqa: F401  (optional: pip install 'repro[dali]')
    except ImportError:
        pass
    else:  # the final stage's loader on the DALI backend (a CPU pipeline here: the bench runs on the CPU)
        import dataclasses

        lc = dataclasses.replace(load_stage("final").loader, backend="dali")
        out["final, dali backend (CPU pipeline)"] = lambda lc=lc: make_train_loader(
            lc, images, labels, batch_size=batch_size, seed=seed, device=torch.device("cpu"))
    tv = TorchvisionPerImage(images, labels)
    out["torchvision v2 per image (0w)"] = lambda: torch.utils.data.DataLoader(tv, batch_size=batch_size, shuffle=True)
    return out


def one_epoch(factory) -> float:
    start = time.perf_counter()
    batches = factory()  # construction counts: "preprocess once" pays its cost here
    n = sum(len(y) for _, y in batches)
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=SYNTHETIC)
    p.add_argument("--images", type=int, default=10000, help="training images per epoch (default 10000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    try:
        data = load_cifar10(args.data, synthetic_sizes=(args.images, 10)).subset(args.images, None)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # no model here; keep the comparison about the data path
    factories = loaders(data.train_images, data.train_labels, args.batch_size, seed=0)
    best = {name: 0.0 for name in factories}
    for _ in range(args.repeats):
        for name, factory in factories.items():
            best[name] = max(best[name], one_epoch(factory))
    ref = best["torchvision v2 per image (0w)"]
    table = Table(title=f"one epoch of augmentation + batching, {len(data.train_labels)} images "
                        f"({data.source_label}), best of {args.repeats}")
    table.add_column("loader")
    table.add_column("images/s", justify="right")
    table.add_column("÷ torchvision", justify="right")
    table.add_column("s per 50k images", justify="right")
    for name, rate in best.items():
        table.add_row(name, f"{rate:,.0f}", f"{rate / ref:.2f}", f"{50000 / rate:.2f}")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
