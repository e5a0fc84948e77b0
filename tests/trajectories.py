"""Per-step losses and accuracies of every stage on the smoke preset, in float64: the fixture
``fixtures/smoke_trajectories.json`` that tests/test_stage_files.py holds every change against.
Widths are halved again (÷16) and the test set cut to 64 images: float64 is slow on a CPU, the
fixture covers every stage, and what it checks (the same arithmetic step by step) needs no width.

Why float64: an fp32 trajectory depends on the CPU kind. oneDNN sums a convolution in another
order on an AMX Xeon than on an AMD EPYC, each step's ~1e-7 differences feed the next, and by
step 7 the losses differ by 2.5e-3. In float64 the same reordering costs ~1e-16 per operation,
so over a smoke run's few steps the losses agree to ~1e-12 on every kind.

    python tests/trajectories.py      # rewrite the fixture (only when a change is meant to alter the numbers)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "smoke_trajectories.json"
FIXTURE_PRESET = {"width_divisor": 16, "test_images": 64}  # smoke's other settings: 512 images, 2 epochs
HOW = ("python tests/trajectories.py: smoke preset with widths /16, synthetic data (512/64, seed 0), seed 0, "
       "--precision fp64, channels_last false, sync timing, torch's default threads")


def train(stage, preset, data, seed: int = 0, **settings):
    """(the run's result, its per-step mean losses): ``train_stage`` with ``TrainSettings(**settings)``
    (default: CPU, fp32, NCHW, sync timing), the losses heard through ``Hooks.on_step_losses``."""
    from repro.resnet.train import Hooks, TrainSettings, train_stage

    losses: list[float] = []
    result = train_stage(stage, preset, data, seed, TrainSettings(**settings), Hooks(on_step_losses=losses.extend))
    return result, losses


def recorded_choices(loader, method: str = "draw_epoch_choices") -> list:
    """What ``loader.<method>()`` returns each epoch (its per-image augmentation choices), kept as
    the loader draws them."""
    seen, draw = [], getattr(loader, method)

    def drawing():
        seen.append(draw())
        return seen[-1]

    setattr(loader, method, drawing)
    return seen


def trajectory(stage: str) -> dict:
    from repro.data import SYNTHETIC, load_cifar10
    from repro.resnet.config import load_preset, load_stage

    preset = dataclasses.replace(load_preset("smoke"), **FIXTURE_PRESET)
    data = load_cifar10(SYNTHETIC, synthetic_sizes=(preset.train_images, preset.test_images), seed=0)
    result, losses = train(load_stage(stage), preset, data, precision="fp64")
    return {"step_losses": losses, "test_accuracy": [e.test_accuracy for e in result.epochs],
            "train_accuracy": [e.train_accuracy for e in result.epochs],
            "final_test_accuracy": result.test_accuracy}


def main() -> None:
    from repro.resnet.config import available_stages
    from repro.runlog import git_commit, hardware_info

    stages = {}
    for stage in available_stages():
        stages[stage] = trajectory(stage)
        print(stage, stages[stage]["step_losses"][:2], flush=True)
    FIXTURE.write_text(json.dumps({"recorded_at": git_commit(), "cpu": hardware_info()["cpu"],
                                   "torch": torch.__version__, "how": HOW, "stages": stages}, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
