"""Device, mixed precision (``Amp``) and the pieces of the CUDA path, kept behind
``device.type == "cuda"`` so a CPU run never touches CUDA."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from .errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")


def cpu_supports_bf16() -> bool:
    """True only where the CPU computes bf16 natively (AVX512-BF16 or AMX on x86, BF16 on Arm).

    oneDNN also runs bf16 on plain AVX-512 by emulation, which is slower than fp32, so its
    own "supported" flag is not the question to ask.
    """
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def compiler_missing(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot generate code for ``device`` here, or None if it can:
    inductor needs a C++ compiler for CPU code and Triton for CUDA code."""
    import os
    import shutil

    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (pip install triton)"
        return None
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in candidates):
        return f"no C++ compiler found ({', '.join(candidates)}; set CXX or install g++)"
    return None


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if requested not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, not {requested!r}")
    return torch.device(requested)


def cuda_supports_bf16(device: torch.device) -> bool:
    """True on GPUs that compute bf16 natively (compute capability 8.0 and up: A100, H100, ...);
    older ones (V100, T4) only emulate it, which torch's ``is_bf16_supported`` may count."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(precision, why): ``auto`` = bf16 autocast on a GPU or CPU with native bf16 (no loss
    scaling, so no host read per step); fp16 + GradScaler on a GPU without it; else fp32.

    fp16 on a CPU is allowed when asked for (autocast and GradScaler both run there, which is
    how the tests exercise the scaler path) but never chosen: CPUs compute fp16 slowly. fp64
    (weights and activations in float64, no autocast) is never chosen either: it is the
    reference arithmetic whose per-step losses every CPU kind reproduces to ~1e-12, for checking
    that a change keeps a run's numbers."""
    if requested not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if requested == "auto":
        if device.type == "cuda":
            if cuda_supports_bf16(device):
                return "bf16", "auto: this GPU computes bf16 natively, so bf16 autocast and no loss scaler"
            return "fp16", "auto: this GPU has no native bf16, so fp16 autocast with a GradScaler"
        if cpu_supports_bf16():
            return "bf16", "auto: this CPU computes bf16 natively (AVX512-BF16 or AMX)"
        return "fp32", "auto: this CPU has no native bf16 (emulated bf16 is slower than fp32)"
    if requested == "bf16" and device.type == "cuda" and not cuda_supports_bf16(device):
        raise UserError("--precision bf16: this GPU has no native bf16; use fp16 (or auto)")
    return requested, "requested"


@dataclass
class Amp:
    """Automatic mixed precision for one (device, --precision) pair: the autocast context, the
    gradient scaler fp16 needs, and the dtype of the weights and of every batch (float64 for
    fp64, else float32)."""

    device: torch.device
    precision: str  # the resolved --precision

    def __post_init__(self):
        self.autocast_dtype = {"fp32": None, "fp64": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
            self.precision]
        self.weights_dtype = torch.float64 if self.precision == "fp64" else torch.float32
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer) -> None:
        """Step ``optimizer`` (or each of an ``OptimizerSet``'s), through the scaler for fp16."""
        optimizers = getattr(optimizer, "optimizers", (optimizer,))
        if self.scaler:
            for opt in optimizers:
                self.scaler.step(opt)  # skips the step if the scaled grads overflowed
            self.scaler.update()
        else:
            for opt in optimizers:
                opt.step()


class PhaseTimer:
    """Accumulates wall time per named phase.

    ``sync_phases`` (the ``sync`` timing mode): on CUDA the clock is read only after
    ``torch.cuda.synchronize()``, so asynchronous kernels are charged to the phase that launched
    them, at the price of serialising the loader with the GPU, the overlap post 1 is about.
    Without it (the ``deferred`` mode) only ``now(sync=True)`` synchronises: once per epoch, so
    epoch and total times are true and per-step phases are host launch times. ``sync_points``
    counts the synchronisations a CUDA device would make (on a CPU they are free).
    """

    def __init__(self, device: torch.device, sync_phases: bool = True):
        self._sync = torch.cuda.synchronize if device.type == "cuda" else None
        self.sync_phases = sync_phases
        self.sync_points = 0
        self.totals: dict[str, float] = defaultdict(float)

    def now(self, sync: bool | None = None) -> float:
        if self.sync_phases if sync is None else sync:
            self.sync_points += 1
            if self._sync:
                self._sync()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = self.now()
        try:
            yield
        finally:
            self.totals[name] += self.now() - start

    def snapshot(self) -> dict[str, float]:
        return dict(self.totals)


# ---- the machine's dense matmul rate: what a run's achieved FLOP/s is a fraction of

PEAK_CACHE_NAME = "peak_flops.json"


def _peak_key(device: torch.device, precision: str) -> str:
    """What the rate depends on: the chip, the threads torch uses, torch's version, the dtype."""
    from .runlog import hardware_info

    hw = hardware_info()
    chip = hw["gpu"] if device.type == "cuda" else hw["cpu"]
    return f"{device.type}|{chip}|{torch.get_num_threads()} threads|torch {torch.__version__}|{precision}"


def _cpu_matmul_size(dtype: torch.dtype, largest: int = 2048, seconds: float = 0.1) -> int:
    """The side (a multiple of 128, 256 to ``largest``) whose product takes about ``seconds``
    here, from the fastest of three 512 x 512 products."""
    a = torch.ones(512, 512, dtype=dtype)
    torch.mm(a, a)
    fastest = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        torch.mm(a, a)
        fastest = min(fastest, time.perf_counter() - start)
    side = (2 * 512 ** 3 / max(fastest, 1e-9) * seconds / 2) ** (1 / 3)
    return int(min(largest, max(256, side // 128 * 128)))


def measure_matmul_flops(device: torch.device, precision: str, *, size: int | None = None,
                         block_seconds: float = 0.3, blocks: int = 3) -> float:
    """FLOP/s of square ``size`` x ``size`` matrix products in ``precision``'s dtype on ``device``:
    the best of ``blocks`` timed blocks of back-to-back products (after a warm-up), each block
    running for at least ``block_seconds``. The default size is 8192 on a GPU; on a CPU 2048, or
    less where one product would take over a tenth of a second (fp16, and bf16 without native
    support, run at a few GFLOP/s on some CPUs: a 2048 product takes seconds there)."""
    dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    size = size or (8192 if device.type == "cuda" else _cpu_matmul_size(dtype))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=gen).to(dtype)
    b = torch.randn(size, size, device=device, generator=gen).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # primitive creation, kernel selection
    sync()
    best = 0.0
    for _ in range(blocks):
        count, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            count += 1
            if count % 4 == 0:
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= block_seconds:
                    break
        best = max(best, 2 * size ** 3 * count / elapsed)
    return best


def peak_flops(device: torch.device, precision: str, cache_dir=None, *, remeasure: bool = False) -> tuple[float, bool]:
    """(this machine's dense matmul FLOP/s in ``precision``, whether it came from the cache).

    Measured once per chip, thread count, torch version and precision, then kept in
    ``<cache>/peak_flops.json`` (``$REPRO_CACHE`` or ``~/.cache/repro``); a file that cannot be
    read or written only costs a new measurement."""
    import json
    from pathlib import Path

    from .data import default_cache_dir
    from .runlog import write_whole

    path = Path(cache_dir or default_cache_dir()) / PEAK_CACHE_NAME
    key = _peak_key(device, precision)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if not remeasure and isinstance(cached.get(key), (int, float)) and cached[key] > 0:
        return float(cached[key]), True
    flops = measure_matmul_flops(device, precision)
    cached[key] = flops
    try:
        write_whole(path, json.dumps(cached, indent=1).encode())
    except OSError:
        pass
    return flops, False
