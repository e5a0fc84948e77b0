import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from repro import data as data_mod
from repro.data import CLASSES, RestrictedUnpickler, load_cifar10, make_synthetic
from repro.errors import UserError

from conftest import SHARED_ARCHIVE, write_fake_cifar


def test_official_pickles_load_with_channel_order(fake_cifar, cache_dir):
    d = load_cifar10(fake_cifar.parent, cache_dir)
    assert d.train_images.shape == (100, 32, 32, 3) and d.train_images.dtype == np.uint8
    assert d.test_images.shape == (20, 32, 32, 3)
    with open(fake_cifar / "data_batch_1", "rb") as fh:
        raw = pickle.load(fh)
    row = raw["data"][0]
    # rows hold 1024 R, then 1024 G, then 1024 B values of row-major planes
    assert d.train_images[0, 0, 1, 0] == row[1]
    assert d.train_images[0, 2, 3, 1] == row[1024 + 2 * 32 + 3]
    assert list(d.train_labels[:20]) == raw["labels"]
    assert not d.synthetic and "official" in d.source_label


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_protocols_both_accepted(tmp_path, cache_dir, protocol):
    src = write_fake_cifar(tmp_path / f"p{protocol}", protocol=protocol)
    assert load_cifar10(src, cache_dir).train_images.shape[0] == 100


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_refused_without_running_it(fake_cifar, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(fake_cifar / "data_batch_3", "wb") as fh:
        pickle.dump({"data": _Exploit(), "labels": []}, fh, protocol=2)
    with pytest.raises(UserError, match=r"data_batch_3: unsafe pickle refused .*refused global (posix|os)\.system"):
        load_cifar10(fake_cifar, cache_dir)
    assert not (tmp_path / "pwned").exists()


def test_restricted_unpickler_refuses_builtins_eval():
    payload = pickle.dumps(eval)  # a global reference to builtins.eval
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        RestrictedUnpickler(io.BytesIO(payload)).load()


def test_truncated_pickle_is_a_clear_error(fake_cifar, cache_dir):
    path = fake_cifar / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="test_batch: corrupt CIFAR-10 batch file"):
        load_cifar10(fake_cifar, cache_dir)


def test_wrong_shapes_rejected(fake_cifar, cache_dir):
    with open(fake_cifar / "data_batch_2", "wb") as fh:
        pickle.dump({"data": np.zeros((5, 100), np.uint8), "labels": [0] * 5}, fh)
    with pytest.raises(UserError, match=r"'data' must be uint8 \(n, 3072\)"):
        load_cifar10(fake_cifar, cache_dir)


def test_missing_batch_named(fake_cifar, cache_dir):
    (fake_cifar / "data_batch_4").unlink()
    with pytest.raises(UserError, match="missing data_batch_4"):
        load_cifar10(fake_cifar, cache_dir)


def test_missing_path_names_the_options(tmp_path, cache_dir):
    with pytest.raises(UserError, match="no such file or directory.*cifar-10-batches-py.*synthetic"):
        load_cifar10(tmp_path / "nope", cache_dir)


def test_failed_download_names_three_options(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError) as err:
        load_cifar10(None, tmp_path / "empty-cache")
    msg = str(err.value)
    assert "download failed" in msg and "cifar-10-batches-py" in msg and ".tar.gz" in msg and "'synthetic'" in msg


def test_decoded_arrays_are_cached_and_reused(fake_cifar, cache_dir, monkeypatch):
    first = load_cifar10(fake_cifar, cache_dir)
    assert len(list(cache_dir.glob("cifar10-*.npz"))) == 1

    def must_not_decode(*a):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data_mod, "_load_pickles", must_not_decode)
    second = load_cifar10(fake_cifar, cache_dir)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    # a changed source has a different content key, so it is decoded afresh
    with open(fake_cifar / "data_batch_1", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar10(fake_cifar, cache_dir)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _image_tree(rng):
    files = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "airplane"):
            for i in range(n):
                files[f"{split}/{cls}/{i:04d}.png"] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return files


def test_image_folder_and_archive_give_the_same_arrays(tmp_path, cache_dir):
    files = _image_tree(np.random.default_rng(1))
    root = tmp_path / "tree"
    for name, arr in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_png(arr))
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar10")
    from_dir = load_cifar10(root, cache_dir)
    from_tar = load_cifar10(archive, cache_dir)
    for d in (from_dir, from_tar):
        assert d.train_images.shape == (6, 32, 32, 3) and d.test_images.shape == (4, 32, 32, 3)
        # labels follow the class names: airplane is 0 and cat is 3, even with 8 classes missing
        assert list(d.train_labels) == [0, 0, 0, 3, 3, 3] and list(d.test_labels) == [0, 0, 3, 3]
        assert [CLASSES[i] for i in d.train_labels] == ["airplane"] * 3 + ["cat"] * 3
        np.testing.assert_array_equal(d.train_images[0], files["train/airplane/0000.png"])
    np.testing.assert_array_equal(from_dir.test_images, from_tar.test_images)


def _write_tree(root, classes, n=2):
    for split in ("train", "test"):
        for i, cls in enumerate(classes):
            for j in range(n):
                path = root / split / cls / f"{j}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_png(np.full((32, 32, 3), 10 * i + j, np.uint8)))


def test_partial_class_folder_keeps_cifar_labels(tmp_path, cache_dir):
    _write_tree(tmp_path / "tree", ["truck", "dog", "cat"])
    d = load_cifar10(tmp_path / "tree", cache_dir)
    assert sorted(set(d.train_labels.tolist())) == [3, 5, 9]
    for images, labels in ((d.train_images, d.train_labels), (d.test_images, d.test_labels)):
        # each image's pixel value says which folder it came from: cat 20.., dog 10.., truck 0..
        folder = {0: "truck", 1: "dog", 2: "cat"}
        assert [CLASSES[y] for y in labels] == [folder[int(x[0, 0, 0]) // 10] for x in images]


def test_other_class_names_are_numbered_in_sorted_order(tmp_path, cache_dir):
    _write_tree(tmp_path / "tree", ["zebra", "apple"], n=1)
    d = load_cifar10(tmp_path / "tree", cache_dir)
    assert d.train_labels.tolist() == [0, 1] and d.train_images[:, 0, 0, 0].tolist() == [10, 0]
    _write_tree(tmp_path / "many", [f"c{i:02d}" for i in range(11)], n=1)
    with pytest.raises(UserError, match="11 class folders, but the nets here have 10 outputs"):
        load_cifar10(tmp_path / "many", cache_dir)


def test_arrays_cached_with_the_old_renumbering_are_not_reused(tmp_path, cache_dir):
    root = tmp_path / "tree"
    _write_tree(root, ["cat"], n=1)
    # what the old code cached for this folder: the same content key, cat renumbered to 0
    stale = cache_dir / f"cifar10-{data_mod._content_key(root)}.npz"
    stale.parent.mkdir(parents=True)
    img = np.zeros((1, 32, 32, 3), np.uint8)
    np.savez(stale, train_x=img, train_y=np.zeros(1, np.int64), test_x=img, test_y=np.zeros(1, np.int64))
    assert load_cifar10(root, cache_dir).train_labels.tolist() == [3]


def test_archive_without_test_split_is_rejected(tmp_path, cache_dir):
    archive = tmp_path / "half.tar.gz"
    blob = _png(np.zeros((32, 32, 3), np.uint8))
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("train/cat/0.png")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(UserError, match="no images under test/"):
        load_cifar10(archive, cache_dir)


def test_synthetic_is_labelled_learnable_and_seeded():
    a, b = make_synthetic(200, 100, seed=3), make_synthetic(200, 100, seed=3)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert a.synthetic and "SYNTHETIC" in a.source_label
    assert set(np.unique(a.train_labels)) == set(range(10))
    # the class signal: per-class mean images differ far more than noise would make them
    means = np.stack([a.train_images[a.train_labels == c].mean(0) for c in range(10)])
    assert means.std(0).mean() > 10


def test_subset_is_deterministic_and_sized():
    d = make_synthetic(300, 100, seed=0)
    s1, s2 = d.subset(50, 20, seed=5), d.subset(50, 20, seed=5)
    assert s1.train_images.shape[0] == 50 and s1.test_images.shape[0] == 20
    np.testing.assert_array_equal(s1.train_labels, s2.train_labels)
    assert "subset 50 train / 20 test" in s1.source_label


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason="../shared/data/cifar10-jpeg.tar.gz not present")
def test_real_jpeg_archive(tmp_path):
    d = load_cifar10(SHARED_ARCHIVE, tmp_path)
    assert d.train_images.shape == (50000, 32, 32, 3) and d.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(d.train_labels).tolist() == [5000] * 10
    # channel means of the decoded training set, from the archive's README
    np.testing.assert_allclose(d.train_images.reshape(-1, 3).mean(0) / 255, [0.4913, 0.4821, 0.4465], atol=2e-3)
    assert CLASSES[d.train_labels[0]] == "airplane"
