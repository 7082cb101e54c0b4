"""Data sources, the decode cache, verification, bad data, task cutting."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from conftest import ROOT, write_image_tree, write_torchvision_folder
from study import data as data_mod
from study.data import CIFAR10_CLASSES, load_cifar10, resolve_source
from study.errors import InputError
from study.task import make_task


def fresh_load(root, verify="shapes"):
    load_cifar10.cache_clear()
    return load_cifar10(str(root), verify)


def test_torchvision_folder_loads_and_caches_outside_the_source(tiny_data, private_cache):
    d = fresh_load(tiny_data)
    assert d.train_x.shape == (600, 32, 32, 3) and d.train_x.dtype == np.uint8
    assert d.test_x.shape == (200, 32, 32, 3)
    assert np.bincount(d.train_y).tolist() == [60] * 10
    assert d.kind == "torchvision"
    cached = list(private_cache.glob("cifar10-*.npz"))
    assert cached and not list(tiny_data.glob("*.npz"))


def test_tree_and_tar_decode_to_the_same_arrays(tmp_path):
    tree = write_image_tree(tmp_path / "tree", 3, 2)
    tar_path = tmp_path / "data.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
    a, b = fresh_load(tree), fresh_load(tar_path)
    assert (a.kind, b.kind) == ("tree", "tar")
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert a.train_y.tolist() == sorted(a.train_y.tolist())  # CIFAR-10 label order


def test_device_packing_round_trips_to_the_same_arrays(tmp_path):
    """benchmarks/device_data.py: tar -> JPEG-bytes .npz (small enough to carry) -> tar."""
    import runpy
    tool = runpy.run_path(str(ROOT / "benchmarks" / "device_data.py"))
    tree = write_image_tree(tmp_path / "tree", 3, 2)
    tar_path = tmp_path / "data.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
    tool["pack"](str(tar_path), str(tmp_path / "blob.npz"))
    tool["unpack"](str(tmp_path / "blob.npz"), str(tmp_path / "back.tar"))
    a, b = fresh_load(tar_path), fresh_load(tmp_path / "back.tar")
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)


def test_full_verification_names_what_is_off(tmp_path):
    tree = write_image_tree(tmp_path / "t", 2, 1)
    with pytest.raises(InputError, match=r"train split is not all of CIFAR-10.*airplane: 2.*expected 5000 per class"):
        fresh_load(tree, verify="full")


def test_modified_torchvision_copy_fails_the_md5_check(tiny_data):
    with pytest.raises(InputError, match="md5 differs"):
        fresh_load(tiny_data.parent, verify="full")


def test_missing_class_folder(tmp_path):
    tree = write_image_tree(tmp_path / "t", 1, 1)
    for f in (tree / "test" / "frog").iterdir():
        f.unlink()
    (tree / "test" / "frog").rmdir()
    with pytest.raises(InputError, match=r"test/.*missing class folder\(s\) frog"):
        fresh_load(tree)


def test_unknown_class_folder(tmp_path):
    tree = write_image_tree(tmp_path / "t", 1, 1)
    (tree / "train" / "unicorn").mkdir()
    (tree / "train" / "unicorn" / "x.png").write_bytes((tree / "train" / "cat" / "0000.png").read_bytes())
    with pytest.raises(InputError, match="unicorn.*unknown class folder"):
        fresh_load(tree)


def test_wrong_image_size(tmp_path):
    tree = write_image_tree(tmp_path / "t", 1, 1, size=28)
    with pytest.raises(InputError, match=r"0000\.png.*28x28, CIFAR-10 images are 32x32"):
        fresh_load(tree)


def test_tar_with_path_traversal_is_refused(tmp_path):
    tree = write_image_tree(tmp_path / "t", 1, 1)
    tar_path = tmp_path / "evil.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(tree / "train", arcname="train")
        payload = b"gotcha"
        info = tarfile.TarInfo("../x")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(InputError, match=r"\.\./x.*unsafe tar member refused"):
        fresh_load(tar_path)
    assert not (tmp_path.parent / "x").exists()


def test_data_root_that_does_not_exist():
    with pytest.raises(InputError, match=r"data_root: no such file or folder.*NOISESINK_DATA"):
        resolve_source("/no/such/place")


def test_environment_variable_is_used_when_config_is_silent(tiny_data, monkeypatch):
    monkeypatch.setenv("NOISESINK_DATA", str(tiny_data))
    assert resolve_source(None) == ("torchvision", tiny_data)


def test_offline_with_nothing_found_says_how_to_point_at_a_copy(monkeypatch, tmp_path):
    monkeypatch.delenv("NOISESINK_DATA", raising=False)
    monkeypatch.setenv("NOISESINK_CACHE", str(tmp_path / "empty"))
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise OSError("Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    load_cifar10.cache_clear()
    with pytest.raises(InputError, match=r"download failed.*NOISESINK_DATA"):
        load_cifar10(None)


def test_channel_stats_match_numpy(tiny_data):
    d = fresh_load(tiny_data)
    mean, std = d.channel_stats()
    x = d.train_x.reshape(-1, 3) / 255
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-8)


# ---------------------------------------------------------------- tasks

def test_subset_labels_follow_the_given_order_and_the_rest_is_held_out(tiny_data):
    d = fresh_load(tiny_data)
    task = make_task(d, ["dog", "cat"], seed=0, noise_seed=0)
    assert task.classes == ["dog", "cat"]
    assert task.heldout == [c for c in CIFAR10_CLASSES if c not in ("dog", "cat")]
    dog, cat = CIFAR10_CLASSES.index("dog"), CIFAR10_CLASSES.index("cat")
    np.testing.assert_array_equal(task.train_x[task.train_y == 0], d.train_x[d.train_y == dog])
    np.testing.assert_array_equal(task.test_x[task.test_y == 1], d.test_x[d.test_y == cat])
    np.testing.assert_array_equal(task.heldout_x["horse"], d.test_x[d.test_y == CIFAR10_CLASSES.index("horse")])


def test_train_subset_is_balanced_and_seeded(tiny_data):
    d = fresh_load(tiny_data)
    a = make_task(d, list(CIFAR10_CLASSES), seed=1, noise_seed=0, train_subset=105)
    b = make_task(d, list(CIFAR10_CLASSES), seed=1, noise_seed=0, train_subset=105)
    c = make_task(d, list(CIFAR10_CLASSES), seed=2, noise_seed=0, train_subset=105)
    assert len(a.train_y) == 105
    assert sorted(np.bincount(a.train_y).tolist()) == [10] * 5 + [11] * 5
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert not np.array_equal(a.train_x, c.train_x)


def test_test_subset_depends_on_noise_seed_only(tiny_data):
    d = fresh_load(tiny_data)
    a = make_task(d, ["cat", "dog"], seed=1, noise_seed=3, test_subset=10)
    b = make_task(d, ["cat", "dog"], seed=9, noise_seed=3, test_subset=10)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    assert np.bincount(a.test_y).tolist() == [5, 5]
    assert all(len(v) == 5 for v in a.heldout_x.values())


def test_subset_larger_than_a_class(tiny_data):
    d = fresh_load(tiny_data)
    with pytest.raises(InputError, match="train_subset.*only 60"):
        make_task(d, ["cat", "dog"], seed=0, noise_seed=0, train_subset=500)


def test_cache_is_keyed_by_source_checksum(tmp_path, private_cache):
    a = write_torchvision_folder(tmp_path / "a", 10, 5, seed=1)
    b = write_torchvision_folder(tmp_path / "b", 10, 5, seed=2)
    da, db = fresh_load(a), fresh_load(b)
    assert da.checksum != db.checksum
    assert not np.array_equal(da.train_x, db.train_x)
    assert data_mod.source_checksum("torchvision", a) == da.checksum
