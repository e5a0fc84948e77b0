"""Run records: one JSON object per line in ``logs/runs.jsonl``, shared by every experiment.

Each record is written with a single ``write`` on an ``O_APPEND`` descriptor under an
exclusive lock, with Ctrl-C and SIGTERM held back, and then fsync'ed, so a crash or a
concurrent run never leaves half a line; a write that fails part-way (disk full) is
truncated away under the same lock. Readers skip and count lines that are not records.
"""

from __future__ import annotations

import copy
import datetime as _dt
import errno
import fcntl
import functools
import json
import math
import os
import platform
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

from .errors import UserError, signals_deferred

DEFAULT_LOG_DIR = Path("logs")
LOG_NAME = "runs.jsonl"


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: store them as strings so the line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _finite(value.item())  # numpy / torch scalars
    if isinstance(value, Path):
        return str(value)
    return value


def git_commit(checkout: str | os.PathLike | None = None) -> str | None:
    """The commit of ``checkout`` (default: this code's) in 12 digits, with ``-dirty`` when its
    working tree differs from it: a tracked file modified, or an untracked file that is not
    ignored (a new stage file, say). Looked up for every record, when its run starts; None
    outside a checkout."""
    here = Path(checkout) if checkout is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        changes = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                                 timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if changes else "")


def file_digests(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """Each file's sha256 (16 hex digits), keyed by its path relative to the package's parent
    folder when it lies there (a built-in stage file), else as given: what a record keeps of
    the stage and preset files it was read from, wherever they came from."""
    import hashlib

    top = Path(__file__).resolve().parents[1]
    digests = {}
    for path in paths:
        resolved = Path(path).resolve()
        name = str(resolved.relative_to(top)) if resolved.is_relative_to(top) else str(path)
        try:
            digests[name] = hashlib.sha256(resolved.read_bytes()).hexdigest()[:16]
        except OSError:
            digests[name] = "unreadable"
    return digests


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict[str, Any]:
    """What the numbers were measured on (a fresh copy each call; the lookup is made once per
    process); CUDA is queried only if torch says it exists."""
    return copy.deepcopy(_hardware_info())


@functools.cache
def _hardware_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def record_header(experiment: str) -> dict[str, Any]:
    """The fields every record carries: a fresh id, the time and the checkout's commit now (the
    run's start); torch's version and the hardware are looked up once per process."""
    return {
        "run_id": uuid.uuid4().hex[:12],
        "experiment": experiment,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "torch_version": _torch_version(),
        "git_commit": git_commit(),
        "hardware": hardware_info(),
    }


def new_record(experiment: str, **fields: Any) -> dict[str, Any]:
    """The header every record carries, plus the caller's own fields."""
    return {**record_header(experiment), **fields}


@functools.cache
def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def write_whole(path: str | os.PathLike, content: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``content`` (bytes, or a function that writes to the open file) to a temporary file
    in the same folder, then rename it over ``path``: a reader, or a crash, never meets half a
    file. The file is readable by all (mkstemp makes it private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def log_path(log_dir: str | os.PathLike | None = None) -> Path:
    return Path(log_dir if log_dir is not None else DEFAULT_LOG_DIR) / LOG_NAME


def check_log_dir(log_dir: str | os.PathLike | None = None) -> Path:
    """Make sure records can be appended under ``log_dir`` before any work is done.

    Creates the directory if needed and returns the log file's path; raises a one-line
    UserError if it is a file, cannot be created, or is not writable. The log file itself is
    not created (a run that fails before training leaves no empty log behind).
    """
    directory = Path(log_dir if log_dir is not None else DEFAULT_LOG_DIR)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"log dir {directory} is a file, not a directory; pass --log-dir a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"log dir {directory} cannot be created ({exc.strerror or exc})") from None
    path = directory / LOG_NAME
    try:
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # opens, writes nothing
        else:
            with tempfile.TemporaryFile(dir=directory):
                pass
    except OSError as exc:
        raise UserError(f"log dir {directory} is not writable: cannot append to {path} "
                        f"({exc.strerror or exc})") from None
    return path


class LogWriteError(UserError):
    """A record could not be appended (e.g. the disk is full); the log is left as it was."""


def append_record(record: dict[str, Any], log_dir: str | os.PathLike | None = None) -> Path:
    """Append one record as one line; returns the file written.

    If the line cannot be written whole (disk full, quota, I/O error), the file is truncated
    back to its length before the write, under the same lock, and LogWriteError is raised:
    the log never keeps a partial line that the next record would be glued to.
    """
    path = log_path(log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_finite(record), sort_keys=False, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with signals_deferred():
            size_before = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:  # os.write may write less than asked (e.g. just before the disk fills)
                    written = os.write(fd, view)
                    if written <= 0:
                        raise OSError(errno.ENOSPC, "write wrote nothing")
                    view = view[written:]
                os.fsync(fd)
            except OSError as exc:
                state = ("the log was left as it was" if _truncate(fd, size_before) else
                         f"truncating it back to {size_before} bytes failed too, so its last line is torn")
                raise LogWriteError(
                    f"could not append the {record.get('experiment', '?')} record {record.get('run_id', '')} "
                    f"to {path} ({exc.strerror or exc}); {state}"
                ) from exc
    finally:
        os.close(fd)
    return path


def _truncate(fd: int, size: int) -> bool:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        return False
    return True


class Records(list):
    """The records of a log, plus what could not be read: ``torn_lines`` holds the 1-based
    numbers of lines that were not a JSON object (half-written or foreign)."""

    def __init__(self, items=(), path: Path | None = None, torn_lines: Iterable[int] = ()):
        super().__init__(items)
        self.path = path
        self.torn_lines = list(torn_lines)

    @property
    def torn(self) -> int:
        return len(self.torn_lines)

    def torn_note(self) -> str | None:
        """One line for a report or CLI, or None when every line was a record."""
        if not self.torn_lines:
            return None
        shown = ", ".join(map(str, self.torn_lines[:10])) + (", ..." if self.torn > 10 else "")
        plural = "s" if self.torn > 1 else ""
        return f"{self.path}: {self.torn} torn line{plural} skipped (line{plural} {shown})"


_RECORD_START = '{"run_id": '


def _salvage(line: str) -> list[dict]:
    """Whole records glued behind a torn one (written by versions that did not truncate)."""
    found = []
    start = line.find(_RECORD_START, 1)
    while start != -1:
        try:
            rec = json.loads(line[start:])
        except json.JSONDecodeError:
            start = line.find(_RECORD_START, start + 1)
            continue
        if isinstance(rec, dict):
            found.append(rec)
        break
    return found


def read_records(path: str | os.PathLike, experiment: str | None = None) -> Records:
    """All records of a log (a directory or the file), as a list; lines that are not a record
    are skipped and counted in ``.torn_lines`` (see :class:`Records`), never fatal.

    A whole record glued behind a torn line is recovered.
    """
    p = Path(path)
    if p.is_dir():
        p = p / LOG_NAME
    records, torn = [], []
    if not p.exists():
        return Records(records, p, torn)
    for number, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            found = [json.loads(line)]
        except json.JSONDecodeError:
            found = _salvage(line)
            torn.append(number)
        else:
            if not isinstance(found[0], dict):
                found = []
                torn.append(number)
        records += [r for r in found if experiment is None or r.get("experiment") == experiment]
    return Records(records, p, torn)


def latest(records: Iterable[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The last record whose fields equal ``match``."""
    found = None
    for rec in records:
        if all(rec.get(k) == v for k, v in match.items()):
            found = rec
    return found
