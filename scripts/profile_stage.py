"""Where a stage's training steps spend their time, by operator (torch.profiler).

    python scripts/profile_stage.py --stage airbench94 --preset full --data PATH/cifar10-jpeg.tar.gz
    python scripts/profile_stage.py --stage tta --preset cpu --steps 10 --sort self_cpu_time_total

Runs the stage through the one training loop, lets ``--skip`` steps pass (warm-up), profiles the
next ``--steps`` steps (loader, forward, backward, optimizer, EMA) and stops. Prints the operators
with the most time and the seconds per profiled step. A diagnostic, not a timing record: nothing
is appended to the run log, and profiling itself adds overhead.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from repro.data import SYNTHETIC
from repro.errors import UserError
from repro.resnet.cli import add_common_arguments, load_one_stage
from repro.resnet.config import run_epochs
from repro.resnet.train import Hooks, train_stage


class _Enough(Exception):
    """Raised from the step callback once the profiled steps are done."""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="final")
    p.add_argument("--preset", default="cpu")
    add_common_arguments(p, data_default=SYNTHETIC)
    p.add_argument("--skip", type=int, default=3, help="steps run before profiling starts (default 3)")
    p.add_argument("--steps", type=int, default=10, help="steps profiled (default 10)")
    p.add_argument("--sort", default="self_cpu_time_total", help="key_averages sort key")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)
    try:
        if args.steps < 1 or args.skip < 0:
            raise UserError("--steps must be at least 1 and --skip at least 0")
        stage, preset, settings, data = load_one_stage(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = settings.device
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler = torch.profiler.profile(activities=activities)
    started: list[float] = []

    def on_step(done: int) -> None:
        if done == args.skip:
            profiler.start()
            started.append(time.perf_counter())
        elif done == args.skip + args.steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started.append(time.perf_counter())
            profiler.stop()
            raise _Enough

    # enough epochs for skip + steps, whatever the stage's length
    preset = replace(preset, epochs=max(run_epochs(preset, stage), 1.0) * 4)
    try:
        train_stage(stage, preset, data, 0, settings, Hooks(on_step=on_step))
    except _Enough:
        pass
    else:
        print(f"error: the run ended before {args.skip + args.steps} steps", file=sys.stderr)
        return 1
    print(profiler.key_averages().table(sort_by=args.sort, row_limit=args.rows))
    print(f"{args.stage}, preset {preset.name}, {device}, {settings.precision}: "
          f"{(started[1] - started[0]) / args.steps:.3f} s per profiled step (with the profiler's overhead)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
