"""``torchrun -m repro.resnet --runs N``: seeds shared over gloo ranks on the CPU, each once, one table."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro import distributed, resnet
from repro.runlog import read_records

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.mark.slow
def test_a_killed_rank_is_recorded_failed_and_the_others_do_not_hang(tmp_path):
    proc = _torchrun([*SMOKE, "--epochs", "3", "--runs", "4", "--dist-timeout", "5",
                      "--log-dir", str(tmp_path / "log")])
    try:
        # rank 0 prints its epoch rows; both ranks started their first run together
        for line in proc.stdout:
            if "epoch   1" in line:
                break
        victim = _children_with_rank(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        out, err = proc.communicate(timeout=90)
        assert time.monotonic() - start < 60
    finally:
        if proc.poll() is None:
            proc.kill()
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
