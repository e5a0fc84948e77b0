"""rn-*: the blog's figures against the answers, with the run records alongside; the post's text."""

from pathlib import Path

from repro.claims import check
from repro.claims.checkers import blog, common, precision, resnet
from repro.claims.registry import CLAIMS

FIXTURE = Path(__file__).parent / "fixtures" / "runs_small.jsonl"
BY_ID = {c.id: c for c in CLAIMS}


def run(claim_id, log_dir=FIXTURE, **ctx):
    return check(BY_ID[claim_id], common.Context(quick=True, log_dir=str(log_dir), **ctx)).finding


def test_best_ladder_prefers_real_latest_complete():
    ladder = resnet.best_ladder(resnet.ok_records(common.Context(log_dir=str(FIXTURE))))
    assert ladder["baseline"]["group_id"] == "g-cpu-1"
    assert ladder["final"]["total_seconds"] == 340.0


def test_blog_claims_against_fixture():
    a = run("rn-retry-a")
    assert a.verdict == "✓" and "0.829" in a.evidence and "0.834" in a.evidence  # 340/410 measured, 297/356 blog
    c = run("rn-retry-c")
    assert c.verdict == "✗" and "−26 s" in c.measured and "-30.0 s" in c.measured and "20→8" in c.measured


def test_cpu_preset_seconds_are_flagged_not_comparable_with_a_v100():
    for claim_id in ("rn-retry-a", "rn-retry-b", "rn-retry-c", "rn-hallu"):
        evidence = run(claim_id).evidence
        assert "cpu preset" in evidence and "not comparable with the blog's V100" in evidence, claim_id


def test_smoke_only_log_is_pipeline_evidence_and_not_comparable(tmp_path):
    smoke = [line for line in FIXTURE.read_text().splitlines() if '"g-smoke"' in line]
    (tmp_path / "runs.jsonl").write_text("\n".join(smoke) + "\n")
    evidence = run("rn-retry-c", tmp_path).evidence
    assert "pipeline only" in evidence and "synthetic data" in evidence and "not comparable" in evidence


def test_missing_log_names_the_command(tmp_path):
    assert "python -m repro.resnet --stage all" in run("rn-retry-a", tmp_path).evidence


def test_3x_is_decided_by_the_text_whatever_the_timing(monkeypatch):
    def three_times_faster(**_):
        return {"device": "cpu", "low": "bfloat16", "times": {"fp32": [3.0], "bfloat16": [1.0]},
                "ratios": [3.0], "hardware": "Test CPU", "threads": 1}

    monkeypatch.setattr(precision, "time_precisions", three_times_faster)
    f = run("rn-3x")
    assert f.verdict == "✗" and f.basis == "text" and "no factor" in f.measured
    assert "×3" in f.evidence and "Test CPU" in f.evidence and "context" in f.evidence


def test_3x_follows_a_text_that_states_the_factor(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "time_precisions", lambda **_: 1 / 0)  # a failing timing changes nothing
    post = tmp_path / "post.txt"
    post.write_text("Mixed precision training gave a 3x speedup on the V100. Nothing else.")
    f = run("rn-3x", blog_text=str(post))
    assert f.verdict == "✓" and "timing here failed" in f.evidence
    post.write_text("Mixed precision training gave a 2x speedup.")
    assert run("rn-3x", blog_text=str(post)).verdict == "✗"


def test_learn1_searches_the_text(tmp_path):
    f = run("rn-learn1")
    assert f.verdict == "✗" and f.basis == "text" and f.data["found"] == []
    post = tmp_path / "post.txt"
    post.write_text("Lesson: use gradient checkpointing. Reproducibility matters. Large batches are fine.")
    f = run("rn-learn1", blog_text=str(post))
    assert f.verdict == "~" and f.data["found"] == ["gradient checkpointing", "reproducibility"]
    post.write_text("Smaller batch sizes, gradient checkpointing and reproducibility.")
    assert run("rn-learn1", blog_text=str(post)).verdict == "✓"


def test_blog_claim_quotes_are_in_the_post():
    text = "\n".join(blog.POST1_QUOTES)
    for claim_id in ("rn-blog-flops", "rn-blog-total", "rn-blog-40s", "rn-blog-per-epoch", "rn-blog-297"):
        for part in BY_ID[claim_id].quote.replace(";", "…").split("…"):
            assert part.strip(" .") in text, (claim_id, part)


def test_records_given_to_the_context_are_judged_instead_of_its_log(tmp_path):
    """The report passes the records of all its logs: the claims then quote a ladder from them,
    not from the (here empty) log folder."""
    from repro.runlog import read_records

    empty = common.Context(log_dir=str(tmp_path))
    given = common.Context(log_dir=str(tmp_path), records=list(read_records(FIXTURE)))
    assert resnet.ladder_evidence(empty)[0] is None
    ladder, evidence = resnet.ladder_evidence(given)
    assert ladder["baseline"]["group_id"] == "g-cpu-1" and "preset cpu" in evidence
