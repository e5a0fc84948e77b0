"""q3a-fig1: the small SP-vs-μP LR sweep (quick mode, one shared sweep for all four entries)."""

import pytest

from repro.claims import check
from repro.claims.checkers import common
from repro.claims.registry import by_id


@pytest.fixture(scope="module")
def ctx():
    return common.Context(seed=0, quick=True)


@pytest.fixture(scope="module")
def grok(ctx):
    return check(by_id()["q3a-fig1/grok"], ctx).finding


def test_mup_optimum_moves_less_than_sp(grok):
    sp, mup = grok.data["summary"]["sp"], grok.data["summary"]["mup"]
    assert sp["shift"] < 0  # SP's best LR gets smaller as width grows
    assert abs(mup["fine_shift"]) < abs(sp["fine_shift"])
    assert abs(mup["shift"]) <= 1  # μP's grid argmin stays within one power of two


def test_mup_best_loss_non_increasing_in_width(grok):
    widths = grok.data["widths"]
    best = grok.data["summary"]["mup"]["best_loss"]
    assert widths == [64, 128, 256]
    assert all(best[a] >= best[b] for a, b in zip(widths, widths[1:]))


def test_verdicts_per_assistant(ctx, grok):
    got = {cid: check(by_id()[cid], ctx).finding.verdict
           for cid in ("q3a-fig1/chatgpt", "q3a-fig1/gemini", "q3a-fig1/lechat")}
    assert grok.verdict == common.YES
    assert got == {"q3a-fig1/chatgpt": common.YES, "q3a-fig1/gemini": common.PARTLY,
                   "q3a-fig1/lechat": common.NO}
    assert "argmin log2 LR" in grok.evidence and "2^-12" in grok.evidence
