import time

import pytest
import torch
from conftest import assert_close_to_scale

from repro import devices
from repro.devices import Amp, PhaseTimer, choose_precision
from repro.errors import UserError

CPU = torch.device("cpu")


def _chosen(requested, device):
    """The precision choose_precision picks, without its reason."""
    return choose_precision(requested, device)[0]


def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    assert _chosen("auto", CPU) == "bf16"
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    assert _chosen("auto", CPU) == "fp32"


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"),
                                                 ((7, 0), "fp16")])
def test_auto_precision_on_cuda_is_bf16_where_native_else_fp16(monkeypatch, capability, expected):
    """H100/A100 compute bf16 natively; T4/V100 only emulate it, so they get fp16 with a scaler."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    precision, why = choose_precision("auto", torch.device("cuda"))
    assert precision == expected
    assert ("no loss scaler" in why) if expected == "bf16" else ("GradScaler" in why)
    if expected == "fp16":
        with pytest.raises(UserError, match="--precision bf16: this GPU has no native bf16; use fp16"):
            choose_precision("bf16", torch.device("cuda"))
    assert choose_precision("fp16", torch.device("cuda")) == ("fp16", "requested")


def test_fp16_gets_a_scaler_on_its_own_device_type(monkeypatch):
    made = []
    monkeypatch.setattr(devices.torch.amp, "GradScaler", lambda device, **kw: made.append(device) or "scaler")
    assert Amp(torch.device("cuda"), "fp16").scaler == "scaler"
    assert Amp(CPU, "fp16").scaler == "scaler"
    assert Amp(CPU, "fp32").scaler is None
    assert made == ["cuda", "cpu"]  # each scaler on its precision's own device type


def test_fp16_on_cpu_is_allowed_when_asked_but_never_chosen(monkeypatch):
    assert _chosen("fp16", CPU) == "fp16"
    for native_bf16 in (True, False):
        monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: native_bf16)
        assert _chosen("auto", CPU) != "fp16"
    with pytest.raises(UserError, match="--precision must be one of auto, fp32, bf16, fp16, fp64, not 'fp8'"):
        _chosen("fp8", CPU)


def _fp16_setup(lr=0.5):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3))
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    return net, torch.optim.SGD(net.parameters(), lr=lr), x, y, Amp(CPU, "fp16")


def _fp16_loss(net, x, y, amp, factor=1.0):
    with amp.autocast():
        logits = net(x)
        assert logits.dtype == torch.float16
        return torch.nn.functional.cross_entropy(logits.float(), y) * factor


def test_fp16_step_on_cpu_scales_unscales_and_grows_the_scale():
    net, opt, x, y, amp = _fp16_setup()
    # the reference gradient: the same fp16 forward, backward without scaling
    _fp16_loss(net, x, y, amp).backward()
    plain = [p.grad.clone() for p in net.parameters()]
    opt.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in net.parameters()]
    scale = amp.scaler.get_scale()
    assert scale == 2.0 ** 16 and amp.scaler.is_enabled()
    amp.scaler.set_growth_interval(1)  # grow after every finite step instead of every 2000
    amp.backward(_fp16_loss(net, x, y, amp))
    scaled = [p.grad.clone() for p in net.parameters()]
    for s, g in zip(scaled, plain):
        assert_close_to_scale(s / scale, g, rtol=1e-2, rel=1e-4)
    amp.step(opt)
    for b, p, g in zip(before, net.parameters(), plain):
        # SGD moved each weight by lr times the *unscaled* gradient
        assert_close_to_scale(b - p.detach(), 0.5 * g, rtol=1e-2, rel=1e-4)
        assert not torch.equal(b, p.detach())
    assert amp.scaler.get_scale() == 2 * scale


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    net, opt, x, y, amp = _fp16_setup()
    before = [p.detach().clone() for p in net.parameters()]
    scale = amp.scaler.get_scale()
    amp.backward(_fp16_loss(net, x, y, amp, factor=float("inf")))
    assert not all(torch.isfinite(p.grad).all() for p in net.parameters())
    amp.step(opt)
    assert all(torch.equal(b, p.detach()) for b, p in zip(before, net.parameters()))  # step skipped
    assert amp.scaler.get_scale() == scale / 2
    opt.zero_grad(set_to_none=True)
    amp.backward(_fp16_loss(net, x, y, amp))  # a finite step afterwards goes through
    amp.step(opt)
    assert not all(torch.equal(b, p.detach()) for b, p in zip(before, net.parameters()))
    assert amp.scaler.get_scale() == scale / 2


def test_cuda_request_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        devices.resolve_device("cuda")
    assert devices.resolve_device("auto") == CPU


def test_cpu_bf16_autocast_computes_in_bf16_and_fp32_does_not():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with Amp(CPU, "bf16").autocast():
        assert layer(x).dtype == torch.bfloat16
    with Amp(CPU, "fp32").autocast():
        assert layer(x).dtype == torch.float32
    assert Amp(CPU, "bf16").scaler is None  # bf16 has fp32's range: no loss scaling


def test_phase_timer_accumulates_per_phase():
    timer = PhaseTimer(CPU)
    for _ in range(2):
        with timer.phase("a"):
            time.sleep(0.01)
    with timer.phase("b"):
        pass
    assert timer.totals["a"] >= 0.02 and timer.totals["b"] < timer.totals["a"]


def test_cpu_supports_bf16_reads_cpu_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("flags\t\t: fpu avx512f avx512bw\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    assert devices.cpu_supports_bf16() is False  # AVX-512 alone only emulates bf16
    fake.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
    assert devices.cpu_supports_bf16() is True
