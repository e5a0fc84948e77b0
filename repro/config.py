"""Stage and preset files (``configs/``) read into typed, validated dataclasses.

A stage file names its predecessor with ``extends`` and lists only what it changes, so the
diff between two adjacent stages is the stage. Presets (``configs/presets/*.toml``) set the
sizes: epochs, width, subset. Unknown keys and wrong types are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

STAGE_ORDER = ("baseline", "simplified", "preprocessed", "bulk_rng", "final")
PRESETS = ("full", "cpu", "smoke")


def configs_dir() -> Path:
    """``$REPRO_CONFIGS`` or the ``configs/`` folder shipped inside the package (the top-level
    ``configs`` of a checkout is a link to it)."""
    env = os.environ.get("REPRO_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class NetSection:
    duplicate_bn_relu: bool = False
    bn_weight_init: str = "uniform"


@dataclass(frozen=True)
class ScheduleSection:
    knots: tuple[float, ...] = (0, 15, 30, 35)
    lrs: tuple[float, ...] = (0.0, 0.1, 0.005, 0.0)

    def lr_at(self, epoch: float, total_epochs: int) -> float:
        """LR at a fractional epoch; knots are stretched so the last one falls on total_epochs.

        A repeated knot is a zero-length segment, i.e. a jump: from that epoch on, the
        later value applies.
        """
        scale = total_epochs / self.knots[-1]
        x = [k * scale for k in self.knots]
        if epoch <= x[0]:
            return float(self.lrs[0])
        for i in range(len(x) - 1):
            if x[i] <= epoch < x[i + 1]:
                t = (epoch - x[i]) / (x[i + 1] - x[i])
                return float(self.lrs[i] + t * (self.lrs[i + 1] - self.lrs[i]))
        return float(self.lrs[-1])


@dataclass(frozen=True)
class OptimizerSection:
    batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


@dataclass(frozen=True)
class LoaderSection:
    preprocess: str = "once"  # "per_sample" | "once"
    rng: str = "bulk"  # "per_sample" | "bulk"
    workers: int = 0


@dataclass(frozen=True)
class BlogSection:
    seconds: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Preset:
    name: str = "custom"
    epochs: int = 35
    width_divisor: int = 1
    train_images: int | None = None  # None: all
    test_images: int | None = None
    target_accuracy: float | None = None
    channels_last: bool = True


@dataclass(frozen=True)
class StageConfig:
    name: str
    description: str = ""
    net: NetSection = field(default_factory=NetSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    loader: LoaderSection = field(default_factory=LoaderSection)
    blog: BlogSection = field(default_factory=BlogSection)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    ("loader", "preprocess"): ("per_sample", "once"),
    ("loader", "rng"): ("per_sample", "bulk"),
    ("net", "bn_weight_init"): ("uniform", "ones"),
}


def _typed(cls, values: dict[str, Any], where: str, section: str = ""):
    """Build dataclass ``cls`` from ``values``: unknown keys and wrong types are UserErrors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        prefix = f"{section}." if section else ""
        raise UserError(
            f"{where}: unknown config key {prefix}{unknown[0]}; valid keys here: "
            + ", ".join(prefix + k for k in fields)
        )
    out = {}
    for key, value in values.items():
        default = getattr(cls(), key) if key != "name" else ""
        kind = type(default)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
                raise UserError(f"{where}: {section}.{key} must be a list of numbers")
            value = tuple(value)
        elif default is None or isinstance(default, float):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UserError(f"{where}: {section or 'preset'} key {key} must be a number, not {value!r}")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"{where}: {section or 'preset'} key {key} must be {kind.__name__}, not {value!r}")
        allowed = _CHOICES.get((section, key))
        if allowed and value not in allowed:
            raise UserError(f"{where}: {section}.{key} must be one of {', '.join(allowed)}, not {value!r}")
        out[key] = value
    return cls(**out)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def available_stages(directory: Path | None = None) -> list[str]:
    d = (directory or configs_dir()) / "resnet"
    found = {p.stem for p in d.glob("*.toml")}
    return [s for s in STAGE_ORDER if s in found] + sorted(found - set(STAGE_ORDER))


def _stage_path(name_or_path: str, directory: Path) -> Path:
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        if not path.exists():
            raise UserError(f"config file {name_or_path} does not exist")
        return path
    path = directory / "resnet" / f"{name_or_path}.toml"
    if not path.exists():
        valid = ", ".join(available_stages(directory)) or "(none found in " + str(directory) + ")"
        raise UserError(f"unknown stage {name_or_path!r}; valid stages: {valid}, all")
    return path


def _resolve(name_or_path: str, directory: Path, seen: tuple[str, ...] = ()) -> tuple[dict, str]:
    path = _stage_path(name_or_path, directory)
    if str(path) in seen:
        raise UserError(f"{path}: 'extends' forms a cycle")
    raw = _read_toml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw, str(path)
    if not isinstance(parent, str):
        raise UserError(f"{path}: extends must be a stage name")
    base, _ = _resolve(parent, directory, seen + (str(path),))
    return _merge(base, raw), str(path)


_SECTIONS = {"net": NetSection, "schedule": ScheduleSection, "optimizer": OptimizerSection,
             "loader": LoaderSection, "blog": BlogSection}


def load_stage(name_or_path: str, directory: Path | None = None) -> StageConfig:
    directory = directory or configs_dir()
    raw, where = _resolve(name_or_path, directory)
    sections = {}
    for key, value in raw.items():
        if key == "description":
            continue
        if key not in _SECTIONS:
            raise UserError(f"{where}: unknown config key {key}; valid: description, extends, " + ", ".join(_SECTIONS))
        if not isinstance(value, dict):
            raise UserError(f"{where}: [{key}] must be a table")
        sections[key] = _typed(_SECTIONS[key], value, where, key)
    schedule = sections.get("schedule", ScheduleSection())
    if len(schedule.knots) != len(schedule.lrs) or len(schedule.knots) < 2:
        raise UserError(f"{where}: schedule.knots and schedule.lrs need the same length (at least 2)")
    if any(b < a for a, b in zip(schedule.knots, schedule.knots[1:])) or schedule.knots[-1] <= 0:
        raise UserError(f"{where}: schedule.knots must be non-decreasing and end above 0")
    if sections.get("loader", LoaderSection()).workers < 0:
        raise UserError(f"{where}: loader.workers must be >= 0")
    name = Path(name_or_path).stem
    return StageConfig(name=name, description=str(raw.get("description", "")), **sections)


def load_preset(name: str, directory: Path | None = None) -> Preset:
    directory = directory or configs_dir()
    path = directory / "presets" / f"{name}.toml"
    if not path.exists():
        raise UserError(f"unknown preset {name!r}; valid presets: auto, {', '.join(PRESETS)}")
    preset = _typed(Preset, _read_toml(path), str(path))
    if preset.epochs < 1 or preset.width_divisor < 1:
        raise UserError(f"{path}: epochs and width_divisor must be >= 1")
    if any(n is not None and n < 1 for n in (preset.train_images, preset.test_images)):
        raise UserError(f"{path}: train_images and test_images must be >= 1 (leave them out for all images)")
    return dataclasses.replace(preset, name=name)
