"""Muon's step on a stage's conv filters, three ways side by side: torch.optim.Muon per bank (its
Newton-Schulz in bf16, as airbench94_muon runs), and the batched zero-padded iteration
(hiverge94's ``muon_batched``) in fp32 and in bf16. Seconds per step, round robin, and each
way's ratio to torch's. On a CPU without fast bf16 the bf16 iterations are the slow part.

    python scripts/bench_muon.py --stage hiverge94 --preset full --repeats 5

A benchmark, not a record: nothing is written. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from repro.errors import UserError
from repro.resnet.config import load_preset, load_stage
from repro.resnet.muon import FilterMuon
from repro.resnet.train import build_stage_net

WAYS = {"torch (bf16)": dict(batched=False), "batched fp32": dict(batched=True, ns_dtype=torch.float32),
        "batched bf16": dict(batched=True, ns_dtype=torch.bfloat16)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="hiverge94")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        if args.repeats < 1:
            raise UserError("--repeats must be at least 1")
        stage, preset = load_stage(args.stage), load_preset(args.preset)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    opt = stage.optimizer
    torch.manual_seed(0)
    filters = [p for p in build_stage_net(stage, preset).parameters() if p.ndim == 4 and p.requires_grad]
    print(f"{args.stage} at {args.preset}: {len(filters)} filter banks, "
          + ", ".join("x".join(map(str, f.shape)) for f in filters) + f"; {torch.get_num_threads()} threads")
    optimizers = {}
    for way, options in WAYS.items():
        banks = [torch.nn.Parameter(f.detach().clone()) for f in filters]
        optimizers[way] = (banks, FilterMuon(banks, lr=0.1, momentum=opt.muon_momentum, ns_steps=opt.muon_ns_steps,
                                             lr_scale=1.0, ns_coefficients=opt.muon_ns_coefficients, **options))
    seconds = {way: [] for way in WAYS}
    for repeat in range(args.repeats + 1):  # the first round warms up, untimed
        for way, (banks, muon) in optimizers.items():
            for bank in banks:
                bank.grad = torch.randn_like(bank)
            start = time.perf_counter()
            muon.step()
            if repeat:
                seconds[way].append(time.perf_counter() - start)
    base = statistics.median(seconds["torch (bf16)"])
    for way, values in seconds.items():
        median = statistics.median(values)
        print(f"{way:>14}: {median * 1e3:8.1f} ms a step (spread {min(values) * 1e3:.1f}-{max(values) * 1e3:.1f}), "
              f"{median / base:.3f}x torch's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
