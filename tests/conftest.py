"""Shared fixtures: tiny CIFAR-10-shaped data made by the tests, a private cache folder, and the
real CIFAR-10 tar where it exists."""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from study.data import CIFAR10_CLASSES  # noqa: E402

SHARED_TAR = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar"


def class_images(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n 32x32 RGB images whose colour and stripe orientation depend on the class, plus noise:
    learnable in one epoch, so tests can check that training does something."""
    base = np.zeros((32, 32, 3))
    base[..., label % 3] = 0.5 + 0.04 * label
    yy, xx = np.mgrid[0:32, 0:32]
    stripes = np.sin((yy if label % 2 else xx) * (0.3 + 0.1 * label))[..., None]
    imgs = base + 0.25 * stripes + rng.normal(0, 0.12, (n, 32, 32, 3))
    return (np.clip(imgs, 0, 1) * 255).astype(np.uint8)


def write_torchvision_folder(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A `cifar-10-batches-py` folder in torchvision's pickle format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n_per_class):
        xs = np.concatenate([class_images(c, n_per_class, rng) for c in range(10)])
        ys = np.repeat(np.arange(10), n_per_class)
        order = rng.permutation(len(ys))
        return {b"data": xs[order].transpose(0, 3, 1, 2).reshape(len(ys), -1), b"labels": ys[order].tolist()}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)
    return folder


def write_image_tree(root: Path, n_train: int, n_test: int, seed: int = 0, size: int = 32) -> Path:
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, cls in enumerate(CIFAR10_CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i, img in enumerate(class_images(label, n, rng)):
                im = Image.fromarray(img)
                if size != 32:
                    im = im.resize((size, size))
                im.save(root / split / cls / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Decoded arrays go to a test-only cache, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("NOISESINK_CACHE")
    os.environ["NOISESINK_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("NOISESINK_CACHE", None)
    else:
        os.environ["NOISESINK_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """60 train + 20 test images per class (torchvision format); data_verify: shapes."""
    return write_torchvision_folder(tmp_path_factory.mktemp("tiny"), n_train=60, n_test=20)


@pytest.fixture
def tiny_config(tiny_data):
    def make(**overrides):
        cfg = {"model": "small_cnn", "epochs": 1, "batch_size": 50, "lr": 0.05, "n_noise": 40,
               "n_trajectory": 20, "eval_batch_size": 256, "data_root": str(tiny_data),
               "data_verify": "shapes", "device": "cpu", "threads": 1, "sample_per_class": 20,
               "n_frequency": 40}
        cfg.update(overrides)
        return cfg
    return make


@pytest.fixture(scope="session")
def real_tar() -> Path:
    env = os.environ.get("NOISESINK_DATA")
    for candidate in (env, SHARED_TAR):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.skip("real CIFAR-10 not available (set NOISESINK_DATA to cifar10-jpg.tar)")
