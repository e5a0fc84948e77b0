"""Data for the autoencoder experiment: m x n float64 matrices, columns are points, centred.

Every loader is a function: nothing is generated or read on import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

DATASETS = ("synthetic", "digits", "cifar")


@dataclass(frozen=True)
class Dataset:
    X: np.ndarray  # m x n, float64, rows centred
    name: str
    description: str

    @property
    def m(self) -> int:
        return self.X.shape[0]

    @property
    def n(self) -> int:
        return self.X.shape[1]


def centre(X: np.ndarray) -> np.ndarray:
    """Subtract the mean point: the principal components are those of the covariance."""
    return X - X.mean(axis=1, keepdims=True)


def default_spectrum(m: int, k: int) -> np.ndarray:
    """Distinct eigenvalues: the top k evenly from 1.5 down to 1, then a gap to a tail 0.5 .. 0.2.

    A small s_1/s_k keeps the GD step (bounded by s_1) efficient for the slow balance mode
    (rate ~ lam/s_1), and the gap s_k/s_{k+1} = 2 makes the subspace converge fast.
    """
    top = np.linspace(1.5, 1.0, k)
    tail = np.linspace(0.5, 0.2, m - k) if m > k else np.empty(0)
    return np.concatenate([top, tail])


SPECTRA = ("geometric", "power")


def named_spectrum(text: str, m: int) -> np.ndarray | None:
    """'geometric[:SPAN]' (s_i from 1 down to 1/SPAN, default 1000) or 'power[:A]' (s_i = i^-A,
    default 1); None when ``text`` names neither (then it is a list of values)."""
    name, _, arg = text.partition(":")
    if name not in SPECTRA:
        return None
    try:
        value = float(arg) if arg else (1e3 if name == "geometric" else 1.0)
    except ValueError:
        raise UserError(f"--spectrum {name}:X wants a number, got {arg!r}") from None
    if not (np.isfinite(value) and value > (1 if name == "geometric" else 0)):
        raise UserError(f"--spectrum {text}: the {'span must be > 1' if name == 'geometric' else 'exponent must be > 0'}")
    if name == "geometric":
        return np.geomspace(1.0, 1.0 / value, m)
    return np.arange(1, m + 1, dtype=np.float64) ** -value


def synthetic(m: int, n: int, k: int, seed: int = 0, eigenvalues=None) -> Dataset:
    """Points whose covariance XX^T/n has EXACTLY the given eigenvalues (random eigenbasis)."""
    if n <= m:
        raise UserError(f"synthetic data needs n > m to have a full-rank covariance (got m={m}, n={n})")
    s = default_spectrum(m, k) if eigenvalues is None else np.asarray(eigenvalues, dtype=np.float64)
    if s.shape != (m,):
        raise UserError(f"--spectrum needs exactly m={m} values, got {s.size}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise UserError("--spectrum values must be finite and positive")
    if len(np.unique(s)) != m:
        raise UserError("--spectrum values must be distinct (the eigenvectors are otherwise not unique)")
    s = np.sort(s)[::-1]
    rng = np.random.default_rng(seed)
    Z = centre(rng.standard_normal((m, n)))
    # Whiten exactly so that ZZ^T/n = I; then X = Q diag(sqrt s) Z has covariance Q diag(s) Q^T.
    evals, evecs = np.linalg.eigh(Z @ Z.T / n)
    Z = (evecs / np.sqrt(evals)) @ evecs.T @ Z
    Q, _ = np.linalg.qr(rng.standard_normal((m, m)))
    X = Q @ (np.sqrt(s)[:, None] * Z)
    return Dataset(centre(X), "synthetic", f"synthetic Gaussian, m={m}, n={n}, seed={seed}, exact spectrum")


def digits() -> Dataset:
    """scikit-learn's 8x8 digits (ships inside the wheel, no download): m=64, n=1797, pixels/16."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError(
            "--data digits needs scikit-learn: pip install -e \".[digits]\""
        ) from None
    images = load_digits().data.astype(np.float64) / 16.0  # n x 64
    return Dataset(centre(images.T), "digits", "sklearn digits, 1797 images of 8x8 pixels / 16")


def cifar(source=None, n: int = 4000, patch: int = 8, seed: int = 0, cache_dir=None) -> Dataset:
    """Random patch x patch x 3 colour patches of CIFAR-10 training images (m = 3 patch^2), /255."""
    try:
        from ..data import load_cifar10
    except ImportError:
        raise UserError("--data cifar needs the project's data layer repro.data.load_cifar10") from None
    if not 1 <= patch <= 32:
        raise UserError(f"--patch must be between 1 and 32, got {patch}")
    arrays = load_cifar10(source, cache_dir=cache_dir)
    images = np.asarray(arrays.train_images)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) == 0:
        raise UserError(f"CIFAR-10 images should be N x 32 x 32 x 3, got {images.shape}")
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(images), size=n)
    rows = rng.integers(0, 32 - patch + 1, size=n)
    cols = rng.integers(0, 32 - patch + 1, size=n)
    offsets = np.arange(patch)
    patches = images[
        which[:, None, None],
        rows[:, None, None] + offsets[None, :, None],
        cols[:, None, None] + offsets[None, None, :],
    ]  # n x patch x patch x 3
    X = patches.reshape(n, -1).astype(np.float64).T / 255.0
    return Dataset(
        centre(X), "cifar",
        f"{n} random {patch}x{patch}x3 patches of {arrays.source_label}, /255",
    )


def load(name: str, *, m: int, n: int, k: int, seed: int = 0, eigenvalues=None,
         cifar_path=None, patch: int = 8) -> Dataset:
    """The data set by name, centred, float64, checked to be finite."""
    if name == "synthetic":
        data = synthetic(m, n, k, seed=seed, eigenvalues=eigenvalues)
    elif name == "digits":
        data = digits()
    elif name == "cifar":
        data = cifar(cifar_path, n=n, patch=patch, seed=seed)
    else:
        raise UserError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    if not np.all(np.isfinite(data.X)):
        raise UserError(f"data set {name!r} contains NaN or infinite values")
    return data
