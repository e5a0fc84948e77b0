"""Stage files a user writes: every mistake is one line before any data is read, and a stage of
one's own is one TOML file in a --config-dir. Plus the refactor's own check: the same seed
trains every stage exactly as the code before the move did."""

import json
import math

import pytest

from repro.resnet import cli as resnet
from repro.resnet import plan
from repro.resnet.config import ConfigDirs, available_stages, load_preset, load_stage
from repro.runlog import read_records

from trajectories import FIXTURE, FIXTURE_PRESET, trajectory

SMOKE = ["--preset", "smoke", "--data", "synthetic", "--quiet", "--precision", "fp32"]

BROKEN = {
    "unknown key": ('extends = "final"\n[loader]\nworkerz = 2\n', "unknown config key loader.workerz"),
    "unknown backend": ('extends = "final"\n[loader]\nbackend = "gpu"\n',
                        "loader.backend must be one of dataloader, device, dali, not 'gpu'"),
    "alternating flip on the DataLoader": ('extends = "final"\n[loader]\nflip = "alternating"\n',
                                           'loader.flip = "alternating" needs loader.backend = "device", '
                                           'not loader.backend = "dataloader"'),
    "cutout with DALI": ('extends = "final"\n[loader]\nbackend = "dali"\ncutout = 8\n',
                         'loader.cutout needs loader.backend = "dataloader" or "device", not loader.backend = "dali"'),
    "a key the backend ignores": ('extends = "airbench94"\n[loader]\nworkers = 4\n',
                                  'loader.workers = 4 has no effect with loader.backend = "device"'),
    "negative epoch count": ('extends = "final"\n[schedule]\nknots = [0, -5]\nlrs = [0.1, 0]\n',
                             "the stage's epoch count (the last of schedule.knots) must be above 0, not -5"),
    "unknown EMA kind": ('extends = "ema"\n[ema]\nkind = "swa"\n',
                         "ema.kind must be one of none, eval_copy, lookahead, not 'swa'"),
    "unknown TTA": ('extends = "tta"\n[evaluation]\ntta = "crops"\n',
                    "evaluation.tta must be one of none, flip, multiview, multiview_mean, not 'crops'"),
    "unknown clock": ('extends = "tta"\n[source]\ntiming = "stopwatch"\n',
                      "source.timing must be one of blog, dawnbench, airbench, not 'stopwatch'"),
    "extends cycle": ('extends = "broken"\n', "'extends' forms a cycle"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_stage_file_is_one_line_before_any_data(case, tmp_path, monkeypatch, capsys):
    text, message = BROKEN[case]
    (tmp_path / "broken.toml").write_text(text)
    loaded = []
    monkeypatch.setattr(resnet, "load_cifar10", lambda *a, **k: loaded.append(a))
    code = resnet.main(["--config-dir", str(tmp_path), "--stage", "broken", *SMOKE,
                        "--log-dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert loaded == [] and not (tmp_path / "logs" / "runs.jsonl").exists()


def _config_dir(tmp_path, **stages: str):
    """A --config-dir holding the given stage files (name = TOML text)."""
    mine = tmp_path / "mine"
    mine.mkdir(exist_ok=True)
    for name, text in stages.items():
        (mine / f"{name}.toml").write_text(text)
    return mine


def test_a_stage_of_ones_own_is_one_file_in_a_config_dir(tmp_path, capsys):
    mine = _config_dir(tmp_path, tta_gelu='extends = "tta"\ndescription = "post 8\'s recipe with GELU"\n[net]\n'
                                          'activation = "gelu"\n[source]\nchanges = ["net.activation"]\n')
    configs = ConfigDirs((mine,))
    order = available_stages(configs)
    assert order.index("tta_gelu") == order.index("tta") + 1  # right after the stage it extends
    assert [name for name in order if name != "tta_gelu"] == available_stages()  # the built-ins keep their order
    stage = load_stage("tta_gelu", configs)
    assert stage.extends == "tta" and stage.net["activation"] == "gelu"
    assert stage.schedule == load_stage("tta").schedule  # everything else inherited from the built-in stage
    code = resnet.main(["--config-dir", str(mine), "--stage", "tta_gelu", *SMOKE, "--log-dir", str(tmp_path)])
    assert code == 0
    (rec,) = read_records(tmp_path)
    assert rec["status"] == "ok" and rec["stage"] == "tta_gelu" and rec["config"]["net"]["activation"] == "gelu"
    assert len(rec["epochs"]) == 2 and rec["test_accuracy_no_tta"] is not None
    capsys.readouterr()
    assert resnet.main(["--config-dir", str(mine), "--list"]) == 0
    assert "tta_gelu" in capsys.readouterr().out


def _table_rows(text: str) -> list[str]:
    """The first cell of every row of a rich table in ``text``."""
    return [line.split("│")[1].strip() for line in text.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()]


def test_a_users_stage_sits_after_the_stage_it_extends_with_its_source(tmp_path, capsys):
    """--stage ema:mine takes the chain up to a user's stage; its row follows tta's in the
    command's table, in --list and in the report (which reads the stage from the record's own
    config: the report is given no --config-dir), each with the [source] the user wrote."""
    from repro import report

    mine = _config_dir(tmp_path, mine='extends = "tta"\ndescription = "tta with GELU"\n[net]\nactivation = "gelu"\n'
                                      '[source]\nchanges = ["net.activation"]\nseconds = 12.5\naccuracy = 0.9\n'
                                      'timing = "dawnbench"\nhardware = "my laptop"\n')
    logs = tmp_path / "logs"
    assert resnet.main(["--config-dir", str(mine), "--stage", "ema:mine", *SMOKE, "--log-dir", str(logs)]) == 0
    table = capsys.readouterr().out
    assert [r["stage"] for r in read_records(logs)] == ["ema", "tta", "mine"]
    assert _table_rows(table)[-3:] == ["ema", "tta", "mine"]
    mine_row = next(line for line in table.splitlines() if line.startswith("│ mine "))
    assert "12.5" in mine_row and "90.00%" in mine_row and "dawnbench" in mine_row
    assert resnet.main(["--config-dir", str(mine), "--list"]) == 0
    listed = _table_rows(capsys.readouterr().out)
    assert listed.index("mine") == listed.index("tta") + 1
    assert report.main(["--log-dir", str(logs), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[-3:] == ["ema", "tta", "mine"]
    assert "| 12.5 | 90.00% |" in next(line for line in md.splitlines() if line.startswith("| mine |"))


def test_the_measurement_presets_load_by_name_and_list_apart(tmp_path, capsys):
    for name, divisor in (("quarter", 4), ("half", 2), ("quarter_x2", 4)):
        preset = load_preset(name)
        assert preset.width_divisor == divisor and preset.train_images is None  # all 50k images
    assert load_preset("quarter_x2").epoch_scale == 2 * load_preset("quarter").epoch_scale
    assert resnet.main(["--list"]) == 0
    presets_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("presets: "))
    users, measuring = presets_line.split(";")
    assert "half, quarter, quarter_x2" in measuring and "quarter" not in users and "cpu" in users


def test_the_environment_variable_and_a_missing_dir(tmp_path, monkeypatch, capsys):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "tiny.toml").write_text("epochs = 1\nwidth_divisor = 16\ntrain_images = 64\n"
                                                    "test_images = 32\nchannels_last = false\n")
    monkeypatch.setenv("REPRO_CONFIG_DIR", str(tmp_path))
    assert load_preset("tiny").epochs == 1
    assert resnet.main(["--stage", "final", "--preset", "tiny", "--data", "synthetic", "--quiet",
                        "--log-dir", str(tmp_path / "logs")]) == 0
    (rec,) = read_records(tmp_path / "logs")
    assert rec["preset"] == "tiny" and rec["train_images"] == 64 and len(rec["epochs"]) == 1
    monkeypatch.delenv("REPRO_CONFIG_DIR")
    assert resnet.main(["--config-dir", str(tmp_path / "nowhere"), "--list"]) == 2
    assert capsys.readouterr().err.endswith(f"--config-dir {tmp_path / 'nowhere'}: not a directory\n")


def test_the_progress_total_is_the_runs_own_step_count(monkeypatch, tmp_path):
    """cpu-preset resnet9 runs 137 steps (7.2 epochs x 19 steps of 512, rounded up); the bar
    must say what the run will do, not a recomputation of it."""
    totals = []
    real = plan.train_stage

    def train(stage, preset, data, seed, settings, hooks):
        on_start = hooks.on_start

        def record_total(steps):
            totals.append(steps)
            on_start(steps)
        hooks.on_start = record_total
        return real(stage, preset, data, seed, settings, hooks)

    monkeypatch.setattr(plan, "train_stage", train)
    assert resnet.main(["--stage", "resnet9", *SMOKE, "--epochs", "1.5", "--log-dir", str(tmp_path)]) == 0
    (rec,) = read_records(tmp_path)
    # smoke: 512 images, batch 512 with drop_last -> 1 step per epoch; 1.5 epochs -> 2 steps
    assert totals == [rec["steps_planned"]] == [rec["steps"]] == [math.ceil(1.5 * rec["steps_per_epoch"])]


# torch.optim.Muon runs its Newton-Schulz iteration in bf16 whatever the weights' dtype, and a bf16
# matmul rounds differently on AMX, AVX512-BF16 and emulating CPUs: after the first step the Muon
# stage's losses may differ by a few bf16 roundings of the update (2^-8 relative, times the LR).
BF16_INSIDE = {"airbench94_muon": 1e-3}


@pytest.mark.parametrize("stage", json.loads(FIXTURE.read_text())["stages"])
def test_the_same_seed_trains_every_stage_as_the_fixture(stage):
    """tests/trajectories.py says how the fixture was recorded and why in float64: there a CPU
    kind's summation order moves a loss by ~1e-16 per operation, so 1e-9 holds on every kind, and
    no test image's prediction flips."""
    expected = json.loads(FIXTURE.read_text())["stages"][stage]
    got = trajectory(stage)
    assert got["step_losses"][0] == pytest.approx(expected["step_losses"][0], rel=1e-9)
    assert got["step_losses"] == pytest.approx(expected["step_losses"], rel=BF16_INSIDE.get(stage, 1e-9))
    accuracy_tolerance = 1.01 / FIXTURE_PRESET["test_images"] if stage in BF16_INSIDE else 0  # one image
    assert got["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=accuracy_tolerance)
    assert got["final_test_accuracy"] == pytest.approx(expected["final_test_accuracy"], abs=accuracy_tolerance)


def test_selective_tta_is_the_views_for_the_least_confident_images_only():
    """hiverge's selective TTA, worked by hand: plain logits for every image, then the stage's
    views for the share of images with the lowest softmax maximum. 1 is the full TTA pass."""
    import contextlib

    import torch

    from repro.data import make_synthetic
    from repro.resnet.evaluation import evaluate, tta_logits
    from repro.resnet.loaders import eval_batches
    from repro.resnet.nets import build_net

    torch.manual_seed(0)
    net = build_net(arch="resnet9", width_divisor=16).eval()
    data = make_synthetic(16, 40, seed=3)
    batches = eval_batches(data.test_images, data.test_labels, 16)  # 16 + 16 + 8

    def run(**tta):
        return evaluate(net, batches, to_device=lambda x, y: (x, y), autocast=contextlib.nullcontext, **tta)

    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        plain, views = net(x), tta_logits(net, x, "multiview")
        unsure = plain.softmax(1).amax(1).argsort()[:10]  # a quarter of 40: the 10 least confident
        by_hand = plain.clone()
        by_hand[unsure] = views[unsure]
    expected = (torch.nn.functional.cross_entropy(by_hand, y).item(), (by_hand.argmax(1) == y).float().mean().item())
    assert run(tta="multiview", tta_fraction=0.25) == pytest.approx(expected, rel=1e-6)
    assert run(tta="multiview", tta_fraction=1.0) == pytest.approx(run(tta="multiview"), rel=1e-12)
    assert run(tta="multiview", tta_fraction=0.25) != pytest.approx(run(tta="multiview"), rel=1e-6)


def test_selective_tta_on_tta_is_one_stage_file(tmp_path, capsys):
    mine = _config_dir(tmp_path, tta_selective='extends = "tta"\ndescription = "flip TTA for the least confident '
                                               'quarter"\n[evaluation]\ntta_fraction = 0.25\n[source]\n'
                                               'changes = ["evaluation.tta_fraction"]\n')
    assert resnet.main(["--config-dir", str(mine), "--stage", "tta_selective", *SMOKE, "--log-dir", str(tmp_path)]) == 0
    (rec,) = read_records(tmp_path)
    assert rec["status"] == "ok" and rec["config"]["evaluation"] == {"tta": "flip", "tta_fraction": 0.25}
    assert rec["test_accuracy_no_tta"] is not None and rec["phases"]["final_evaluation"] > 0
    (mine / "bad.toml").write_text('extends = "resnet9"\n[evaluation]\ntta_fraction = 0.5\n')
    assert resnet.main(["--config-dir", str(mine), "--stage", "bad", *SMOKE, "--log-dir", str(tmp_path)]) == 2
    assert 'evaluation.tta_fraction = 0.5 has no effect with evaluation.tta = "none"' in capsys.readouterr().err
