"""What issue 'faster than the code it reproduces' added: the machine's matmul rate and each run's
utilisation of it, torch.compile behind --compile, fused SGD, and --eval-every."""

import copy
import json
import shutil

import pytest
import torch
from conftest import assert_close_to_scale

from repro import devices
from repro.devices import compiler_missing, measure_matmul_flops, peak_flops
from repro.resnet import cli as resnet
from repro.resnet.config import load_preset, load_stage
from repro.resnet.train import build_stage_net, compile_for_shapes, loss_fn, make_optimizer
from repro.devices import Amp
from repro.runlog import read_records

CPU = torch.device("cpu")
SMOKE = ["--preset", "smoke", "--data", "synthetic", "--quiet", "--precision", "fp32"]


def test_the_peak_is_measured_once_per_precision_and_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(devices, "measure_matmul_flops", lambda d, p: calls.append(p) or {"fp32": 1e11, "bf16": 4e11}[p])
    assert peak_flops(CPU, "fp32", tmp_path) == (1e11, False)
    assert peak_flops(CPU, "fp32", tmp_path) == (1e11, True)
    assert peak_flops(CPU, "bf16", tmp_path) == (4e11, False)
    assert calls == ["fp32", "bf16"]
    cached = json.loads((tmp_path / "peak_flops.json").read_text())
    assert sorted(cached.values()) == [1e11, 4e11]
    assert all(f"{torch.get_num_threads()} threads" in key and torch.__version__ in key for key in cached)
    (tmp_path / "peak_flops.json").write_text("{not json")  # a broken cache costs a measurement, nothing else
    assert peak_flops(CPU, "fp32", tmp_path) == (1e11, False)


def test_the_measured_rate_is_what_a_timed_product_does():
    """The rate is 2 n^3 FLOPs per product over its time: check it against one product timed here."""
    import time

    rate = measure_matmul_flops(CPU, "fp32", size=256, block_seconds=0.05)
    a = torch.randn(256, 256)
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    slowest_plausible = 2 * 256 ** 3 * 20 / (time.perf_counter() - start)
    assert rate >= 0.5 * slowest_plausible  # the best of its blocks, at least as fast as a plain loop (with slack)
    assert rate < 1e14  # no 2-core CPU does 100 TFLOP/s in fp32


def test_every_record_carries_the_peak_and_its_utilisation(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(devices, "measure_matmul_flops", lambda d, p: 2.5e10)
    assert resnet.main(["--stage", "final", *SMOKE, "--log-dir", str(tmp_path)]) == 0
    (rec,) = read_records(tmp_path)
    assert rec["peak_flops"] == 2.5e10
    assert rec["utilisation"] == pytest.approx(rec["flops_per_second"] / 2.5e10)
    assert rec["compiled"] is False and rec["eval_every"] == 1


def test_eval_every_skips_test_passes_but_never_the_last(tmp_path):
    assert resnet.main(["--stage", "tta", *SMOKE, "--epochs", "3", "--eval-every", "2",
                        "--log-dir", str(tmp_path)]) == 0
    (rec,) = read_records(tmp_path)
    tested = [e["test_accuracy"] is not None for e in rec["epochs"]]
    assert tested == [False, True, True] and rec["eval_every"] == 2
    assert rec["epochs"][0]["phases"]["evaluation"] == 0 and rec["epochs"][1]["phases"]["evaluation"] > 0
    assert rec["test_accuracy_no_tta"] == rec["epochs"][-1]["test_accuracy"]  # the final TTA pass ran too
    assert resnet.main(["--stage", "tta", *SMOKE, "--eval-every", "0", "--log-dir", str(tmp_path)]) == 2


def test_without_a_compiler_compile_is_one_line_and_the_run_goes_on_eager(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert compiler_missing(CPU).startswith("no C++ compiler found")
    assert resnet.main(["--stage", "final", *SMOKE, "--compile", "--log-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err == "warning: --compile: no C++ compiler found (g++, c++, clang++; set CXX or install g++); running eager\n"
    (rec,) = read_records(tmp_path)
    assert rec["status"] == "ok" and rec["compiled"] is False and rec["compile_seconds"] is None


def test_compile_mode_is_checked_in_one_line_and_implies_compile(tmp_path, monkeypatch, capsys):
    from repro.resnet.train import COMPILE_MODES, TrainSettings

    assert resnet.main(["--stage", "final", *SMOKE, "--compile-mode", "fastest", "--log-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --compile-mode must be one of default, reduce-overhead, max-autotune, "
                   "max-autotune-no-cudagraphs, not 'fastest'\n")
    assert not (tmp_path / "runs.jsonl").exists()
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        TrainSettings(compile_mode="fastest")
    assert TrainSettings(compile_mode="reduce-overhead").compile_net and not TrainSettings().compile_net
    assert "reduce-overhead" in COMPILE_MODES
    # without --compile, a mode still asks for torch.compile: here no compiler, so the one line and eager
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert resnet.main(["--stage", "final", *SMOKE, "--compile-mode", "reduce-overhead", "--log-dir",
                        str(tmp_path)]) == 0
    assert capsys.readouterr().err.startswith("warning: --compile: no C++ compiler found")
    (rec,) = read_records(tmp_path)
    assert rec["compiled"] is False and "compile_mode" not in rec


def test_fused_sgd_is_the_same_update_as_torchs_loop():
    stage = load_stage("airbench94")  # two parameter groups, summed loss, Nesterov
    net = build_stage_net(stage, load_preset("smoke")).double()
    x, y = torch.randn(16, 3, 32, 32, dtype=torch.float64), torch.arange(16) % 10
    after = {}
    for implementation in ("default", "fused"):
        copy_ = copy.deepcopy(net)
        opt = make_optimizer(copy_, stage.optimizer, 16, implementation=implementation)
        for group in opt.param_groups:
            group["lr"] = 0.1 * group["lr_scale"]
        for _ in range(3):
            loss_fn(copy_(x), y, stage.optimizer).backward()
            opt.step()
            opt.zero_grad()
        after[implementation] = [p.detach() for p in copy_.parameters()]
    for a, b in zip(after["default"], after["fused"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("overflow_step", [0, 2])
def test_a_scaler_skipped_overflow_leaves_fused_sgd_as_torchs_loop(overflow_step):
    """fp16's GradScaler skips a step whose scaled gradients overflowed, routinely the first (its scale
    starts at 2^16). Plain torch fused SGD then keeps the momentum buffers it made with empty_like and the
    weights blow up a step later; the suite's fused SGD must skip it as torch's loop does: the weights
    unchanged by the skipped step, and every step after it the loop's update."""
    stage = load_stage("airbench94")
    net = build_stage_net(stage, load_preset("smoke"))
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    after = {}
    for implementation in ("default", "fused"):
        copy_ = copy.deepcopy(net)
        amp = Amp(CPU, "fp16")
        opt = make_optimizer(copy_, stage.optimizer, 16, implementation=implementation)
        for group in opt.param_groups:
            group["lr"] = 0.1 * group["lr_scale"]
        for step in range(4):
            before = [p.detach().clone() for p in copy_.parameters()]
            loss = loss_fn(copy_(x), y, stage.optimizer) * (float("inf") if step == overflow_step else 1.0)
            amp.backward(loss)
            amp.step(opt)
            opt.zero_grad()
            if step == overflow_step:
                assert all(torch.equal(a, b) for a, b in zip(before, copy_.parameters()))
        after[implementation] = [p.detach() for p in copy_.parameters()]
    for a, b in zip(after["default"], after["fused"]):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing(CPU) is not None, reason="torch.compile needs a C++ compiler")
def test_a_compiled_step_gives_the_eager_loss_and_gradients():
    stage, preset = load_stage("airbench94"), load_preset("smoke")
    torch.manual_seed(0)
    net = build_stage_net(stage, preset)
    eager = copy.deepcopy(net)
    amp = Amp(CPU, "fp32")
    before = copy.deepcopy(net.state_dict())
    compiled = compile_for_shapes(net, stage.optimizer, amp, CPU, False, train_sizes={32}, eval_sizes={16})
    for key, value in net.state_dict().items():  # the warm-up left weights and BN statistics as they were
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert all(p.grad is None for p in net.parameters())
    x, y = torch.randn(32, 3, 32, 32), torch.arange(32) % 10
    losses = {}
    for name, model, params in (("eager", eager, eager), ("compiled", compiled, net)):
        loss = loss_fn(model(x), y, stage.optimizer)
        loss.backward()
        losses[name] = (loss.item(), {n: p.grad for n, p in params.named_parameters() if p.grad is not None})
    assert losses["compiled"][0] == pytest.approx(losses["eager"][0], rel=1e-5)
    assert losses["compiled"][1].keys() == losses["eager"][1].keys() and len(losses["eager"][1]) > 5
    for name, grad in losses["eager"][1].items():
        assert_close_to_scale(losses["compiled"][1][name], grad, rel=1e-4, rtol=1e-3, msg=name)
