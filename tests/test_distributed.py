"""``torchrun -m repro.resnet --runs N``: seeds shared over gloo ranks on the CPU, each once, one table."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_to_scale

import repro
from repro.resnet import cli as resnet, distributed
from repro.resnet.config import OptimizerSection, load_preset, load_stage
from repro.resnet.loaders import Shard, batch_sizes, make_train_loader
from repro.resnet.nets import batch_norm_over_ranks
from repro.runlog import read_records
from repro.errors import UserError
from repro.resnet.train import build_stage_net, check_split_over_ranks, data_parallel, loss_fn, rank_loss_weight

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(repro.__file__).resolve().parent


def frames_of_ours(text: str) -> list[str]:
    """The traceback frames in ``text`` whose file lies inside the repro package."""
    return [line for line in text.splitlines()
            if line.strip().startswith('File "') and line.strip()[6:].startswith(str(PACKAGE) + "/")]
SMOKE = ["--stage", "final", "--preset", "smoke", "--data", "synthetic", "--precision", "fp32"]


def _torchrun(args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "repro.resnet", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def test_seeds_are_shared_out_once():
    for runs in range(1, 9):
        for world in range(1, 5):
            shards = [distributed.my_seeds(7, runs, r, world) for r in range(world)]
            flat = sorted(s for shard in shards for s in shard)
            assert flat == list(range(7, 7 + runs))
            assert shards[0][0] == 7 and all(b - a == world for shard in shards for a, b in zip(shard, shard[1:]))


def test_plain_run_does_not_touch_torch_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu", 600) is None
    assert not torch.distributed.is_initialized()


def _records_once_each(log_dir):
    """The log's records, checking that no seed was recorded twice."""
    recs = read_records(log_dir / "runs.jsonl")
    seeds = [r["seed"] for r in recs]
    assert len(seeds) == len(set(seeds))  # never duplicated
    return recs


@pytest.mark.slow
def test_two_gloo_ranks_run_four_seeds_once_with_single_process_losses(tmp_path, monkeypatch, capsys):
    proc = _torchrun([*SMOKE, "--epochs", "1", "--runs", "4", "--seed", "3", "--quiet",
                      "--log-dir", str(tmp_path / "dist")])
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    recs = read_records(tmp_path / "dist" / "runs.jsonl")
    assert sorted(r["seed"] for r in recs) == [3, 4, 5, 6]
    assert all(r["status"] == "ok" and r["world_size"] == 2 for r in recs)
    assert {r["seed"]: r["rank"] for r in recs} == {3: 0, 4: 1, 5: 0, 6: 1}
    assert len({r["group_id"] for r in recs}) == 1
    assert all(r["hardware"]["torch_threads"] == max(1, os.cpu_count() // 2) for r in recs)  # cores shared out
    assert out.count("p(time)") == 1 and "4 records from 2 ranks" in out  # one table, printed once
    assert out.count("preset smoke (requested)") == 1  # ranks > 0 are silent

    # the same seeds in one plain process
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()
    try:
        assert resnet.main([*SMOKE, "--epochs", "1", "--runs", "4", "--seed", "3", "--quiet", "--threads", "1",
                            "--log-dir", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    single = {r["seed"]: r for r in read_records(tmp_path / "one" / "runs.jsonl")}
    assert "rank" not in single[3]
    for r in recs:
        losses = [e["train_loss"] for e in r["epochs"]]
        assert losses == pytest.approx([e["train_loss"] for e in single[r["seed"]]["epochs"]], rel=1e-5)
    # different seeds really differ, so the comparison above can tell them apart
    assert single[3]["epochs"][0]["train_loss"] != single[4]["epochs"][0]["train_loss"]


def _children_with_rank(parent: int, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _kill_rank_1_after(proc, marker: str) -> tuple[str, str, float]:
    """Once rank 0 prints ``marker``, SIGKILL rank 1; (stdout, stderr, seconds until torchrun exits)."""
    try:
        for line in proc.stdout:  # rank 0 prints its epoch rows
            if marker in line:
                break
        victim = _children_with_rank(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        out, err = proc.communicate(timeout=90)
        return out, err, time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_a_killed_rank_is_recorded_failed_and_the_others_do_not_hang(tmp_path):
    proc = _torchrun([*SMOKE, "--epochs", "3", "--runs", "4", "--dist-timeout", "5",
                      "--log-dir", str(tmp_path / "log")])
    out, err, seconds = _kill_rank_1_after(proc, "epoch   1")  # both ranks started their first run together
    assert seconds < 60
    assert proc.returncode != 0
    recs = _records_once_each(tmp_path / "log")
    lost = [r for r in recs if r["rank"] == 1 and r["status"] != "ok"]
    assert len(lost) == 1 and lost[0]["status"] == "failed" and "rank 1 stopped reporting" in lost[0]["error"]
    assert "error: rank 1 stopped reporting (killed or hung)" in err
    assert all(r["status"] in ("ok", "interrupted") for r in recs if r["rank"] == 0)


@pytest.mark.slow
def test_ctrl_c_to_torchrun_records_every_rank_interrupted_once(tmp_path):
    proc = _torchrun([*SMOKE, "--epochs", "3", "--runs", "4", "--log-dir", str(tmp_path / "log")])
    try:
        for line in proc.stdout:
            if "epoch   1" in line:
                break
        proc.send_signal(signal.SIGINT)  # torchrun passes it on to every rank
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    recs = _records_once_each(tmp_path / "log")
    for rank in (0, 1):  # each rank: its finished runs ok, the one it was in interrupted (none missing)
        statuses = [r["status"] for r in recs if r["rank"] == rank]
        assert statuses and statuses[-1] == "interrupted" and set(statuses[:-1]) <= {"ok"}
    assert "unfinished runs logged as 'interrupted'" in out


@pytest.mark.slow
def test_a_failed_run_on_a_rank_is_recorded_once_as_failed(tmp_path):
    cfg = tmp_path / "explode.toml"  # lr 1e12: the loss goes non-finite within a few steps on every rank
    cfg.write_text('extends = "final"\n[schedule]\nknots = [0, 35]\nlrs = [1e12, 1e12]\n')
    args = [a if a != "final" else str(cfg) for a in SMOKE]
    proc = _torchrun([*args, "--epochs", "1", "--runs", "3", "--quiet", "--log-dir", str(tmp_path / "log")])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    recs = read_records(tmp_path / "log" / "runs.jsonl")
    # each rank stops at its first failure, as one process stops: seeds 0 (rank 0) and 1 (rank 1), not 2
    assert sorted((r["seed"], r["rank"], r["status"]) for r in recs) == [(0, 0, "failed"), (1, 1, "failed")]
    assert all(isinstance(r["failed_step"], int) for r in recs)
    assert "error: explode seed 1 (rank 1): failed" in err


# ---- --ddp: one run spread over the ranks


def test_shards_are_disjoint_and_together_the_batch():
    for n in range(2, 40):
        for world in (2, 3, 4):
            if n < world:
                continue
            parts = [Shard(r, world).take(list(range(n))) for r in range(world)]
            assert [i for part in parts for i in part] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert batch_sizes(10, 4, drop_last=False) == [4, 4, 2]
    assert batch_sizes(10, 4, drop_last=True) == [4, 4]
    assert batch_sizes(9, 4, drop_last=False, ranks=2) == [4, 4]  # a last image cannot be split over 2 ranks


@pytest.mark.parametrize("stage", ["final", "resnet9"])  # the DataLoader backend and the device backend
def test_each_rank_loads_its_slice_of_the_same_batches(stage):
    loader_cfg = load_stage(stage).loader
    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(50)  # the label is the image index

    def epoch(shard):
        batches = make_train_loader(loader_cfg, images, labels, batch_size=16, seed=4, device=torch.device("cpu"),
                                    shard=shard)
        return [(x, y) for x, y in batches], len(batches)

    whole, steps = epoch(Shard())
    parts = [epoch(Shard(r, 2)) for r in range(2)]
    assert steps == len(batch_sizes(50, 16, loader_cfg.drop_last)) >= 3 and all(n == steps for _, n in parts)
    for step, (x, y) in enumerate(whole):
        (x0, y0), (x1, y1) = parts[0][0][step], parts[1][0][step]
        assert torch.equal(torch.cat([y0, y1]), y) and not set(y0.tolist()) & set(y1.tolist())
        torch.testing.assert_close(torch.cat([x0, x1]), x)  # same crops and flips on every rank


def test_rank_loss_weights_make_the_average_of_ranks_the_batch_loss():
    """DDP averages the ranks' gradients; weighted rank losses must average to the batch loss."""
    per_image = torch.rand(11, dtype=torch.float64)
    for reduction in ("mean", "sum"):
        opt = OptimizerSection(loss_reduction=reduction)
        whole = per_image.mean() if reduction == "mean" else per_image.sum()
        for world in (2, 3):
            parts = [Shard(r, world).take(per_image) for r in range(world)]
            rank_losses = [(p.mean() if reduction == "mean" else p.sum()) * rank_loss_weight(len(p), 11, world, opt)
                           for p in parts]
            assert sum(rank_losses) / world == pytest.approx(float(whole), rel=1e-12)


def _ddp_one_step(rank, world, port, stage_name, out_dir):
    """One rank of a 2-rank --ddp step on a fixed batch; rank 0 saves the gradients."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        stage, preset = load_stage(stage_name), load_preset("smoke")
        torch.manual_seed(0)
        net = batch_norm_over_ranks(build_stage_net(stage, preset), world)
        model = data_parallel(net, torch.device("cpu"), world)
        x, y = _fixed_batch(stage, Shard(rank, world))
        loss = loss_fn(model(x), y, stage.optimizer) * rank_loss_weight(len(y), 64, world, stage.optimizer)
        loss.backward()
        if rank == 0:
            torch.save({"grads": {n: p.grad for n, p in net.named_parameters() if p.grad is not None},
                        "buffers": dict(net.named_buffers())}, out_dir / "ddp.pt")
        del model
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def _fixed_batch(stage, shard):
    images = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = np.random.default_rng(2).integers(0, 10, 64)
    batches = make_train_loader(stage.loader, images, labels, batch_size=64, seed=0, device=torch.device("cpu"),
                                shard=shard)
    return next(iter(batches))


@pytest.mark.slow
@pytest.mark.parametrize("stage_name", ["final", "resnet9", "ghost_bn", "airbench94"])  # BN, ghost BN, summed loss
def test_ddp_gradients_after_one_step_equal_the_whole_batch_step(stage_name, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_one_step, args=(2, port, stage_name, tmp_path), nprocs=2, start_method="spawn")
    ddp = torch.load(tmp_path / "ddp.pt")

    stage = load_stage(stage_name)
    torch.manual_seed(0)
    net = build_stage_net(stage, load_preset("smoke"))
    x, y = _fixed_batch(stage, Shard())
    loss_fn(net(x), y, stage.optimizer).backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp["grads"].keys() and len(grads) > 10
    for name, grad in grads.items():
        assert_close_to_scale(ddp["grads"][name], grad, msg=name)
    for name, buf in net.named_buffers():  # BN running statistics: the whole batch's (rank 0's slices for ghost BN)
        if "running" in name and stage_name != "ghost_bn":
            assert_close_to_scale(ddp["buffers"][name], buf, msg=name)


@pytest.mark.slow
def test_ddp_smoke_run_learns_and_follows_the_single_process_run(tmp_path, monkeypatch):
    args = [*SMOKE, "--epochs", "3", "--quiet"]
    proc = _torchrun([*args, "--ddp", "--runs", "2", "--log-dir", str(tmp_path / "ddp")])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    recs = _records_once_each(tmp_path / "ddp")
    assert [r["seed"] for r in recs] == [0, 1] and all(r["ddp_ranks"] == 2 for r in recs)
    assert out.count("p(time)") == 1  # rank 0's table only
    for r in recs:
        losses = [e["train_loss"] for e in r["epochs"]]
        assert losses[-1] < 0.9 * losses[0]  # it learns
        assert r["train_images"] == 512 and r["steps"] == r["steps_planned"]

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()
    try:
        assert resnet.main([*args, "--runs", "2", "--threads", "1", "--log-dir", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    single = {r["seed"]: r for r in read_records(tmp_path / "one" / "runs.jsonl")}
    for r in recs:
        # the same arithmetic up to the order of float sums: the first epoch agrees to 1e-4; later ones drift
        # apart as far as a one-process run on 1 thread and on 2 drift (~1% after 12 steps of this tiny net)
        first, alone = r["epochs"][0], single[r["seed"]]["epochs"][0]
        assert first["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-4)
        assert r["epochs"][-1]["train_loss"] == pytest.approx(single[r["seed"]]["epochs"][-1]["train_loss"], rel=0.1)


@pytest.mark.slow
def test_a_killed_rank_stops_the_ddp_run_and_rank_0_records_it_once(tmp_path):
    proc = _torchrun([*SMOKE, "--epochs", "30", "--ddp", "--dist-timeout", "20", "--log-dir", str(tmp_path / "log")])
    _, _, seconds = _kill_rank_1_after(proc, "epoch   2")
    assert seconds < 30  # torchrun stops rank 0, well within --dist-timeout
    assert proc.returncode != 0
    (rec,) = _records_once_each(tmp_path / "log")
    assert rec["status"] in ("interrupted", "failed") and rec["ddp_ranks"] == 2 and 2 <= len(rec["epochs"]) < 30


def test_stages_that_cannot_be_split_over_the_ranks_are_refused_before_training(tmp_path):
    smoke = load_preset("smoke")
    check_split_over_ranks(load_stage("ghost_bn"), smoke, 2)  # 16 splits: 8 per rank
    with pytest.raises(UserError, match="ghost BN with 16 splits cannot be shared by 3 ranks"):
        check_split_over_ranks(load_stage("ghost_bn"), smoke, 3)
    with pytest.raises(UserError, match="a batch of 128 cannot be split over 200 ranks"):
        check_split_over_ranks(load_stage("final"), smoke, 200)
    dali = tmp_path / "dali.toml"
    dali.write_text('extends = "final"\n[loader]\nbackend = "dali"\n')
    with pytest.raises(UserError, match='stage dali: --ddp needs loader.backend = "dataloader" or "device"'):
        check_split_over_ranks(load_stage(str(dali)), smoke, 2)


@pytest.mark.slow
def test_ddp_with_a_stage_it_cannot_split_is_a_one_line_error_and_no_record(tmp_path):
    dali = tmp_path / "dali.toml"
    dali.write_text('extends = "final"\n[loader]\nbackend = "dali"\n')
    args = [a if a != "final" else str(dali) for a in SMOKE]
    proc = _torchrun([*args, "--ddp", "--quiet", "--log-dir", str(tmp_path / "log")])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert 'error: stage dali: --ddp needs loader.backend = "dataloader" or "device", not "dali"' in err
    assert not frames_of_ours(err)  # torchrun prints its own ChildFailedError traceback, with none of our frames
    assert not (tmp_path / "log" / "runs.jsonl").exists()


def test_ddp_without_torchrun_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resnet.main([*SMOKE, "--ddp", "--log-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--ddp spreads each run over the ranks torchrun starts" in err and "Traceback" not in err


def _store_context(store, rank, timeout=600.0):
    return distributed.DistContext(rank, 2, rank, 2, torch.device("cpu"), "gloo", timeout, store=store)


def _pretend_rank_1(store, *, progress_every: float, progress_for: float, then: str):
    """Rank 1's side in a thread: a run started, progress (``beat``) every ``progress_every``
    seconds for ``progress_for`` seconds, then ``finish`` (its record and done) or ``hang``."""
    ctx = _store_context(store, 1)
    reporter = distributed.Reporter(ctx)
    reporter.starting("final", 1)
    end = time.monotonic() + progress_for
    while time.monotonic() < end:
        distributed.beat(ctx)
        time.sleep(progress_every)
    if then == "finish":
        reporter.finished({"stage": "final", "seed": 1, "status": "ok", "run_id": "r1"})
        reporter.done("ok")


@pytest.mark.parametrize("then", ["finish", "hang"])
def test_liveness_is_training_progress_a_slow_rank_is_kept_a_stuck_one_given_up(then):
    """Rank 0 waits 3 s at most without progress: a rank making progress every 0.5 s for 7 s (a
    beat every 2 s) is waited for; one that then stops, its thread alive but its training stuck,
    is given up 3 s after its last beat."""
    import threading

    store = torch.distributed.HashStore()
    rank0 = _store_context(store, 0, timeout=3.0)
    worker = threading.Thread(target=_pretend_rank_1, args=(store,),
                              kwargs=dict(progress_every=0.5, progress_for=7.0, then=then), daemon=True)
    start = time.monotonic()
    worker.start()
    records, errors = distributed.collect(rank0, [], {1: [("final", 1), ("final", 3)]}, "g")
    seconds = time.monotonic() - start
    if then == "finish":
        assert errors == [] and [r["run_id"] for r in records] == ["r1"]
        assert 7.0 <= seconds < 9.0
    else:
        (failed,) = records
        assert failed["status"] == "failed" and (failed["stage"], failed["seed"], failed["rank"]) == ("final", 1, 1)
        assert errors == ["rank 1 stopped reporting (killed or hung) for over 3s; its run final seed 1 is recorded "
                          "as failed; never run: final seed 3"]
        # beats at most every 2 s: the last one came at 6 s, 1 s before the progress stopped; given up 3 s later
        assert 8.0 <= seconds < 10.5
    worker.join(timeout=5)


@pytest.mark.slow
def test_a_stopped_rank_is_given_up_on_within_the_timeout(tmp_path):
    """SIGSTOP: the process lives, nothing runs. Rank 0 records it within --dist-timeout (5 s) of
    its own work ending; the stopped rank is then killed so torchrun can end."""
    proc = _torchrun([*SMOKE, "--epochs", "3", "--runs", "4", "--dist-timeout", "5", "--log-dir", str(tmp_path / "log")])
    victim = None
    try:
        for line in proc.stdout:  # rank 0 prints its epoch rows
            if "epoch   1" in line:
                break
        victim, rank0 = _children_with_rank(proc.pid, 1), _children_with_rank(proc.pid, 0)
        assert victim is not None and rank0 is not None
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        log = tmp_path / "log" / "runs.jsonl"
        while not (log.exists() and '"rank": 1' in log.read_text()) and time.monotonic() - stopped < 60:
            time.sleep(0.2)
        seconds = time.monotonic() - stopped
        while Path(f"/proc/{rank0}").exists() and time.monotonic() - stopped < 60:  # let rank 0 finish speaking
            time.sleep(0.2)
    finally:
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=90)
    assert seconds < 5 + 20  # rank 0's own two short runs, then at most the timeout
    recs = _records_once_each(tmp_path / "log")
    lost = [r for r in recs if r.get("rank") == 1 and r["status"] != "ok"]
    assert len(lost) == 1 and lost[0]["status"] == "failed" and "rank 1 stopped reporting" in lost[0]["error"]
    assert [r["seed"] for r in recs if r.get("rank") == 0 and r["status"] == "ok"] == [0, 2]
    assert "error: rank 1 stopped reporting (killed or hung)" in err
