"""Adjacent stages differ in exactly the keys their source changed, and each difference is real."""

import numpy as np
import pytest
import torch

from repro.resnet.config import ConfigDirs, available_stages, load_ladders, load_preset, load_stage
from repro.errors import UserError
from repro.resnet.loaders.base import normalise_pad_transpose
from repro.resnet.loaders.dataloader import AugmentedTrainSet, Crop, FlipLR, TrainBatches
from repro.resnet.nets import dawn_resnet18
from repro.resnet.train import build_stage_net


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


POST1 = ["baseline", "simplified", "preprocessed", "bulk_rng", "final"]


def _changed(a, b) -> set[str]:
    """The keys whose resolved values differ between stages ``a`` and ``b`` (names or loaded
    configs); a new net.arch starts the net afresh, so it stands for every net key."""
    x, y = (_flat((load_stage(s) if isinstance(s, str) else s).as_dict()) for s in (a, b))
    keys = {k for k in x.keys() | y.keys()
            if x.get(k) != y.get(k) and not k.startswith(("source.", "name", "description", "extends"))}
    if "net.arch" in keys:
        keys = {k for k in keys if not k.startswith("net.") or k == "net.arch"}
    return keys


def test_ladder_order_is_the_extends_chain():
    order = available_stages()
    main = order[:order.index("airbench94") + 1]  # post 1 -> post 8 -> airbench94: one chain
    assert main[:5] == POST1 and main[-2:] == ["tta", "airbench94"] and len(main) == 21
    for parent, child in zip(main, main[1:]):
        assert load_stage(child).extends == parent
    # the later records branch off airbench94, each its own successor of it
    assert order[len(main):] == ["airbench94_muon", "hiverge94", "airbench95", "airbench96", "airbench96_faster"]
    assert [load_stage(s).extends for s in order[len(main):]] == ["airbench94", "airbench94_muon", "airbench94",
                                                                 "airbench95", "airbench96"]
    ladders = load_ladders()
    assert ladders["post1"] == POST1 and ladders["all"] == order
    assert ladders["bag_of_tricks"][0] == "resnet9" and ladders["bag_of_tricks"][-1] == "tta"
    assert ladders["records"] == ["airbench94", "airbench94_muon", "hiverge94", "airbench95", "airbench96",
                                  "airbench96_faster"]


@pytest.mark.parametrize("stage", available_stages()[1:])
def test_each_stage_changes_exactly_what_its_file_declares(stage):
    """``[source] changes`` in each stage file lists what its source changed (written from the
    posts and the airbench record); the resolved configs must differ in exactly those keys."""
    config = load_stage(stage)
    assert config.source.changes, f"{stage}: [source] changes is empty"
    assert _changed(config.extends, stage) == set(config.source.changes)


def test_the_declared_changes_are_checked_against_the_real_diff(tmp_path):
    """A stage whose declared changes are off fails the check above: it can fail."""
    (tmp_path / "liar.toml").write_text('extends = "final"\n[loader]\ncutout = 8\n'
                                        '[source]\nchanges = ["optimizer.batch_size"]\n')
    liar = load_stage("liar", ConfigDirs((tmp_path,)))
    assert set(liar.source.changes) == {"optimizer.batch_size"}
    assert _changed("final", liar) == {"loader.cutout"} != set(liar.source.changes)


def test_airbench_changes_what_the_record_changed():
    # nearly everything of post 8's recipe (airbench94's own code; per-image crops, alternating flip)
    assert set(load_stage("airbench94").source.changes) >= {
        "net.arch", "optimizer.batch_size", "optimizer.momentum", "optimizer.loss_reduction", "loader.flip",
        "loader.choices", "ema.kind", "evaluation.tta"}


def test_source_numbers_are_per_stage_and_not_inherited():
    assert load_stage("baseline").source.entry_seconds == 341
    assert load_stage("simplified").source.entry_seconds is None
    assert load_stage("cutout").source.seconds is None  # the post gives no time for it
    times = [load_stage(s).source.seconds for s in load_ladders()["bag_of_tricks"]]
    assert times == [75, 70, 64, 59, 52, 46, 43, 36, 33.5, 26]
    airbench = load_stage("airbench94")
    assert (airbench.source.seconds, airbench.source.accuracy, airbench.source.timing) == (3.83, 0.9401, "airbench")


def test_each_stage_carries_its_own_epochs():
    epochs = {s: load_stage(s).schedule.epochs for s in available_stages()}
    assert epochs["final"] == 35 and epochs["epochs30"] == 30 and epochs["resnet9"] == 24
    assert epochs["tta"] == 10 and epochs["airbench94"] == 9.9
    cpu, full = load_preset("cpu"), load_preset("full")
    for s in ("final", "resnet9", "tta"):  # presets scale every stage by the same factor
        stage = load_stage(s)
        assert cpu.epochs_for(stage) / full.epochs_for(stage) == pytest.approx(cpu.epoch_scale)


def test_loader_settings_per_stage():
    got = {s: (lambda c: (c.preprocess, c.rng, c.workers))(load_stage(s).loader) for s in POST1}
    assert got == {
        "baseline": ("per_sample", "per_sample", 4),
        "simplified": ("per_sample", "per_sample", 4),
        "preprocessed": ("once", "per_sample", 1),
        "bulk_rng": ("once", "bulk", 1),
        "final": ("once", "bulk", 0),
    }


def test_lr_kink_only_in_baseline():
    base, simple = load_stage("baseline").schedule, load_stage("simplified").schedule
    for epochs in (35, 10):  # the kink keeps its place when the schedule is rescaled
        at = 15 * epochs / 35
        assert base.lr_at(at - 1e-6, epochs) == pytest.approx(0.1, abs=1e-6)
        assert base.lr_at(at, epochs) == pytest.approx(0.105)
        assert simple.lr_at(at, epochs) == pytest.approx(0.1)
        assert simple.lr_at(at + 1e-6, epochs) < 0.1
    assert base.lr_at(30, 35) == pytest.approx(0.005) and base.lr_at(35, 35) == 0.0
    assert simple.lr_at(7.5, 35) == pytest.approx(0.05) and simple.lr_at(32.5, 35) == pytest.approx(0.0025)


def test_duplicate_bn_relu_only_in_baseline():
    preset = load_preset("smoke")
    base = build_stage_net(load_stage("baseline"), preset)
    simple = build_stage_net(load_stage("simplified"), preset)
    assert [type(m).__name__ for m in base.prep] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in simple.prep] == ["Conv2d"]
    # the first block opens with its own BN-ReLU in both
    assert type(base.blocks[0].pre[0]).__name__ == "BatchNorm2d"
    n_base = sum(p.numel() for p in base.parameters())
    assert n_base - sum(p.numel() for p in simple.parameters()) == 2 * preset_width0(preset)


def preset_width0(preset):
    return 64 // preset.width_divisor


def test_full_width_net_matches_the_blog():
    net = dawn_resnet18(width_divisor=1)
    widths = [b.conv2.out_channels for b in net.blocks]
    assert widths == [64, 64, 128, 128, 256, 256, 256, 256]
    assert net.linear.in_features == 512 and net.linear.bias is not None
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def _images(n=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_rng_calls_per_epoch_bulk_vs_per_sample():
    imgs, labels = _images(), np.arange(40) % 10
    per_sample = TrainBatches(imgs, labels, preprocess="once", rng="per_sample", workers=0, batch_size=8, seed=0)
    bulk = TrainBatches(imgs, labels, preprocess="once", rng="bulk", workers=0, batch_size=8, seed=0)
    for batches in (per_sample, bulk):
        shapes = [tuple(x.shape) for x, _ in batches]
        assert shapes == [(8, 3, 32, 32)] * 5
    assert per_sample.dataset.rng.calls == 2 * 40  # crop + flip for every image
    assert bulk.dataset.rng.calls == 2  # one call per augmentation per epoch
    list(bulk)
    assert bulk.dataset.rng.calls == 4


def test_preprocessing_once_or_per_sample_gives_the_same_images():
    imgs, labels = _images(), np.zeros(40, dtype=np.int64)
    once = AugmentedTrainSet(imgs, labels, "once", "bulk", seed=1)
    each = AugmentedTrainSet(imgs, labels, "per_sample", "bulk", seed=1)
    once.set_random_choices()
    each.set_random_choices()
    np.testing.assert_array_equal(once.choices[0], each.choices[0])
    for i in range(0, 40, 7):
        torch.testing.assert_close(once[i][0], each[i][0])


def test_crop_and_flip_are_what_they_say():
    x = normalise_pad_transpose(_images(1))[0]  # (3, 40, 40)
    crop = Crop(32).apply(x, (3, 5))
    np.testing.assert_array_equal(crop, x[:, 3:35, 5:37])
    np.testing.assert_array_equal(FlipLR().apply(crop, True), crop[:, :, ::-1])
    offsets = Crop(32).draw(AugmentedTrainSet(_images(), np.zeros(40), "once", "bulk", 0).rng, 5000, 40)
    assert offsets.min() == 0 and offsets.max() == 8  # all 9 x 9 positions reachable


def test_reflect_padding_mirrors_the_border():
    img = _images(1)
    padded = normalise_pad_transpose(img)[0]
    # reflect (not edge): padded column 3 equals original column 1
    np.testing.assert_array_equal(padded[:, 4:36, 3], padded[:, 4:36, 5])


def test_workers_are_used_as_configured(monkeypatch):
    from torch.utils.data import dataloader

    started = []
    real_init = dataloader._MultiProcessingDataLoaderIter.__init__

    def init(self, loader):
        real_init(self, loader)
        started.append(len(self._workers))

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", init)
    imgs, labels = _images(64), np.arange(64) % 10
    loader = TrainBatches(imgs, labels, preprocess="per_sample", rng="per_sample", workers=2, batch_size=16, seed=0)
    for _ in range(2):  # fresh worker processes every epoch, as PyTorch 0.4 started them
        seen = torch.cat([y for _, y in loader])
        assert sorted(seen.tolist()) == sorted(labels.tolist())
    assert started == [2, 2]


def test_unknown_stage_lists_valid_ones():
    with pytest.raises(UserError, match="unknown stage 'fastest'; valid stages: baseline, simplified, preprocessed, "
                                        "bulk_rng, final, batch512, .*, tta, airbench94, airbench94_muon, hiverge94, airbench95, "
                                        "airbench96, airbench96_faster, all"):
        load_stage("fastest")


def test_net_table_is_checked_against_the_builder(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "tta"\n[net]\nwhitenning = true\n')
    with pytest.raises(UserError, match=r"unknown config key net\.whitenning for arch resnet9; valid keys here: "
                                        r"net\.arch, net\.pool_before_bn"):
        load_stage(str(bad))
    bad.write_text('extends = "tta"\n[net]\nactivation = "swish"\n')
    with pytest.raises(UserError, match="activation must be relu, celu, gelu or silu, not 'swish'"):
        load_stage(str(bad))
    bad.write_text('extends = "tta"\n[net]\nghost_bn_splits = "16"\n')
    with pytest.raises(UserError, match="net.ghost_bn_splits must be int"):
        load_stage(str(bad))
    # a stage that names a new arch starts its net table afresh: resnet9 has no duplicate_bn_relu
    assert load_stage("resnet9").net == {"arch": "resnet9"}


def test_unknown_config_key_is_named(tmp_path):
    bad = tmp_path / "mine.toml"
    bad.write_text('extends = "final"\n[loader]\nworkerz = 2\n')
    with pytest.raises(UserError, match=r"unknown config key loader\.workerz; valid keys here: loader\.backend, loader\.preprocess"):
        load_stage(str(bad))


def test_bad_config_values(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "final"\n[loader]\nrng = "sometimes"\n')
    with pytest.raises(UserError, match="loader.rng must be one of per_sample, bulk"):
        load_stage(str(bad))
    bad.write_text('extends = "final"\n[schedule]\nknots = [0, 10]\nlrs = [0, 1, 0]\n')
    with pytest.raises(UserError, match="same length"):
        load_stage(str(bad))


def test_preset_sizes_are_validated(tmp_path):
    import shutil

    from repro.resnet.config import BUILTIN_DIR

    shutil.copytree(BUILTIN_DIR, tmp_path / "configs")
    (tmp_path / "configs" / "presets" / "tiny.toml").write_text("epochs = 1\ntrain_images = 0\n")
    with pytest.raises(UserError, match="train_images and test_images must be >= 1"):
        load_preset("tiny", tmp_path / "configs")
    # presets are discovered like stages: the new file is listed
    with pytest.raises(UserError, match="unknown preset 'huge'; valid presets: auto, cpu, full, loaderbound, narrow, smoke, tiny"):
        load_preset("huge", tmp_path / "configs")
    cpu = load_preset("cpu")
    assert (cpu.width_divisor, cpu.train_images, cpu.test_images) == (4, 10000, None)
