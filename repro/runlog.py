"""Run records: one JSON object per line in ``logs/runs.jsonl``, shared by every experiment.

Each record is written with a single ``write`` on an ``O_APPEND`` descriptor under an
exclusive lock and then fsync'ed, so a crash or a concurrent run never leaves half a line.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import platform
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterable

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


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
            text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
        capture_output=True, text=True, timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict[str, Any]:
    """What the numbers were measured on; CUDA is queried only if torch says it exists."""
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


def new_record(experiment: str, **fields: Any) -> dict[str, Any]:
    """The fields every record carries, plus the caller's own."""
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    record: dict[str, Any] = {
        "run_id": uuid.uuid4().hex[:12],
        "experiment": experiment,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "torch_version": torch_version,
        "git_commit": git_commit(),
        "hardware": hardware_info(),
    }
    record.update(fields)
    return record


def log_path(log_dir: str | os.PathLike | None = None) -> Path:
    return Path(log_dir if log_dir is not None else DEFAULT_LOG_DIR) / LOG_NAME


def append_record(record: dict[str, Any], log_dir: str | os.PathLike | None = None) -> Path:
    """Append one record as one line; returns the file written."""
    path = log_path(log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_finite(record), sort_keys=False, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(line)
        while view:  # os.write may write less than asked on some filesystems
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_records(path: str | os.PathLike, experiment: str | None = None) -> list[dict[str, Any]]:
    """All well-formed records of a log (a torn or foreign line is skipped, not fatal)."""
    records = []
    p = Path(path)
    if p.is_dir():
        p = p / LOG_NAME
    if not p.exists():
        return records
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and (experiment is None or rec.get("experiment") == experiment):
            records.append(rec)
    return records


def latest(records: Iterable[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The last record whose fields equal ``match``."""
    found = None
    for rec in records:
        if all(rec.get(k) == v for k, v in match.items()):
            found = rec
    return found
