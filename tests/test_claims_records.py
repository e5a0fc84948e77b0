"""rn-rec-*: the records' own claims (accuracy over n runs, time on their card, FLOPs per run, and
hiverge's statistics), judged on run records and on torch's FLOP count of the stages."""

import dataclasses

import pytest

from repro.claims import check
from repro.claims.checkers import common
from repro.claims.registry import CLAIMS
from repro.resnet.config import load_preset, load_stage
from repro.resnet.train import recipe_flops

BY_ID = {c.id: c for c in CLAIMS}
OFFICIAL, JPEG = "official CIFAR-10 pickles at /data/cifar-10-batches-py", "image archive cifar10-jpeg.tar.gz"


def _record(stage, accuracy, seconds, gpu, data=OFFICIAL, preset="full"):
    return {"experiment": "resnet", "status": "ok", "stage": stage, "preset": preset, "synthetic": False,
            "data_source": data, "test_accuracy": accuracy, "seconds_by_timing": {"airbench": seconds},
            "hardware": {"gpu": gpu, "cpu": "some CPU"}, "run_id": f"{stage}-{accuracy}-{seconds}"}


def verdict(claim_id, records=(), **params):
    claim = BY_ID[claim_id]
    if params:
        claim = dataclasses.replace(claim, params={**claim.params, **params})
    return check(claim, common.Context(records=list(records))).finding


def test_every_record_stage_has_its_accuracy_time_and_published_flops_as_claims():
    ids = {c.id for c in CLAIMS if c.id.startswith("rn-rec-")}
    for stage in ("airbench94", "airbench94_muon", "hiverge94", "airbench95", "airbench96", "airbench96_faster"):
        assert {f"rn-rec-{stage}-acc", f"rn-rec-{stage}-time"} <= ids
        assert (f"rn-rec-{stage}-flops" in ids) == (load_stage(stage).source.pflops is not None)
    assert "rn-rec-hiverge94-flops" not in ids  # hiverge published no FLOP count


def test_airbench94s_count_is_the_hand_count_of_its_convolutions():
    """fast-cifar-sota.md §6 counts 118 M multiply-adds per image forward (0.236 GFLOP); a training
    step is forward and backward (3x), 476 steps of 1024; the TTA pass is 6 views of 10,000 images."""
    training, evaluation = recipe_flops(load_stage("airbench94"), load_preset("full"))
    assert training / (476 * 1024 * 3) == pytest.approx(0.236e9, rel=0.03)
    assert evaluation / (6 * 10_000) == pytest.approx(0.236e9, rel=0.03)
    # selective TTA: a plain pass over all, the 6 views for a quarter: 2.5 forward passes per image
    _, selective = recipe_flops(load_stage("hiverge94"), load_preset("full"))
    assert selective / evaluation == pytest.approx(2.5 / 6, rel=1e-6)


def test_flops_verdicts(tmp_path, monkeypatch):
    finding = verdict("rn-rec-airbench94-flops")
    assert finding.verdict == "✓" and "0.359 P" in finding.measured
    # a record that published 0.5 PFLOP (a user's airbench94 shadowing the built-in) is refused
    from repro.resnet.config import BUILTIN_DIR

    text = (BUILTIN_DIR / "resnet" / "airbench94.toml").read_text()
    (tmp_path / "airbench94.toml").write_text(text.replace("pflops = 0.36", "pflops = 0.5"))
    monkeypatch.setenv("REPRO_CONFIG_DIR", str(tmp_path))
    finding = verdict("rn-rec-airbench94-flops")
    assert finding.verdict == "✗" and "-28.2% from the published 0.5 P" in finding.measured


def test_hiverges_p_value_and_share_follow_from_its_mean_std_and_n():
    p = verdict("rn-rec-hiverge94-p")
    assert p.verdict == "✓" and "t = 2.71" in p.measured  # 0.008 / (0.132 / sqrt(2000))
    assert verdict("rn-rec-hiverge94-p", p=0.01).verdict == "✗"
    share = verdict("rn-rec-hiverge94-share")
    assert share.verdict == "✓" and "53.9%" in share.measured
    assert verdict("rn-rec-hiverge94-share", share=0.8).verdict == "✗"


def test_accuracy_is_judged_on_official_full_size_runs_only():
    at_94 = [_record("airbench94", a, 4.0, "NVIDIA A100") for a in (0.9405, 0.9398, 0.9402)]
    assert verdict("rn-rec-airbench94-acc", at_94).verdict == "✓"
    below = [_record("airbench94", a, 4.0, "NVIDIA A100") for a in (0.930, 0.931, 0.929)]
    assert verdict("rn-rec-airbench94-acc", below).verdict == "✗"
    jpeg = [_record("airbench94", a, 4.0, "NVIDIA H200", JPEG) for a in (0.905, 0.906)]
    finding = verdict("rn-rec-airbench94-acc", jpeg)
    assert finding.verdict == "n.a." and "JPEG copy: 90.55" in finding.measured
    smoke = [_record("airbench94", a, 4.0, "NVIDIA A100", preset="smoke") for a in (0.2, 0.3)]
    assert verdict("rn-rec-airbench94-acc", smoke).verdict == "n.a."


def test_time_is_judged_on_the_records_card_only():
    a100 = [_record("airbench94", 0.94, s, "NVIDIA A100-SXM4-40GB") for s in (3.9, 4.1)]
    assert verdict("rn-rec-airbench94-time", a100).verdict == "✓"  # 4.0 s within 1.1 x 3.83 s
    slow = [_record("airbench94", 0.94, s, "NVIDIA A100-SXM4-40GB") for s in (5.0, 5.2)]
    assert verdict("rn-rec-airbench94-time", slow).verdict == "✗"
    h200 = [_record("airbench94", 0.905, s, "NVIDIA H200", JPEG) for s in (3.9, 4.1)]
    finding = verdict("rn-rec-airbench94-time", h200)
    assert finding.verdict == "n.a." and "NVIDIA H200" in finding.measured and "not comparable" in finding.evidence
