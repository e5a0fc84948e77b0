"""Training-step variants of one stage, side by side on the same batches: seconds per step,
utilisation of this machine's matmul rate, and the loss after N steps.

    python scripts/bench_step.py --stage airbench94 --preset full --steps 6
    python scripts/bench_step.py --stage tta --preset full --variants eager,compiled,nchw

Each variant builds the stage's net from the same seed, draws the same batches from the stage's
own loader and runs ``--warmup`` untimed steps, then ``--steps`` timed ones through the training
loop's own ``train_step``. Variants:

* ``eager``: what a run does by default (channels_last as the preset says, fused SGD);
* ``compiled``: ``--compile`` (torch.compile of the net; its compile time is shown apart);
* ``nchw`` / ``nhwc``: the other memory format;
* ``default_sgd`` / ``foreach``: torch's default SGD loop, or its foreach implementation;
* ``fp32``: no autocast.

Losses after N steps should agree to a few parts in a thousand (reduced precision, other kernels).
A benchmark, not a record: nothing is appended to the run log. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

import torch

from repro.data import SYNTHETIC
from repro.devices import peak_flops
from repro.errors import UserError
from repro.resnet.cli import add_common_arguments, load_one_stage
from repro.resnet.train import EpochStats, TrainSettings, make_optimizer, prepare, train_step

VARIANTS = ("eager", "compiled", "nchw", "nhwc", "default_sgd", "foreach", "fp32")


def run_variant(name: str, stage, preset, data, settings: TrainSettings, *, steps: int, warmup: int) -> dict:
    settings = replace(settings, channels_last={"nchw": False, "nhwc": True}.get(name, settings.channels_last),
                       precision="fp32" if name == "fp32" else settings.precision, compile_mode="default" if name == "compiled" else None)
    device, precision = settings.device, settings.precision
    run = prepare(stage, preset, data, 0, settings)
    if name in ("default_sgd", "foreach"):
        run.optimizer = make_optimizer(run.net, stage.optimizer, run.train.batch_size,
                                       implementation=name.removesuffix("_sgd"))
    stats = EpochStats(device)
    batches, seconds = iter(run.train), []
    for i in range(warmup + steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(run.train)
            x, y = next(batches)
        x, y = run.to_device(x, y)
        start = time.perf_counter()
        train_step(run, x, y, i % run.steps_per_epoch, stats, epoch=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    losses = stats.read()[0]
    peak, _ = peak_flops(device, precision)
    step = statistics.median(seconds)
    return {"variant": name, "precision": precision, "channels_last": settings.channels_last, "step": step,
            "spread": (max(seconds) - min(seconds)) / step, "utilisation": run.flops_per_step / step / peak,
            "loss": losses[-1], "compile": run.timer.totals.get("compile")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="airbench94")
    p.add_argument("--preset", default="full")
    add_common_arguments(p, data_default=SYNTHETIC)
    p.add_argument("--variants", default="eager,default_sgd,compiled,nchw",
                   help="comma-separated, first is the reference: " + ", ".join(VARIANTS))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1,
                   help="run the variants this many times, round robin, and report each one's median: "
                        "a machine that speeds up or slows down over minutes then favours none of them")
    args = p.parse_args(argv)
    try:
        variants = args.variants.split(",")
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise UserError(f"unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
        if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
            raise UserError("--steps and --repeats must be at least 1, --warmup at least 0")
        stage, preset, settings, data = load_one_stage(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # a small test set: the benchmark times training steps only
    data = replace(data, test_images=data.test_images[:256], test_labels=data.test_labels[:256])
    print(f"{args.stage}, preset {args.preset}, {settings.device}, {torch.get_num_threads()} threads, "
          f"{settings.precision}, "
          f"{args.steps} timed steps after {args.warmup}, x{args.repeats} round robin; data {data.source_label}")
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            runs[name].append(run_variant(name, stage, preset, data, settings, steps=args.steps, warmup=args.warmup))
    rows = []
    for name in variants:
        r = dict(min(runs[name], key=lambda v: abs(v["step"] - statistics.median(x["step"] for x in runs[name]))))
        r["spread"] = (max(x["step"] for x in runs[name]) - min(x["step"] for x in runs[name])) / r["step"] \
            if args.repeats > 1 else r["spread"]
        rows.append(r)
        print(f"  {name:9} {r['step']:7.3f} s/step  ÷{variants[0]} {r['step'] / rows[0]['step']:5.2f}  "
              f"spread {100 * r['spread']:4.0f}%{' over repeats' if args.repeats > 1 else ''}  utilisation {100 * r['utilisation']:5.1f}%  "
              f"loss {r['loss']:.4f} (÷{variants[0]} {r['loss'] / rows[0]['loss']:.4f})"
              + (f"  compile {r['compile']:.0f} s" if r["compile"] else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
