"""The whole registry in --quick mode, once: no checker fails, and every entry gets the verdict
the claims catalogue ("right?" column) or the mathematics gives it.

The expected verdicts below are written from the catalogue and from the derivations named
beside them, not from this program's output.
"""

from pathlib import Path

import pytest

from repro.claims import check
from repro.claims.checkers import common
from repro.claims.registry import CLAIMS

FIXTURE = Path(__file__).parent / "fixtures" / "runs_small.jsonl"
Y, N, P, NA = "✓", "✗", "~", "n.a."

EXPECTED = {
    # HW3 Q1 — E‖Wx‖²_RMS = d1; y_j is a scale mixture (excess kurtosis 6/d1); E‖y'‖²_RMS = d1 + (2/π)d1(d1−1)
    "q1a-rms": Y, "q1a-const": Y, "q1a-gauss": N,
    "q1b-exp-lechat": N, "q1b-exp/grok": Y, "q1b-exp/chatgpt": Y, "q1b-exp/gemini": Y,
    "q1b-scaling": Y, "q1b-scaling/lechat": N,
    "q1b-scaling/chatgpt-rms": Y,  # ‖y'‖_RMS = Σ|x_k| per draw, E|x_k| = √(2/π)
    "q1b-const/lechat": N, "q1b-const/grok": Y, "q1b-const/chatgpt": Y,
    "q1b-const/chatgpt-approx": Y,  # 1/√(d1(1−2/π)+(2/π)d1²) = √(π/2)/d1 · (1 + (π/2−1)/d1)^(−1/2)
    "q1b-const/gemini": NA,  # gives no constant
    "q1b-pathwise": Y, "q1b-gmag": N, "q1c-why-d1": Y,
    # HW3 Q3
    "q3a-fig1/grok": Y, "q3a-fig1/chatgpt": Y, "q3a-fig1/gemini": P, "q3a-fig1/lechat": N,
    "q3b-table3/chatgpt": Y, "q3b-table3/grok": P, "q3b-table3/lechat": N, "q3b-table3/gemini": N,
    "q3b-vanish": N,
    "q3c-desid": Y, "q3c-desid/lechat": P,  # ✓ then ✗
    "q3c-rmsrms": Y, "q3c-entryrms": N, "q3c-upper": Y, "q3c-upper/gemini": N,
    "q3c-lower/grok": N, "q3c-lower/chatgpt": Y, "q3c-lower/gemini": P, "q3c-lower/lechat": N,
    # HW3 Q4
    "q4a-score": Y, "q4b-F": Y, "q4b-F/grok": N, "q4c-reparam": Y, "q4c-reparam/grok": N, "q4c-stein": Y,
    "q4d-score": Y, "q4d-baseline": Y, "q4d-var": Y, "q4e-general": Y, "q4e-general/gemini": P,
    # HW3 Q5 — 20 fwd in the backward pass (+10 initial = 30), 10 loadmem, (20·20+10·10)/10 = 50 ns
    "q5a-fwd": Y, "q5a-fwd/grok-iteration": Y, "q5a-fwd/gemini": N,
    "q5b-loadmem/grok": Y, "q5b-loadmem/chatgpt-1st": N, "q5b-loadmem/chatgpt-2nd": Y,
    "q5b-loadmem/lechat": N, "q5b-loadmem/gemini": N,
    "q5c-disk": Y, "q5c-disk/lechat": N, "q5c-disk/gemini": N,
    # HW7 Q3, the autoencoder, MT
    "pca-foc": Y, "pca-foc/summary-eq1": N, "pca-foc-2": N, "pca-opt": Y, "pca-false-id": N,
    "ae-layers": Y, "ae-loss": Y, "ae-comp": Y, "ae-ortho": Y, "mt-train": Y, "mt-eval": Y,
    # HW7 Q4
    "rn-hallu": N, "rn-3x": N, "rn-learn1": N, "rn-retry-a": Y, "rn-retry-b": P, "rn-retry-c": N,
    # the post's own arithmetic: 0.92 GFLOP forward × 3 ≈ 2.76e9 (post 1's FLOP count); 2.8e9·5e4·35 = 4.9e15;
    # 5e15/1.25e14 = 40 s; 15 s / 35 = 0.43 s per epoch; 323 − 15 − 7 − 4 = 297
    "rn-blog-flops": Y, "rn-blog-total": Y, "rn-blog-40s": Y, "rn-blog-per-epoch": Y, "rn-blog-297": Y,
    # the records' own claims: the fixture holds no run of a record stage (n.a.); the FLOP totals agree
    # with the conv hand counts of fast-cifar-sota.md §6 (0.35-0.36 P airbench94, 0.28-0.29 Muon); hiverge's
    # t = 0.008 / (0.132 / sqrt(2000)) = 2.71 gives p = 0.0034, and Φ(0.013 / 0.132) = 54% of runs at 94%
    **{f"rn-rec-{stage}-{what}": NA for stage in ("airbench94", "airbench94_muon", "hiverge94", "airbench95",
                                                  "airbench96", "airbench96_faster") for what in ("acc", "time")},
    **{f"rn-rec-{stage}-flops": Y for stage in ("airbench94", "airbench94_muon", "airbench95", "airbench96",
                                                "airbench96_faster")},
    "rn-rec-hiverge94-p": Y, "rn-rec-hiverge94-share": Y,
}

# What each verdict rests on. Judgement: readings of the answer (a different question answered,
# a half answer, a vague mechanism, right then wrong). Text: the blog's figures and sentences, TP5's
# Table 3 SP entry and Fig. 1 axes, the answer's own silence. Everything else is computed.
JUDGEMENT = {"q3a-fig1/gemini", "q3c-desid/lechat", "q3c-lower/gemini", "q4b-F/grok"}
TEXT = {"rn-hallu", "rn-3x", "rn-learn1", "rn-retry-a", "rn-retry-b", "rn-retry-c",
        "q3a-fig1/lechat", "q3b-table3/chatgpt", "q3b-table3/grok", "q1b-const/gemini"}


@pytest.fixture(scope="module")
def results():
    ctx = common.Context(seed=0, quick=True, log_dir=str(FIXTURE))
    return {c.id: check(c, ctx).finding for c in CLAIMS}


def test_every_entry_has_an_expected_verdict():
    assert set(EXPECTED) == {c.id for c in CLAIMS}


def test_quick_run_has_no_error(results):
    failed = {cid: f.evidence for cid, f in results.items() if f.verdict == common.ERROR}
    assert failed == {}


@pytest.mark.parametrize("claim_id", sorted(EXPECTED))
def test_verdict(results, claim_id):
    f = results[claim_id]
    assert f.verdict == EXPECTED[claim_id], f"{claim_id}: {f.measured} | {f.evidence}"


def test_basis(results):
    expected = {cid: "judgement" if cid in JUDGEMENT else "text" if cid in TEXT else "computed" for cid in EXPECTED}
    assert {cid: f.basis for cid, f in results.items()} == expected


# ---- numbers behind some verdicts, against their closed forms


def test_gauss_kurtosis_near_six_over_d1(results):
    k = results["q1a-gauss"].data["excess_kurtosis"]
    assert abs(k[4] - 1.5) < 0.4 and abs(k[16] - 0.375) < 0.25


def test_constant_gap_shrinks_like_one_over_d1(results):
    gap = results["q1b-const/chatgpt-approx"].data["gap"]
    # exact: (1 + (π/2 − 1)/d1)^(−1/2) − 1 ≈ −0.0174 at d1 = 16, −0.0004 at 1024
    assert gap[16] < -0.01 and abs(gap[1024]) < 0.005


def test_reparam_variance_is_4_sigma2_k_and_score_much_larger(results):
    d = results["q4c-reparam"].data
    assert abs(d["var_rp"] - 10.0) < 0.5 and d["var_score"] > 50 * d["var_rp"]


def test_remat_break_even_is_50ns_and_iteration_30(results):
    assert results["q5c-disk"].data["disk_ns"] == 50.0
    assert results["q5a-fwd/grok-iteration"].data["value"] == 30.0
    assert results["q5b-loadmem/chatgpt-1st"].data["value"] == 10.0


def test_ae_ortho_numbers(results):
    d = results["ae-ortho"].data
    assert abs(d["slope"] - 1) < 0.05 and d["sv_err"] < 1e-6


def test_flops_per_image_match_the_independent_count(results):
    # post 1: 0.92 GFLOP forward (multiply-add = 2), fwd+bwd ≈ 3× forward = 2.76e9
    d = results["rn-blog-flops"].data
    assert 0.90e9 < d["forward"] < 0.94e9 and 2.7e9 < d["total"] < 2.8e9


def test_fig1_sweep_facts(results):
    grok = results["q3a-fig1/grok"]
    sp, mup = grok.data["summary"]["sp"], grok.data["summary"]["mup"]
    widths = grok.data["widths"]
    assert sp["shift"] < 0  # SP's best LR gets smaller as width grows
    assert abs(mup["fine_shift"]) < abs(sp["fine_shift"]) and abs(mup["shift"]) <= 1
    assert all(mup["best_loss"][a] >= mup["best_loss"][b] for a, b in zip(widths, widths[1:]))
    assert "log2 learning rate" in results["q3a-fig1/lechat"].evidence
