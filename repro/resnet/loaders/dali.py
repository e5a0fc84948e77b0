"""NVIDIA DALI loader backend (``[loader] backend = "dali"``).

Fed from the decoded uint8 arrays through ``fn.external_source``, so every data source works.
The set is reflect-padded once as uint8 (reflect padding commutes with the per-channel
normalisation); per epoch the crop offsets and flips are drawn in bulk (two draws, as the
torch path's ``rng = "bulk"``), fed beside each batch, and ``fn.crop_mirror_normalize`` crops
32x32, flips and normalises with ``base.MEAN/STD`` to float NCHW. On CUDA the images
are moved to the GPU and the operator runs there; otherwise it is a CPU pipeline
(``device_id=None``).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ...errors import UserError
from .base import MEAN, PAD, SIZE, STD, Accepts, CountingRNG, batch_sizes

INSTALL_HINT = "the dali loader backend needs NVIDIA DALI: pip install 'repro[dali]'"


def _import_dali():
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as exc:
        raise UserError(f"{INSTALL_HINT} ({exc})") from None
    return fn, pipeline_def, types, feed_ndarray


class DaliBatches:
    """Iterable of (images float NCHW normalised, labels) batches for one epoch per ``iter()``."""

    ACCEPTS = Accepts(reads=frozenset({"pad", "flip", "drop_last"}), flips=("random", "none"), cutout=False,
                      split_over_ranks=False)

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                 device: torch.device, pad: int = PAD, flip: str = "random", drop_last: bool = False,
                 num_threads: int = 2):
        if flip not in self.ACCEPTS.flips:
            raise ValueError(f"the dali backend supports flip = {' or '.join(self.ACCEPTS.flips)}, not {flip!r}")
        fn, pipeline_def, types, self._feed = _import_dali()
        self.device, self.batch_size, self.drop_last = device, batch_size, drop_last
        self.pad, self.flip = pad, flip
        images = np.asarray(images, dtype=np.uint8)
        self.padded = np.ascontiguousarray(np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect"))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.rng = CountingRNG(seed)
        gpu = device.type == "cuda"
        span = float(2 * pad)  # crop_pos is a fraction of (padded side - 32)
        std = [float(s) for s in STD]
        mean = [float(m) for m in MEAN]

        @pipeline_def(batch_size=batch_size, num_threads=num_threads,
                      device_id=(device.index or 0) if gpu else None, seed=seed, prefetch_queue_depth=1,
                      exec_dynamic=True)
        def pipe():
            x = fn.external_source(name="images", device="cpu", layout="HWC")
            pos_y = fn.external_source(name="crop_y", device="cpu")
            pos_x = fn.external_source(name="crop_x", device="cpu")
            mirror = fn.external_source(name="mirror", device="cpu")
            if gpu:
                x = x.gpu()
            return fn.crop_mirror_normalize(x, crop=(SIZE, SIZE), crop_pos_y=pos_y / span if span else 0.0,
                                            crop_pos_x=pos_x / span if span else 0.0, mirror=mirror,
                                            mean=mean, std=std, dtype=types.FLOAT, output_layout="CHW")

        self.pipe = pipe()
        self.pipe.build()

    @property
    def rng_calls(self) -> int:
        return self.rng.calls

    def __len__(self) -> int:
        return len(batch_sizes(len(self.labels), self.batch_size, self.drop_last))

    def draw_epoch(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-image crop offsets (N, 2) as (dy, dx) and flips (N,), in data order."""
        n, side = len(self.padded), 2 * self.pad + 1
        crop = self.rng.integers(0, side, size=(n, 2))
        flips = self.rng.integers(0, 2, size=n).astype(bool) if self.flip == "random" else np.zeros(n, bool)
        return crop, flips

    def run_batch(self, idx: np.ndarray, crop: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        """The augmented images ``idx`` with the given per-image choices (rows of ``crop``/``flips``)."""
        self.pipe.feed_input("images", [self.padded[i] for i in idx])
        self.pipe.feed_input("crop_y", [np.float32(c) for c in crop[:, 0]])
        self.pipe.feed_input("crop_x", [np.float32(c) for c in crop[:, 1]])
        self.pipe.feed_input("mirror", [np.int32(f) for f in flips])
        (out,) = self.pipe.run()
        result = torch.empty((len(idx), 3, SIZE, SIZE), dtype=torch.float32, device=self.device)
        if self.device.type == "cuda":
            self._feed(out.as_tensor(), result, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            result.copy_(torch.from_numpy(out.as_array()))
        return result

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        crop, flips = self.draw_epoch()
        order = torch.randperm(len(self.padded), generator=torch.Generator().manual_seed(
            int(self.rng.integers(0, 2 ** 62)))).numpy()
        for step in range(len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.run_batch(idx, crop[idx], flips[idx]), self.labels[torch.from_numpy(idx).to(self.device)]

