"""The stages past airbench94: airbench94_muon (Muon on the conv filters), hiverge94 (its batched
Muon, colour jitter, SiLU and six-view TTA for the least sure quarter), airbench95 and airbench96."""

import copy
import math
import re

import numpy as np

import pytest
import torch
from conftest import assert_close_to_scale

from repro.resnet import cli as resnet
from repro.resnet.averaging import WeightAverage
from repro.resnet.config import load_preset, load_stage
from repro.resnet.muon import FilterMuon, muon_available
from repro.resnet.train import build_stage_net, make_optimizer, param_groups, set_lr
from repro.runlog import read_records

needs_muon = pytest.mark.skipif(not muon_available(), reason="this torch has no torch.optim.Muon")
SMOKE = ["--preset", "smoke", "--data", "synthetic", "--quiet", "--precision", "fp32"]


def newton_schulz(g: torch.Tensor, steps: int, coefficients=(3.4445, -4.7750, 2.0315), dtype=torch.bfloat16
                  ) -> torch.Tensor:
    """The records' quintic iteration, written out here for one matrix: g / |g|, then
    X <- aX + (bA + cA^2)X with A = XX^T, on the wide orientation (airbench94_muon: in bf16)."""
    a, b, c = coefficients
    x = g.to(dtype)
    x = x / (x.norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x if wide else x.T).float()


@needs_muon
def test_a_filter_bank_takes_the_orthogonalised_step_of_its_flattened_matrix():
    torch.manual_seed(0)
    bank = torch.nn.Parameter(torch.randn(16, 8, 3, 3).contiguous(memory_format=torch.channels_last))
    bank.grad = torch.randn(16, 8, 3, 3)
    muon = FilterMuon([bank], lr=0.0, momentum=0.6, ns_steps=3, lr_scale=1.0)
    muon.param_groups[0]["lr"] = 0.24
    before = bank.detach().clone()
    muon.step()
    renormalised = before * math.sqrt(16) / before.norm()  # the record's re-normalisation, first
    expected = renormalised - 0.24 * newton_schulz(bank.grad.reshape(16, -1), 3).view(16, 8, 3, 3)
    # bf16 Newton-Schulz: agreement to bf16's precision of the step (0.24 x entries of order 1)
    assert_close_to_scale(bank.detach(), expected, rel=2e-2, rtol=1e-2)
    assert bank.is_contiguous(memory_format=torch.channels_last)  # stepped in place, layout kept
    # a second step uses momentum: 0.6 of the first gradient, Nesterov-style, summed as the record does
    g1 = bank.grad.clone()
    bank.grad = torch.randn(16, 8, 3, 3)
    before = bank.detach().clone()
    muon.step()
    buf = 0.6 * g1 + bank.grad
    update = newton_schulz((bank.grad + 0.6 * buf).reshape(16, -1), 3).view(16, 8, 3, 3)
    expected = before * math.sqrt(16) / before.norm() - 0.24 * update
    assert_close_to_scale(bank.detach(), expected, rel=2e-2, rtol=1e-2)


@needs_muon
def test_the_muon_stage_sends_filters_to_muon_and_the_rest_to_its_sgd_groups():
    stage = load_stage("airbench94_muon")
    net = build_stage_net(stage, load_preset("smoke"))
    net[0].bias.requires_grad_(True)
    optimizer = make_optimizer(net, stage.optimizer, 2000, peak_lr=max(stage.schedule.lrs))
    sgd, muon = optimizer.optimizers
    filters = {id(p) for p in net.parameters() if p.ndim == 4 and p.requires_grad}
    assert {id(p) for p in muon.filters} == filters and len(filters) == 6  # three groups of two convs
    sgd_params = {id(p) for g in sgd.param_groups for p in g["params"]}
    assert not sgd_params & filters and id(net[-2].weight) in sgd_params and id(net[0].bias) in sgd_params
    set_lr(optimizer, 1340.0, epoch=1.5, peak_lr=1340.0)
    lrs = sorted((g["lr"], len(g["params"])) for g in optimizer.param_groups)
    head, biases, whitening = 0.67, 0.053, 0.053 * (1 - 1.5 / 3)  # the record's torch LRs at epoch 1.5 of 3
    got = {round(lr, 6) for lr, _ in lrs}
    assert got == {round(head, 6), round(biases, 6), round(whitening, 6), 0.24}
    decay_steps = [g["lr"] * g["weight_decay"] for g in sgd.param_groups if "until_epoch" not in g]
    assert decay_steps == pytest.approx([0.004] * 2, rel=1e-4)  # one decay step in every group: the record's wd / lr


def test_airbench94s_whitening_bias_trains_with_the_weights_as_in_the_record():
    stage = load_stage("airbench94")
    net = build_stage_net(stage, load_preset("smoke"))
    groups = param_groups(net, stage.optimizer, 1024)
    whitening = net[0].bias
    (home,) = [g for g in groups if any(p is whitening for p in g["params"])]
    assert home["lr_scale"] == pytest.approx(1 / 1024)  # not x64
    bn_biases = [g for g in groups if g["lr_scale"] == pytest.approx(64 / 1024)]
    assert len(bn_biases) == 1 and all(p.ndim == 1 for p in bn_biases[0]["params"])


def test_airbench95s_average_starts_late_and_is_copied_back_every_epoch():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    average = WeightAverage(net, "lookahead", 0.95, 5, total_steps=100, start_step=20, copy_back_each_epoch=True)
    with torch.no_grad():
        net.weight.fill_(3.0)
    for step in range(1, 21):
        average.after_step(step)  # steps of the first epochs: nothing happens
    assert not average.started and net.weight.item() == 3.0
    average.after_step(25)  # the first update after the start: the average starts from the weights
    assert average.started and average.average.weight.item() == 3.0
    with torch.no_grad():
        net.weight.fill_(5.0)
    average.after_step(30)
    decay = 0.95 ** 5 * (30 / 100) ** 3
    assert net.weight.item() == pytest.approx(3.0 * decay + 5.0 * (1 - decay))  # lookahead copies it back
    with torch.no_grad():
        net.weight.fill_(7.0)
    average.end_epoch()
    assert net.weight.item() == pytest.approx(3.0 * decay + 5.0 * (1 - decay))


@pytest.mark.parametrize("stage", ["airbench94_muon", "hiverge94", "airbench95", "airbench96", "airbench96_faster"])
def test_the_later_records_run_on_the_smoke_preset(stage, tmp_path):
    if stage == "airbench94_muon" and not muon_available():
        pytest.skip("this torch has no torch.optim.Muon")
    assert resnet.main(["--stage", stage, *SMOKE, "--log-dir", str(tmp_path)]) == 0
    (rec,) = read_records(tmp_path)
    assert rec["status"] == "ok" and rec["stage"] == stage and rec["test_accuracy_no_tta"] is not None
    assert rec["blog_seconds"] == {"airbench94_muon": 2.59, "hiverge94": 2.015, "airbench95": 10.4,
                                   "airbench96": 46.3, "airbench96_faster": 27.3}[stage]
    assert len(rec["epochs"]) == 2 and all(math.isfinite(e["train_loss"]) for e in rec["epochs"])


def test_airbench96_adds_a_residual_pair_of_convs_to_every_group():
    net = build_stage_net(load_stage("airbench96"), load_preset("full"))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 3  # the whitening conv and three per group: "10 conv layers"
    residuals = [m for m in net if type(m).__name__ == "Residual"]
    assert len(residuals) == 3 and [m.branch[0].out_channels for m in residuals] == [128, 512, 512]
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 10)


def test_the_later_records_carry_their_sources():
    muon, a95 = load_stage("airbench94_muon"), load_stage("airbench95")
    a96 = load_stage("airbench96")
    assert (a96.source.seconds, a96.source.accuracy, a96.schedule.epochs, a96.loader.cutout, a96.loader.pad) == \
        (46.3, 0.9605, 40, 12, 4)
    assert (muon.source.seconds, muon.source.accuracy, muon.schedule.epochs, muon.optimizer.batch_size) == \
        (2.59, 0.9401, 8, 2000)
    assert (a95.source.seconds, a95.source.accuracy, a95.schedule.epochs, a95.net["widths"]) == \
        (10.4, 0.9501, 15, (128, 384, 384))


def test_without_torch_optim_muon_the_muon_stage_is_one_line_before_any_data(monkeypatch, capsys, tmp_path):
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    monkeypatch.setattr(resnet, "load_cifar10", lambda *a, **k: pytest.fail("data was loaded"))
    assert resnet.main(["--stage", "airbench94_muon", *SMOKE, "--log-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'optimizer.kind = "muon" needs torch.optim.Muon (torch 2.9 or later)' in err
    assert resnet.main(["--stage", "airbench95", "--list"]) == 0  # every other stage still loads


@needs_muon
def test_muon_under_fp16_is_refused_with_one_line(capsys, tmp_path):
    args = ["--stage", "airbench94_muon", "--preset", "smoke", "--data", "synthetic", "--precision", "fp16",
            "--quiet", "--log-dir", str(tmp_path)]
    assert resnet.main(args) == 2
    assert "Muon stages run in bf16 or fp32, not fp16" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()


# ---- hiverge94

HIVERGE_NS = (3.4576, -4.7391, 2.0843)


def test_the_batched_muon_gives_each_bank_its_own_step_despite_the_padding():
    """Banks of different shapes share one zero-padded stack; each must still take the step of
    its own matrix (written out per bank, in fp32), followed by the decoupled weight decay."""
    torch.manual_seed(0)
    banks = [torch.nn.Parameter(torch.randn(*shape)) for shape in ((16, 8, 3, 3), (8, 24, 3, 3), (32, 16, 3, 3))]
    muon = FilterMuon(banks, lr=0.0, momentum=0.655, ns_steps=3, lr_scale=1.0, ns_coefficients=HIVERGE_NS,
                      weight_decay=0.0016, batched=True, renorm_every=(1, 1))
    lr, buffers = 0.205, [torch.zeros_like(b) for b in banks]
    for _ in range(2):  # the second step uses the momentum, summed as the record sums it
        for bank in banks:
            bank.grad = torch.randn_like(bank)
        before = [b.detach().clone() for b in banks]
        muon.param_groups[0]["lr"] = lr
        muon.step()
        for bank, old, buf in zip(banks, before, buffers):
            buf.mul_(0.655).add_(bank.grad)
            direction = (bank.grad + 0.655 * buf).reshape(len(bank), -1)
            update = newton_schulz(direction, 3, HIVERGE_NS, torch.float32).view(bank.shape)
            expected = (old * math.sqrt(len(bank)) / old.norm() - lr * update) * (1 - lr * 0.0016)
            assert_close_to_scale(bank.detach(), expected, rel=1e-5)


def test_the_re_normalisation_interval_grows_over_the_run_as_the_records_rule():
    """hiverge re-normalises when at least 2 + int(15 x step / total) steps have passed since the
    last time (step counted from 1); with LR 0 a step changes a bank only by re-normalising."""
    total = 60
    bank = torch.nn.Parameter(torch.randn(4, 2, 3, 3))
    muon = FilterMuon([bank], lr=0.0, momentum=0.5, ns_steps=1, lr_scale=1.0, batched=True, renorm_every=(2, 17),
                      total_steps=total)
    renormalised = []
    for step in range(1, total + 1):
        with torch.no_grad():
            bank.mul_(10.0 / bank.norm())  # far from sqrt(4) = 2
        bank.grad = torch.randn_like(bank)
        muon.step()
        if abs(bank.norm().item() - 2.0) < 1e-4:
            renormalised.append(step)
    expected, last = [], 0
    for step in range(1, total + 1):
        if step - last >= 2 + int(15 * step / total):
            expected.append(step)
            last = step
    assert renormalised == expected and expected[:2] == [2, 5] and len(expected) < total // 5


def test_colour_jitter_shifts_then_scales_each_image_by_its_epochs_draw():
    from repro.resnet.loaders import DeviceBatches

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
    loader = DeviceBatches(images, np.zeros(2000), batch_size=2000, seed=0, device=torch.device("cpu"),
                           pad=2, flip="alternating", choices="per_image", brightness=0.14, contrast=0.13)
    drawn = loader.draw_epoch_choices()
    shift, factor = drawn["brightness"], drawn["contrast"]
    assert shift.abs().max() <= 0.14 and (factor - 1).abs().max() <= 0.13
    # uniform draws: the spread of a uniform on [-r, r] is r / sqrt(3)
    assert shift.std().item() == pytest.approx(0.14 / math.sqrt(3), rel=0.1)
    assert factor.std().item() == pytest.approx(0.13 / math.sqrt(3), rel=0.1)
    index = torch.arange(0, 2000, 7)
    jittered = loader.augment(index)
    for key in ("brightness", "contrast"):
        del loader._on_device[key]
    plain = loader.augment(index)
    expected = (plain + shift[index].view(-1, 1, 1, 1)) * factor[index].view(-1, 1, 1, 1)
    assert_close_to_scale(jittered, expected)


def test_multiview_mean_weights_the_six_views_of_the_record_equally():
    """hiverge's views, built here as its code builds them: reflect-pad 1 pixel, the top-left and
    bottom-right 32x32 crops, the image itself, and the mirror of each."""
    from repro.resnet.evaluation import tta_logits

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10)).eval()
    x = torch.randn(5, 3, 32, 32)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[:, :, :32, :32], padded[:, :, 2:, 2:]]
    views += [v.flip(3) for v in views]
    with torch.no_grad():
        expected = torch.stack([net(v) for v in views]).mean(0)
        assert_close_to_scale(tta_logits(net, x, "multiview_mean"), expected)
        assert not torch.allclose(tta_logits(net, x, "multiview"), expected)  # airbench weights them 1/2, 1/4, 1/4


def test_hiverge94_is_airbench94_muon_with_the_records_values():
    stage, preset = load_stage("hiverge94"), load_preset("full")
    assert (stage.source.seconds, stage.source.accuracy, stage.source.hardware) == (2.015, 0.94008, "A100")
    assert (stage.source.runs, stage.source.accuracy_std) == (2000, 0.00132)
    opt = stage.optimizer
    # the record's torch values back from the mean-loss units of the file (summed loss over 1536 images)
    peak = max(stage.schedule.lrs)
    assert peak / 1536 == pytest.approx(0.5415) and peak / 1536 * opt.bias_lr_factor == pytest.approx(0.0573, rel=1e-6)
    assert opt.weight_decay * 1536 * (peak / 1536) == pytest.approx(1.0418e-6 * 1536, rel=1e-6)
    assert opt.muon_weight_decay == pytest.approx(1.0418e-6 * 1536)
    assert (opt.batch_size, stage.schedule.epochs, opt.label_smoothing) == (1536, 7.59, 0.09)
    assert (stage.evaluation.tta, stage.evaluation.tta_fraction) == ("multiview_mean", 0.25)
    net = build_stage_net(stage, preset)
    acts = [type(m).__name__ for m in net.modules() if type(m).__name__ in ("GELU", "SiLU")]
    assert acts == ["GELU"] + ["SiLU"] * 6  # after the whitening, then two per group
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.momentum == pytest.approx(1 - 0.5566) for m in bns)
    assert net[0].images == 960
    steps = math.ceil(7.59 * (50_000 // 1536))
    assert steps == 243  # the record's total_train_steps: 243 x 1536 = 373,248 images


# ---- airbench96_faster: data filtering by a proxy net


def test_the_proxy_keeps_the_hardest_half_and_trains_on_every_fourth_batch_only():
    from repro.devices import Amp
    from repro.resnet.config import FilterSection
    from repro.resnet.filtering import ProxyFilter

    torch.manual_seed(0)
    proxy = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 30 * 30, 10))
    sgd = torch.optim.SGD(proxy.parameters(), lr=0.1, momentum=0.9)
    chooser = ProxyFilter(proxy, sgd, FilterSection(keep=0.25, proxy_step_every=4), 0.2, "sum",
                          Amp(torch.device("cpu"), "fp32"))
    for call in range(6):
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        before = [p.detach().clone() for p in proxy.parameters()]
        with torch.no_grad():  # the proxy's losses in training mode (batch statistics), before any step
            losses = torch.nn.functional.cross_entropy(copy.deepcopy(proxy).train()(x), y, label_smoothing=0.2,
                                                       reduction="none")
        keep = chooser.select(x, y)
        assert keep.tolist() == sorted(losses.argsort(descending=True)[:4].tolist())  # 25% of 16, in batch order
        moved = any(not torch.equal(a, b) for a, b in zip(before, proxy.parameters()))
        assert moved == (call % 4 == 0)


def test_the_filtering_stage_trains_its_net_on_the_kept_images_only():
    from repro.data import SYNTHETIC, load_cifar10
    from repro.resnet.train import TrainSettings, prepare, run_epoch

    stage, preset = load_stage("airbench96_faster"), load_preset("smoke")
    data = load_cifar10(SYNTHETIC, synthetic_sizes=(512, 256), seed=0)
    run = prepare(stage, preset, data, 0, TrainSettings())
    sizes = []
    run.net.register_forward_pre_hook(lambda module, args: sizes.append((module.training, len(args[0]))))
    row = run_epoch(run, 0)
    assert {n for training, n in sizes if training} == {256}  # half of each batch of 512 (the smoke subset)
    assert {n for training, n in sizes if not training} == {256}  # the test pass sees every test image
    assert row.phases["filtering"] > 0
    proxy = run.proxy_filter.net
    assert [m.out_channels for m in proxy.modules() if isinstance(m, torch.nn.Conv2d)][1:] == [4, 4, 8, 8, 8, 8]
    assert not proxy[0].bias.requires_grad and not proxy[0].bias.any()  # its whitening bias stays 0 ...
    assert all(p is not proxy[0].bias for g in run.proxy_filter.optimizer.param_groups for p in g["params"])  # unstepped


@pytest.mark.parametrize("text, message", [
    ('extends = "airbench94"\n[optimizer]\nmuon_batched = true\n', 'optimizer.muon_batched has no effect without optimizer.kind = "muon"'),
    ('extends = "hiverge94"\n[optimizer]\nmuon_renorm_every = [0, 3]\n', "muon_renorm_every must be two whole numbers"),
    ('extends = "hiverge94"\n[optimizer]\nmuon_ns_coefficients = [1.0, 2.0]\n', "must be three numbers"),
    ('extends = "hiverge94"\n[loader]\ncontrast = 1.5\n', "loader.contrast in [0, 1)"),
    ('extends = "final"\n[loader]\nbrightness = 0.1\n', 'loader.brightness = 0.1 has no effect with loader.backend = "dataloader"'),
    ('extends = "airbench96"\n[filter]\nkeep = 1.5\n', "filter.keep must be above 0 and at most 1"),
    ('extends = "airbench96"\n[filter]\nproxy_step_every = 2\n', "[filter] has no effect with filter.keep = 1"),
    ('extends = "airbench96_faster"\n[filter]\nproxy_net = { depth = 2 }\n', "unknown config key net.depth"),
])
def test_the_later_records_keys_refuse_what_they_cannot_do(text, message, tmp_path):
    """hiverge94's and airbench96_faster's keys: a mistake is one UserError naming the key."""
    from repro.errors import UserError
    from repro.resnet.config import ConfigDirs

    (tmp_path / "mine.toml").write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        load_stage("mine", ConfigDirs((tmp_path,)))


def test_airbench96_faster_carries_its_source_and_the_records_code_values():
    stage = load_stage("airbench96_faster")
    assert (stage.source.seconds, stage.source.accuracy, stage.schedule.epochs) == (27.3, 0.96, 45)
    assert stage.net["widths"] == (128, 384, 512) and stage.filter.proxy_net["widths"] == [32, 64, 64]
    assert 45 * (50_000 // 1024) == 2160  # the record's steps: 48 a epoch, as the stage drops the last batch
    # the record's LR: 0.2 -> 1 over the first 10% of 2160 steps (216 = 4.5 epochs), then linear to 0
    assert stage.schedule.lr_at(4.5, 45) == pytest.approx(1.17391) and stage.schedule.lr_at(45, 45) == 0
    assert stage.optimizer.weight_decay == pytest.approx(0.012 / 9, rel=1e-5)
    # the parameter counts the record's script prints (frozen BN scales and the whitening included)
    from repro.resnet.filtering import build_proxy_net

    full = load_preset("full")
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert (count(build_stage_net(stage, full)), count(build_proxy_net(stage, full))) == (9_918_776, 146_744)


def test_data_filtering_is_refused_over_ranks_before_any_data():
    from repro.errors import UserError
    from repro.resnet.train import check_split_over_ranks

    stage, preset = load_stage("airbench96_faster"), load_preset("smoke")
    check_split_over_ranks(stage, preset, 1)
    with pytest.raises(UserError, match=r"stage airbench96_faster: --ddp cannot spread data filtering"):
        check_split_over_ranks(stage, preset, 2)
    check_split_over_ranks(load_stage("airbench96"), preset, 2)  # the same stage without [filter] can
