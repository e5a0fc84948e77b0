"""Each trick of posts 2-8 and airbench does what its source says, checked from its definition."""

import copy

import numpy as np
import pytest
import torch
from conftest import assert_close_to_scale
import torch.nn.functional as F
from scipy import stats
from torch import nn

from repro.resnet.averaging import WeightAverage
from repro.resnet.config import OptimizerSection, load_preset, load_stage
from repro.devices import Amp
from repro.resnet.evaluation import tta_logits, translate
from repro.resnet.loaders.base import normalise_pad_transpose
from repro.resnet.loaders.dataloader import Cutout
from repro.resnet.loaders.device import DeviceBatches, grouped_choices
from repro.resnet.nets import GhostBatchNorm, PatchWhitening, airbench94, batch_norm, dawn_resnet18, resnet9
from repro.resnet.train import build_stage_net, cast_batch_norm, warm_up_and_count_flops, loss_fn, make_optimizer, set_lr
from trajectories import recorded_choices

CPU = torch.device("cpu")


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _augment_epoch(loader: DeviceBatches) -> torch.Tensor:
    """Draw an epoch's choices and return every image augmented, in data order."""
    loader.draw_epoch_choices()
    return loader.augment(torch.arange(len(loader.labels), device=loader.device))


def test_cutout_zeroes_exactly_one_square():
    x = np.ones((3, 32, 32), dtype=np.float32)
    out = Cutout(8).apply(x, (5, 20))
    zero = out[0] == 0
    assert zero.sum() == 64 and (out == 0).all(axis=0)[zero].all()
    rows, cols = np.nonzero(zero)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 12, 20, 27)
    assert x.min() == 1  # the input is not modified


@pytest.mark.parametrize("choices", ["grouped", "per_image"])
def test_device_loader_cutout_zeroes_one_square_per_image(choices):
    images = np.full((40, 32, 32, 3), 200, dtype=np.uint8)  # normalises to a non-zero constant
    loader = DeviceBatches(images, np.zeros(40), batch_size=40, seed=0, device=CPU, pad=0, flip="none", cutout=5,
                           choices=choices)
    drawn = recorded_choices(loader)
    out = _augment_epoch(loader)
    zeros = (out == 0).all(dim=1)  # (N, 32, 32)
    assert (zeros.sum(dim=(1, 2)) == 25).all()
    for mask in zeros:
        rows, cols = mask.nonzero(as_tuple=True)
        assert rows.max() - rows.min() == 4 and cols.max() - cols.min() == 4
    where = drawn[-1]["cutout"]  # the square sits where the choice says
    for mask, option in zip(zeros, where.tolist()):
        y0, x0 = divmod(option, 28)
        assert mask[y0:y0 + 5, x0:x0 + 5].all()


def test_label_smoothing_equals_its_formula():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 10), torch.randint(0, 10, (16,))
    opt = OptimizerSection(label_smoothing=0.2)
    log_p = logits.log_softmax(1)
    expected = 0.8 * F.nll_loss(log_p, labels) + 0.2 * (-log_p.mean(1)).mean()
    torch.testing.assert_close(loss_fn(logits, labels, opt), expected)


def test_ghost_bn_normalises_each_split_with_its_own_statistics():
    torch.manual_seed(0)
    bn = GhostBatchNorm(3, splits=4, momentum=0.1)
    x = torch.randn(32, 3, 5, 5) * torch.arange(1, 33).view(32, 1, 1, 1)  # slices with very different scales
    out = bn.train()(x)
    means, variances = [], []
    for chunk_in, chunk_out in zip(x.chunk(4), out.chunk(4)):
        mean = chunk_in.mean(dim=(0, 2, 3), keepdim=True)
        var = chunk_in.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        assert_close_to_scale(chunk_out, (chunk_in - mean) / torch.sqrt(var + bn.eps), rel=1e-5, rtol=1e-4)
        means.append(mean.flatten())
        variances.append(chunk_in.var(dim=(0, 2, 3), unbiased=True))
    # running mean: momentum 0.1 towards the average of the slices' means (starting from 0)
    torch.testing.assert_close(bn.running_mean, 0.1 * torch.stack(means).mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * torch.stack(variances).mean(0))
    plain = nn.BatchNorm2d(3).train()(x)
    assert not torch.allclose(out, plain, atol=1e-2)  # not the same as one batch's statistics


def test_frozen_bn_scales_get_no_gradient_and_stay_one():
    stage = load_stage("frozen_bn_scale")
    net = build_stage_net(stage, load_preset("smoke"))
    optimizer = make_optimizer(net, stage.optimizer, 32)
    set_lr(optimizer, 0.5)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for _ in range(2):
        loss_fn(net(x), y, stage.optimizer).backward()
        optimizer.step()
        optimizer.zero_grad()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.weight.grad is None and torch.all(m.weight == 1) for m in bns)
    assert any(not torch.all(m.bias == 0) for m in bns)  # the shifts do train
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(m.weight) for m in bns}


def test_bias_group_gets_its_lr_and_weight_decay_factors():
    stage = load_stage("frozen_bn_scale")
    net = build_stage_net(stage, load_preset("smoke"))
    optimizer = make_optimizer(net, stage.optimizer, 512)
    set_lr(optimizer, 0.4)
    weights, biases = optimizer.param_groups
    assert biases["lr"] == pytest.approx(64 * weights["lr"]) == pytest.approx(25.6)
    assert biases["weight_decay"] == pytest.approx(weights["weight_decay"] / 64)
    assert all(p.ndim == 1 for p in biases["params"]) and all(p.ndim > 1 for p in weights["params"])


def test_whitening_filters_make_the_patch_covariance_identity():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 1, 32, 32))
    # strongly correlated channels and neighbouring pixels
    images = torch.tensor(np.concatenate([base, base + 0.1 * rng.normal(size=base.shape),
                                          np.roll(base, 1, axis=3) + 0.1 * rng.normal(size=base.shape)], axis=1),
                          dtype=torch.float32)
    layer = PatchWhitening(3, 1e-6, negate=False, centred=True, bias=False, images=200, padding=0)
    layer.fit(images)
    out = layer(images).permute(0, 2, 3, 1).reshape(-1, 27).double()
    cov = torch.cov(out.T)
    torch.testing.assert_close(cov, torch.eye(27, dtype=torch.float64), atol=0.05, rtol=0)
    assert not layer.weight.requires_grad


def test_airbench_whitening_stacks_filters_with_their_negatives():
    net = airbench94(width_divisor=8)
    whiten = net[0]
    whiten.fit(torch.randn(64, 3, 32, 32))
    assert whiten.weight.shape == (24, 3, 2, 2)
    torch.testing.assert_close(whiten.weight[12:], -whiten.weight[:12])
    assert whiten.bias.requires_grad and not whiten.weight.requires_grad


def test_identity_init_convs_start_as_the_identity():
    net = airbench94(width_divisor=1)
    conv = net[5 + 1]  # second conv of the first group: 64 -> 64
    x = torch.randn(2, 64, 8, 8)
    torch.testing.assert_close(conv(x), x)


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_eval_copy_ema_follows_its_update_rule():
    """Bias-corrected EMA: m_k = d m_(k-1) + (1 - d) w_k from m_0 = 0, evaluated as m_k / (1 - d^k)."""
    net = _tiny_net()
    ema = WeightAverage(net, "eval_copy", momentum=0.9, every=2, total_steps=10)
    decay, k = 0.9 ** 2, 0
    raw = [torch.zeros_like(t) for t in net.state_dict().values() if t.is_floating_point()]
    for step in range(1, 7):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * step)
            net[1].running_mean.add_(1.0)
        ema.after_step(step)
        if step % 2 == 0:
            k += 1
            live = [t for t in net.state_dict().values() if t.is_floating_point()]
            raw = [decay * m + (1 - decay) * w for m, w in zip(raw, live)]
            if k == 1:  # the first update copies the weights: no trace of the initialisation
                for g, w in zip([t for t in ema.average.state_dict().values() if t.is_floating_point()], live):
                    torch.testing.assert_close(g, w)
    got = [t for t in ema.average.state_dict().values() if t.is_floating_point()]
    for g, m in zip(got, raw):  # BN running statistics are averaged too
        torch.testing.assert_close(g, m / (1 - decay ** k))
    assert ema.model_to_evaluate() is ema.average


def test_lookahead_ema_copies_back_and_ends_on_the_average():
    net = _tiny_net()
    ema = WeightAverage(net, "lookahead", momentum=0.95, every=5, total_steps=12)
    first = net[3].weight.detach().clone()
    with torch.no_grad():
        net[3].weight.add_(1.0)
    ema.after_step(5)
    decay = 0.95 ** 5 * (5 / 12) ** 3
    torch.testing.assert_close(net[3].weight, decay * first + (1 - decay) * (first + 1.0))
    torch.testing.assert_close(ema.average[3].weight, net[3].weight)
    average = net[3].weight.detach().clone()
    with torch.no_grad():
        net[3].weight.add_(5.0)
    ema.after_step(12)  # the last step: decay 1, the weights become the average
    torch.testing.assert_close(net[3].weight, average)


def test_flip_tta_averages_an_image_and_its_mirror():
    net = _tiny_net().eval()
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(tta_logits(net, x, "flip"), 0.5 * (net(x) + net(x.flip(3))))
    assert not torch.allclose(tta_logits(net, x, "flip"), net(x))


def test_multiview_tta_weights_and_translations():
    net = _tiny_net().eval()
    x = torch.randn(3, 3, 8, 8)
    shifted = translate(x, -1, -1)
    torch.testing.assert_close(shifted[:, :, :-1, :-1], x[:, :, 1:, 1:])  # content moved up-left
    down = translate(x, 1, 1)
    torch.testing.assert_close(down[:, :, 1:, 1:], x[:, :, :-1, :-1])

    def pair(v):
        return 0.5 * (net(v) + net(v.flip(3)))

    expected = 0.5 * pair(x) + 0.25 * pair(shifted) + 0.25 * pair(down)
    torch.testing.assert_close(tta_logits(net, x, "multiview"), expected)


def test_alternating_flip_flips_exactly_what_it_did_not_flip_before():
    loader = DeviceBatches(_images(64), np.zeros(64), batch_size=16, seed=3, device=CPU, pad=2, flip="alternating")
    drawn = recorded_choices(loader)
    epochs = []
    for _ in range(4):
        _augment_epoch(loader)
        epochs.append(drawn[-1]["flip"].clone())
    assert epochs[0].sum() == 32  # a random half first
    for before, after in zip(epochs, epochs[1:]):
        assert torch.equal(after, ~before)


@pytest.mark.parametrize("choices", ["grouped", "per_image"])
def test_device_loader_applies_its_choices(choices):
    images = _images(20)
    loader = DeviceBatches(images, np.arange(20), batch_size=20, seed=0, device=CPU, pad=4, flip="random",
                           choices=choices)
    drawn = recorded_choices(loader)
    out = _augment_epoch(loader)
    crop, flip = drawn[-1]["crop"], drawn[-1]["flip"]
    padded = torch.from_numpy(normalise_pad_transpose(images, 4))
    for i in range(20):
        dy, dx = divmod(int(crop[i]), 9)
        expected = padded[i, :, dy:dy + 32, dx:dx + 32]
        torch.testing.assert_close(out[i], expected.flip(2) if flip[i] else expected)
    batches = list(loader)
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == list(range(20))  # every image once per epoch
    for x, y in batches:  # a batch is the same images augmented by the same epoch's choices
        torch.testing.assert_close(x, loader.augment(y))


def test_device_loader_per_image_choices_are_independent_and_uniform():
    n, epochs = 400, 50
    loader = DeviceBatches(_images(n), np.zeros(n), batch_size=n, seed=1, device=CPU, pad=4, cutout=8,
                           choices="per_image")
    crops, flips = [], []
    for _ in range(epochs):
        choices = loader.draw_epoch_choices()
        crops.append(choices["crop"])
        flips.append(choices["flip"])
        assert choices["cutout"].max() < 25 * 25
    crops = torch.stack(crops)
    # all 81 offsets used every epoch (grouped with 200 groups would also, so check counts are not even)
    assert stats.chisquare(torch.bincount(crops.flatten(), minlength=81).numpy()).pvalue > 1e-3
    per_epoch = torch.stack([torch.bincount(c, minlength=81) for c in crops])
    assert per_epoch.max() - per_epoch.min() > 1  # not the even groups of the grouped draw
    half = torch.stack(flips).sum(1)
    assert (half != n // 2).any() and stats.binomtest(int(half.sum()), n * epochs).pvalue > 1e-3


def test_grouped_choices_are_uniform_per_image():
    """Chi-square over many epochs: each image's crop offset (81 options) and flip (2) are uniform."""
    gen = torch.Generator().manual_seed(0)
    n, epochs = 100, 300
    crops = torch.stack([grouped_choices(n, 81, 200, gen) for _ in range(epochs)])
    counts = torch.bincount(crops[:, 7], minlength=81).numpy()  # one image across epochs
    assert stats.chisquare(counts).pvalue > 1e-3
    pooled = torch.bincount(crops.flatten(), minlength=81).numpy()
    assert stats.chisquare(pooled).pvalue > 1e-3
    # at most max_groups distinct choices in an epoch, in even groups
    few = grouped_choices(1000, 625, 200, gen)
    sizes = torch.bincount(few)[torch.bincount(few) > 0]
    assert len(sizes) == 200 and sizes.max() - sizes.min() <= 1
    flips = torch.stack([grouped_choices(n, 2, 200, gen) for _ in range(epochs)])
    assert (flips.sum(1) == n // 2).all()  # exactly half each epoch
    assert stats.binomtest(int(flips[:, 3].sum()), epochs).pvalue > 1e-3


def test_summed_loss_with_scaled_lr_and_decay_gives_the_mean_loss_update():
    """Page: summed loss, lr / batch, weight decay x batch == mean loss, lr, weight decay."""
    torch.manual_seed(0)
    net = resnet9(width_divisor=16).double()
    x, y = torch.randn(24, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (24,))
    results = []
    for reduction in ("mean", "sum"):
        model = copy.deepcopy(net)
        opt_cfg = OptimizerSection(loss_reduction=reduction, weight_decay=5e-4, bias_lr_factor=4.0,
                                   bias_wd_factor=0.25)
        optimizer = make_optimizer(model, opt_cfg, 24)
        for step in range(3):
            set_lr(optimizer, 0.1 * (step + 1))
            loss_fn(model(x), y, opt_cfg).backward()
            optimizer.step()
            optimizer.zero_grad()
        results.append(model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-10, atol=1e-12)
    assert not torch.equal(results[0]["1.0.weight"], net.state_dict()["1.0.weight"])


def test_batch_norm_keep_fp32_keeps_or_casts_batch_norm():
    for keep_fp32, dtype in ((True, torch.float32), (False, torch.bfloat16)):
        net = resnet9(width_divisor=16)
        note = cast_batch_norm(net, Amp(CPU, "bf16"), keep_fp32)
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(m.weight.dtype == dtype for m in bns), note
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert cast_batch_norm(resnet9(width_divisor=16), Amp(CPU, "fp32"), False) == "fp32 (fp32 run)"


@pytest.mark.parametrize("build, forward_gflop", [
    (lambda: dawn_resnet18(), 0.92),  # post 1: 0.92 GFLOP forward, x3 = 2.76 for a training step
    (lambda: resnet9(), 0.76),
    (lambda: airbench94(), 0.236),  # airbench94's conv + linear MACs x 2 (the paper's count)
])
def test_training_flops_match_the_independent_counts(build, forward_gflop):
    net = build()
    flops = warm_up_and_count_flops(net, OptimizerSection(), 2, CPU, False, Amp(CPU, "fp32")) / 2
    assert flops == pytest.approx(3 * forward_gflop * 1e9, rel=0.04)


def test_pool_before_bn_moves_the_pool():
    after = resnet9(width_divisor=16)[1]
    before = resnet9(width_divisor=16, pool_before_bn=True)[1]
    assert [type(m).__name__ for m in after] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in before] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]


def test_batch_norm_scale_modes():
    torch.manual_seed(0)
    assert 0 <= batch_norm(64, scale="uniform").weight.min() < batch_norm(64, scale="uniform").weight.max() <= 1
    assert torch.all(batch_norm(8, scale="ones").weight == 1) and batch_norm(8, scale="ones").weight.requires_grad
    assert not batch_norm(8, scale="frozen").weight.requires_grad
