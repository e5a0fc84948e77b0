"""The DALI loader backend: uniform crops, fair flips, and the torch loader's output for the same choices."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats

from repro.resnet import cli as resnet
from repro.resnet.config import load_stage
from repro.errors import UserError
from repro.resnet.config import LoaderSection
from repro.resnet.loaders import MEAN, STD, check_loader, make_train_loader
from repro.resnet.loaders.base import normalise_pad_transpose
from repro.resnet.loaders.dataloader import Crop, FlipLR
from repro.runlog import read_records

pytest.importorskip("nvidia.dali")
from repro.resnet.loaders.dali import DaliBatches  # noqa: E402
from trajectories import recorded_choices

CPU = torch.device("cpu")


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_output_equals_torch_crop_and_flip_for_the_same_choices():
    x = _images(70)
    batches = DaliBatches(x, np.arange(70), batch_size=32, seed=3, device=CPU)
    drawn = recorded_choices(batches, "draw_epoch")
    padded = normalise_pad_transpose(x)
    seen = []
    for images, labels in batches:  # 32 + 32 + 6: the short last batch too
        idx = labels.numpy()  # labels are the image indices here
        crop, flips = drawn[-1][0][idx], drawn[-1][1][idx]
        expected = np.stack([FlipLR().apply(Crop().apply(padded[i], crop[k]), flips[k]) for k, i in enumerate(idx)])
        assert images.dtype == torch.float32 and images.shape == (len(idx), 3, 32, 32)
        np.testing.assert_allclose(images.numpy(), expected, rtol=1e-5, atol=1e-5)
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(70))  # every image once per epoch


def test_every_one_of_the_81_crops_matches_torch():
    x = _images(81, seed=1)
    batches = DaliBatches(x, np.arange(81), batch_size=81, seed=0, device=CPU)
    crop = np.array([divmod(k, 9) for k in range(81)])
    flips = np.arange(81) % 2 == 1
    out = batches.run_batch(np.arange(81), crop, flips).numpy()
    padded = normalise_pad_transpose(x)
    expected = np.stack([FlipLR().apply(Crop().apply(padded[k], crop[k]), flips[k]) for k in range(81)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_crop_offsets_uniform_over_81_and_flips_fair():
    # Pixel values encode coordinates: channel 0 = row, channel 1 = column (pad 4 reflect keeps them
    # distinct in the 40x40 interior window), so the offset is read off the output, not the choices.
    n = 4050
    coords = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    coords[..., 0] = 8 * np.arange(32)[None, :, None]
    coords[..., 1] = 8 * np.arange(32)[None, None, :]
    batches = DaliBatches(coords, np.zeros(n), batch_size=1024, seed=7, device=CPU)
    drawn = recorded_choices(batches, "draw_epoch")
    counts, flips = np.zeros(81), 0
    for images, _ in batches:
        raw = images.numpy() * STD[:, None, None] + MEAN[:, None, None]
        row = np.rint(raw[:, 0, 16, 16] / 8).astype(int)  # centre pixel: never in the reflected border
        col = np.rint(raw[:, 1, 16, 16] / 8).astype(int)
        flipped = raw[:, 1, 16, 0] > raw[:, 1, 16, 31]
        # output (16, 16) is padded (16 + dy, 16 + dx) = image (12 + dy, 12 + dx); flipped, it is crop column 15
        dy = row - 12
        dx = np.where(flipped, col - 11, col - 12)
        assert ((dy >= 0) & (dy <= 8) & (dx >= 0) & (dx <= 8)).all()
        np.add.at(counts, dy * 9 + dx, 1)
        flips += int(flipped.sum())
    assert (counts > 0).all()
    assert stats.chisquare(counts).pvalue > 1e-3
    assert stats.binomtest(flips, n).pvalue > 1e-3
    # the choices it reports are the ones it applied (the last batch's images, in data order)
    crop = drawn[-1][0]
    assert np.array_equal(np.bincount(crop[:, 0] * 9 + crop[:, 1], minlength=81), counts)


def test_flip_none_never_flips():
    batches = DaliBatches(_images(40), np.arange(40), batch_size=40, seed=0, device=CPU, flip="none")
    drawn = recorded_choices(batches, "draw_epoch")
    next(iter(batches))
    assert not drawn[-1][1].any()


def test_make_train_loader_selects_dali_and_its_declaration_refuses_cutout():
    loader = dataclasses.replace(load_stage("final").loader, backend="dali")
    batches = make_train_loader(loader, _images(50), np.arange(50), batch_size=16, seed=0, device=CPU)
    assert isinstance(batches, DaliBatches) and len(batches) == 4 and batches.rng_calls == 0
    next(iter(batches))
    assert batches.rng_calls == 3  # crops, flips, shuffle seed: bulk draws per epoch
    with pytest.raises(UserError, match='^loader.cutout needs loader.backend = "dataloader" or "device", '
                                        'not loader.backend = "dali"$'):
        check_loader(dataclasses.replace(loader, cutout=8), LoaderSection())


def test_a_stage_file_with_backend_dali_trains(tmp_path):
    cfg = tmp_path / "final_dali.toml"
    cfg.write_text('extends = "final"\n[loader]\nbackend = "dali"\n')
    code = resnet.main(["--stage", str(cfg), "--preset", "smoke", "--data", "synthetic", "--quiet",
                        "--precision", "fp32", "--log-dir", str(tmp_path)])
    assert code == 0
    (rec,) = read_records(tmp_path / "runs.jsonl")
    assert rec["status"] == "ok" and len(rec["epochs"]) == 2


def test_missing_dali_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali"):
            raise ImportError("No module named 'nvidia.dali'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(UserError, match=r"pip install 'repro\[dali\]'"):
        DaliBatches(_images(4), np.arange(4), batch_size=4, seed=0, device=CPU)
