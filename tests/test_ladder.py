"""Records -> ladder rows, the --list view, and every stage of the chain end to end on the smoke preset."""

import math

import pytest
from scipy import stats

from repro.resnet import cli as resnet
from repro.resnet.config import available_stages, load_stage
from repro.resnet.ladder import ladder_rows, markdown_table
from repro.resnet.records import LoggedRun
from repro.runlog import read_records


def _record(stage, seconds, accuracy, **extra):
    return {"stage": stage, "status": "ok", "total_seconds": seconds, "test_accuracy": accuracy,
            "epochs": [{"seconds": seconds / 2}, {"seconds": seconds / 2}], **extra}


def test_rows_ratios_source_numbers_and_welch():
    records = [_record("final", t, a) for t, a in ((300, 0.93), (320, 0.94), (310, 0.935))]
    records += [_record("batch512", t, a) for t, a in ((200, 0.92), (230, 0.925), (215, 0.93))]
    rows = ladder_rows(records, target=0.93)
    assert [r.stage for r in rows] == ["final", "batch512"]  # ladder order, not log order
    final, batch = rows
    assert final.ratio == 1.0 and batch.ratio == pytest.approx(215 / 310)
    assert (final.source_seconds, batch.source_seconds) == (297, 256)  # from the stage files
    assert batch.source_ratio == pytest.approx(256 / 297)
    assert (final.reached, batch.reached) == (3, 1)  # >= the target counts
    # Welch's t-test written out: t = (m1 - m2) / sqrt(s1²/n1 + s2²/n2), Welch-Satterthwaite df
    a, b = [300, 320, 310], [200, 230, 215]
    va, vb = 100.0, 225.0  # sample variances
    t = (310 - 215) / math.sqrt(va / 3 + vb / 3)
    df = (va / 3 + vb / 3) ** 2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    assert batch.p_time == pytest.approx(2 * stats.t.sf(t, df))
    assert final.p_time is None  # nothing above the first stage
    # one-sided test of the mean accuracy against the target (mean 0.935 > 0.93, n = 3)
    t1 = (0.935 - 0.93) / (0.005 / math.sqrt(3))
    assert final.p_target == pytest.approx(stats.t.sf(t1, 2))
    table = "\n".join(markdown_table(ladder_rows(records, 0.93), 0.93))
    # the headline first: time to target (these records predate it: '-'), then the source's ratio
    assert "| final | 3 | - | - | 1.000 | 310.0 ± 10.0 | blog | 155.0 ± 5.0 | 93.50 ± 0.50% |" in table


def test_time_to_target_is_on_the_sources_clock_and_a_miss_is_marked():
    def run(stage, total, target_epoch, epochs):
        return {"stage": stage, "status": "ok", "total_seconds": total, "test_accuracy": 0.9,
                "target_epoch": target_epoch, "phases": {"preprocessing": 2.0},
                "epochs": [{"seconds": 10.0, "phases": {"data_wait": 1.0, "forward_backward": 6.0,
                                                        "optimizer_step": 1.0, "evaluation": 2.0}}] * epochs}
    # final (blog clock: test passes count): epoch 2 -> 2 + 2 x 10 = 22 s; resnet9 (dawnbench: no test
    # passes): epoch 1 -> 2 + 8 = 10 s; tta never reached it in one of its two runs
    records = [run("final", 50, 2, 4), run("final", 50, 2, 4), run("resnet9", 30, 1, 3), run("resnet9", 30, 1, 3),
               run("tta", 20, 1, 2), run("tta", 20, None, 2)]
    rows = {r.stage: r for r in ladder_rows(records, target=0.9)}
    assert rows["final"].target_seconds == [22.0, 22.0] and rows["resnet9"].target_seconds == [10.0, 10.0]
    assert rows["resnet9"].target_ratio == pytest.approx(10 / 22)
    assert rows["tta"].target_ratio is None and not rows["tta"].reached_all
    table = "\n".join(markdown_table(ladder_rows(records, 0.9), 0.9))
    assert "| tta | 2 | never (1/2) | - | 0.088 |" in table  # 26 / 297 on the source's side
    assert "| resnet9 | 2 | 10.0 ± 0.0 | 0.455 | 0.253 |" in table


def test_another_target_reads_time_to_target_from_the_epochs_test_passes():
    """A report's --target differs from the run's own: the first epoch whose test pass reached it is
    read from the per-epoch accuracies (the run's own target_epoch answers only for its own target)."""
    phases = {"data_wait": 1.0, "forward_backward": 6.0, "optimizer_step": 1.0, "evaluation": 2.0}
    rec = {"stage": "final", "status": "ok", "total_seconds": 50, "test_accuracy": 0.8, "target_accuracy": 0.94,
           "target_epoch": None, "phases": {"preprocessing": 2.0},
           "epochs": [{"epoch": i + 1, "seconds": 10.0, "phases": phases, "test_accuracy": acc}
                      for i, acc in enumerate((0.5, None, 0.75, 0.8))]}
    (own,) = ladder_rows([rec], 0.94)
    (lower,) = ladder_rows([rec], 0.7)  # first reached by epoch 3's test pass: 2 + 3 x 10 s on the blog clock
    (missed,) = ladder_rows([rec], 0.9)
    assert own.target_seconds == [] and lower.target_seconds == [32.0] and missed.target_seconds == []


def test_compiled_runs_get_a_row_of_their_own_after_the_eager_one():
    """A --compile run's clock counts its compilation: averaged with eager runs it would describe
    neither, so it is its own row, compared (Welch) with the eager runs of its stage above it; the
    next stage is still compared with the eager runs."""
    records = [_record("airbench94", t, 0.905, compiled=True) for t in (30.0, 3.0, 3.2)]
    records += [_record("airbench94", t, 0.905) for t in (4.0, 4.2)] + [_record("final", 200.0, 0.91)]
    rows = ladder_rows(records, target=0.9)
    assert [r.label for r in rows] == ["final", "airbench94", "airbench94 (compiled)"]
    assert [r.stage for r in rows] == ["final", "airbench94", "airbench94"]  # the stage's source and claims still apply
    eager, compiled = rows[1:]
    assert eager.seconds == [4.0, 4.2] and compiled.seconds == [30.0, 3.0, 3.2]
    assert compiled.source_seconds == eager.source_seconds == 3.83
    assert compiled.p_time == pytest.approx(stats.ttest_ind([4.0, 4.2], [30.0, 3.0, 3.2], equal_var=False).pvalue)
    records += [_record("airbench94_muon", t, 0.906) for t in (2.3, 2.4)]
    muon = ladder_rows(records, target=0.9)[-1]
    assert muon.p_time == pytest.approx(stats.ttest_ind([4.0, 4.2], [2.3, 2.4], equal_var=False).pvalue)  # eager above
    assert "| airbench94 (compiled) | 3 |" in "\n".join(markdown_table(ladder_rows(records, 0.9), 0.9))


def test_each_stage_is_timed_on_its_sources_clock():
    clocks = {"blog": 100.0, "dawnbench": 60.0, "airbench": 70.0}
    rec = _record("tta", 120.0, 0.9, seconds_by_timing=clocks)
    assert load_stage("tta").source.timing == "dawnbench"
    (row,) = ladder_rows([rec])
    assert row.seconds == [60.0] and row.total_seconds == [120.0]
    assert LoggedRun.from_dict(rec).seconds_on("airbench") == 70.0
    assert LoggedRun.from_dict(_record("final", 50.0, 0.9)).seconds_on("blog") == 50.0  # an old record: its total


def test_list_shows_every_stage_with_its_source(capsys):
    assert resnet.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in available_stages():
        assert name in out
    assert "3.83" in out and "94.01%" in out and "airbench (A100)" in out
    assert "bag_of_tricks = resnet9 … tta" in out


@pytest.mark.slow
def test_every_stage_after_post1_runs_on_smoke(tmp_path, capsys):
    """Post 1's stages run in test_resnet_cli; here the other sixteen, one epoch each."""
    args = ["--stage", "batch512:airbench94", "--preset", "smoke", "--data", "synthetic", "--epochs", "1",
            "--quiet", "--precision", "fp32", "--log-dir", str(tmp_path)]
    assert resnet.main(args) == 0
    recs = read_records(tmp_path)
    order = available_stages()
    assert [r["stage"] for r in recs] == order[order.index("batch512"):order.index("airbench94") + 1]
    for r in recs:
        stage = load_stage(r["stage"])
        assert r["status"] == "ok" and r["steps"] >= 1 and r["train_flops"] > 0
        clocks = r["seconds_by_timing"]
        assert clocks["dawnbench"] <= clocks["airbench"] <= clocks["blog"] == pytest.approx(r["total_seconds"])
        hit = [e["epoch"] for e in r["epochs"] if e["test_accuracy"] >= r["target_accuracy"]]
        assert r["target_epoch"] == (hit[0] if hit else None)
        if stage.evaluation.tta != "none":
            assert r["test_accuracy_no_tta"] == r["epochs"][-1]["test_accuracy"]
            assert r["phases"]["final_evaluation"] > 0
        else:
            assert "test_accuracy_no_tta" not in r and r["phases"]["final_evaluation"] == 0
        assert r["whitening"] == (stage.net.get("whitening", False) or stage.net["arch"] == "airbench94")
    out = capsys.readouterr().out
    assert "airbench94" in out and "3.83" in out
