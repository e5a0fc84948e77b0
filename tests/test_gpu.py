"""CUDA checks (``pytest -m gpu``; scripts/gpu_check.sh runs them): skipped on a machine without CUDA."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_close_to_scale
from torch import nn

from repro.resnet import cli as resnet
from repro.resnet.config import load_preset, load_stage
from repro.data import make_synthetic
from repro.devices import Amp
from repro.resnet.loaders.dataloader import Crop, FlipLR
from repro.resnet.loaders.device import DeviceBatches
from repro.resnet.loaders.base import normalise_pad_transpose
from repro.resnet.train import _to_device
from trajectories import recorded_choices, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = torch.device("cuda")


def _fp16_setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 8 * 8, 10)).to(CUDA)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x, y = torch.randn(16, 3, 8, 8, device=CUDA), torch.randint(0, 10, (16,), device=CUDA)
    return net, opt, x, y, Amp(CUDA, "fp16")


def test_fp16_scaler_steps_and_skips_an_overflowed_step_on_cuda():
    net, opt, x, y, amp = _fp16_setup()
    assert amp.scaler is not None and amp.scaler.is_enabled()
    before = [p.detach().clone() for p in net.parameters()]
    scale = amp.scaler.get_scale()
    with amp.autocast():
        logits = net(x)
    assert logits.dtype == torch.float16
    amp.backward(nn.functional.cross_entropy(logits.float(), y) * float("inf"))
    amp.step(opt)
    assert all(torch.equal(b, p.detach()) for b, p in zip(before, net.parameters()))  # skipped
    assert amp.scaler.get_scale() == scale / 2
    opt.zero_grad(set_to_none=True)
    with amp.autocast():
        loss = nn.functional.cross_entropy(net(x).float(), y)
    amp.backward(loss)
    amp.step(opt)
    assert not all(torch.equal(b, p.detach()) for b, p in zip(before, net.parameters()))


def _train(phase_timing):
    return train(load_stage("final"), load_preset("smoke"), make_synthetic(512, 256, seed=0), device=CUDA,
                 phase_timing=phase_timing)[0]


def test_deferred_and_sync_timing_give_the_same_run_on_cuda():
    deferred, sync = _train("deferred"), _train("sync")
    assert deferred.phase_timing.startswith("deferred")
    assert sync.phase_timing.startswith("sync")
    # same seed, same data: only cuDNN's algorithm choice (benchmark mode) may differ between the runs
    assert abs(deferred.test_accuracy - sync.test_accuracy) <= 0.02
    for a, b in zip(deferred.epochs, sync.epochs):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-2)


def test_pinned_non_blocking_copies_arrive_intact():
    x = torch.randn(64, 3, 32, 32).pin_memory()
    y = torch.randint(0, 10, (64,)).pin_memory()
    assert x.is_pinned()
    xd, yd = _to_device(x, y, CUDA, channels_last=False)
    torch.cuda.synchronize()
    assert xd.device.type == "cuda" and torch.equal(xd.cpu(), x) and torch.equal(yd.cpu(), y)


def test_channels_last_copy_and_conv_on_cuda():
    x, y = torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)
    xd, _ = _to_device(x, y, CUDA, channels_last=True)
    assert xd.is_contiguous(memory_format=torch.channels_last) and torch.equal(xd.cpu(), x)
    conv = nn.Conv2d(3, 16, 3, padding=1).to(CUDA)
    out_cl = conv.to(memory_format=torch.channels_last)(xd)
    out = conv.to(memory_format=torch.contiguous_format)(x.to(CUDA))
    assert_close_to_scale(out_cl, out, rtol=1e-3, rel=1e-3)


def test_dali_gpu_pipeline_equals_the_torch_crop_and_flip():
    pytest.importorskip("nvidia.dali")
    from repro.resnet.loaders.dali import DaliBatches

    x = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    batches = DaliBatches(x, np.arange(100), batch_size=32, seed=0, device=CUDA)
    drawn = recorded_choices(batches, "draw_epoch")
    padded = normalise_pad_transpose(x)
    seen = 0
    for images, labels in batches:
        assert images.device.type == "cuda" and labels.device.type == "cuda"
        idx = labels.cpu().numpy()
        crop, flips = drawn[-1][0][idx], drawn[-1][1][idx]
        expected = np.stack([FlipLR().apply(Crop().apply(padded[i], crop[k]), flips[k]) for k, i in enumerate(idx)])
        np.testing.assert_allclose(images.cpu().numpy(), expected, rtol=1e-5, atol=1e-5)
        seen += len(idx)
    assert seen == 100


@pytest.mark.parametrize("choices, cutout", [("grouped", 8), ("per_image", 0)])
def test_device_loader_on_cuda_gives_the_cpu_batches(choices, cutout):
    """Same seed, same choices (drawn on the host): the gather on the GPU equals the one on the CPU."""
    x = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    kwargs = dict(batch_size=64, seed=5, pad=4, flip="random", cutout=cutout, choices=choices)
    on_gpu = DeviceBatches(x, np.arange(300), device=CUDA, **kwargs)
    on_cpu = DeviceBatches(x, np.arange(300), device=torch.device("cpu"), **kwargs)
    for _ in range(2):  # two epochs: fresh choices each
        for (xg, yg), (xc, yc) in zip(on_gpu, on_cpu):
            assert xg.device.type == "cuda" and torch.equal(yg.cpu(), yc)
            torch.testing.assert_close(xg.cpu(), xc)


@pytest.mark.parametrize("stage", ["final", "airbench94", "airbench94_muon", "airbench95", "airbench96"])
def test_one_epoch_on_cuda_with_the_default_precision(stage, tmp_path):
    code = resnet.main(["--stage", stage, "--preset", "smoke", "--data", "synthetic", "--device", "cuda",
                        "--epochs", "1", "--quiet", "--log-dir", str(tmp_path)])
    assert code == 0
    (rec,) = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines() if line.strip()]
    assert rec["status"] == "ok" and rec["device"].startswith("cuda") and len(rec["epochs"]) == 1
    native_bf16 = torch.cuda.get_device_capability() >= (8, 0)
    assert rec["precision"] == ("bf16" if native_bf16 else "fp16")  # auto on CUDA
    assert rec["phase_timing"].startswith("deferred")  # auto on CUDA: no per-step synchronisation


def test_the_sync_checker_is_armed():
    """The positive control for the check below: torch's sync debug mode raises on a deliberate host read."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            torch.ones(2, device=CUDA).sum().item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("stage", ["airbench94", "airbench94_muon"])
def test_training_steps_make_no_host_sync_by_torchs_own_checker(stage):
    """Deferred timing's promise, checked by torch rather than by counting .item() calls: under
    set_sync_debug_mode("error") any implicit synchronisation (float(), bool(), .cpu(), a Python
    ``if`` on a tensor) raises. Inside: the training steps, the EMA's end of epoch and a selective
    TTA pass; outside: the loader's epoch and the once-per-epoch read."""
    import math
    from repro.resnet.train import EpochStats, TrainSettings, prepare, train_step

    settings = TrainSettings(device=CUDA, precision="bf16", channels_last=True, phase_timing="deferred")
    run = prepare(load_stage(stage), load_preset("smoke"), make_synthetic(4096, 256, seed=0), 0, settings)
    from repro.resnet.evaluation import selective_tta_logits

    batches = [run.to_device(x, y) for x, y in run.train]
    test = [run.to_device(x, y) for x, y in run.test]
    stats = EpochStats(CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (x, y) in enumerate(batches):
            train_step(run, x, y, i, stats, epoch=0)
        if run.average:
            run.average.end_epoch()  # the lookahead EMA's copy back
        with torch.no_grad():  # TTA, selective too: the views chosen on the device
            logits, _ = selective_tta_logits(run.evaluated_net(), test, to_device=lambda x, y: (x, y),
                                             autocast=run.amp.autocast, tta="multiview", fraction=0.25)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    losses = stats.read()[0]
    assert len(losses) == len(batches) >= 2 and all(math.isfinite(v) for v in losses)
    assert logits.shape == (256, 10)
