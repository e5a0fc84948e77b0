"""HW7 machine translation: what the decoder is fed with and without teacher forcing.

A toy decoder that always emits the sampled (wrong) translation "I saw a dog ⟨eos⟩" is run
through the two loops; the checker records the tokens each loop feeds in.
"""

from __future__ import annotations

from .common import COMPUTED, NO, YES, Finding

REFERENCE = ("I", "see", "a", "dog", "<eos>")
SAMPLED = ("I", "saw", "a", "dog", "<eos>")


def toy_decoder(previous_token: str, step: int) -> str:
    """Emits the sampled translation regardless of its input (the model that made the error)."""
    return SAMPLED[step]


def decoder_inputs_fed(mode: str, steps: int = 5) -> list[str]:
    fed, token = [], "<sos>"
    for step in range(steps):
        fed.append(token)
        output = toy_decoder(token, step)
        # Training feeds the ground truth (teacher forcing); generation feeds back the model's output.
        token = REFERENCE[step] if mode == "train" else output
    return fed


def decoder_inputs(claim, ctx) -> Finding:
    fed = decoder_inputs_fed(claim.params["mode"])
    return Finding(
        measured=" ".join(fed),
        verdict=YES if tuple(fed) == tuple(claim.params["tokens"]) else NO,
        basis=COMPUTED,
        evidence=f"toy decoder loop in {claim.params['mode']} mode; reference 'I see a dog', sample 'I saw a dog'",
        data={"fed": fed},
    )
