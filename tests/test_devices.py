import time

import pytest
import torch

from repro import devices
from repro.devices import PhaseTimer, Precision, resolve_precision
from repro.errors import UserError

CPU = torch.device("cpu")


def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"


def test_auto_precision_on_cuda_is_fp16_with_scaler():
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"  # decided without touching CUDA


def test_fp16_on_cpu_is_refused():
    with pytest.raises(UserError, match="fp16 needs CUDA"):
        resolve_precision("fp16", CPU)


def test_cuda_request_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        devices.resolve_device("cuda")
    assert devices.resolve_device("auto") == CPU


def test_cpu_bf16_autocast_computes_in_bf16_and_fp32_does_not():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with Precision(CPU, "bf16").autocast():
        assert layer(x).dtype == torch.bfloat16
    with Precision(CPU, "fp32").autocast():
        assert layer(x).dtype == torch.float32
    assert Precision(CPU, "bf16").scaler is None  # bf16 has fp32's range: no loss scaling


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
