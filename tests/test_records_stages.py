"""The stages past airbench94: airbench94_muon (Muon on the conv filters) and airbench95."""

import copy
import math

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


def newton_schulz(g: torch.Tensor, steps: int) -> torch.Tensor:
    """The record's quintic iteration, written out here: g / |g|, then X <- aX + (bA + cA^2)X with
    A = XX^T, on the wide orientation, in bf16."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
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


@pytest.mark.parametrize("stage", ["airbench94_muon", "airbench95", "airbench96"])
def test_the_later_records_run_on_the_smoke_preset(stage, tmp_path):
    if stage == "airbench94_muon" and not muon_available():
        pytest.skip("this torch has no torch.optim.Muon")
    assert resnet.main(["--stage", stage, *SMOKE, "--log-dir", str(tmp_path)]) == 0
    (rec,) = read_records(tmp_path)
    assert rec["status"] == "ok" and rec["stage"] == stage and rec["test_accuracy_no_tta"] is not None
    assert rec["blog_seconds"] == {"airbench94_muon": 2.59, "airbench95": 10.4, "airbench96": 46.3}[stage]
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
