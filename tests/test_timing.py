"""The two timing modes: 'sync' times every phase; 'deferred' reads the device once per epoch.

On a CPU a synchronisation costs nothing, so the modes are compared by counting: the timer's
synchronisation points (what ``torch.cuda.synchronize`` would be called for on CUDA) and the
host reads of tensor values (``Tensor.item`` / ``Tensor.tolist``), per training step.
"""

import dataclasses

import pytest
import torch

from repro.resnet.config import load_preset, load_stage
from repro.data import make_synthetic
from repro.devices import PhaseTimer
from repro.resnet import cli
from repro.resnet import train as train_module
from repro.resnet.config import ConfigDirs
from repro.resnet.train import NonFiniteLoss
from trajectories import train

DATA = make_synthetic(256, 64, seed=0)


def _counting(monkeypatch) -> dict:
    """Count host reads (Tensor.item / tolist) and the timer's synchronisation points from now on."""
    counts = {"reads": 0, "syncs": 0}
    for name in ("item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            counts["reads"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_now = PhaseTimer.now

    def now(self, sync=None):
        before = self.sync_points
        value = real_now(self, sync)
        counts["syncs"] += self.sync_points - before
        return value

    monkeypatch.setattr(PhaseTimer, "now", now)
    return counts


def _run_with_losses(mode, stage="final", epochs=2, batch_size=32, precision="fp32"):
    # widths /16: what is counted (syncs, reads, the order of the steps) does not depend on width
    preset = dataclasses.replace(load_preset("smoke"), epochs=epochs, train_images=256, test_images=64,
                                 width_divisor=16)
    st = dataclasses.replace(load_stage(stage), optimizer=dataclasses.replace(load_stage(stage).optimizer,
                                                                              batch_size=batch_size))
    return train(st, preset, DATA, 5, precision=precision, phase_timing=mode)


def _run(*args, **kwargs):
    return _run_with_losses(*args, **kwargs)[0]


def test_both_modes_train_identically_on_cpu():
    sync, sync_losses = _run_with_losses("sync")
    deferred, deferred_losses = _run_with_losses("deferred")
    assert sync_losses == deferred_losses and len(sync_losses) == 16
    assert [e.test_accuracy for e in sync.epochs] == [e.test_accuracy for e in deferred.epochs]
    assert [e.train_loss for e in sync.epochs] == pytest.approx([e.train_loss for e in deferred.epochs])
    assert "serialise" in sync.phase_timing and "one synchronisation per epoch" in deferred.phase_timing


def _per_step(mode, monkeypatch, precision="fp32", stage="final"):
    """(syncs, reads) added by each extra training step: the same run with 8 and with 16 steps per epoch."""
    _run(mode, stage, precision=precision)  # one-time reads (lazy initialisation) happen here, uncounted
    counts = _counting(monkeypatch)
    few = _run(mode, stage, batch_size=32, precision=precision)
    few_counts = dict(counts)
    counts.update(reads=0, syncs=0)
    many = _run(mode, stage, batch_size=16, precision=precision)
    many_counts = dict(counts)
    extra = many.steps - few.steps
    assert (few.steps, many.steps) == (16, 32)
    return tuple((many_counts[k] - few_counts[k]) / extra for k in ("syncs", "reads")), many_counts


def test_deferred_mode_makes_no_synchronisation_or_host_read_per_step(monkeypatch):
    (syncs, reads), counts = _per_step("deferred", monkeypatch)
    assert syncs == 0 and reads == 0
    assert counts["syncs"] == 2 * 2  # the start and end of each of the 2 epochs


def test_sync_mode_synchronises_every_phase_and_reads_every_step(monkeypatch):
    (syncs, reads), _ = _per_step("sync", monkeypatch)
    assert syncs >= 6  # data wait, forward+backward, optimiser step: each at its start and end
    assert reads >= 1  # the loss checked after every step


@pytest.mark.parametrize("capability, precision", [((9, 0), "bf16"), ((7, 0), "fp16")])
def test_the_cuda_default_reads_nothing_back_per_step_on_either_kind_of_gpu(monkeypatch, capability, precision):
    """The options a CUDA run gets by default (the GPU's capability mocked), run on the CPU: bf16
    has no scaler; fp16's GradScaler hands its overflow flag to the fused SGD on the device."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(cli, "peak_flops", lambda device, precision, cache_dir=None: (1e12, True))
    options = cli.resolve_options(cli.parse_args(["--stage", "final"]), torch.device("cuda"), ConfigDirs())
    settings = options.settings
    assert (settings.precision, settings.phase_timing) == (precision, "deferred")
    # bn_fp32: BN kept in fp32, as every stage from post 3 on (the scaler refuses fp16 BN weights unfused)
    (syncs, reads), _ = _per_step(settings.phase_timing, monkeypatch, precision=settings.precision, stage="bn_fp32")
    assert syncs == 0 and reads == 0


def test_fp16_with_torchs_default_sgd_loop_reads_the_scaler_flag_every_step(monkeypatch):
    """What the fused SGD saves: torch's default loop makes the scaler check for inf on the host."""
    real = train_module.make_optimizer
    monkeypatch.setattr(train_module, "make_optimizer",
                        lambda *a, **k: real(*a, **{**k, "implementation": "default"}))
    (syncs, reads), _ = _per_step("deferred", monkeypatch, precision="fp16", stage="bn_fp32")
    assert syncs == 0 and reads == 1


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_first_non_finite_step_is_named_in_both_modes(tmp_path, mode):
    stage = tmp_path / "explode.toml"
    stage.write_text('extends = "final"\n[schedule]\nknots = [0, 35]\nlrs = [1e12, 1e12]\n')
    preset = dataclasses.replace(load_preset("smoke"), epochs=2, train_images=256, test_images=64)
    failures = []
    for timing in ("sync", mode):
        with pytest.raises(NonFiniteLoss) as exc:
            train(load_stage(str(stage)), preset, DATA, phase_timing=timing)
        failures.append(exc.value.step)
    assert failures[0] == failures[1] and failures[0] >= 1  # the same first bad step, read late or at once
