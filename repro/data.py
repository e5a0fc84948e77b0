"""CIFAR-10 from any of three sources, decoded once and cached as uint8 arrays.

Sources (``--data``):

1. the official torchvision layout, a directory holding ``cifar-10-batches-py/`` (or that
   directory itself); with no ``--data`` at all, torchvision's download into the cache;
2. an image-folder tree ``train|test/<class>/*.jpg|png``, or a ``.tar.gz`` of one;
3. ``synthetic``: generated CIFAR-shaped images with a learnable signal, for tests and
   offline demos. Every output that used it says so.

The official pickles are read with a restricted unpickler that admits only builtin
containers and numpy arrays; torchvision's md5 check is not relied on (it rejects any
partial or re-packed copy, and says nothing about what the pickle may execute).
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .runlog import write_whole

SYNTHETIC = "synthetic"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def default_cache_dir() -> Path:
    """``$REPRO_CACHE`` or ``~/.cache/repro``: downloads and decoded arrays live here."""
    env = os.environ.get("REPRO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "repro"


@dataclass(frozen=True)
class CifarArrays:
    """Decoded CIFAR-10: images are uint8 (N, 32, 32, 3), labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source_label: str
    synthetic: bool = False

    def subset(self, n_train: int | None, n_test: int | None, seed: int = 0) -> "CifarArrays":
        """A class-balanced-in-expectation random subset (the same for the same seed)."""
        rng = np.random.default_rng(seed)

        def pick(images, labels, n):
            if n is None or n >= len(labels):
                return images, labels
            idx = np.sort(rng.permutation(len(labels))[:n])
            return images[idx], labels[idx]

        tr_x, tr_y = pick(self.train_images, self.train_labels, n_train)
        te_x, te_y = pick(self.test_images, self.test_labels, n_test)
        label = self.source_label
        if (n_train, n_test) != (None, None):
            label += f" (subset {len(tr_y)} train / {len(te_y)} test)"
        return CifarArrays(tr_x, tr_y, te_x, te_y, label, self.synthetic)


# ----------------------------------------------------------------------------------------
# Restricted unpickling of the official batches


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside the allow-list: possibly code execution."""


def _latin1_encode(text, encoding="latin1"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if encoding != "latin1":
        raise RefusedGlobal(f"refused codec {encoding!r} in pickle")
    return codecs.encode(text, "latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Admits builtin containers (built by opcodes) and numpy arrays; refuses any other global."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise RefusedGlobal(f"refused global {module}.{name}")


def load_batch_file(path: Path) -> dict:
    """One official batch file as a dict with str keys (``data``, ``labels``, ...)."""
    try:
        with open(path, "rb") as fh:
            obj = RestrictedUnpickler(fh, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise UserError(f"{path}: unsafe pickle refused ({exc}); only containers and numpy arrays are loaded") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise UserError(f"{path}: corrupt CIFAR-10 batch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict in the pickle, found {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_batch_file(path)
    labels = batch.get("labels", batch.get("fine_labels"))
    data = batch.get("data")
    if data is None or labels is None:
        raise UserError(f"{path}: CIFAR-10 batch must hold 'data' and 'labels', has {sorted(batch)}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: 'data' must be uint8 (n, 3072), found {data.dtype} {data.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise UserError(f"{path}: 'labels' must be {len(data)} ints in 0..9")
    # rows are 1024 R, 1024 G, 1024 B values of row-major 32x32 planes
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _find_batches_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / TEST_BATCH).exists() or (candidate / TRAIN_BATCHES[0]).exists():
            return candidate
    return None


def _load_pickles(batches_dir: Path) -> tuple[np.ndarray, ...]:
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (batches_dir / n).exists()]
    if missing:
        raise UserError(f"{batches_dir}: incomplete CIFAR-10 copy, missing {', '.join(missing)}")
    parts = [_batch_arrays(batches_dir / n) for n in TRAIN_BATCHES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _batch_arrays(batches_dir / TEST_BATCH)
    return train_x, train_y, test_x, test_y


# ----------------------------------------------------------------------------------------
# Image folders (a directory or a tar archive of one)


def _class_labels(names: set[str], origin: str) -> dict[str, int]:
    """Label of each class folder. CIFAR-10 names keep CIFAR-10's labels even when only some
    classes are present (cat is 3 = ``CLASSES.index("cat")`` with or without airplanes);
    any other names are numbered in sorted order."""
    if names <= set(CLASSES):
        return {c: CLASSES.index(c) for c in names}
    if len(names) > len(CLASSES):
        raise UserError(f"{origin}: {len(names)} class folders, but the nets here have {len(CLASSES)} outputs")
    return {c: i for i, c in enumerate(sorted(names))}


def _decode(blob: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{where}: cannot decode image ({exc})") from None
    if arr.shape != (32, 32, 3):
        raise UserError(f"{where}: expected a 32x32 RGB image, found {arr.shape}")
    return arr


def _assemble(entries: dict[str, list[tuple[str, str, bytes]]], origin: str) -> tuple[np.ndarray, ...]:
    """entries[split] = [(class, name, bytes)] -> arrays with labels from the class names."""
    for split in ("train", "test"):
        if not entries.get(split):
            raise UserError(f"{origin}: no images under {split}/<class>/ (expected train/ and test/)")
    index = _class_labels({c for split in entries.values() for c, _, _ in split}, origin)
    out = []
    for split in ("train", "test"):
        items = sorted(entries[split], key=lambda e: (index[e[0]], e[1]))
        images = np.stack([_decode(blob, f"{origin}:{split}/{c}/{n}") for c, n, blob in items])
        labels = np.array([index[c] for c, _, _ in items], dtype=np.int64)
        out += [images, labels]
    return tuple(out)


def _split_member(parts: tuple[str, ...]):
    """('.../train/cat/0001.jpg') -> ('train', 'cat', '0001.jpg') or None."""
    parts = tuple(p for p in parts if p not in ("", "."))
    if len(parts) < 3 or parts[-3] not in ("train", "test"):
        return None
    if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return parts[-3], parts[-2], parts[-1]


def _load_folder(root: Path) -> tuple[np.ndarray, ...]:
    entries: dict[str, list] = {"train": [], "test": []}
    for file in root.rglob("*"):
        key = _split_member(file.relative_to(root).parts) if file.is_file() else None
        if key:
            entries[key[0]].append((key[1], key[2], file.read_bytes()))
    return _assemble(entries, str(root))


def _load_archive(path: Path) -> tuple[np.ndarray, ...]:
    entries: dict[str, list] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                key = _split_member(tuple(member.name.split("/"))) if member.isfile() else None
                if key:
                    entries[key[0]].append((key[1], key[2], tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{path}: cannot read archive ({exc})") from None
    return _assemble(entries, str(path))


# ----------------------------------------------------------------------------------------
# Synthetic data


def make_synthetic(n_train: int = 5000, n_test: int = 1000, seed: int = 0) -> CifarArrays:
    """CIFAR-shaped images whose class shows as a smooth colour pattern under noise.

    The pattern is low-frequency, so a 4-pixel crop shift or a flip keeps it recognisable:
    a small net learns it in an epoch or two, and chance stays at 10%.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    templates = []
    for _ in CLASSES:
        fy, fx = rng.uniform(0.5, 2.0, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=3)
        colour = rng.uniform(-1, 1, size=3)
        wave = np.stack([np.sin(2 * np.pi * (fy * yy + fx * np.abs(xx - 0.5)) + p) for p in phase], -1)
        templates.append(0.5 * colour + 0.5 * wave)
    templates = np.stack(templates)  # (10, 32, 32, 3), in about [-1, 1]

    def draw(n):
        labels = rng.integers(0, len(CLASSES), size=n)
        noise = rng.normal(0, 0.6, size=(n, 32, 32, 3))
        images = 128 + 48 * (templates[labels] + noise)
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    label = f"SYNTHETIC (generated, seed {seed}, not CIFAR-10)"
    return CifarArrays(train_x, train_y, test_x, test_y, label, synthetic=True)


# ----------------------------------------------------------------------------------------
# Entry point with the decode-once cache


# Part of an image folder's cache key: bumped when the folder -> labels mapping changes, so
# arrays cached under an older mapping (v1 renumbered partial class sets) are never reused.
FOLDER_LABELS_VERSION = "labels-v2"


def _content_key(path: Path, salt: str = "") -> str:
    """sha256 over the bytes of every file the source consists of (names included)."""
    digest = hashlib.sha256(salt.encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:20]


def _cached(cache_dir: Path, key: str, label: str, loader) -> CifarArrays:
    cache_file = cache_dir / f"cifar10-{key}.npz"
    if cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                return CifarArrays(z["train_x"], z["train_y"], z["test_x"], z["test_y"], label)
        except (OSError, ValueError, KeyError, EOFError):
            cache_file.unlink(missing_ok=True)  # a damaged cache is rebuilt, not trusted
    train_x, train_y, test_x, test_y = loader()
    write_whole(cache_file, lambda fh: np.savez(fh, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y))
    return CifarArrays(train_x, train_y, test_x, test_y, label)


def _download(cache_dir: Path) -> Path:
    """torchvision's download into the cache; returns the batches directory."""
    import torchvision

    try:
        torchvision.datasets.CIFAR10(root=str(cache_dir), train=True, download=True)
    except Exception as exc:  # network errors come in many types (URLError, OSError, ...)
        raise UserError(
            f"no CIFAR-10 found in {cache_dir} and the download failed ({type(exc).__name__}). "
            "Pass --data with one of: (1) a directory holding cifar-10-batches-py/ "
            "(the official python version), (2) an image-folder tree or .tar.gz of one "
            "(train|test/<class>/*.png|jpg), or (3) 'synthetic' for generated data"
        ) from None
    return cache_dir / "cifar-10-batches-py"


def load_cifar10(
    source: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    synthetic_sizes: tuple[int, int] = (5000, 1000),
    seed: int = 0,
) -> CifarArrays:
    """Load CIFAR-10 from ``source`` (see the module docstring); decode once and cache."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source is not None and str(source) == SYNTHETIC:
        return make_synthetic(*synthetic_sizes, seed=seed)
    if source is None:
        batches = _find_batches_dir(cache)
        if batches is None:
            if not download:
                raise UserError(f"no CIFAR-10 in {cache} and downloading is off")
            batches = _download(cache)
        path = batches
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(
                f"--data {source}: no such file or directory. Use a directory holding "
                "cifar-10-batches-py/, an image folder or .tar.gz of one, or 'synthetic'"
            )
    batches = _find_batches_dir(path) if path.is_dir() else None
    if batches is not None:
        key = _content_key(batches)
        return _cached(cache, key, f"official CIFAR-10 pickles at {batches}", lambda: _load_pickles(batches))
    if path.is_dir():
        key = _content_key(path, FOLDER_LABELS_VERSION)
        return _cached(cache, key, f"image folder {path}", lambda: _load_folder(path))
    if tarfile.is_tarfile(path):
        key = _content_key(path, FOLDER_LABELS_VERSION)
        return _cached(cache, key, f"image archive {path.name}", lambda: _load_archive(path))
    raise UserError(
        f"--data {source}: not a CIFAR-10 source (expected a directory with cifar-10-batches-py/, "
        "an image folder, a .tar.gz of one, or 'synthetic')"
    )
