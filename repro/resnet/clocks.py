"""The phases a run's time is split into, and which of them each source's clock counts.

Written once here; the training loop times these phases, a record keeps them, and the ladder
and report read every source's clock through ``seconds_on``.
"""

from __future__ import annotations

from collections.abc import Mapping

# the phases of one optimiser step: waiting for the batch (loader + copy), choosing its images
# (data filtering by a proxy net, airbench96_faster), the passes, the update
TRAINING = ("data_wait", "filtering", "forward_backward", "optimizer_step")
# the phases of an epoch: its steps and the test pass after it
EPOCH_PHASES = (*TRAINING, "evaluation")
# the phases every epoch row and every run has
PHASES = ("preprocessing", *EPOCH_PHASES)
# the phases a run has once, outside its epochs: data preparation and whitening, torch.compile's
# one-time work (--compile), the final TTA pass
BEFORE_EPOCHS = ("preprocessing", "compile")
FINAL = ("final_evaluation",)

# Which phases each source's clock counts (``[source] timing``). torch.compile's one-time work
# counts on every clock: the sources had none to pay.
CLOCKS: dict[str, tuple[str, ...]] = {
    "blog": (*BEFORE_EPOCHS, *TRAINING, "evaluation", *FINAL),  # posts 1-4: every test pass
    "dawnbench": (*BEFORE_EPOCHS, *TRAINING),  # post 8: no validation
    "airbench": (*BEFORE_EPOCHS, *TRAINING, *FINAL),  # whitening, training, the final TTA pass
}


def seconds_on(clock: str, phases: Mapping[str, float]) -> float:
    """The seconds of ``phases`` (phase -> seconds) that ``clock`` counts."""
    return sum(phases.get(p, 0.0) for p in CLOCKS[clock])


def training_seconds(phases: Mapping[str, float]) -> float:
    return sum(phases.get(p, 0.0) for p in TRAINING)
