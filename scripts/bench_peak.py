"""This machine's dense matmul rate in each precision: the peak a run's utilisation is measured against.

    python scripts/bench_peak.py                 # fp32 and bf16 (fp16 too with --all), cached values where present
    python scripts/bench_peak.py --remeasure     # measure again and replace the cached values

Every ResNet record stores ``peak_flops`` (this number for its precision) and ``utilisation`` =
achieved training FLOP/s / peak; the value is measured once per chip, thread count, torch version
and precision and cached in ``$REPRO_CACHE/peak_flops.json`` (default ``~/.cache/repro``).
Measure on an idle machine: a busy one gives a low peak and so a flattering utilisation.
"""

from __future__ import annotations

import argparse
import sys

import torch

from repro.devices import cpu_supports_bf16, peak_flops, resolve_device


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--all", action="store_true", help="fp16 as well (slow on most CPUs)")
    p.add_argument("--remeasure", action="store_true", help="ignore the cache and store the new value")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precisions = ["fp32", "bf16"] + (["fp16"] if args.all else [])
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bf16 on this CPU: {cpu_supports_bf16()}")
    rates = {}
    for precision in precisions:
        rates[precision], cached = peak_flops(device, precision, remeasure=args.remeasure)
        print(f"  {precision:5} {rates[precision] / 1e12:7.3f} TFLOP/s  ({'cached' if cached else 'measured now'})")
    print(f"bf16 / fp32: {rates['bf16'] / rates['fp32']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
