"""fp32 against reduced-precision (autocast) training steps of the post-1 ResNet-18, timed here.

Context for rn-3x only: the verdict on "3x from mixed precision" comes from the blog text
(``blog.mixed_precision_speedup``); a timing on this machine says nothing about a V100.
"""

from __future__ import annotations

import contextlib
import platform
import time


@contextlib.contextmanager
def true_fp32():
    """TF32 off for CUDA matmuls and cuDNN convolutions while inside (a true fp32 baseline);
    the previous settings are restored on the way out, whatever happens inside."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _train_step_seconds(net, opt, batch, labels, autocast_dtype, device, steps) -> float:
    import torch

    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(batch), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def machine_label(device: str) -> str:
    """The GPU's or CPU's name, for labelling a timing."""
    try:
        from repro.runlog import hardware_info

        info = hardware_info()
        label = info.get("gpu") if device == "cuda" else info.get("cpu")
        if label:
            return str(label)
    except Exception:  # noqa: BLE001 (a label only)
        pass
    return platform.processor() or platform.machine()


def time_precisions(width_divisor=4, batch_size=64, steps=3, repetitions=5, seed=0) -> dict:
    """Seconds per train step, fp32 vs bf16 (CPU) / fp16 (CUDA) autocast, interleaved repetitions."""
    import torch

    from repro.resnet.nets import build_net

    device = "cuda" if torch.cuda.is_available() else "cpu"
    low = torch.float16 if device == "cuda" else torch.bfloat16
    low_name = str(low).replace("torch.", "")
    with true_fp32():
        torch.manual_seed(seed)
        batch = torch.randn(batch_size, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (batch_size,), device=device)
        setups = {}
        for name, dtype in (("fp32", None), (low_name, low)):
            torch.manual_seed(seed)
            net = build_net(width_divisor=width_divisor).to(device).to(memory_format=torch.channels_last)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
            _train_step_seconds(net, opt, batch, labels, dtype, device, 2)  # warm-up: allocator, kernels
            setups[name] = (net, opt, dtype)
        times = {name: [] for name in setups}
        for _ in range(repetitions):  # interleaved so drifting load hits both alike
            for name, (net, opt, dtype) in setups.items():
                times[name].append(_train_step_seconds(net, opt, batch, labels, dtype, device, steps))
    ratios = [a / b for a, b in zip(times["fp32"], times[low_name])]
    return {"device": device, "low": low_name, "times": times, "ratios": ratios,
            "hardware": machine_label(device), "threads": torch.get_num_threads()}
