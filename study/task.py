"""A trial's task cut from CIFAR-10: the trained classes (relabelled 0..K-1 in the order given),
optional class-balanced subsets, and the classes left out, kept as natural OOD probes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import streams
from .data import CIFAR10_CLASSES, Cifar10
from .errors import InputError


@dataclass
class Task:
    classes: list[str]                  # trained classes, in label order
    heldout: list[str]                  # CIFAR-10 classes not trained on
    train_x: np.ndarray                 # uint8 (N, 32, 32, 3)
    train_y: np.ndarray                 # int64 labels 0..K-1
    test_x: np.ndarray                  # test images of the trained classes
    test_y: np.ndarray
    heldout_x: dict[str, np.ndarray]    # held-out class -> its test images


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator, where: str) -> np.ndarray:
    """Sorted indices of n images, as equal per class as n allows (the first classes in label
    order take the remainder), drawn without replacement."""
    values = np.unique(labels)
    quota = np.full(len(values), n // len(values))
    quota[: n % len(values)] += 1
    picked = []
    for v, q in zip(values, quota):
        pool = np.flatnonzero(labels == v)
        if q > len(pool):
            raise InputError(where, f"asks for {q} images per class ({n} over {len(values)} classes); a class has "
                             f"only {len(pool)}", f"at most {len(pool) * len(values)}", n)
        picked.append(rng.choice(pool, size=q, replace=False))
    return np.sort(np.concatenate(picked))


def check_task(data: Cifar10, cfg: dict, classes: list[str]) -> None:
    """The checks make_task and the trainer would fail on, without copying any images."""
    counts = np.bincount(data.train_y, minlength=10)[[CIFAR10_CLASSES.index(c) for c in classes]]
    n_train = int(counts.sum())
    if cfg["train_subset"] is not None:
        quota = -(-cfg["train_subset"] // len(classes))
        if quota > counts.min():
            raise InputError("train_subset", f"asks for {quota} images per class ({cfg['train_subset']} over "
                             f"{len(classes)} classes); a class has only {counts.min()}",
                             f"at most {counts.min() * len(classes)}", cfg["train_subset"])
        n_train = cfg["train_subset"]
    if cfg["batch_size"] > n_train:
        raise InputError("batch_size", f"larger than the {n_train} training images",
                         f"1 <= batch_size <= {n_train}", cfg["batch_size"])
    if cfg["test_subset"] is not None:
        tests = np.bincount(data.test_y, minlength=10)[[CIFAR10_CLASSES.index(c) for c in classes]]
        quota = -(-cfg["test_subset"] // len(classes))
        if quota > tests.min():
            raise InputError("test_subset", f"asks for {quota} test images per class ({cfg['test_subset']} over "
                             f"{len(classes)} classes); a class has only {tests.min()}",
                             f"at most {tests.min() * len(classes)}", cfg["test_subset"])


def make_task(data: Cifar10, classes: list[str], seed: int, noise_seed: int,
              train_subset: int | None = None, test_subset: int | None = None) -> Task:
    ids = [CIFAR10_CLASSES.index(c) for c in classes]
    remap = np.full(10, -1)
    remap[ids] = np.arange(len(ids))

    train_keep = np.flatnonzero(np.isin(data.train_y, ids))
    if train_subset is not None:
        rng = streams.numpy_rng("train_subset", seed)  # the subset is part of the seed's randomness
        train_keep = train_keep[balanced_subset(data.train_y[train_keep], train_subset, rng, "train_subset")]
    test_rng = streams.numpy_rng("test_subset", noise_seed)  # the same test images in every trial
    test_keep = np.flatnonzero(np.isin(data.test_y, ids))
    per_class = None
    if test_subset is not None:
        test_keep = test_keep[balanced_subset(data.test_y[test_keep], test_subset, test_rng, "test_subset")]
        per_class = max(1, test_subset // len(ids))

    heldout = [c for c in CIFAR10_CLASSES if c not in classes]
    heldout_x = {}
    for c in heldout:
        pool = np.flatnonzero(data.test_y == CIFAR10_CLASSES.index(c))
        if per_class is not None and per_class < len(pool):
            pool = np.sort(test_rng.choice(pool, size=per_class, replace=False))
        heldout_x[c] = data.test_x[pool]
    if len(train_keep) == 0 or len(test_keep) == 0:
        raise InputError("data source", "no images of the trained classes", "a complete copy")
    return Task(classes=list(classes), heldout=heldout,
                train_x=data.train_x[train_keep], train_y=remap[data.train_y[train_keep]],
                test_x=data.test_x[test_keep], test_y=remap[data.test_y[test_keep]],
                heldout_x=heldout_x)
