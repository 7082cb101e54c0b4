"""Bad input costs seconds, not GPU-hours: one table of cases, each refused by `study check` /
`study sweep` / `study trial` with exit code 2 and one message that names the key or file, the
bad value and what is allowed; nothing is started and nothing is written to the storage."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import write_image_tree
from study.__main__ import main


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-data")
    missing = write_image_tree(root / "missing-class", 1, 1)
    for f in (missing / "train" / "deer").iterdir():
        f.unlink()
    (missing / "train" / "deer").rmdir()
    small = write_image_tree(root / "small-images", 1, 1, size=24)
    good = write_image_tree(root / "good", 1, 1)
    evil = root / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        tf.add(good / "train", arcname="train")
        info = tarfile.TarInfo("../x")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    return {"missing": missing, "small": small, "evil": evil}


def base_sweep(tiny_data, storage) -> dict:
    return {"name": "bad",
            "trial": {"model": "small_cnn", "epochs": 1, "batch_size": 20, "n_noise": 20, "n_trajectory": 10,
                      "data_root": str(tiny_data), "data_verify": "shapes", "device": "cpu"},
            "grid": {"seed": [0, 1]},
            "resources": {"cpu": 1, "gpu": 0},
            "run": {"storage": str(storage)}}


def edit(path: str, value):
    def apply(sweep, data):
        node = sweep
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value(data) if callable(value) else value
    return apply


def drop(path: str):
    def apply(sweep, data):
        section, key = path.split(".")
        sweep[section].pop(key)
    return apply


CASES = {  # id: (change to a valid sweep, or raw file text; extra CLI args; text the message must hold)
    "yaml syntax error": ("name: bad\ngrid: {seed: [0, 1\n", [], "YAML syntax error"),
    "empty file": ("", [], "file is empty"),
    "top level not a mapping": ("- 1\n- 2\n", [], "top level must be a mapping"),
    "unknown top-level key": (edit("nmae", "x"), [], "nmae: unknown top-level key"),
    "unknown key in trial": (edit("trial.epoch", 3), [], "trial.epoch: unknown key"),
    "unknown axis in grid": (edit("grid.sed", [0]), [], "grid.sed: unknown axis"),
    "unknown key in resources": (edit("resources.gpus", 1), [], "resources.gpus: unknown key"),
    "unknown key in run": (edit("run.store", "x"), [], "run.store: unknown key"),
    "wrong type": (edit("trial.epochs", "ten"), [], "trial.epochs: must be a whole number (got 'ten')"),
    "grid axis not a list": (edit("grid.seed", 3), [], "grid.seed: must be a list"),
    "empty grid axis": (edit("grid.seed", []), [], "grid.seed: empty axis"),
    "unknown class": (edit("trial.classes", ["cat", "dgo"]), [], "trial.classes: unknown class 'dgo'"),
    "unknown noise family": (edit("trial.noise", ["gaussian", "perlin"]), [], "trial.noise: unknown name 'perlin'"),
    "unknown model": (edit("trial.model", "resnet19"), [], "trial.model: unknown value (got 'resnet19')"),
    "unknown augmentation": (edit("trial.augmentation", "mixup"), [], "trial.augmentation: unknown value"),
    "duplicate class": (edit("trial.classes", ["cat", "dog", "cat"]), [], "class 'cat' given twice"),
    "subset of one class": (edit("trial.classes", ["cat"]), [], "at least two classes"),
    "epochs 0": (edit("trial.epochs", 0), [], "trial.epochs: out of range (got 0); allowed: x >= 1"),
    "negative learning rate": (edit("trial.lr", -0.1), [], "trial.lr: out of range (got -0.1)"),
    "batch larger than subset": (edit("trial.train_subset", 10), [], "trial.batch_size: larger than the training subset"),
    "batch larger than the data": (edit("trial.batch_size", 10_000), [], "trial.batch_size: larger than the 600 training images"),
    "gpu 1.5": (edit("resources.gpu", 1.5), [], "resources.gpu: Ray shares a GPU only in fractions <= 1 (got 1.5)"),
    "negative cpu": (edit("resources.cpu", -1), [], "resources.cpu: out of range"),
    "unknown storage scheme": (edit("run.storage", "ftp://host/x"), [], "run.storage: unknown storage scheme 'ftp'"),
    "bad study name": (edit("name", "my study!"), [], "name: invalid value"),
    "max_failures not a number": (edit("run.max_failures", "often"), [], "run.max_failures: must be a whole number"),
    "missing data source": (edit("trial.data_root", "/no/such/cifar"), [], "data_root: no such file or folder"),
    "tar with path traversal": (edit("trial.data_root", lambda d: str(d["evil"])), [], "unsafe tar member refused"),
    "tree missing a class folder": (edit("trial.data_root", lambda d: str(d["missing"])), [], "missing class folder(s) deer"),
    "tree with wrong image size": (edit("trial.data_root", lambda d: str(d["small"])), [], "24x24, CIFAR-10 images are 32x32"),
    "--set on a missing key": (None, ["--set", "trial.epoch=2"], "--set trial.epoch: no such key"),
    "--set on a missing section": (None, ["--set", "training.epochs=2"], "--set training.epochs: no such key"),
    "cuda without gpu resources": (edit("trial.device", "cuda"), [], "resources.gpu: is 0 but trials ask for device cuda"),
    "unknown activation": (edit("trial.activation", "swish"), [], "trial.activation: unknown value (got 'swish')"),
    "unknown norm in the grid": (edit("grid.norm", ["batch", "weight"]), [], "grid.norm[1]: unknown value (got 'weight')"),
    "factor on a model without factors": (lambda s, d: s["trial"].update(model="resnet18_imagenet", norm="group"), [],
                                          "trial.norm: model resnet18_imagenet has no architecture factors"),
    "unknown timm model": (edit("trial.model", "timm:resnet_nineteen"), [], "trial.model: unknown timm model"),
    "timm model fused": (lambda s, d: (s["trial"].update(model="timm:test_resnet"), s["run"].update(fuse_seeds=2)),
                         [], "run.fuse_seeds: fused training covers the registry's models, not timm's"),
}


@pytest.mark.parametrize("command", ["check", "sweep"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_sweep_input_is_refused_before_anything_runs(case, command, tiny_data, bad_data, tmp_path, capsys):
    change, args, expected = CASES[case]
    storage = tmp_path / "storage"
    path = tmp_path / "sweep.yaml"
    if isinstance(change, str):
        path.write_text(change)
    else:
        sweep = base_sweep(tiny_data, storage)
        if change is not None:
            change(sweep, bad_data)
        path.write_text(yaml.safe_dump(sweep))
    assert main([command, str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not storage.exists(), "bad input must not create or touch the storage"


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


def test_existing_storage_is_not_touched_by_a_refused_sweep(tiny_data, tmp_path, capsys):
    storage = tmp_path / "storage"
    (storage / "bad").mkdir(parents=True)
    keep = storage / "bad" / "study.json"
    keep.write_text("earlier result")
    sweep = base_sweep(tiny_data, storage)
    sweep["trial"]["epochs"] = 0
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path)]) == 2
    assert keep.read_text() == "earlier result" and sorted(p.name for p in storage.rglob("*")) == ["bad", "study.json"]


def test_unwritable_storage_is_refused(tiny_data, tmp_path, capsys):
    import os
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere; the read-only case is covered with a read-only mount in test_faults")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    sweep = base_sweep(tiny_data, locked / "results")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["check", str(path)]) == 2
    assert "run.storage: not writable" in capsys.readouterr().err
