"""Bad input costs seconds, not GPU-hours: one table of cases, each refused by `study check` /
`study sweep` / `study trial` with exit code 2 and one message that names the key or file, the
bad value and what is allowed; nothing is started and nothing is written to the storage."""
from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import write_image_tree, write_torchvision_folder
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
    raw = evil.read_bytes()
    truncated = root / "truncated.tar"
    with tarfile.open(truncated, "w") as tf:
        tf.add(good / "train", arcname="train")
        tf.add(good / "test", arcname="test")
    truncated.write_bytes(truncated.read_bytes()[: len(raw) // 2])
    corrupt = write_torchvision_folder(root / "corrupt-batch", 10, 10)
    (corrupt / "test_batch").write_bytes((corrupt / "test_batch").read_bytes()[:5000])
    payload = write_torchvision_folder(root / "pickle-payload", 10, 10)
    (payload / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(), b"labels": []}))
    labels = write_torchvision_folder(root / "bad-labels", 10, 10)
    with open(labels / "test_batch", "rb") as f:
        batch = pickle.load(f)
    batch[b"labels"] = [12] * len(batch[b"labels"])
    (labels / "test_batch").write_bytes(pickle.dumps(batch))
    a_file = root / "a-file"
    a_file.write_text("not a folder")
    weights = root / "not-weights.pth"
    weights.write_bytes(b"\x00" * 64)
    return {"missing": missing, "small": small, "evil": evil, "truncated": truncated, "corrupt": corrupt,
            "payload": payload, "labels": labels, "file": a_file, "good": good, "weights": weights}


class _Payload:  # a pickle that would run code when loaded
    def __reduce__(self):
        return (print, ("a CIFAR-10 batch ran code",))


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


def text(change):
    """A change of the valid sweep's YAML text (what yaml.safe_dump cannot write: a key twice)."""
    def apply(sweep, data):
        return change(yaml.safe_dump(sweep, sort_keys=False))
    apply.text = True
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
    "batch larger than subset": (edit("trial.train_subset", 10), [],
                                 "trial.batch_size: larger than the training subset"),
    "batch larger than the data": (edit("trial.batch_size", 10_000), [],
                                   "trial.batch_size: larger than the 600 training images"),
    "gpu 1.5": (edit("resources.gpu", 1.5), [], "resources.gpu: Ray shares a GPU only in fractions <= 1 (got 1.5)"),
    "negative cpu": (edit("resources.cpu", -1), [], "resources.cpu: out of range"),
    "unknown storage scheme": (edit("run.storage", "ftp://host/x"), [], "run.storage: unknown storage scheme 'ftp'"),
    "bad study name": (edit("name", "my study!"), [], "name: invalid value"),
    "max_failures not a number": (edit("run.max_failures", "often"), [], "run.max_failures: must be a whole number"),
    "missing data source": (edit("trial.data_root", "/no/such/cifar"), [], "data_root: no such file or folder"),
    "tar with path traversal": (edit("trial.data_root", lambda d: str(d["evil"])), [], "unsafe tar member refused"),
    "tree missing a class folder": (edit("trial.data_root", lambda d: str(d["missing"])), [],
                                    "missing class folder(s) deer"),
    "tree with wrong image size": (edit("trial.data_root", lambda d: str(d["small"])), [],
                                   "24x24, CIFAR-10 images are 32x32"),
    "--set on a missing key": (None, ["--set", "trial.epoch=2"], "--set trial.epoch: no such key"),
    "--set on a missing section": (None, ["--set", "training.epochs=2"], "--set training.epochs: no such key"),
    "cuda without gpu resources": (edit("trial.device", "cuda"), [],
                                   "resources.gpu: is 0 but trials ask for device cuda"),
    "unknown activation": (edit("trial.activation", "swish"), [], "trial.activation: unknown value (got 'swish')"),
    "unknown norm in the grid": (edit("grid.norm", ["batch", "weight"]), [],
                                 "grid.norm[1]: unknown value (got 'weight')"),
    "factor on a model without factors": (lambda s, d: s["trial"].update(model="resnet18_imagenet", norm="group"), [],
                                          "trial.norm: model resnet18_imagenet has no architecture factors"),
    "unknown timm model": (edit("trial.model", "timm:resnet_nineteen"), [], "trial.model: unknown timm model"),
    "timm model fused": (lambda s, d: (s["trial"].update(model="timm:test_resnet"), s["run"].update(fuse_seeds=2)),
                         [], "run.fuse_seeds: fused training covers the registry's models, not timm's"),
    # round 2 (issue 16): each of these was accepted, hung, or failed after work began
    "key twice in trial": (text(lambda t: t.replace("  epochs: 1\n", "  epochs: 1\n  epochs: 3\n")), [],
                           "at line 5, column 3: key 'epochs' given twice (first on line 4)"),
    "two grid sections": (text(lambda t: t + "grid:\n  seed: [5]\n"), [], "key 'grid' given twice"),
    "key twice in a nested mapping": (text(
        lambda t: t.replace("  device: cpu\n", "  device: cpu\n  class_intervention: {target: cat, kind: blur, "
                            "target: dog, strength: 1.0}\n")), [], "key 'target' given twice"),
    "binary file": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", [], "is a binary file, not text"),
    "not UTF-8": ("name: caf\u00e9\n".encode("latin-1"), [], "is not UTF-8 text (byte 0xe9 on line 1)"),
    "lr 1e-3 read as text": (edit("trial.lr", "1e-3"), [], "trial.lr: YAML reads 1e-3 as text, not a number "
                             "(YAML's exponent form needs a dot and a sign: write 1.0e-3)"),
    "n_noise 5e3 read as text": (edit("trial.n_noise", "5e3"), [], "write 5000"),
    "infinite learning rate": (edit("trial.lr", float("inf")), [], "trial.lr: must be a finite number (got inf)"),
    "seed beyond 64 bits": (edit("grid.seed", [0, 2**64]), [], "grid.seed[1]: out of range"),
    "negative noise seed": (edit("trial.noise_seed", -1), [], "trial.noise_seed: out of range"),
    "infinite gpu": (edit("resources.gpu", float("inf")), [], "resources.gpu: must be a non-negative number"),
    "duplicate grid value": (edit("grid.seed", [0, 1, 0]), [], "grid.seed: value 0 is listed twice ([0] and [2])"),
    "grid of 20,000 points": (edit("grid", {"seed": list(range(200)), "noise_seed": list(range(100))}), [],
                              "grid: 20,000 grid points (100 noise_seed x 200 seed); allowed: at most 10,000"),
    "grid of a billion points": (edit("grid", {"seed": list(range(1000)), "noise_seed": list(range(1000)),
                                               "momentum": [i / 1000 for i in range(1000)]}), [],
                                 "1,000,000,000 grid points"),
    "axis longer than any study": (edit("grid.seed", list(range(20_000))), [], "grid.seed: 20,000 values"),
    "s3 without a bucket": (edit("run.storage", "s3://"), [], "run.storage: no bucket after s3://"),
    "--storage s3 without a bucket": (None, ["--storage", "s3:///results"], "--storage: no bucket after s3://"),
    "file URI without a path": (edit("run.storage", "file://"), [], "a file:// URI needs an absolute path"),
    "storage is a file": (edit("run.storage", lambda d: str(d["file"])), [], "run.storage: is a file, not a folder"),
    "storage under a file": (edit("run.storage", lambda d: str(d["file"] / "results")), [],
                             "which is a file, not a folder"),
    "--set a trial key without section": (None, ["--set", "epochs=2"], "--set epochs: no such key; allowed: a "
                                          "section and a key: --set trial.epochs=... (fixed) or --set grid.epochs"),
    "--set value not YAML": (None, ["--set", "trial.classes=[cat, dog"], "--set trial.classes: YAML syntax error"),
    "a trial config": (lambda s, d: yaml.safe_dump(s["trial"]), [], "sweep.yaml: is a trial config (trial keys at the "
                       "top level), not a sweep file"),
    "--set noise as a comma list": (None, ["--set", "trial.noise=gaussian,uniform"], "trial.noise: is one string; a "
                                    "YAML list is written [gaussian, uniform]"),
    "--set key twice in its value": (None, ["--set", "trial.class_intervention={target: cat, target: dog}"],
                                     "key 'target' given twice"),
    "nested too deep": ("name: " + "[" * 50_000 + "]" * 50_000 + "\n", [], "nested deeper than a config can be"),
    "noise bank beyond memory": (edit("trial.n_noise", 10**8), [], "trial.n_noise: out of range (got 100000000); "
                                 "allowed: 10 <= x <= 100000"),
    "cutoff twice": (edit("trial.frequency_cutoffs", [0.25, 0.25]), [],
                     "trial.frequency_cutoffs: a cutoff is given twice"),
    # what `study check` passed and every trial then failed on: one check serves trial, check and sweep
    "test_subset beyond the data": (edit("trial.test_subset", 500), [], "trial.test_subset: asks for 50 test images "
                                    "per class (500 over 10 classes); a class has only 20 (grid point {'seed': 0}) "
                                    "(got 500); allowed: at most 200"),
    "train_subset beyond the data": (edit("trial.train_subset", 1000), [], "trial.train_subset: asks for 100 images "
                                     "per class (1000 over 10 classes); a class has only 60"),
    "test_subset below the classes": (edit("trial.test_subset", 5), [], "trial.test_subset: fewer images than the "
                                      "10 trained classes"),
    "pretrained weights missing": (lambda s, d: s["trial"].update(model="resnet18_imagenet", pretrained="/no/w.pth"),
                                   [], "trial.pretrained: no such weights file (grid point {'seed': 0})"),
    "pretrained misspelt": (lambda s, d: s["trial"].update(model="resnet18_imagenet", pretrained="imagnet"), [],
                            "trial.pretrained: no such weights file"),
    "pretrained not weights": (lambda s, d: s["trial"].update(model="resnet18_imagenet", pretrained=str(d["weights"])),
                               [], "trial.pretrained: cannot read weights"),
    "more CPUs than the machine": (edit("resources.cpu", (os.cpu_count() or 1) + 1), [],
                                   f"resources.cpu: a trial asks for {(os.cpu_count() or 1) + 1} CPUs and this machine "
                                   f"has {os.cpu_count()}: no trial could ever start"),
    "truncated tar": (edit("trial.data_root", lambda d: str(d["truncated"])), [],
                      "truncated.tar: cannot read the archive, it is truncated or corrupt"),
    "truncated torchvision batch": (edit("trial.data_root", lambda d: str(d["corrupt"])), [],
                                    "test_batch: not a readable CIFAR-10 batch, truncated or corrupt"),
    "torchvision batch that runs code": (edit("trial.data_root", lambda d: str(d["payload"])), [],
                                         "refused to build builtins.print"),
    "torchvision labels outside 0..9": (edit("trial.data_root", lambda d: str(d["labels"])), [],
                                        "labels of shape (100,) (int64) outside 0..9"),
}


@pytest.mark.parametrize("command", ["check", "sweep"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_sweep_input_is_refused_before_anything_runs(case, command, tiny_data, bad_data, tmp_path, capsys):
    change, args, expected = CASES[case]
    storage = tmp_path / "storage"
    path = tmp_path / "sweep.yaml"
    if isinstance(change, (str, bytes)):
        path.write_bytes(change.encode() if isinstance(change, str) else change)
    else:
        sweep = base_sweep(tiny_data, storage)
        written = change(sweep, bad_data) if change is not None else None
        path.write_text(written if isinstance(written, str) else yaml.safe_dump(sweep))
    assert main([command, str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not storage.exists(), "bad input must not create or touch the storage"


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60


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


# ---------------------------------------------------------------- `study trial`

def trial_config(tiny_data) -> dict:
    return {"model": "small_cnn", "epochs": 1, "batch_size": 50, "n_noise": 40, "n_trajectory": 20,
            "sample_per_class": 20, "n_frequency": 40, "data_root": str(tiny_data), "data_verify": "shapes",
            "device": "cpu"}


TRIAL_CASES = {  # id: (change to a valid trial config, or raw text/bytes; extra CLI args; text the message must hold)
    "--out is a file": (None, lambda d, tmp: ["--out", str(d["file"])], "--out: is a file, not a folder"),
    "--out under a file": (None, lambda d, tmp: ["--out", str(d["file"] / "run")], "which is a file, not a folder"),
    "--out empty": (None, lambda d, tmp: ["--out", ""], "--out: must be a path or URI"),
    "--out s3 without a bucket": (None, lambda d, tmp: ["--out", "s3://"], "--out: no bucket after s3://"),
    "--out holds an earlier result": (None, lambda d, tmp: ["--out", str(_earlier_result(tmp))],
                                      "--out: already holds a trial's trial.json"),
    "key twice": (text(lambda t: t + "epochs: 2\n"), [], "key 'epochs' given twice"),
    "binary config": (b"\x00\x01\x02", [], "is a binary file, not text"),
    "config not UTF-8": ("model: sm\u00e4ll_cnn\n".encode("latin-1"), [], "is not UTF-8 text"),
    "config is a folder": (None, lambda d, tmp: [], "is a folder, not a file"),
    "lr 1e-3 read as text": (edit("lr", "1e-3"), [], "lr: YAML reads 1e-3 as text, not a number"),
    "a sweep file": (lambda c, d: yaml.safe_dump({"name": "x", "trial": c, "grid": {"seed": [0, 1]}}), [],
                     "trial.yaml: is a sweep file (it has trial/grid sections), not a trial config"),
    "--set classes as a comma list": (None, ["--set", "classes=cat,dog"], "classes: is one string; a YAML list is "
                                      "written [cat, dog]"),
    "--set with the sweep's section": (None, ["--set", "trial.epochs=2"],
                                       "--set trial.epochs: no such key; allowed: a trial key without a section: "
                                       "--set epochs=..."),
    "--set a grid axis": (None, ["--set", "grid.seed=[0,1]"], "a trial key without a section: --set seed=..."),
    "--set unknown key": (None, ["--set", "epoch=2"], "allowed: a trial key (no section), e.g. --set epochs=2"),
    "--set value not YAML": (None, ["--set", "classes=[cat, dog"], "--set classes: YAML syntax error"),
    "seed beyond 64 bits": (edit("seed", 2**64), [], "seed: out of range"),
    "nested too deep": ("model: " + "[" * 50_000 + "]" * 50_000 + "\n", [], "nested deeper than a config can be"),
    "device cuda without a GPU": (edit("device", "cuda"), [], "device: device: cuda, but torch sees no CUDA device"),
    "truncated tar": (edit("data_root", lambda d: str(d["truncated"])), [], "cannot read the archive"),
    "test_subset beyond the data": (edit("test_subset", 500), [], "test_subset: asks for 50 test images per class "
                                    "(500 over 10 classes); a class has only 20"),
    "pretrained weights missing": (lambda c, d: c.update(model="resnet18_imagenet", pretrained="/no/w.pth"), [],
                                   "pretrained: no such weights file"),
    "truncated torchvision batch": (edit("data_root", lambda d: str(d["corrupt"])), [],
                                    "not a readable CIFAR-10 batch"),
}


def _earlier_result(tmp: Path) -> Path:
    out = tmp / "earlier"
    out.mkdir()
    (out / "trial.json").write_text('{"status": "completed"}')
    return out


@pytest.mark.parametrize("case", list(TRIAL_CASES))
def test_bad_trial_input_is_refused_before_training(case, tiny_data, bad_data, tmp_path, capsys):
    change, args, expected = TRIAL_CASES[case]
    path = tmp_path / "trial.yaml"
    if case == "config is a folder":
        path.mkdir()
    elif isinstance(change, (str, bytes)):
        path.write_bytes(change.encode() if isinstance(change, str) else change)
    else:
        cfg = trial_config(tiny_data)
        written = change(cfg, bad_data) if change is not None else None
        path.write_text(written if isinstance(written, str) else yaml.safe_dump(cfg))
    extra = args(bad_data, tmp_path) if callable(args) else args
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["trial", str(path), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "bad input must write nothing"


# ---------------------------------------------------------------- `python -m analysis`

def _study(tmp: Path) -> Path:
    from analysis.synthetic import Condition, write_study
    return write_study(tmp / "results", [Condition("flip", absorber="bird")], seeds=3)


def _folder(tmp: Path, files: dict[str, str]) -> Path:
    root = tmp / "results"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    root.mkdir(exist_ok=True)
    return root


ANALYSIS_CASES = {  # id: (builder(tmp) -> CLI args, text the message must hold)
    "no such folder": (lambda tmp: [str(tmp / "nope")], "nope: no such folder"),
    "empty folder": (lambda tmp: [str(_folder(tmp, {}))], "holds no study: no study.json and no trial folder"),
    "folder of unrelated JSON": (lambda tmp: [str(_folder(tmp, {"a.json": "{}", "sub/b.json": "[1]"}))],
                                 "holds no study"),
    "a file": (lambda tmp: [str(_folder(tmp, {"x.csv": "a,b"}) / "x.csv")], "x.csv: is a file, not a study folder"),
    "unreachable object store": (lambda tmp: ["s3://bucket/study?endpoint_override=127.0.0.1:9&scheme=http"],
                                 "cannot reach the storage"),
    "URI without a bucket": (lambda tmp: ["s3://"], "s3://: names no bucket"),
    "unknown URI scheme": (lambda tmp: ["ftp://host/study"], "ftp://host/study: cannot open"),
    "study.json without points": (lambda tmp: [str(_folder(tmp, {"study.json": '{"name": "x", "axes": ["seed"]}'}))],
                                  "study.json: lists no grid points"),
    "study.json not JSON": (lambda tmp: [str(_folder(tmp, {"study.json": "name: x"}))],
                            "study.json: unreadable or not JSON"),
    "study.json pointing outside": (lambda tmp: [str(_folder(tmp, {"study.json": json.dumps(
        {"axes": ["seed"], "points": [{"dir": "../../etc", "axes": {"seed": 0}}]})}))],
        "points[0]: not {dir: <a folder in the study>"),
    "one trial's folder": (lambda tmp: [str(_study(tmp) / "augmentation=flip_seed=0")], "is one trial's folder"),
    "study.json nested too deep": (lambda tmp: [str(_folder(tmp, {"study.json": "[" * 100_000 + "]" * 100_000}))],
                                   "study.json: unreadable or not JSON (RecursionError"),
    "two studies": (lambda tmp: [str(_folder(tmp, {"a/study.json": "{}", "b/study.json": "{}"}))],
                    "holds several studies (a, b)"),
    "--out is a file": (lambda tmp: [str(_study(tmp)), "--out", str(_folder(tmp, {"f": "x"}) / "f")],
                        "--out: is a file, not a folder"),
    "--out under a file": (lambda tmp: [str(_study(tmp)), "--out", str(_folder(tmp, {"f": "x"}) / "f" / "report")],
                           "--out: lies under"),
}


@pytest.mark.parametrize("case", list(ANALYSIS_CASES))
def test_bad_aggregation_input_is_refused_before_any_work(case, tmp_path, capsys):
    from analysis.__main__ import main as analysis_main
    build, expected = ANALYSIS_CASES[case]
    args = build(tmp_path)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert analysis_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before, "nothing written"


def test_there_are_cases_for_every_entry_point():
    assert len(CASES) + len(TRIAL_CASES) + len(ANALYSIS_CASES) + len(PROBLEM_CASES) >= 100


# ---------------------------------------------------------------- untrustworthy trial folders

def _edit_json(name: str, change):
    def apply(study: Path):
        path = study / name / "trial.json"
        path.write_text(change(path.read_text()))
    return apply


def _edit_field(name: str, change):
    def edit_text(raw):
        t = json.loads(raw)
        change(t)
        return json.dumps(t)
    return _edit_json(name, edit_text)


def _arrays(name: str, change):
    def apply(study: Path):
        change(study / name)
    return apply


def _garbage_with_checksum(folder: Path):
    import hashlib
    data = b"PK\x03\x04 not a zip archive"
    (folder / "arrays.npz").write_bytes(data)
    t = json.loads((folder / "trial.json").read_text())
    t["arrays"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "trial.json").write_text(json.dumps(t))


def _no_checksum(folder: Path):
    t = json.loads((folder / "trial.json").read_text())
    t.pop("arrays", None)
    (folder / "trial.json").write_text(json.dumps(t))


T0 = "augmentation=flip_seed=0"
PROBLEM_CASES = {  # id: (change to trial T0 of a synthetic study, text its problems.csv row must hold)
    "NaN in trial.json": (_edit_json(T0, lambda r: r.replace('"test_accuracy": ', '"test_accuracy": NaN, "x": ', 1)),
                          "trial.json holds NaN"),
    "Infinity in trial.json": (_edit_json(T0, lambda r: r.replace('"test_accuracy": ',
                                                                  '"test_accuracy": Infinity, "x": ', 1)),
                               "trial.json holds Infinity"),
    "unknown schema version": (_edit_field(T0, lambda t: t.update(schema=99)), "trial.json schema 99 is not one"),
    "share above 1": (_edit_field(T0, lambda t: t["absorption"]["gaussian"].update(bird=3.0)),
                      "absorption has values outside [0, 1]"),
    "shares not summing to 1": (_edit_field(T0, lambda t: t["absorption"]["gaussian"].update(
        {c: 0.0 for c in t["absorption"]["gaussian"]})), "absorption of gaussian does not sum to 1"),
    "accuracy missing": (_edit_field(T0, lambda t: t.update(test_accuracy=None)), "test_accuracy has values outside"),
    "absorber not a class": (_edit_field(T0, lambda t: t["absorber"]["gaussian"].update(absorber="unicorn")),
                             "absorber 'unicorn', which is not one of its classes"),
    "negative distance": (_edit_field(T0, lambda t: t["distance"]["gaussian"]["matrix"][0].__setitem__(1, -1.0)),
                          "distance matrices hold negative or missing values"),
    "classes repeated": (_edit_field(T0, lambda t: t.update(classes=["cat", "cat"])), "classes are not >= 2 distinct"),
    "arrays.npz not an archive (checksum matches)": (_arrays(T0, _garbage_with_checksum), "arrays.npz unreadable"),
    "arrays.npz without checksum": (_arrays(T0, _no_checksum), "records no sha256 for arrays.npz"),
    "arrays.npz altered": (_arrays(T0, lambda f: (f / "arrays.npz").write_bytes(b"x" * 100)),
                           "does not match the sha256"),
}


@pytest.mark.parametrize("case", list(PROBLEM_CASES))
def test_an_untrustworthy_trial_is_a_problem_and_the_rest_aggregates(case, tmp_path):
    from analysis.load import load
    from analysis.synthetic import Condition, write_study
    change, expected = PROBLEM_CASES[case]
    study = write_study(tmp_path, [Condition("flip", absorber="bird")], seeds=4)
    change(study)
    data = load(str(study))  # what the aggregation reads (its tables come from data.runs, problems.csv
    for run in data.runs * 2:  # from data.problems; test_analysis runs the whole pipeline on broken folders)
        data.arrays(run)
    reasons = [p["reason"] for p in data.problems if p["trial_id"] == T0]
    assert any(expected in r for r in reasons), reasons
    assert {f"augmentation=flip_seed={i}" for i in (1, 2, 3)} <= {r["trial_id"] for r in data.runs}
    assert len(reasons) == 1, "one problem per trial, however often its arrays are read"


# ---------------------------------------------------------------- the sweep's cluster

@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:9", "--address: no Ray cluster answers at 127.0.0.1:9 (Connection refused)"),
    ("ray://127.0.0.1:9", "no Ray cluster answers at 127.0.0.1:9"),
    ("http://127.0.0.1:8265", "--address: is the dashboard's job-submission address"),
    ("host:port", "--address: malformed address"),
])
def test_a_dead_address_fails_in_seconds_and_writes_nothing(address, expected, tiny_data, tmp_path, capsys):
    storage = tmp_path / "storage"
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base_sweep(tiny_data, storage)))
    assert main(["sweep", str(path), "--address", address]) == 2  # ray.init alone retries for minutes
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not storage.exists(), "nothing is written before the cluster answered"


def test_ray_address_from_the_environment_is_named(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base_sweep(tiny_data, tmp_path / "storage")))
    assert main(["sweep", str(path)]) == 2
    assert "RAY_ADDRESS: no Ray cluster answers at 127.0.0.1:9" in capsys.readouterr().err


def test_the_pending_watch_fires_only_when_trials_wait_and_none_runs():
    pytest.importorskip("ray")
    from study.sweep import PendingWatch
    watch = PendingWatch(60)
    for t, statuses in [(0, ["PENDING", "PENDING"]), (30, ["PENDING", "RUNNING"]), (100, ["PENDING", "PENDING"]),
                        (150, ["PENDING", "TERMINATED"])]:
        watch.observe(statuses, now=t)
        assert not watch.fired and not watch.stopper.stop_all()  # the clock restarts whenever a trial runs
    watch.observe(["PENDING", "TERMINATED"], now=161)
    assert watch.fired and watch.stopper.stop_all()
    never = PendingWatch(None)
    never.observe(["PENDING"], now=0)
    never.observe(["PENDING"], now=10**9)
    assert not never.fired


def test_a_fired_watch_records_why_in_the_study_and_a_restored_copy_watches_afresh(tmp_path):
    """Tune.restore brings back the callback and stopper the first run pickled: the copy must not
    stop the resumed study at once, and the stop must be readable from the study's storage."""
    pytest.importorskip("ray")
    import cloudpickle

    from study.sweep import PendingWatch
    watch = PendingWatch(5, str(tmp_path))
    watch.observe(["PENDING"], now=0)
    watch.observe(["PENDING"], now=6)
    assert watch.fired and PendingWatch.stopped(str(tmp_path))
    restored = cloudpickle.loads(cloudpickle.dumps(watch.stopper))
    assert not restored.stop_all()
    PendingWatch.clear(str(tmp_path))
    assert not PendingWatch.stopped(str(tmp_path))


def test_a_failed_trial_is_summarised_by_its_cause_not_the_worker_pid():
    pytest.importorskip("ray")
    from ray.exceptions import RayTaskError

    from study.units import failure_reason
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError as cause:
        wrapped = RayTaskError("ImplicitFunc.train", "Traceback ...\nRuntimeError: CUDA out of memory", cause,
                               pid=4242, ip="10.0.0.1")
    assert "pid" in str(wrapped)
    assert failure_reason(wrapped) == "RuntimeError: CUDA out of memory"
    assert failure_reason(ValueError("x")) == "ValueError: x"


def _driver(code: str, tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """A sweep driver in its own process (local Ray on loopback, as `study sweep` starts it)."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_bad_input_inside_a_trial_ends_it_without_retries_and_names_the_reason(tiny_data, tmp_path):
    path = tmp_path / "sweep.yaml"
    sweep = base_sweep(tiny_data, tmp_path / "storage")
    sweep["grid"] = {"seed": [0]}
    path.write_text(yaml.safe_dump(sweep))
    # validation passed; the trial then meets a config no retry can fix (as a node whose data differs would)
    res = _driver(f"""
import sys
from study import sweep
from study.plan import prepare
plan = prepare({str(path)!r})
plan.sweep.trial["epochs"] = 0
sys.exit(sweep.run(plan, report=False))
""", tmp_path)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert "failed: seed=0: bad input, not retried: epochs: out of range (got 0)" in res.stdout, res.stdout[-3000:]
    folder = tmp_path / "storage" / "bad" / "seed=0"
    assert "InputError: epochs: out of range" in (folder / "error.txt").read_text()
    assert not (folder / "error.pkl").exists(), "Tune saw an exception (and would have retried it)"


@pytest.mark.slow
def test_trials_no_node_can_hold_end_the_study_after_the_pending_timeout(tiny_data, tmp_path):
    path = tmp_path / "sweep.yaml"
    sweep = base_sweep(tiny_data, tmp_path / "storage")
    sweep["run"]["pending_timeout"] = 5
    path.write_text(yaml.safe_dump(sweep))
    # a cluster of one 1-CPU node, and trials that each want 2 CPUs (what `check` refuses on a local machine)
    driver = f"""
import sys, ray
from study import sweep
from study.errors import InputError
from study.plan import prepare
plan = prepare({str(path)!r})
plan.sweep.resources["cpu"] = 2
ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1")
try:
    sweep.run(plan, report=False)
except InputError as e:
    print("error:", e)
"""
    res = _driver(driver, tmp_path)
    assert "error: resources: 2 trial(s) waited more than run.pending_timeout = 5 s for a node with cpu 2" in \
        res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    # resumed (every KubeRay retry resumes): Tune would restore the stopped trials as terminated and
    # the first run's stopper, which had fired; the stop is read from the study's storage, the
    # study runs afresh (completed trials reused), and the answer is the resources message again
    assert (tmp_path / "storage" / "bad" / "stopped.json").exists()
    res = _driver(driver.replace("sweep.run(plan, report=False)", "sweep.run(plan, resume=True, report=False)"),
                  tmp_path)
    assert "was stopped by run.pending_timeout" in res.stdout and "interrupted" not in res.stdout + res.stderr
    assert "error: resources: 2 trial(s) waited more than run.pending_timeout = 5 s for a node with cpu 2" in \
        res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    # and once a node fits (here: trials that ask for what the node has), the resumed study completes
    # (a trial is PENDING until its worker process has started, which takes more than the 5 s above
    # on a loaded machine: here the watch gets room, as a real study's 1800 s default gives it)
    fits = driver.replace('plan.sweep.resources["cpu"] = 2',
                          'plan.sweep.resources["cpu"] = 1; plan.sweep.run["pending_timeout"] = 300')
    res = _driver(fits.replace("sweep.run(plan, report=False)",
                               'print("rc", sweep.run(plan, resume=True, report=False))'), tmp_path)
    assert "rc 0" in res.stdout and "2 of 2 trials ended" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert not (tmp_path / "storage" / "bad" / "stopped.json").exists()


def test_a_gpu_study_is_refused_on_a_machine_without_one_unless_checked_for_a_cluster(tiny_data, tmp_path, capsys):
    import torch
    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU: a GPU study fits here")
    sweep = base_sweep(tiny_data, tmp_path / "storage")
    sweep["resources"]["gpu"] = 0.5
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    for command in ("check", "sweep"):  # a local Ray would leave every trial PENDING forever
        assert main([command, str(path)]) == 2
        assert "resources.gpu: a trial asks for 0.5 GPU and this machine has none" in capsys.readouterr().err
    assert main(["check", str(path), "--cluster"]) == 0
    assert "concurrency: on the cluster" in capsys.readouterr().out
    assert not (tmp_path / "storage").exists()


# ---------------------------------------------------------------- stale results

def _finished(plan, index: int, **changed) -> Path:
    """A finished trial.json at grid point `index`, made with the point's config and `changed`."""
    from analysis.contract import MEASUREMENTS, config_digest
    from study.artifacts import ArtifactDir
    from study.noise import noise_families
    from study.plan import join_uri
    cfg = {**plan.points[index], **changed}
    ArtifactDir.at(join_uri(plan.uri, plan.dirnames[index])).write_json(
        "trial.json", {"schema": 1, "measurements": MEASUREMENTS, "status": "completed", "config": cfg,
                       "config_digest": config_digest(cfg), "noise_families": noise_families(cfg)})
    return Path(plan.uri) / plan.dirnames[index] / "trial.json"


def test_the_driver_drops_only_the_checkpoints_of_trials_tune_finished_and_complete(tiny_data, tmp_path, capsys,
                                                                                      monkeypatch):
    """plan.drop_finished_checkpoints after Tune's fit: a grid point loses its checkpoint_* folders
    only where Tune recorded the trial done *and* its trial.json is complete for its config; a
    complete trial Tune did not record done (stopped at the final report) keeps them for --resume,
    and a result of another config is left alone; a storage error is a warning, not the sweep's end."""
    from study import plan as P
    sweep = {**base_sweep(tiny_data, tmp_path / "storage"), "grid": {"seed": [0, 1, 2, 3]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    plan = P.prepare(str(path))
    _finished(plan, 0)                       # complete, Tune done: dropped
    _finished(plan, 1)                       # complete, Tune not done: kept
    _finished(plan, 3, epochs=3)             # another config: kept
    folders = [Path(plan.uri) / d for d in plan.dirnames]
    for f in folders:                        # seed 2: no trial.json (unfinished): kept
        (f / "checkpoint_000001").mkdir(parents=True)
        (f / "checkpoint_000001" / "state.pt").write_bytes(b"x")
    P.drop_finished_checkpoints(plan, {plan.dirnames[i] for i in (0, 2, 3)})
    assert [(f / "checkpoint_000001").exists() for f in folders] == [False, True, True, True]

    def store_away(out):
        raise OSError("Could not connect to server")
    monkeypatch.setattr(P, "drop_checkpoints", store_away)
    P.drop_finished_checkpoints(plan, {plan.dirnames[1]})
    assert "bad/seed=1: its checkpoints are kept (OSError: Could not connect to server)" in capsys.readouterr().out


def test_results_of_another_config_are_refused_not_mixed(tiny_data, tmp_path, capsys):
    from study.plan import prepare
    sweep = base_sweep(tiny_data, tmp_path / "storage")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    plan = prepare(str(path))
    done = _finished(plan, 0)
    stale = _finished(plan, 1, epochs=3, device="cuda")  # device: where it ran, not what it measured
    before = stale.read_text()
    for command in ("check", "sweep"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert "bad/seed=1: holds a finished trial of another config (epochs: was 3, now 1)" in err, err
        assert "allowed: the config those results were made with; or a new study name (--name NEW)" in err
    assert stale.read_text() == before, "the old result is left as it was"
    stale.unlink()
    assert main(["check", str(path)]) == 0
    assert "(1 finished trials of an earlier run are reused)" in capsys.readouterr().out
    assert done.exists()


def test_every_executor_skips_only_its_own_config(tiny_data, tmp_path):
    from analysis.contract import MEASUREMENTS
    from study.artifacts import ArtifactDir
    from study.config import TRIAL_DEFAULTS
    from study.errors import InputError
    from study.noise import noise_families
    from study.plan import is_done, join_uri, prepare
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base_sweep(tiny_data, tmp_path / "storage")))
    plan = prepare(str(path))
    out = ArtifactDir.at(join_uri(plan.uri, plan.dirnames[0]))
    assert is_done(out, plan.points[0]) is False                        # nothing there: run it
    _finished(plan, 0)
    assert is_done(out, plan.points[0]) is True                         # its own result: skip it
    newer = {**plan.points[0], "n_noise": 30}
    with pytest.raises(InputError, match="another config \\(n_noise: was 20, now 30\\)"):
        is_done(out, newer)
    families = noise_families(plan.points[0])

    def written_before(*keys, measured=families, revision=MEASUREMENTS):
        old = {k: v for k, v in plan.points[0].items() if k not in keys}
        out.write_json("trial.json", {"status": "completed", "config": old, "noise_families": measured,
                                      "measurements": revision})

    written_before("label_smoothing")
    assert is_done(out, plan.points[0]) is True                         # ... and the key is at its default
    assert plan.points[0]["label_smoothing"] == TRIAL_DEFAULTS["label_smoothing"]
    with pytest.raises(InputError, match=r"label_smoothing: was absent \(as 0.1\), now 0.2"):
        is_done(out, {**plan.points[0], "label_smoothing": 0.2})
    # a key whose default turns on a new measurement: the old result lacks it, so it is not reused
    # at the default, and is at the value that turns the measurement off
    written_before("amplitudes", "n_bn")
    assert plan.points[0]["amplitudes"] == TRIAL_DEFAULTS["amplitudes"] != []
    with pytest.raises(InputError, match=r"amplitudes: was absent \(as \[\]\), now \[0.25, "
                                         r".*n_bn: was absent \(as 0\)"):
        is_done(out, plan.points[0])
    assert is_done(out, {**plan.points[0], "amplitudes": [], "n_bn": 0}) is True
    # `noise: all` measured by code whose registry had fewer families
    assert plan.points[0]["noise"] == "all"
    written_before(measured=families[:-2])
    with pytest.raises(InputError, match=f'noise: "all" probes {families[-2]}, {families[-1]}, which the '
                                         "stored result lacks"):
        is_done(out, plan.points[0])
    # the code measures more since the result was written, with no key to say so
    written_before(revision=None)
    out.write_json("trial.json", {k: v for k, v in out.read_json().items() if k != "measurements"})
    with pytest.raises(InputError, match=r"measurements: revision 1, now \d+ \(since: the head's biases dealt"):
        is_done(out, plan.points[0])


def test_the_aggregation_excludes_a_result_of_another_config_than_study_json(tmp_path):
    import pandas as pd

    from analysis.pipeline import aggregate
    from analysis.synthetic import Condition, write_study
    study = write_study(tmp_path, [Condition("flip", absorber="bird")], seeds=4)
    record = json.loads((study / "study.json").read_text())
    first = json.loads((study / T0 / "trial.json").read_text())["config"]
    record["resolved"] = {k: v for k, v in first.items() if k not in record["axes"]}
    record["before_key"] = {}
    (study / "study.json").write_text(json.dumps(record))
    _edit_field("augmentation=flip_seed=1", lambda t: t["config"].update(n_noise=999))(study)
    aggregate(str(study))
    problems = pd.read_csv(study / "report" / "problems.csv").set_index("trial_id")
    assert "another config than study.json's (n_noise: was 999, now 200)" in \
        problems.loc["augmentation=flip_seed=1", "reason"]
    runs = pd.read_csv(study / "report" / "runs.csv")
    assert sorted(runs["trial_id"]) == [f"augmentation=flip_seed={i}" for i in (0, 2, 3)]


# ---------------------------------------------------------------- what a trial applies otherwise

def test_check_warns_what_trials_will_apply_otherwise(tiny_data, tmp_path, capsys):
    sweep = base_sweep(tiny_data, tmp_path / "storage")
    sweep["trial"].update(sample_per_class=500, compile=True)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING: sample_per_class 500 is more than the 60 training images of the smallest class" in out
    assert "WARNING: compile: True applies on CUDA only and these trials run on a CPU" in out


def test_a_trial_records_what_it_applied_otherwise(tiny_data, tmp_path, capsys):
    cfg = {**trial_config(tiny_data), "train_subset": 100, "sample_per_class": 500, "compile": True,
           "noise": ["gaussian"], "threads": 1}
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["trial", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "WARNING: compile: True applies on CUDA only" in capsys.readouterr().out
    t = json.loads((tmp_path / "out" / "trial.json").read_text())
    assert t["applied"] == {"compile": False}
    assert t["clutter"]["sample_per_class"] == 500 and t["clutter"]["images_per_class"] == {c: 10 for c in t["classes"]}
    assert t["clutter"]["noise_images"] == 40
    assert any("sample_per_class 500 is more than the training images of airplane (10)" in w for w in t["warnings"])
    assert any("compile: True applies on CUDA only" in w for w in t["warnings"])


# ---------------------------------------------------------------- `noisesink initbias`

INITBIAS_CASES = {  # id: (CLI args after `initbias`, text the message must hold)
    "one network": (["--nets", "1"], "--nets: too few networks for a distribution"),
    "unknown setting": (["--settings", "relu-max-none-centred"], "--settings: "),
    "negative noise seed": (["--noise-seed", "-1"], "--noise-seed: out of range"),
    "negative threads": (["--threads", "-2"], "--threads: out of range"),
    "--out under a file": (lambda d: ["--out", str(d["file"] / "initbias")], "--out: lies under"),
}


@pytest.mark.parametrize("case", list(INITBIAS_CASES))
def test_bad_initbias_input_is_refused_before_measuring(case, tiny_data, bad_data, tmp_path, capsys):
    args, expected = INITBIAS_CASES[case]
    args = args(bad_data) if callable(args) else args
    out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
    assert main(["initbias", "--data-root", str(tiny_data), *out, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()
