import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

SHARED_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def write_fake_cifar(root: Path, per_batch: int = 20, protocol: int = 2, seed: int = 0) -> Path:
    """The official python layout (cifar-10-batches-py/) with tiny random batches."""
    rng = np.random.default_rng(seed)
    out = root / "cifar-10-batches-py"
    out.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
            "filenames": [f"img{i}.png" for i in range(per_batch)],
        }
        with open(out / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
    with open(out / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"]}, fh, protocol=protocol)
    return out


@pytest.fixture
def fake_cifar(tmp_path):
    return write_fake_cifar(tmp_path / "src")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("REPRO_CACHE", str(d))
    return d


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_not_ignored():
    """A runner started in the background (`cmd &` in a script) inherits SIGINT ignored, and so does every
    process it starts; the signal tests need Ctrl-C to behave as it does in a terminal."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def assert_close_to_scale(actual, expected, *, rel: float = 1e-5, rtol: float = 1e-4, msg=None):
    """assert_close with an absolute tolerance relative to the scale of ``expected`` (its largest
    magnitude): summation order moves float32 results by a few ulps of the largest term, which
    a bare absolute tolerance mistakes for a difference on a tensor with large entries."""
    import torch

    expected = torch.as_tensor(expected)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(torch.as_tensor(actual), expected, rtol=rtol, atol=rel * scale, msg=msg)
