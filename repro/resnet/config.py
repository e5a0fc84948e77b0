"""Stage, preset and ladder files read into typed, checked objects.

A stage file names its predecessor with ``extends`` and lists only what it changes, so the
diff between two adjacent stages is the stage, and the ladder order is the ``extends`` chain.
Two tables are not inherited: ``[source]`` (the published time and accuracy belong to one
stage) and ``description``; and a ``[net]`` table that sets ``arch`` starts the net afresh.

Everything a stage file can get wrong is a one-line ``UserError`` from ``load_stage``, before
any data is read: unknown keys, wrong types, option values, and what the chosen parts accept.
The lists of options are not written here but read from the parts themselves: the loader
backends' declarations (``loaders.BACKENDS``), the EMA kinds (``averaging.KINDS``), the TTA
modes (``evaluation.TTA_MODES``), the net builders and their signatures (``nets``), and the
source clocks (``CLOCKS``).

Where files are found (``ConfigDirs``): the user's directories (``--config-dir``,
``$REPRO_CONFIG_DIR``) first, then the files shipped in ``repro/configs/``. A user's directory
holds stage files (``DIR/*.toml``) and presets (``DIR/presets/*.toml``); a user's stage may
``extends`` any built-in one, and one with a built-in's name replaces it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import averaging, evaluation, loaders, muon, nets
from .clocks import CLOCKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_DIR_ENV = "REPRO_CONFIG_DIR"


@dataclass(frozen=True)
class ConfigDirs:
    """Where stage and preset files are looked for: ``user`` directories first, in order,
    then ``builtin`` (whose ``resnet/`` holds the stages, ``presets/`` the presets and
    ``presets/measure/`` the measurement presets that docs/results.md's sections were run with)."""

    user: tuple[Path, ...] = ()
    builtin: Path = BUILTIN_DIR

    @classmethod
    def from_env(cls, config_dir: str | os.PathLike | None = None, environ=os.environ) -> "ConfigDirs":
        """``config_dir`` (``--config-dir``), then the directories in ``$REPRO_CONFIG_DIR``
        (separated by ``os.pathsep``); each must be a directory."""
        named = [(str(config_dir), "--config-dir")] if config_dir else []
        named += [(p, f"${CONFIG_DIR_ENV}") for p in environ.get(CONFIG_DIR_ENV, "").split(os.pathsep) if p]
        for d, source in named:
            if not Path(d).is_dir():
                raise UserError(f"{source} {d}: not a directory")
        return cls(tuple(Path(d) for d, _ in named))

    def stage_files(self) -> dict[str, Path]:
        """Every stage name and its file; a user's file shadows a built-in of the same name."""
        files = {p.stem: p for p in sorted((self.builtin / "resnet").glob("*.toml"))}
        for d in reversed(self.user):
            files.update({p.stem: p for p in sorted(d.glob("*.toml"))})
        return files

    def builtin_stage_names(self) -> set[str]:
        return {p.stem for p in (self.builtin / "resnet").glob("*.toml")}

    def preset_files(self) -> dict[str, Path]:
        """Every preset name and its file (the measurement presets too); a user's shadows a built-in."""
        files = {p.stem: p for p in sorted((self.builtin / "presets" / "measure").glob("*.toml"))}
        files.update({p.stem: p for p in sorted((self.builtin / "presets").glob("*.toml"))})
        for d in reversed(self.user):
            files.update({p.stem: p for p in sorted((d / "presets").glob("*.toml"))})
        return files

    def measurement_presets(self) -> list[str]:
        """The built-in presets that only measure (listed apart from the user presets)."""
        files = self.preset_files()
        return sorted(name for name, path in files.items() if path.parent.name == "measure")


def _dirs(where: ConfigDirs | os.PathLike | None) -> ConfigDirs:
    """``None``: the environment's directories; a path: a tree laid out as ``repro/configs``."""
    if where is None:
        return ConfigDirs.from_env()
    if isinstance(where, ConfigDirs):
        return where
    return ConfigDirs(builtin=Path(where))


@dataclass(frozen=True)
class ScheduleSection:
    """Piecewise-linear LR in mean-loss units over the stage's own epochs (the last knot)."""

    knots: tuple[float, ...] = (0, 15, 30, 35)
    lrs: tuple[float, ...] = (0.0, 0.1, 0.005, 0.0)

    @property
    def epochs(self) -> float:
        return float(self.knots[-1])

    def lr_at(self, epoch: float, total_epochs: float) -> float:
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
    """SGD settings in mean-loss units; ``loss_reduction = "sum"`` trains with Page's summed loss,
    lr / batch and weight decay x batch, which is the same update."""

    batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    loss_reduction: str = "mean"
    label_smoothing: float = 0.0
    # parameter group of the biases (BN shifts, the whitening bias): post 8 step 6, airbench
    bias_lr_factor: float = 1.0
    bias_wd_factor: float = 1.0
    # airbench: the whitening bias trains for this many epochs, then freezes (0 = never frozen)
    freeze_whitening_bias_after: float = 0.0
    # which SGD group the whitening bias joins: "biases" (LR x bias_lr_factor) or "weights" (airbench94, 95)
    whitening_bias_group: str = "biases"
    # "linear": its LR falls from the peak to 0 at freeze_whitening_bias_after, on its own (airbench94_muon)
    whitening_bias_decay: str = "none"
    # "muon": the conv filters take Muon steps (orthogonalised momentum, filters re-normalised), the rest SGD
    kind: str = "sgd"
    muon_lr: float = 0.0  # Muon's LR at the schedule's peak; it follows the schedule's shape
    muon_momentum: float = 0.6
    muon_ns_steps: int = 3  # Newton-Schulz iterations
    muon_ns_coefficients: tuple[float, ...] = muon.TORCH_NS_COEFFICIENTS  # its quintic's (a, b, c)
    # hiverge: the banks re-normalised every N steps, N growing linearly from the first to the second
    muon_renorm_every: tuple[float, ...] = (1, 1)
    muon_weight_decay: float = 0.0  # hiverge: w <- w (1 - lr x this) after each Muon step
    muon_batched: bool = False  # hiverge: one zero-padded stack, one batched Newton-Schulz in the run's precision


@dataclass(frozen=True)
class LoaderSection:
    backend: str = "dataloader"  # post 1's DataLoader modes | "device": the whole set as one tensor
    preprocess: str = "once"  # dataloader: "per_sample" | "once"
    rng: str = "bulk"  # dataloader: "per_sample" | "bulk"
    workers: int = 0  # dataloader worker processes
    pad: int = 4  # reflect padding before the random 32x32 crop
    flip: str = "random"  # "random" | "alternating" (airbench) | "none"
    cutout: int = 0  # side of the zeroed square; 0 = no cutout
    choices: str = "grouped"  # device backend: "grouped" (post 8) | "per_image" (airbench)
    max_groups: int = 200  # grouped choices: at most this many distinct choices per augmentation per epoch
    drop_last: bool = False
    brightness: float = 0.0  # device backend (hiverge): a shift uniform in [-this, this] per image and epoch
    contrast: float = 0.0  # ... then a factor uniform in [1 - this, 1 + this]


@dataclass(frozen=True)
class BatchNormSection:
    # post 3: BN weights and arithmetic kept in fp32 under autocast (the blog's fp16 model cast BN too)
    keep_fp32: bool = False


@dataclass(frozen=True)
class EmaSection:
    kind: str = "none"  # "eval_copy" (post 8: evaluate an averaged copy) | "lookahead" (airbench: copy back)
    momentum: float = 0.99  # per step; applied every `every` steps as momentum ** every
    every: int = 5
    start_epochs: float = 0.0  # airbench95: the average starts from the weights after this many epochs
    copy_back_each_epoch: bool = False  # airbench95: the weights are set to the average at every epoch's end


@dataclass(frozen=True)
class EvaluationSection:
    tta: str = "none"  # "flip" (post 8) | "multiview" (airbench: flip x {0, up-left, down-right}) | "multiview_mean" (hiverge)
    # hiverge: the TTA views only for this share of the test images, the least confident after a plain pass
    tta_fraction: float = 1.0


@dataclass(frozen=True)
class FilterSection:
    """airbench96_faster's data filtering (``repro.resnet.filtering``): the main net trains on the
    share ``keep`` of each batch that a small proxy net finds hardest (1: every image, no proxy)."""

    keep: float = 1.0
    proxy_step_every: int = 4  # the proxy trains on every N-th batch and only scores the others
    proxy_net: dict = field(default_factory=dict)  # [net] keys that make the stage's net the proxy


@dataclass(frozen=True)
class SourceSection:
    """What the stage's source published; read once here, shown beside every measurement."""

    seconds: float | None = None
    accuracy: float | None = None
    timing: str = "blog"  # which clock the seconds are on: a key of CLOCKS
    hardware: str = "V100"
    entry_seconds: float | None = None  # the number the ladder started from (Ben Johnson's 341 s)
    runs: int | None = None  # how many runs the published accuracy is the mean of (the records)
    accuracy_std: float | None = None  # their standard deviation, where published
    pflops: float | None = None  # FLOPs per run (10^15), where published
    note: str = ""
    # the keys this stage changes from the one it extends (a test checks it against the real diff)
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    name: str = "custom"
    epochs: float | None = None  # every stage runs this many epochs (None: the stage's own x epoch_scale)
    epoch_scale: float = 1.0
    width_divisor: int = 1
    train_images: int | None = None  # None: all
    test_images: int | None = None
    target_accuracy: float | None = None
    channels_last: bool = True
    file: str | None = field(default=None, compare=False)  # where it was read from

    def epochs_for(self, stage: "StageConfig") -> float:
        return self.epochs if self.epochs is not None else stage.schedule.epochs * self.epoch_scale


@dataclass(frozen=True)
class StageConfig:
    name: str
    description: str = ""
    extends: str | None = None
    net: dict[str, Any] = field(default_factory=lambda: {"arch": "dawn_resnet18"})
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    loader: LoaderSection = field(default_factory=LoaderSection)
    batch_norm: BatchNormSection = field(default_factory=BatchNormSection)
    ema: EmaSection = field(default_factory=EmaSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    filter: FilterSection = field(default_factory=FilterSection)
    source: SourceSection = field(default_factory=SourceSection)
    # the stage's file and the files it extends, nearest first (not part of the recipe)
    files: tuple[str, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The recipe: every section with every value (what a record keeps as ``config``)."""
        recipe = dataclasses.asdict(self)
        del recipe["files"]
        return recipe


_SECTIONS = {"schedule": ScheduleSection, "optimizer": OptimizerSection, "loader": LoaderSection,
             "batch_norm": BatchNormSection, "ema": EmaSection, "evaluation": EvaluationSection,
             "filter": FilterSection, "source": SourceSection}
_NOT_INHERITED = ("source", "description")


def _choices() -> dict[tuple[str, str], tuple[str, ...]]:
    """The allowed values of every option key, read from the parts that implement them."""
    return {
        ("loader", "backend"): tuple(loaders.BACKENDS),
        ("loader", "preprocess"): loaders.AugmentedTrainSet.PREPROCESS_MODES,
        ("loader", "rng"): loaders.AugmentedTrainSet.RNG_MODES,
        ("loader", "flip"): tuple(dict.fromkeys(f for cls in loaders.BACKENDS.values() for f in cls.ACCEPTS.flips)),
        ("loader", "choices"): loaders.DeviceBatches.CHOICE_MODES,
        ("optimizer", "loss_reduction"): ("mean", "sum"),  # the two reductions of F.cross_entropy the ladder uses
        ("optimizer", "kind"): muon.OPTIMIZER_KINDS,
        ("optimizer", "whitening_bias_group"): ("biases", "weights"),
        ("optimizer", "whitening_bias_decay"): ("none", "linear"),
        ("ema", "kind"): ("none",) + averaging.KINDS,
        ("evaluation", "tta"): evaluation.TTA_MODES,
        ("source", "timing"): tuple(CLOCKS),
    }


def _check_value(where: str, key: str, value: Any, default: Any, strings: bool = False) -> Any:
    """``value`` converted to the type of ``default``, or a UserError naming ``key``; a tuple
    default takes a list of numbers, or of strings with ``strings``."""
    if strings:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: {key} must be a list of strings")
        return tuple(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise UserError(f"{where}: {key} must be a list of numbers")
        return tuple(value)
    if default is None or isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserError(f"{where}: {key} must be a number, not {value!r}")
        return value
    kind = type(default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{where}: {key} must be {kind.__name__}, not {value!r}")
    return value


def _typed(cls, values: dict[str, Any], where: str, section: str = ""):
    """Build dataclass ``cls`` from ``values``: unknown keys and wrong types are UserErrors."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("name", "file")}
    defaults = {name: getattr(cls(), name) for name in fields}
    choices = _choices()
    prefix = f"{section}." if section else ""
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise UserError(f"{where}: unknown config key {prefix}{unknown[0]}; valid keys here: "
                        + ", ".join(prefix + k for k in defaults))
    out = {}
    for key, value in values.items():
        value = _check_value(where, prefix + key, value, defaults[key], strings=str(fields[key].type) == "tuple[str, ...]")
        allowed = choices.get((section, key))
        if allowed and value not in allowed:
            raise UserError(f"{where}: {prefix}{key} must be one of {', '.join(allowed)}, not {value!r}")
        out[key] = value
    return cls(**out)


def _typed_net(values: dict[str, Any], where: str) -> dict[str, Any]:
    """The [net] table checked against the signature of its builder in ``repro.resnet.nets``."""
    arch = values.get("arch", "dawn_resnet18")
    if arch not in nets.ARCHITECTURES:
        raise UserError(f"{where}: net.arch must be one of {', '.join(nets.ARCHITECTURES)}, not {arch!r}")
    options = nets.net_options(arch)
    unknown = sorted(set(values) - set(options) - {"arch"})
    if unknown:
        raise UserError(f"{where}: unknown config key net.{unknown[0]} for arch {arch}; valid keys here: net.arch, "
                        + ", ".join(f"net.{k}" for k in options))
    net = {"arch": arch}
    for key, value in values.items():
        if key != "arch":
            net[key] = _check_value(where, f"net.{key}", value, options[key])
    try:  # a tiny copy catches values the builder refuses (an unknown activation, say)
        nets.build_net(width_divisor=64, **net)
    except ValueError as exc:
        raise UserError(f"{where}: [net] {exc}") from None
    return net


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
        replaces_net = key == "net" and isinstance(value, dict) and "arch" in value
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not replaces_net:
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parent_of(path: Path) -> str | None:
    parent = _read_toml(path).get("extends")
    if parent is not None and not isinstance(parent, str):
        raise UserError(f"{path}: extends must be a stage name")
    return parent


def ladder_order(parents: dict[str, str | None], builtin: set[str]) -> list[str]:
    """Stage names in ladder order, from each stage's ``extends`` (``parents``): depth-first
    along the chain, a user's stage right after the stage it extends (before that stage's
    built-in successors), a stage whose parent is unknown last."""
    children: dict[str | None, list[str]] = {}
    for name in sorted(parents, key=lambda n: (n in builtin, n)):  # the user's first, then by name
        children.setdefault(parents[name] if parents[name] in parents else None, []).append(name)
    # at the top: the built-in chain's start, the user's own roots, then stages whose parent is unknown
    roots = children.pop(None, [])
    roots.sort(key=lambda n: (parents[n] is not None, n not in builtin))
    order: list[str] = []

    def visit(names):
        for name in names:
            if name not in order:
                order.append(name)
                visit(children.get(name, []))

    visit(roots)
    return order


def stage_parents(where: ConfigDirs | os.PathLike | None = None) -> dict[str, str | None]:
    """Every stage and the stage it extends (None for the first)."""
    return {name: _parent_of(path) for name, path in _dirs(where).stage_files().items()}


def available_stages(where: ConfigDirs | os.PathLike | None = None) -> list[str]:
    """Every stage, in ladder order (``ladder_order``)."""
    dirs = _dirs(where)
    return ladder_order(stage_parents(dirs), dirs.builtin_stage_names())


def available_presets(where: ConfigDirs | os.PathLike | None = None) -> list[str]:
    return sorted(_dirs(where).preset_files())


def _stage_path(name_or_path: str, dirs: ConfigDirs) -> Path:
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        if not path.exists():
            raise UserError(f"config file {name_or_path} does not exist")
        return path
    path = dirs.stage_files().get(name_or_path)
    if path is None:
        valid = ", ".join(available_stages(dirs)) or "(none found)"
        raise UserError(f"unknown stage {name_or_path!r}; valid stages: {valid}, all")
    return path


def _resolve(name_or_path: str, dirs: ConfigDirs, seen: tuple[str, ...] = ()) -> tuple[dict, tuple[str, ...]]:
    """The stage's table merged along its ``extends`` chain, and the chain's files, nearest first."""
    path = _stage_path(name_or_path, dirs)
    if str(path) in seen:
        raise UserError(f"{path}: 'extends' forms a cycle")
    raw = _read_toml(path)
    parent = raw.get("extends")
    if parent is None:
        return raw, (str(path),)
    if not isinstance(parent, str):
        raise UserError(f"{path}: extends must be a stage name")
    base, chain = _resolve(parent, dirs, seen + (str(path),))
    base = {k: v for k, v in base.items() if k not in _NOT_INHERITED}
    return _merge(base, raw), (str(path),) + chain


def _check_stage(stage: StageConfig, where: str) -> None:
    """The rules between fields, each against the declaration of the part it concerns."""
    schedule = stage.schedule
    if len(schedule.knots) != len(schedule.lrs) or len(schedule.knots) < 2:
        raise UserError(f"{where}: schedule.knots and schedule.lrs need the same length (at least 2)")
    if schedule.knots[-1] <= 0:
        raise UserError(f"{where}: the stage's epoch count (the last of schedule.knots) must be above 0, "
                        f"not {schedule.knots[-1]:g}")
    if any(b < a for a, b in zip(schedule.knots, schedule.knots[1:])) or schedule.knots[0] < 0:
        raise UserError(f"{where}: schedule.knots must be non-negative and non-decreasing")
    loader = stage.loader
    if loader.workers < 0 or loader.pad < 0 or loader.cutout < 0 or loader.max_groups < 2:
        raise UserError(f"{where}: loader.workers, pad and cutout must be >= 0 and max_groups >= 2")
    if not (0 <= loader.brightness and 0 <= loader.contrast < 1):
        raise UserError(f"{where}: loader.brightness must be >= 0 and loader.contrast in [0, 1)")
    if loader.pad >= loaders.SIZE or loader.cutout > loaders.SIZE:
        raise UserError(f"{where}: loader.pad and loader.cutout must be below the image size {loaders.SIZE}")
    try:
        loaders.check_loader(loader, LoaderSection())
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    opt = stage.optimizer
    if opt.batch_size < 1:
        raise UserError(f"{where}: optimizer.batch_size must be >= 1")
    if not (0 <= opt.momentum < 1 and opt.weight_decay >= 0 and 0 <= opt.label_smoothing < 1):
        raise UserError(f"{where}: optimizer.momentum and label_smoothing must be in [0, 1), weight_decay >= 0")
    if opt.freeze_whitening_bias_after < 0:
        raise UserError(f"{where}: optimizer.freeze_whitening_bias_after must be >= 0")
    if stage.ema.kind != "none" and not (stage.ema.every >= 1 and 0 < stage.ema.momentum < 1):
        raise UserError(f"{where}: ema.every must be >= 1 and ema.momentum in (0, 1)")
    if not 0 < stage.evaluation.tta_fraction <= 1:
        raise UserError(f"{where}: evaluation.tta_fraction must be above 0 and at most 1, "
                        f"not {stage.evaluation.tta_fraction:g}")
    if stage.evaluation.tta_fraction < 1 and stage.evaluation.tta == "none":
        raise UserError(f"{where}: evaluation.tta_fraction = {stage.evaluation.tta_fraction:g} has no effect with "
                        'evaluation.tta = "none" (it chooses which images get the TTA views)')
    if stage.ema.start_epochs < 0:
        raise UserError(f"{where}: ema.start_epochs must be >= 0")
    filtering = stage.filter
    if not (0 < filtering.keep <= 1 and filtering.proxy_step_every >= 1):
        raise UserError(f"{where}: filter.keep must be above 0 and at most 1 (the share of each batch the net "
                        f"trains on), not {filtering.keep:g}, and filter.proxy_step_every >= 1")
    if filtering.keep == 1 and filtering != FilterSection():
        raise UserError(f"{where}: [filter] has no effect with filter.keep = 1 (every image of each batch)")
    if filtering.keep < 1:
        _typed_net({**stage.net, **filtering.proxy_net}, f"{where}: filter.proxy_net")
    if opt.whitening_bias_decay == "linear" and opt.freeze_whitening_bias_after <= 0:
        raise UserError(f'{where}: optimizer.whitening_bias_decay = "linear" needs freeze_whitening_bias_after > 0 '
                        "(the epoch its LR reaches 0)")
    if opt.kind != "muon":
        muon_keys = [f.name for f in dataclasses.fields(opt) if f.name.startswith("muon_")]
        changed = [k for k in muon_keys if getattr(opt, k) != getattr(OptimizerSection(), k)]
        if changed:
            raise UserError(f'{where}: optimizer.{changed[0]} has no effect without optimizer.kind = "muon"')
    if opt.kind == "muon":
        if not (opt.muon_lr > 0 and 0 <= opt.muon_momentum < 1 and opt.muon_ns_steps >= 1):
            raise UserError(f"{where}: Muon needs optimizer.muon_lr > 0, muon_momentum in [0, 1), muon_ns_steps >= 1")
        if len(opt.muon_ns_coefficients) != 3:
            raise UserError(f"{where}: optimizer.muon_ns_coefficients must be three numbers (a, b, c)")
        every = opt.muon_renorm_every
        if len(every) != 2 or not all(float(n).is_integer() and n >= 1 for n in every):
            raise UserError(f"{where}: optimizer.muon_renorm_every must be two whole numbers of steps >= 1 "
                            f"(the interval at the run's start and end), not {list(every)}")
        if opt.muon_weight_decay < 0:
            raise UserError(f"{where}: optimizer.muon_weight_decay must be >= 0")
        try:
            if not opt.muon_batched:  # the batched iteration is the suite's own
                muon.require_muon()
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None


def load_stage(name_or_path: str, where: ConfigDirs | os.PathLike | None = None) -> StageConfig:
    """The stage named (or the .toml file at a path), resolved along its ``extends`` chain and
    checked: any mistake is one UserError naming the file."""
    dirs = _dirs(where)
    raw, files = _resolve(name_or_path, dirs)
    path = files[0]
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("description", "extends"):
            continue
        if key not in _SECTIONS and key != "net":
            raise UserError(f"{path}: unknown config key {key}; valid: description, extends, net, "
                            + ", ".join(_SECTIONS))
        if not isinstance(value, dict):
            raise UserError(f"{path}: [{key}] must be a table")
        sections[key] = _typed_net(value, path) if key == "net" else _typed(_SECTIONS[key], value, path, key)
    stage = StageConfig(name=Path(name_or_path).stem, description=str(raw.get("description", "")),
                        extends=raw.get("extends"), files=files, **sections)
    _check_stage(stage, path)
    return stage


def load_preset(name: str, where: ConfigDirs | os.PathLike | None = None) -> Preset:
    dirs = _dirs(where)
    path = dirs.preset_files().get(name)
    if path is None:
        measuring = dirs.measurement_presets()
        presets = [p for p in available_presets(dirs) if p not in measuring]
        raise UserError(f"unknown preset {name!r}; valid presets: auto, {', '.join(presets)}"
                        + (f"; measurement presets: {', '.join(measuring)}" if measuring else ""))
    preset = _typed(Preset, _read_toml(path), str(path))
    if preset.width_divisor < 1 or preset.epoch_scale <= 0 or (preset.epochs is not None and preset.epochs <= 0):
        raise UserError(f"{path}: epochs and epoch_scale must be > 0 and width_divisor >= 1")
    if any(n is not None and n < 1 for n in (preset.train_images, preset.test_images)):
        raise UserError(f"{path}: train_images and test_images must be >= 1 (leave them out for all images)")
    return dataclasses.replace(preset, name=name, file=str(path))


def load_ladders(where: ConfigDirs | os.PathLike | None = None) -> dict[str, list[str]]:
    """Named ladders: ``name = ["first", "last"]`` in the built-in ladders.toml is that range of
    the chain; ``all`` is the whole chain."""
    dirs = _dirs(where)
    order = available_stages(dirs)
    path = dirs.builtin / "ladders.toml"
    ladders = {}
    for name, ends in (_read_toml(path) if path.exists() else {}).items():
        if not (isinstance(ends, list) and len(ends) == 2 and all(e in order for e in ends)):
            raise UserError(f"{path}: {name} must be [first_stage, last_stage] of known stages")
        first, last = order.index(ends[0]), order.index(ends[1])
        ladders[name] = order[first:last + 1]
    ladders["all"] = order
    return ladders


def run_epochs(preset: Preset, stage: StageConfig) -> float:
    """Epochs this preset trains ``stage`` for, at least one optimiser step's worth."""
    return max(preset.epochs_for(stage), 1e-9)


def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """Training stops after ceil(epochs x steps per epoch) steps (airbench's 9.9 epochs = 476 steps)."""
    return max(1, math.ceil(round(epochs * steps_per_epoch, 6)))
