import math

import numpy as np
import pytest

from repro.claims import check
from repro.claims.checkers import common, remat
from repro.claims.checkers.mup import dense_layer_sq_rms, signgd_feature_change
from repro.claims.registry import by_id


@pytest.fixture(scope="module")
def ctx():
    return common.Context(seed=0, quick=True)


def verdict(ctx, claim_id):
    return check(by_id()[claim_id], ctx).finding


def test_mc_helper_mean_and_se():
    est = common.mc_mean(np.random.default_rng(0).normal(3.0, 2.0, 40_000))
    assert abs(est.mean - 3.0) < 4 * est.se and math.isclose(est.se, 0.01, rel_tol=0.05)


def test_dense_layer_rms_is_d1():
    import torch

    samples = dense_layer_sq_rms(32, 16, 2000, torch.Generator().manual_seed(1))
    est = common.mc_mean(samples)
    assert abs(est.z(32.0)) < 4


def test_signgd_change_matches_closed_form_and_rejects_lechat():
    import torch

    gen = torch.Generator().manual_seed(2)
    sq, abs_sum = signgd_feature_change(torch.randn(8, generator=gen, dtype=torch.float64), 64, 3000, gen)
    est = common.mc_mean(sq)
    assert abs(est.z(64 + 2 / math.pi * 64 * 63)) < 4
    assert abs(est.z(64)) > 100  # Le Chat's d1
    assert np.allclose(sq, abs_sum**2, rtol=1e-12)


@pytest.mark.parametrize("claim_id,expected", [
    ("q1a-rms", "✓"), ("q1a-gauss", "✗"), ("q1b-exp-lechat", "✗"), ("q1b-exp/gemini", "✓"),
    ("q1b-scaling/lechat", "✗"), ("q1b-const/grok", "✓"), ("q1b-const/lechat", "✗"), ("q1b-gmag", "✗"),
    ("q3b-table3/chatgpt", "✓"), ("q3b-table3/grok", "~"), ("q3b-table3/gemini", "✗"), ("q3b-vanish", "✗"),
    ("q3c-entryrms", "✗"), ("q3c-rmsrms", "✓"), ("q3c-upper/gemini", "✗"),
])
def test_mup_verdicts(ctx, claim_id, expected):
    assert verdict(ctx, claim_id).verdict == expected


def test_gauss_kurtosis_near_six_over_d1(ctx):
    f = verdict(ctx, "q1a-gauss")
    assert abs(f.data["excess_kurtosis"][4] - 1.5) < 0.4 and abs(f.data["excess_kurtosis"][16] - 0.375) < 0.25


@pytest.mark.parametrize("claim_id,expected", [
    ("q4a-score", "✓"), ("q4b-F/grok", "✗"), ("q4c-reparam", "✓"), ("q4c-reparam/grok", "✗"), ("q4c-stein", "✓"),
    ("q4d-score", "✓"), ("q4d-baseline", "✓"), ("q4e-general", "✓"), ("q4e-general/gemini", "~"),
])
def test_estimator_verdicts(ctx, claim_id, expected):
    assert verdict(ctx, claim_id).verdict == expected


def test_reparam_variance_is_4_sigma2_k_and_score_much_larger(ctx):
    d = verdict(ctx, "q4c-reparam").data
    assert abs(d["var_rp"] - 10.0) < 0.5 and d["var_score"] > 50 * d["var_rp"]


def test_remat_counts_exact():
    counts = remat.count_rematerialised_backward()
    assert counts["fwd"] == 20 and counts["loadmem"] == 10 and counts["max_error"] == 0.0
    assert [counts["per_layer"][i] for i in range(10, 0, -1)] == [0, 4, 3, 2, 1, 0, 4, 3, 2, 1]
    assert remat.count_disk_backward() == {"fwd": 0, "loaddisk": 10}


def test_remat_break_even_and_verdicts(ctx):
    assert verdict(ctx, "q5c-disk").data["disk_ns"] == 50.0
    assert [verdict(ctx, i).verdict for i in ("q5a-fwd", "q5a-fwd/gemini", "q5b-loadmem/lechat", "q5c-disk/gemini")] \
        == ["✓", "✗", "✗", "✗"]


@pytest.mark.parametrize("claim_id,expected", [
    ("pca-foc", "✓"), ("pca-foc/summary-eq1", "✗"), ("pca-foc-2", "✗"), ("pca-opt", "✓"), ("pca-false-id", "✗"),
    ("ae-layers", "✓"), ("ae-loss", "✓"), ("ae-comp", "✓"), ("ae-ortho", "✓"), ("mt-train", "✓"), ("mt-eval", "✓"),
])
def test_pca_autoencoder_mt_verdicts(ctx, claim_id, expected):
    pytest.importorskip("repro.autoencoder.theory")
    assert verdict(ctx, claim_id).verdict == expected


def test_ae_ortho_numbers(ctx):
    pytest.importorskip("repro.autoencoder.theory")
    d = verdict(ctx, "ae-ortho").data
    assert abs(d["slope"] - 1) < 0.05 and d["sv_err"] < 1e-6
