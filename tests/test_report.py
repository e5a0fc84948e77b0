from pathlib import Path

import pytest

from repro.report import main

FIXTURE = Path(__file__).parent / "fixtures" / "runs_small.jsonl"


def test_report_from_fixture(tmp_path):
    assert main(["--log-dir", str(FIXTURE), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    # the fixture's two cpu ladders: baseline 410 s / 400 s, final 340 s / 330 s (335/405 = 0.827)
    assert "| baseline | 2 | 405.0 ± 7.1 | blog | 202.5 ± 3.5 | 93.20 ± 0.14% | - | 1.000 | 356 | 1.000 | 94.00% |" in md
    assert "| final | 2 | 335.0 ± 7.1 | blog | 167.5 ± 3.5 | 94.20 ± 0.14% | - | 0.827 | 297 | 0.834 | 94.12% |" in md
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
    assert "| baseline | 2 | 405.0 ± 7.1 | blog |" in md  # the whole records still count
