"""python -m repro.resnet end to end on synthetic data under the smoke preset."""

import dataclasses
import json
import time

import numpy as np
import pytest

from repro.resnet import cli as resnet
from repro.resnet.config import load_preset, load_stage
from repro.data import make_synthetic
from repro.runlog import read_records
from repro.resnet import plan
from repro.resnet.records import EpochRow, RunResult
from trajectories import train

SMOKE = ["--preset", "smoke", "--data", "synthetic", "--quiet", "--precision", "fp32"]


def _records(log_dir):
    return read_records(log_dir / "runs.jsonl")


def _watch_workers(monkeypatch):
    """(stage, worker processes started) for every multi-process DataLoader iterator."""
    from torch.utils.data import dataloader

    started, current = [], []
    real_init, real_train = dataloader._MultiProcessingDataLoaderIter.__init__, plan.train_stage

    def init(self, loader):
        real_init(self, loader)
        started.append((current[-1], len(self._workers)))

    def train(stage, *args, **kwargs):
        current.append(stage.name)
        return real_train(stage, *args, **kwargs)

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", init)
    monkeypatch.setattr(plan, "train_stage", train)
    return started


def test_all_stages_run_and_are_logged(tmp_path, capsys, monkeypatch):
    workers = _watch_workers(monkeypatch)
    start = time.perf_counter()
    assert resnet.main(["--stage", "all", *SMOKE, "--log-dir", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - start
    recs = _records(tmp_path)
    assert [r["stage"] for r in recs] == ["baseline", "simplified", "preprocessed", "bulk_rng", "final"]
    assert len({r["group_id"] for r in recs}) == 1
    for r in recs:
        assert r["status"] == "ok" and r["experiment"] == "resnet" and r["preset"] == "smoke"
        assert r["synthetic"] is True and "SYNTHETIC" in r["data_source"]
        assert set(r["phases"]) == {"preprocessing", "data_wait", "filtering", "forward_backward", "optimizer_step",
                                    "evaluation", "final_evaluation"}
        assert len(r["epochs"]) == 2 and r["train_images"] == 512
        # every phase is timed (no TTA pass in post 1), and within each epoch the phases account
        # for most of the epoch's own wall clock
        assert r["phases"].pop("final_evaluation") == 0 and r["phases"].pop("filtering") == 0  # no TTA, no proxy
        assert all(seconds > 0 for seconds in r["phases"].values()), r["phases"]
        for e in r["epochs"]:
            assert 0.8 * e["seconds"] <= sum(e["phases"].values()) <= e["seconds"] * 1.01
        # an accuracy over the 256 test images, the last epoch's
        assert r["test_accuracy"] * r["test_images"] == pytest.approx(round(r["test_accuracy"] * 256))
        assert r["test_images"] == 256 and r["test_accuracy"] == r["epochs"][-1]["test_accuracy"]
        for key in ("seed", "device", "precision", "torch_version", "git_commit", "hardware", "blog_seconds"):
            assert key in r
    by_stage = {r["stage"]: r for r in recs}
    # bulk RNG: 2 draws per epoch; per-sample RNG on the main thread would be 2 per image
    assert [e["rng_calls"] for e in by_stage["final"]["epochs"]] == [2, 2]
    assert by_stage["baseline"]["epochs"][0]["rng_calls"] is None  # drawn inside worker processes
    # seen on the DataLoaders: 4 fresh worker processes per baseline epoch, none in final
    assert workers == [("baseline", 4)] * 2 + [("simplified", 4)] * 2 + [("preprocessed", 1)] * 2 + \
        [("bulk_rng", 1)] * 2
    assert sum(r["total_seconds"] for r in recs) < elapsed  # the timed totals fit in the wall clock
    assert by_stage["baseline"]["blog_seconds"] == 356 and by_stage["final"]["blog_seconds"] == 297
    out = capsys.readouterr().out
    assert "preset smoke (requested)" in out and "SYNTHETIC" in out
    for stage, blog in (("baseline", "356"), ("final", "297")):
        assert stage in out and blog in out
    assert "0.834" in out  # blog ratio final/baseline = 297/356


def _train(stage="final", seed=0, epochs=2):
    preset = load_preset("smoke")
    preset = type(preset)(**{**preset.__dict__, "epochs": epochs})
    data = make_synthetic(512, 128, seed=0)
    return train(load_stage(stage), preset, data, seed)[1]


def test_same_seed_same_losses_and_loss_decreases():
    a, b = _train(seed=3), _train(seed=3)
    assert a == b
    c = _train(seed=4)
    assert c != a
    losses = np.array(a)
    assert losses[-4:].mean() < losses[:4].mean() - 0.2  # it learns the synthetic signal


def test_per_sample_rng_counts_two_draws_per_image():
    stage = load_stage("preprocessed")
    stage = dataclasses.replace(stage, loader=dataclasses.replace(stage.loader, rng="per_sample", workers=0))
    preset = load_preset("smoke")
    result, _ = train(stage, preset, make_synthetic(300, 50))
    assert [e.rng_calls for e in result.epochs] == [600, 600]


def test_nan_loss_fails_with_step_number(tmp_path, capsys):
    cfg = tmp_path / "explode.toml"
    cfg.write_text('extends = "final"\n[schedule]\nknots = [0, 35]\nlrs = [1e12, 1e12]\n')
    code = resnet.main(["--stage", str(cfg), *SMOKE, "--log-dir", str(tmp_path)])
    assert code == 2
    (rec,) = _records(tmp_path)
    assert rec["status"] == "failed" and isinstance(rec["failed_step"], int)
    assert f"at step {rec['failed_step']}" in rec["error"]
    assert "written as failed" in capsys.readouterr().err


def test_ctrl_c_writes_an_interrupted_record(tmp_path, monkeypatch):
    def interrupted(stage, preset, data, seed, settings, hooks):
        hooks.on_end(RunResult(epochs=(EpochRow(epoch=1, lr=0.1, train_loss=2.0, train_accuracy=0.1, test_loss=2.0,
                                                test_accuracy=0.1, seconds=1.0, elapsed_seconds=1.0, phases={},
                                                rng_calls=2),)))
        raise KeyboardInterrupt

    monkeypatch.setattr(plan, "train_stage", interrupted)
    assert resnet.main(["--stage", "all", *SMOKE, "--log-dir", str(tmp_path)]) == 130
    (rec,) = _records(tmp_path)  # the ladder stops at the first interrupted stage
    assert rec["status"] == "interrupted" and rec["stage"] == "baseline" and len(rec["epochs"]) == 1


def test_several_runs_give_mean_and_std(tmp_path, capsys):
    assert resnet.main(["--stage", "final", *SMOKE, "--runs", "2", "--seed", "7", "--log-dir", str(tmp_path)]) == 0
    recs = _records(tmp_path)
    assert [r["seed"] for r in recs] == [7, 8]
    assert "±" in capsys.readouterr().out


def test_target_option_replaces_the_presets_target(tmp_path, capsys):
    """--target is the accuracy the record's time to target and the table are measured against:
    a target every run passes is reached at the first test pass."""
    argv = ["--stage", "final", *SMOKE, "--runs", "2", "--target", "0.001", "--log-dir", str(tmp_path)]
    assert resnet.main(argv) == 0
    recs = _records(tmp_path)
    assert [r["target_accuracy"] for r in recs] == [0.001, 0.001]
    assert [r["target_epoch"] for r in recs] == [1, 1]
    out = capsys.readouterr().out
    assert "≥0.1%" in out and "warning" not in out
    assert load_preset("smoke").target_accuracy != 0.001


@pytest.mark.parametrize("argv, message", [
    (["--stage", "turbo"], "unknown stage 'turbo'; valid stages: baseline, simplified, preprocessed, bulk_rng, final, "
                           "batch512,"),
    (["--stage", "tta:resnet9"], "range tta:resnet9: tta comes after resnet9 in the ladder"),
    (["--stage", "resnet9:fastest"], "unknown stage 'fastest' in range resnet9:fastest"),
    (["--ladder", "speedrun"], "unknown ladder 'speedrun'; valid ladders: post1, dawnbench, bag_of_tricks, airbench, records, all"),
    (["--data", "/nonexistent/cifar"], "no such file or directory"),
    (["--preset", "huge"], "unknown preset 'huge'; valid presets: auto, cpu, full, loaderbound, narrow, smoke; "
                           "measurement presets: half, quarter, quarter_x2"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda, not 'tpu'"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--target", "94"], "--target is a fraction of the test set between 0 and 1, e.g. 0.905 for 90.5%; got 94 "
                         "(for 94% write 0.94)"),
])
def test_bad_input_is_one_line_and_writes_no_ok_record(tmp_path, capsys, argv, message):
    args = ["--preset", "smoke", "--data", "synthetic", "--quiet", "--log-dir", str(tmp_path)]
    assert resnet.main(args + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not [r for r in _records(tmp_path) if r["status"] == "ok"]


def test_unknown_key_in_custom_stage_file(tmp_path, capsys):
    cfg = tmp_path / "typo.toml"
    cfg.write_text('extends = "final"\n[optimizer]\nlearning_rate = 0.4\n')
    assert resnet.main(["--stage", str(cfg), *SMOKE, "--log-dir", str(tmp_path)]) == 2
    assert "unknown config key optimizer.learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()


def test_log_lines_are_complete_json(tmp_path):
    resnet.main(["--stage", "final", *SMOKE, "--log-dir", str(tmp_path)])
    resnet.main(["--stage", "final", *SMOKE, "--log-dir", str(tmp_path)])
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "ok" for line in lines)


def test_malicious_pickle_via_cli_is_refused(tmp_path, capsys, monkeypatch):
    import os
    import pickle

    from conftest import write_fake_cifar

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    src = write_fake_cifar(tmp_path / "evil")
    with open(src / "test_batch", "wb") as fh:
        pickle.dump({"data": Exploit(), "labels": [0]}, fh, protocol=2)
    args = ["--preset", "smoke", "--quiet", "--data", str(tmp_path / "evil"), "--log-dir", str(tmp_path)]
    assert resnet.main(args) == 2
    err = capsys.readouterr().err
    assert "unsafe pickle refused" in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "runs.jsonl").exists()
