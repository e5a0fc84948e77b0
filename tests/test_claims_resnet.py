from pathlib import Path

from repro.claims import check
from repro.claims.checkers import common, resnet
from repro.claims.registry import by_id

FIXTURE = Path(__file__).parent / "fixtures" / "runs_small.jsonl"


def run(claim_id, log_dir):
    return check(by_id()[claim_id], common.Context(quick=True, log_dir=str(log_dir))).finding


def test_best_ladder_prefers_real_latest_complete():
    ladder = resnet.best_ladder(resnet.ok_records(FIXTURE))
    assert ladder["baseline"]["group_id"] == "g-cpu-1"
    assert ladder["final"]["total_seconds"] == 340.0


def test_blog_claims_against_fixture():
    a = run("rn-retry-a", FIXTURE)
    assert a.verdict == "✓" and "0.829" in a.evidence and "0.834" in a.evidence
    assert run("rn-hallu", FIXTURE).verdict == "✗"
    c = run("rn-retry-c", FIXTURE)
    assert c.verdict == "✗" and "−26 s" in c.measured and "-30.0 s" in c.measured and "20→8" in c.measured
    assert run("rn-retry-b", FIXTURE).verdict == "~"


def test_missing_log_names_the_command(tmp_path):
    f = run("rn-retry-a", tmp_path)
    assert "python -m repro.resnet --stage all" in f.evidence


def test_smoke_only_log_is_pipeline_evidence(tmp_path):
    smoke = [line for line in FIXTURE.read_text().splitlines() if '"g-smoke"' in line]
    (tmp_path / "runs.jsonl").write_text("\n".join(smoke) + "\n")
    assert "pipeline only" in run("rn-retry-c", tmp_path).evidence


def test_precision_timing_tiny():
    res = resnet.time_precisions(width_divisor=16, batch_size=8, steps=1, repetitions=2)
    assert len(res["ratios"]) == 2 and all(r > 0 for r in res["ratios"])
    assert res["low"] in ("bfloat16", "float16")
