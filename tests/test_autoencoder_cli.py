"""python -m repro.autoencoder through main([...]): records, bad input, interrupts."""

import sys

import numpy as np
import pytest

from repro.errors import Terminated

from repro.autoencoder import __main__ as cli
from repro.autoencoder import checks
from repro.autoencoder.data import Dataset
from repro.runlog import read_records

SMALL = ["--m", "8", "--n", "200", "--k", "3", "--plot", "none", "--quiet"]


def run(tmp_path, *args):
    return cli.main([*SMALL, "--log-dir", str(tmp_path), *args])


def test_small_run_passes_and_writes_an_ok_record(tmp_path, capsys):
    plot = tmp_path / "sv.png"
    code = cli.main(["--m", "8", "--n", "200", "--k", "3", "--lam-ratios", "0.03,0.1",
                     "--log-dir", str(tmp_path), "--plot", str(plot)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "centred" in out and "weight_decay = 2 lam/m" in out and "ALL CHECKS PASS" in out
    (record,) = read_records(tmp_path, "autoencoder")
    assert record["status"] == "ok"
    assert record["m"] == 8 and record["n"] == 200 and record["k"] == 3 and record["dataset"] == "synthetic"
    assert record["weight_decay"] == pytest.approx(2 * record["lambda"] / 8)
    names = [c["name"] for c in record["checks"]]
    assert any(n.startswith("A: PCA frame |grad W2|") for n in names)
    assert any("lam=0, default init" in n for n in names)
    assert any(n.startswith("minibatch") for n in names)
    for c in record["checks"]:
        assert set(c) >= {"name", "measured", "predicted", "tolerance", "verdict"}
        assert c["verdict"] in ("PASS", "INFO")
    orth = [c for c in record["checks"] if "||W2^T W2 - I||_2" in c["name"] and c["name"].startswith("B")]
    assert len(orth) == 2
    for c in orth:
        assert abs(c["measured"] - c["predicted"]) <= 1e-2 * c["predicted"]
    pytest.importorskip("matplotlib")
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--k", "0"], "0 < k < m"),
    (["--k", "8"], "0 < k < m"),
    (["--lam", "-0.1"], "lam must be finite and >= 0"),
    (["--lams", "0"], "at least one lam > 0"),
    (["--lams", "0.1,abc"], "comma-separated numbers"),
    (["--data", "mnist"], "unknown data set 'mnist'"),
    (["--spectrum", "1,2,3"], "exactly m=8 values"),
    (["--spectrum", "1,1,1,1,1,1,1,1"], "distinct"),
    (["--lr", "-1"], "--lr must be positive"),
])
def test_bad_input_is_one_line_exit_2_and_no_record(tmp_path, capsys, args, message):
    assert run(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and "Traceback" not in err
    assert read_records(tmp_path) == []


def test_non_finite_data_is_rejected(tmp_path, capsys, monkeypatch):
    bad = np.ones((8, 200))
    bad[0, 0] = np.nan
    monkeypatch.setattr("repro.autoencoder.data.synthetic", lambda *a, **kw: Dataset(bad, "synthetic", "bad"))
    assert run(tmp_path) == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert read_records(tmp_path) == []


def test_everything_dead_warns_and_still_reports(tmp_path, capsys):
    code = run(tmp_path, "--lam", "2.0", "--batch-size", "0")  # s_1 = 1.5
    captured = capsys.readouterr()
    assert "every direction is dead" in captured.err
    (record,) = read_records(tmp_path, "autoencoder")
    assert code == 0 and record["status"] == "ok"
    sigma = [c for c in record["checks"] if "max|sigma(W2)" in c["name"] and c["name"].startswith("B")][0]
    assert sigma["measured"] < 1e-3  # W2 -> 0
    orth = [c for c in record["checks"] if c["name"].startswith("B") and "||W2^T W2 - I||_2" in c["name"]][0]
    assert orth["predicted"] == 1.0 and orth["measured"] == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("signal_exc, code, message", [
    (KeyboardInterrupt, 130, "interrupted by the user (Ctrl-C)"),
    (Terminated, 143, "terminated (SIGTERM)"),
])
def test_interrupt_writes_an_interrupted_record(tmp_path, capsys, monkeypatch, signal_exc, code, message):
    def interrupted_run(X, settings, progress, partial, bars):
        partial.checks.append(checks.Check("A: something", 0.0, 0.0, "<= 1", "PASS", "test"))
        raise signal_exc

    monkeypatch.setattr(checks, "run", interrupted_run)
    assert run(tmp_path) == code
    (record,) = read_records(tmp_path, "autoencoder")
    assert record["status"] == "interrupted" and len(record["checks"]) == 1 and record["error"] == message


def test_a_failed_check_writes_a_failed_record(tmp_path, capsys, monkeypatch):
    def failing_run(X, settings, progress, partial, bars):
        partial.checks.append(checks.Check("A: something", 1.0, 0.0, "<= 1e-6", "FAIL", "test"))

    monkeypatch.setattr(checks, "run", failing_run)
    assert run(tmp_path) == 1
    assert "1 CHECK(S) FAIL" in capsys.readouterr().out
    (record,) = read_records(tmp_path, "autoencoder")
    assert record["status"] == "failed" and [c["verdict"] for c in record["checks"]] == ["FAIL"]


def test_bad_log_dir_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checks, "run", lambda *a, **k: pytest.fail("trained despite an unusable log dir"))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert run(not_a_dir) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and err.count("\n") == 1


def test_missing_lightning_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    assert run(tmp_path, "--trainer", "lightning") == 2
    assert 'pip install -e ".[lightning]"' in capsys.readouterr().err
    assert [r for r in read_records(tmp_path) if r["status"] == "ok"] == []


def test_missing_sklearn_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert run(tmp_path, "--data", "digits") == 2
    assert 'pip install -e ".[digits]"' in capsys.readouterr().err


def test_digits_data_shape_and_centring():
    pytest.importorskip("sklearn")
    from repro.autoencoder.data import digits

    d = digits()
    assert (d.m, d.n) == (64, 1797)
    assert np.abs(d.X.mean(axis=1)).max() < 1e-12
    assert d.X.max() <= 1.0 and d.X.min() >= -1.0


def test_cifar_patches_from_the_data_layer():
    data_layer = pytest.importorskip("repro.data")
    if not hasattr(data_layer, "load_cifar10"):
        pytest.skip("repro.data has no load_cifar10 yet")
    from repro.autoencoder.data import cifar

    d = cifar(data_layer.SYNTHETIC, n=300, patch=4, seed=0)
    assert (d.m, d.n) == (48, 300)
    assert np.abs(d.X.mean(axis=1)).max() < 1e-12 and np.isfinite(d.X).all()
