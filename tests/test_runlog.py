"""The run log: a bad destination is refused up front, a failed append leaves the file as it
was, and readers count the lines they cannot read."""

import errno
import json
import os

import pytest

from repro import runlog
from repro.errors import UserError
from repro.runlog import LogWriteError, append_record, check_log_dir, new_record, read_records


def _rec(i, experiment="resnet"):
    return {"run_id": f"r{i}", "experiment": experiment, "status": "ok", "value": i}


def test_check_log_dir_creates_the_directory_but_no_log(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_log_dir(target) == target / "runs.jsonl"
    assert target.is_dir() and list(target.iterdir()) == []  # the probe file is gone, no empty log
    append_record(_rec(1), target)
    assert check_log_dir(target) == target / "runs.jsonl"
    assert [r["value"] for r in read_records(target)] == [1]  # an existing log is not touched


def test_check_log_dir_that_is_a_file(tmp_path):
    not_a_dir = tmp_path / "logs"
    not_a_dir.write_text("I am a file\n")
    with pytest.raises(UserError) as err:
        check_log_dir(not_a_dir)
    assert str(err.value) == f"log dir {not_a_dir} is a file, not a directory; pass --log-dir a directory"
    assert not_a_dir.read_text() == "I am a file\n"


def test_check_log_dir_below_a_file_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"log dir .*file/sub cannot be created \(Not a directory\)"):
        check_log_dir(tmp_path / "file" / "sub")


def test_check_log_dir_not_writable(tmp_path, monkeypatch):
    # root ignores permission bits, so the refusal the kernel would give is simulated
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(runlog.tempfile, "TemporaryFile", refuse)
    with pytest.raises(UserError, match=r"log dir .* is not writable: cannot append to .*runs\.jsonl \(Permission denied\)"):
        check_log_dir(tmp_path)
    monkeypatch.undo()
    (tmp_path / "runs.jsonl").write_text("")
    monkeypatch.setattr(runlog.os, "open", refuse)
    with pytest.raises(UserError, match=r"is not writable: cannot append to .*runs\.jsonl \(Permission denied\)"):
        check_log_dir(tmp_path)


def test_check_log_dir_whose_log_is_a_directory(tmp_path):
    (tmp_path / "runs.jsonl").mkdir()
    with pytest.raises(UserError, match=r"is not writable: cannot append to .*runs\.jsonl \(Is a directory\)"):
        check_log_dir(tmp_path)


def _failing_write(monkeypatch, *, after_bytes):
    """os.write that writes `after_bytes` of the next call, then fails with ENOSPC."""
    real_write = os.write
    calls = []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) == 1 and after_bytes:
            return real_write(fd, bytes(data[:after_bytes]))  # a short write: the disk just filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlog.os, "write", write)
    return calls


@pytest.mark.parametrize("after_bytes", [0, 17])
def test_disk_full_leaves_the_log_as_it_was(tmp_path, monkeypatch, after_bytes):
    append_record(_rec(1), tmp_path)
    before = (tmp_path / "runs.jsonl").read_bytes()
    calls = _failing_write(monkeypatch, after_bytes=after_bytes)
    with pytest.raises(LogWriteError) as err:
        append_record(_rec(2), tmp_path)
    assert len(calls) == (2 if after_bytes else 1)
    msg = str(err.value)
    assert "could not append the resnet record r2" in msg and "No space left on device" in msg
    assert "the log was left as it was" in msg and "\n" not in msg
    assert isinstance(err.value, UserError)  # CLIs report it in one line
    assert (tmp_path / "runs.jsonl").read_bytes() == before
    monkeypatch.undo()
    append_record(_rec(3), tmp_path)  # the next record starts on a line of its own
    recs = read_records(tmp_path)
    assert [r["value"] for r in recs] == [1, 3] and recs.torn == 0


def test_failed_truncate_is_said(tmp_path, monkeypatch):
    _failing_write(monkeypatch, after_bytes=5)
    monkeypatch.setattr(runlog.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(LogWriteError, match="truncating it back to 0 bytes failed too, so its last line is torn"):
        append_record(_rec(1), tmp_path)


def test_a_zero_byte_write_is_not_an_endless_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog.os, "write", lambda fd, data: 0)
    with pytest.raises(LogWriteError, match="write wrote nothing"):
        append_record(_rec(1), tmp_path)
    assert (tmp_path / "runs.jsonl").read_bytes() == b""


def test_torn_lines_are_counted_and_glued_records_recovered(tmp_path):
    good = [json.dumps(new_record("resnet", value=i)) for i in range(3)]
    torn = good[0][:40]
    lines = [good[0], torn + good[1], "", "[1, 2]", "not json", good[2], torn]
    (tmp_path / "runs.jsonl").write_text("\n".join(lines))
    recs = read_records(tmp_path)
    assert isinstance(recs, list)
    assert [r["value"] for r in recs] == [0, 1, 2]  # record 1 was glued behind a torn line
    assert recs.torn_lines == [2, 4, 5, 7] and recs.torn == 4
    assert recs.torn_note() == f"{tmp_path / 'runs.jsonl'}: 4 torn lines skipped (lines 2, 4, 5, 7)"
    only = read_records(tmp_path / "runs.jsonl", "autoencoder")
    assert only == [] and only.torn == 4  # torn lines are counted whatever the filter
    append_record(_rec(9), tmp_path / "fresh")
    clean = read_records(tmp_path / "fresh")
    assert clean.torn == 0 and clean.torn_note() is None
    missing = read_records(tmp_path / "nowhere")
    assert missing == [] and missing.torn == 0


def test_append_holds_back_signals_until_the_line_is_written(tmp_path, monkeypatch):
    import signal

    real_write = os.write
    seen = []

    def write(fd, data):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the write
        seen.append("written")
        return real_write(fd, data)

    monkeypatch.setattr(runlog.os, "write", write)
    with pytest.raises(KeyboardInterrupt):
        append_record(_rec(1), tmp_path)
    monkeypatch.undo()
    assert seen == ["written"]
    assert [r["value"] for r in read_records(tmp_path)] == [1]  # the whole line, then the interrupt


def _git(repo, *args):
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_the_commit_is_the_working_tree_now_untracked_files_included(tmp_path):
    """A record's commit is looked up when its run starts: a stage file edited or added since
    the commit (even one git does not track yet) makes it -dirty; an ignored file does not."""
    from repro.runlog import git_commit

    repo, plain = tmp_path / "repo", tmp_path / "plain"
    repo.mkdir()
    plain.mkdir()
    assert git_commit(plain) is None  # not a checkout
    _git(repo, "init", "-q")
    (repo / "final.toml").write_text('extends = "bulk_rng"\n')
    (repo / ".gitignore").write_text("logs/\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    clean = git_commit(repo)
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (repo / "logs").mkdir()
    (repo / "logs" / "runs.jsonl").write_text("{}\n")
    assert git_commit(repo) == clean  # ignored output is no change to the code
    (repo / "mine.toml").write_text('extends = "tta"\n')
    assert git_commit(repo) == clean + "-dirty"  # untracked, not ignored
    (repo / "mine.toml").unlink()
    (repo / "final.toml").write_text('extends = "preprocessed"\n')
    assert git_commit(repo) == clean + "-dirty"


def test_a_record_names_its_stage_and_preset_files_with_their_digests(tmp_path):
    import hashlib

    from repro.resnet import cli

    mine = tmp_path / "mine"
    (mine / "presets").mkdir(parents=True)
    stage_text = 'extends = "final"\ndescription = "final, 3 epochs"\n[schedule]\nknots = [0, 1, 3]\nlrs = [0, 0.4, 0]\n'
    (mine / "short.toml").write_text(stage_text)
    (mine / "presets" / "tiny.toml").write_text("epochs = 1\nwidth_divisor = 16\ntrain_images = 64\n"
                                               "test_images = 32\nchannels_last = false\n")
    assert cli.main(["--config-dir", str(mine), "--stage", "short", "--preset", "tiny", "--data", "synthetic",
                     "--quiet", "--log-dir", str(tmp_path / "logs")]) == 0
    (rec,) = read_records(tmp_path / "logs")
    files = rec["config_files"]
    assert files[str(mine / "short.toml")] == hashlib.sha256(stage_text.encode()).hexdigest()[:16]
    assert str(mine / "presets" / "tiny.toml") in files
    # the built-in files it extends, by their place in the package
    assert {"repro/configs/resnet/final.toml", "repro/configs/resnet/baseline.toml"} <= set(files)
