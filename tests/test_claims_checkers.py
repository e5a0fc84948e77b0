"""The building blocks of the checkers, against closed forms and hand-made inputs."""

import math

import numpy as np
import pytest
import torch

from repro.claims.checkers import blog, common, precision, remat
from repro.claims.checkers.mup import dense_layer_sq_rms, signgd_feature_change


def test_mc_helper_mean_and_se():
    est = common.mc_mean(np.random.default_rng(0).normal(3.0, 2.0, 40_000))
    # σ/√n = 2/200
    assert abs(est.mean - 3.0) < 4 * est.se and math.isclose(est.se, 0.01, rel_tol=0.05)


def test_dense_layer_rms_is_d1():
    samples = dense_layer_sq_rms(32, 16, 2000, torch.Generator().manual_seed(1))
    assert abs(common.mc_mean(samples).z(32.0)) < 4


def test_signgd_change_matches_closed_form_and_rejects_lechat():
    gen = torch.Generator().manual_seed(2)
    sq, abs_sum = signgd_feature_change(torch.randn(8, generator=gen, dtype=torch.float64), 64, 3000, gen)
    est = common.mc_mean(sq)
    assert abs(est.z(64 + 2 / math.pi * 64 * 63)) < 4
    assert abs(est.z(64)) > 100  # Le Chat's d1
    assert np.allclose(sq, abs_sum**2, rtol=1e-12)
    assert abs(common.mc_mean(abs_sum).z(64 * math.sqrt(2 / math.pi))) < 4  # E‖y'‖_RMS = d1√(2/π)


def test_remat_counts_follow_the_homework_scheme():
    counts = remat.count_rematerialised_backward()
    assert counts["fwd"] == 20 and counts["loadmem"] == 10 and counts["max_error"] == 0.0
    assert [counts["per_layer"][i] for i in range(10, 0, -1)] == [0, 4, 3, 2, 1, 0, 4, 3, 2, 1]
    assert counts["initial_fwd"] == 10 and counts["fwd_iteration"] == 30
    assert remat.count_disk_backward() == {"fwd": 0, "loaddisk": 10}


@pytest.mark.parametrize("value,claimed,sig,expected", [
    (2.76e9, 2.8e9, 2, True), (2.74e9, 2.8e9, 2, False), (4.9e15, 5e15, 1, True), (39.2, 40, 1, True),
    (34.0, 40, 1, False), (5.6e15, 5e15, 1, False),
])
def test_approximately_means_same_significant_figures(value, claimed, sig, expected):
    assert blog.rounds_to(value, claimed, sig) is expected


@pytest.mark.parametrize("sentence,factors", [
    ("Mixed precision gave a 3x speedup", [3.0]),
    ("fp16 training is 2.5× faster", [2.5]),
    ("half precision made it three times faster", [3.0]),
    ("a 100-fold reduction", [100.0]),
    ("on a 32×32 CIFAR10 image", []),
    ("mixed precision was one of the innovations", []),
])
def test_speedup_factors_in_a_sentence(sentence, factors):
    assert blog.speedup_factors(sentence) == factors


def test_post_text_is_split_into_sentences_and_searched(tmp_path):
    ctx = common.Context(blog_text=str(tmp_path / "post.txt"))
    (tmp_path / "post.txt").write_text("We use gradient checkpointing. It helps!\nNothing else here.")
    text, label = blog.post_text(ctx)
    assert blog.sentences(text) == ["We use gradient checkpointing.", "It helps!", "Nothing else here."]
    assert blog.sentences_with(text, "CHECKPOINTING") == ["We use gradient checkpointing."]
    assert str(tmp_path) in label


def test_bundled_quotes_hold_the_blog_numbers():
    text = "\n".join(blog.POST1_QUOTES)
    for figure in ("341s", "356s", "323s", "308s", "297s", "2.8×10^9", "5×10^15", "125 TeraFLOPS", "40 seconds"):
        assert figure in text
    assert "301s" not in text  # the post never states it


def test_true_fp32_restores_tf32_flags_even_on_error():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with pytest.raises(RuntimeError), precision.true_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            raise RuntimeError("inside")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_precision_timing_leaves_tf32_as_found():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        res = precision.time_precisions(width_divisor=16, batch_size=8, steps=1, repetitions=2)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert all(t > 0 for times in res["times"].values() for t in times) and set(res["times"]) == {"fp32", res["low"]}
    assert res["hardware"]
