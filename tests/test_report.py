from pathlib import Path

import pytest

from repro.report import main

FIXTURE = Path(__file__).parent / "fixtures" / "runs_small.jsonl"


def test_report_from_fixture(tmp_path):
    assert main(["--log-dir", str(FIXTURE), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    # the fixture's two cpu ladders: baseline 410 s / 400 s, final 340 s / 330 s (335/405 = 0.827)
    # time to target first ('-': these records predate it), the source's ratio beside it
    assert "| baseline | 2 | - | - | 1.000 | 405.0 ± 7.1 | blog | 202.5 ± 3.5 | 93.20 ± 0.14% | - | 1.000 | 356 | 94.00% |" in md
    assert "| final | 2 | - | - | 0.834 | 335.0 ± 7.1 | blog | 167.5 ± 3.5 | 94.20 ± 0.14% | - | 0.827 | 297 | 94.12% |" in md
    assert md.index("preset cpu") < md.index("preset smoke (synthetic)")  # real data first
    assert "341 s" in md and "loss vs optimal_loss" in md
    # 2 runs: the interrupted record ("broken", group g-broken) counts nowhere
    assert "broken" not in md and "| cpu | final | 3 |" not in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in md
    else:
        assert (tmp_path / "stage_ratios.png").stat().st_size > 1000
        assert (tmp_path / "accuracy_vs_time.png").exists()
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_empty_log_is_clear_error(tmp_path, capsys):
    assert main(["--log-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "python -m repro.resnet --stage all" in err and "Traceback" not in err


def test_report_says_how_many_lines_were_torn(tmp_path, capsys):
    log = tmp_path / "runs.jsonl"
    lines = FIXTURE.read_text().splitlines()
    lines.insert(3, lines[3][:50])  # half a record, as a full disk used to leave
    log.write_text("\n".join(lines) + "\n")
    assert main(["--log-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "1 torn line skipped (line 4)" in md
    assert "| baseline | 2 | - | - | 1.000 | 405.0 ± 7.1 | blog |" in md  # the whole records still count


def _row(md: str, stage: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {stage} |"))


def test_the_llm_column_comes_from_the_claims_registry(tmp_path, monkeypatch):
    """The LLM-reported cells are the registry's stage_reports, with the audit's verdicts: change a
    registry entry and the report changes with it."""
    import dataclasses

    import repro.claims

    assert main(["--log-dir", str(FIXTURE), "--out", str(tmp_path / "a")]) == 0
    md = (tmp_path / "a" / "report.md").read_text()
    assert "LLM reported" in md
    # Le Chat's invented ImageNet numbers (judged ✗) and its retry with the blog's (judged ✓)
    assert "Le Chat: 18 h, 68% (rn-hallu: ✗); Le Chat: 341 s, 94% (rn-retry-a: ✓)" in _row(md, "baseline")
    assert "Le Chat: 35 min, 76% (rn-hallu: ✗); Le Chat: 297 s, 94% (rn-retry-a: ✓)" in _row(md, "final")
    assert _row(md, "simplified").endswith("| - |")  # no assistant gave a number for it
    claims = tuple(dataclasses.replace(c, params={"stage_reports": {"baseline": (999, 0.5), "final": (297, 0.94)}})
                   if c.id == "rn-retry-a" else c for c in repro.claims.CLAIMS)
    monkeypatch.setattr(repro.claims, "CLAIMS", claims)
    assert main(["--log-dir", str(FIXTURE), "--out", str(tmp_path / "b")]) == 0
    md = (tmp_path / "b" / "report.md").read_text()
    assert "Le Chat: 16.65 min, 50% (rn-retry-a: ✗)" in _row(md, "baseline")


def test_no_two_labels_of_the_accuracy_plot_overlap_for_the_whole_ladder():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repro.report import accuracy_vs_time, label_box
    from repro.resnet.config import available_stages
    from repro.resnet.ladder import ladder_rows

    stages = available_stages()
    # crowded on purpose: every stage within 12 s and 2 points of the others, two runs each
    records = [{"stage": s, "status": "ok", "total_seconds": 100 + 0.5 * i + k, "test_accuracy": 0.6 + 0.001 * i + 0.002 * k,
                "epochs": [{"seconds": 50.0}]} for i, s in enumerate(stages) for k in (0, 1)]
    rows = ladder_rows(records, 0.6)
    fig, labels = accuracy_vs_time(rows, "cpu", 0.6)
    sources = [r for r in rows if r.source_seconds and r.source_accuracy]
    assert len(labels) == len(rows) + len(sources) and len(sources) >= 20  # the sources' points are there too
    renderer = fig.canvas.get_renderer()
    boxes = [label_box(label, renderer) for label in labels]  # each label's text
    overlapping = [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes))
                   for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert overlapping == []
    plt.close(fig)


def test_several_logs_report_together(tmp_path):
    """Runs of one stage kept in two logs (two sessions) are one sample: the same rows as one log
    holding them all, and a log named twice counts its records once."""
    lines = FIXTURE.read_text().splitlines()
    for i, part in enumerate((lines[0::2], lines[1::2])):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "runs.jsonl").write_text("\n".join(part) + "\n")
    argv = ["--log-dir", str(tmp_path / "s0"), "--log-dir", str(tmp_path / "s1"), "--log-dir", str(tmp_path / "s0")]
    assert main(argv + ["--out", str(tmp_path / "both")]) == 0
    assert main(["--log-dir", str(FIXTURE), "--out", str(tmp_path / "one")]) == 0
    both, one = ((tmp_path / d / "report.md").read_text() for d in ("both", "one"))
    assert _row(both, "baseline") == _row(one, "baseline")
    assert "| baseline | 2 | - | - | 1.000 | 405.0 ± 7.1 | blog |" in both
    assert _row(both, "final") == _row(one, "final")


def test_target_option_sets_the_target_of_every_column(tmp_path):
    """--target replaces the runs' own target: runs reaching it and the one-sided p-value follow it.
    With 2 runs the t statistic has 1 degree of freedom (a Cauchy law), so p = 1/2 - atan(t)/pi."""
    import math

    assert main(["--log-dir", str(FIXTURE), "--out", str(tmp_path), "--target", "0.935"]) == 0
    md = (tmp_path / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| stage |") and "≥93.5%" in line)
    cols = [c.strip() for c in header.strip("|").split("|")]

    def cell(stage, col):
        return [c.strip() for c in _row(md, stage).strip("|").split("|")][cols.index(col)]

    # final 0.941, 0.943: mean 0.942, std/sqrt(2) = 0.001, t = 7; baseline 0.931, 0.933: t = -3
    assert cell("final", "≥93.5%") == "2/2" and cell("baseline", "≥93.5%") == "0/2"
    assert cell("final", "p(>target)") == f"{0.5 - math.atan(7) / math.pi:.3f}"
    assert cell("baseline", "p(>target)") == f"{0.5 - math.atan(-3) / math.pi:.3f}"


def test_target_given_as_a_percentage_is_one_line(tmp_path, capsys):
    assert main(["--log-dir", str(FIXTURE), "--out", str(tmp_path), "--target", "90.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "for 90.5% write 0.905" in err and "Traceback" not in err
    assert not (tmp_path / "report.md").exists()


def test_markdown_without_target_reads_each_groups_own_preset_target():
    """Without ``--target`` every group is judged against its own preset's target; the fixture's records carry
    none, so the cpu group's comes from the cpu preset file (60%). A target given overrides it."""
    from repro.report import Ladder, by_preset, markdown, target_of
    from repro.resnet.config import load_preset
    from repro.resnet.records import logged_runs
    from repro.runlog import read_records

    groups = by_preset([r for r in logged_runs(read_records(FIXTURE, "resnet")) if r.measured])
    assert target_of(groups["cpu"]) == load_preset("cpu").target_accuracy == 0.60
    md = markdown({name: Ladder(runs) for name, runs in groups.items()}, [], [], "")
    assert "≥60" in md and "≥55" not in md
    overridden = markdown({name: Ladder(runs, 0.55) for name, runs in groups.items()}, [], [], "")
    assert "≥55" in overridden and "≥60" not in overridden
