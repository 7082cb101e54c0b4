"""`noisesink probe`: trained checkpoints as runs of the trial contract. Each form of --model,
each weights format, the record of the file, the very measurements a trial makes of the same
weights, bad input refused before anything is written, and a study of checkpoints aggregated."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.contract import ARRAYS_NPZ, COMPLETED, PROBED, STUDY_JSON, TRIAL_JSON
from study.__main__ import main
from study.models import build_model

# the probes at the tiny fixture's sizes (tests/conftest.py's tiny_config): seconds per checkpoint
TINY = {"data_verify": "shapes", "n_noise": 40, "n_trajectory": 20, "sample_per_class": 20, "n_frequency": 40,
        "batch_size": 50, "threads": 1, "device": "cpu"}


def probe(tiny_data, out, *weights, model="small_cnn", noise="gaussian", extra=()) -> int:
    sets = [a for k, v in {**TINY, "data_root": str(tiny_data)}.items() for a in ("--set", f"{k}={v}")]
    return main(["probe", *map(str, weights), "--model", model, "--out", str(out), "--noise", noise, *sets, *extra])


def save(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def torchscript(model: torch.nn.Module, path: Path) -> Path:
    """A TorchScript archive of `model`: deprecated by torch, but users still hold such files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace(_method)?` is deprecated", FutureWarning)
        torch.jit.trace(model.eval(), torch.zeros(1, 3, 32, 32)).save(str(path))
    return path


def small_cnn(seed: int = 0, classes: int = 10) -> torch.nn.Module:
    return build_model("small_cnn", classes, seed)


def trial(out: Path, name: str) -> dict:
    return json.loads((out / name / TRIAL_JSON).read_text())


# ---------------------------------------------------------------- the three forms of --model

def test_a_registered_model_becomes_a_run_with_its_file_recorded(tiny_data, tmp_path, capsys):
    weights = save(small_cnn().state_dict(), tmp_path / "seed0.pt")
    assert probe(tiny_data, tmp_path / "out", weights) == 0
    t = trial(tmp_path / "out", "seed0")
    assert t["source"] == PROBED and t["status"] == COMPLETED
    assert t["checkpoint"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert t["checkpoint"]["path"] == str(weights.resolve()) and t["checkpoint"]["format"] == "state dict"
    assert t["config"]["epochs"] == 0 and t["trajectory"] == [] and t["train_history"] == []
    assert t["timing"]["train_seconds"] == 0 and t["config"]["arm"] == "small_cnn"
    assert 0 <= t["test_accuracy"] <= 1 and t["n_test"] == 200 and t["noise_families"] == ["gaussian"]
    assert (tmp_path / "out" / "seed0" / ARRAYS_NPZ).is_file() and (tmp_path / "out" / STUDY_JSON).is_file()
    out = capsys.readouterr().out
    assert "[1/1 seed0] noise gaussian (40 images)" in out and "next: noisesink analyze" in out


def test_torchvision_resnet18_from_a_training_scripts_checkpoint(tiny_data, tmp_path):
    """torchvision's own architecture (random weights stand in for trained ones), saved as a
    training script saves it: a checkpoint dict, DataParallel's prefix on every key. Its head's
    bias sends everything to dog: a run that shows it probed the file's weights, not an init."""
    import torchvision
    net = torchvision.models.resnet18(num_classes=2)
    with torch.no_grad():
        net.fc.bias.copy_(torch.tensor([0.0, 1e4]))
    weights = save({"epoch": 30, "model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
                   tmp_path / "resnet18-catdog.pth")
    assert probe(tiny_data, tmp_path / "out", weights, model="torchvision:resnet18",
                 extra=["--classes", "cat,dog", "--normalize", "imagenet"]) == 0
    t = trial(tmp_path / "out", "resnet18-catdog")
    assert t["classes"] == ["cat", "dog"] and t["architecture"]["model"] == "torchvision:resnet18"
    assert t["checkpoint"]["key"] == "model_state_dict" and t["checkpoint"]["stripped_prefixes"] == ["module."]
    assert t["absorber"]["gaussian"]["absorber"] == "dog" and t["absorber"]["gaussian"]["top_share"] == 1.0
    assert t["per_class_accuracy"] == {"cat": 0.0, "dog": 1.0}
    assert t["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert t["config"]["arm"] == "torchvision-resnet18"   # the default condition: the --model name


def test_a_timm_model_from_safetensors(tiny_data, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    net = timm.create_model("test_resnet", num_classes=2)
    weights = tmp_path / "tiny.safetensors"
    save_file(net.state_dict(), weights)
    assert probe(tiny_data, tmp_path / "out", weights, model="timm:test_resnet", extra=["--classes", "cat,dog"]) == 0
    t = trial(tmp_path / "out", "tiny")
    assert t["checkpoint"]["format"] == "safetensors" and t["architecture"]["model"] == "timm:test_resnet"


def test_image_size_resizes_data_and_noise_alike(tiny_data, tmp_path):
    weights = save(small_cnn().state_dict(), tmp_path / "w.pt")
    assert probe(tiny_data, tmp_path / "out", weights, extra=["--image-size", "48"]) == 0
    assert trial(tmp_path / "out", "w")["probe"] == {"normalize": "cifar10", "image_size": 48}


@pytest.mark.parametrize("size", [16, 32, 48])
def test_the_input_is_resized_after_normalizing_as_if_before(size):
    """Every image a probe shows the network (test, noise, held-out) passes the Normalizer: at
    another image_size it is resized there, and resizing commutes with the normalization."""
    import torch.nn.functional as F

    from study.train import Normalizer
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    x = torch.rand(4, 3, 32, 32)
    got = Normalizer(mean, std, torch.device("cpu"), image_size=size)(x)
    resized = x if size == 32 else F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    expected = (resized - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert got.shape == (4, 3, size, size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- weights formats

@pytest.mark.slow
def test_every_weights_format_gives_the_same_run(tiny_data, tmp_path):
    """One network's weights in every accepted form: each is a run, and all measure the same
    (a cat/dog network: two classes' probes are the quickest)."""
    from safetensors.torch import save_file
    model = small_cnn(seed=3, classes=2)
    state = model.state_dict()
    files = {
        "plain": (save(state, tmp_path / "plain.pt"), None, []),
        "state_dict": (save({"state_dict": state, "epoch": 9}, tmp_path / "state_dict.pth"), "state_dict", []),
        "model": (save({"model": state, "optimizer": {"lr": 0.1}}, tmp_path / "model.pt"), "model", []),
        "model_state_dict": (save({"model_state_dict": state}, tmp_path / "model_state_dict.pt"), "model_state_dict",
                             []),
        "ddp": (save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt"), None, ["module."]),
        "compiled": (save({f"_orig_mod.{k}": v for k, v in state.items()}, tmp_path / "compiled.pt"), None,
                     ["_orig_mod."]),
        "lightning": (save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "lightning.ckpt"),
                      "state_dict", ["model."]),
        "both": (save({f"module._orig_mod.{k}": v for k, v in state.items()}, tmp_path / "both.pt"), None,
                 ["module.", "_orig_mod."]),
        # this project's own checkpoint of an interrupted trial: named after its trial folder
        "seed=3": (save({"trainer": {"model": state, "optimizer": {}, "generator": torch.zeros(4, dtype=torch.uint8),
                                     "epoch": 2}, "trajectory": [], "history": []},
                        tmp_path / "seed=3" / "checkpoint_local" / "state.pt"), "trainer.model", []),
    }
    save_file(state, tmp_path / "safe.safetensors")
    files["safe"] = (tmp_path / "safe.safetensors", None, [])
    files["scripted"] = (torchscript(model, tmp_path / "scripted.pt"), None, [])
    paths = [p for p, _, _ in files.values()]
    quick = ["--set", "n_frequency=10", "--set", "amplitudes=[]", "--set", "n_bn=0"]   # eleven runs: the least probing
    assert probe(tiny_data, tmp_path / "out", *paths, extra=["--trust-code", "--classes", "cat,dog", *quick]) == 0
    runs = {name: trial(tmp_path / "out", name) for name in files}
    for name, (_path, key, stripped) in files.items():
        t = runs[name]
        assert t["checkpoint"]["key"] == key and t["checkpoint"]["stripped_prefixes"] == stripped, name
        assert t["absorption"] == runs["plain"]["absorption"] and t["test_accuracy"] == runs["plain"]["test_accuracy"]
    assert runs["safe"]["checkpoint"]["format"] == "safetensors"
    assert runs["scripted"]["checkpoint"]["format"] == "torchscript"
    assert any("--trust-code" in w for w in runs["scripted"]["warnings"])
    assert sorted(t["seed"] for t in runs.values()) == list(range(len(files)))


def test_a_probe_measures_what_the_trial_measures_of_the_same_weights(tiny_config, tiny_data, tmp_path):
    """The probe is the trial's own (study/trial.finish): the same weights give the same
    trial.json measurements and the same arrays, every probe of a trial included."""
    from study.trial import TrainedData, Training, finish, new_model, setup
    cfg = tiny_config(noise="all")
    s = setup(cfg)
    model = new_model(s)
    untrained = Training(COMPLETED, [], [], 0, 0.0, TrainedData.untouched(s.task), [])
    finish(s, model, untrained, str(tmp_path / "trial"))
    weights = save(model.state_dict(), tmp_path / "same.pt")
    assert probe(tiny_data, tmp_path / "out", weights, noise="all") == 0
    trained, probed = json.loads((tmp_path / "trial" / TRIAL_JSON).read_text()), trial(tmp_path / "out", "same")
    assert set(probed) == set(trained) | {"source", "checkpoint", "probe"}
    for key in ("test_accuracy", "per_class_accuracy", "absorption", "absorber", "distance", "mst", "heldout",
                "clutter", "logit_decomposition", "frequency", "ood", "amplitude", "batchnorm", "normalization"):
        assert probed[key] == trained[key], key
    with np.load(tmp_path / "trial" / ARRAYS_NPZ) as a, np.load(tmp_path / "out" / "same" / ARRAYS_NPZ) as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ---------------------------------------------------------------- bad input

def _good(tmp_path):
    return save(small_cnn().state_dict(), tmp_path / "files" / "good.pt")


def _state_with(tmp_path, name, change):
    state = small_cnn().state_dict()
    change(state)
    return save(state, tmp_path / "files" / name)


def _nan(state):
    state["head.bias"][3] = float("nan")


def _narrow(state):
    state["features.0.weight"] = torch.zeros(16, 3, 3, 3)


def _pickled_model(tmp_path):
    path = tmp_path / "files" / "whole.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(small_cnn(), path)
    return path


def _garbage(tmp_path):
    path = tmp_path / "files" / "garbage.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00not weights" * 10)
    return path


def _folder(tmp_path):
    path = tmp_path / "files" / "a-folder.pt"
    path.mkdir(parents=True)
    return path


def _bad_safetensors(tmp_path):
    path = tmp_path / "files" / "broken.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    return path


# id: (make the bad file(s) from tmp_path, extra options (a --model there replaces small_cnn), text the
# message must hold). Each bad file follows a good one: every checkpoint is checked before any is probed.
BAD_FILES = {
    "missing file": (lambda d: [d / "files" / "nope.pt"], [], "nope.pt: no such file"),
    "a folder": (lambda d: [_folder(d)], [], "a-folder.pt: is a folder, not a weights file"),
    "not a weights file": (lambda d: [_garbage(d)], [], "garbage.pt: cannot be read as PyTorch weights"),
    "broken safetensors": (lambda d: [_bad_safetensors(d)], [],
                           "broken.safetensors: is not a readable safetensors file"),
    "no state dict": (lambda d: [save({"epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}, "note": "x"},
                                      d / "files" / "opt.pt")], [],
                      "opt.pt: holds no state dict (a dict with keys epoch, optimizer, note)"),
    "a tensor": (lambda d: [save(torch.zeros(3), d / "files" / "tensor.pt")], [],
                 "tensor.pt: holds no state dict (a Tensor)"),
    "a pickled whole model": (lambda d: [_pickled_model(d)], [],
                              "whole.pt: holds a pickled Python object (study.models.Classifier)"),
    "keys of another architecture": (lambda d: [save(build_model("resnet18", 10, 0, width=0.25).state_dict(),
                                                     d / "files" / "resnet.pt")], [],
                                     "resnet.pt: does not fit small_cnn: 25 missing keys (first: features.3.weight, "
                                     "features.5.weight, features.5.bias); 114 unexpected keys (first: "
                                     "features.4.0.conv1.weight"),
    "a shape mismatch": (lambda d: [_state_with(d, "narrow.pt", _narrow)], [],
                         "narrow.pt: does not fit small_cnn: 1 shape mismatches, file vs model (first: "
                         "features.0.weight (16, 3, 3, 3) vs (32, 3, 3, 3))"),
    "head of 10 for two classes": (lambda d: [], ["--classes", "cat,dog"], "good.pt: its head (head.weight) has "
                                   "10 outputs, --classes has 2 classes (cat, dog)"),
    "NaN in the weights": (lambda d: [_state_with(d, "nan.pt", _nan)], [],
                           "nan.pt: head.bias holds 1 NaN or Inf value (of 10)"),
    "TorchScript without --trust-code": (lambda d: [torchscript(small_cnn(), d / "files" / "scripted.pt")], [],
                                         "scripted.pt: is a TorchScript archive: loading it runs the code it holds; "
                                         "allowed: --trust-code"),
    "two checkpoints of one name": (lambda d: [save(small_cnn().state_dict(), d / "other" / "good.pt")], [],
                                    "other/good.pt: has the name 'good', as"),
    "image size the model cannot take": (lambda d: [], ["--model", "airbench", "--image-size", "8"],
                                         "--image-size: airbench cannot take 8x8 images"),
    "image size out of range": (lambda d: [], ["--image-size", "4096"], "--image-size: out of range (got 4096)"),
    "a training key": (lambda d: [], ["--set", "lr=0.1"], "--set lr: is not a key the probes read (a training key"),
    "unknown normalization": (lambda d: [], ["--normalize", "cifar100"], "--normalize: cannot read it"),
    "unknown class": (lambda d: [], ["--classes", "cat,dgo"], "--classes: unknown class 'dgo'"),
    "unknown noise": (lambda d: [], ["--noise", "perlin"], "--noise: unknown name 'perlin'"),
    "unknown torchvision model": (lambda d: [], ["--model", "torchvision:resnet19"],
                                  "--model: unknown torchvision model"),
    "condition not a label": (lambda d: [], ["--condition", "my run"], "--condition: invalid label"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_is_refused_before_anything_is_written(case, tiny_data, tmp_path, capsys):
    make, extra, expected = BAD_FILES[case]
    good = _good(tmp_path)
    bad = make(tmp_path)
    out = tmp_path / "out"
    assert probe(tiny_data, out, good, *bad, extra=extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not out.exists(), "bad input must not create --out"


def test_a_name_already_in_out_is_refused_and_out_left_as_it_was(tiny_data, tmp_path, capsys):
    good = _good(tmp_path)
    out = tmp_path / "out"
    assert probe(tiny_data, out, good) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert probe(tiny_data, out, good, extra=["--condition", "again"]) == 2
    assert "good.pt: has the name 'good', which --out holds already" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_sweeps_study_is_not_added_to(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / STUDY_JSON).write_text(json.dumps({"name": "sweep", "axes": ["seed"], "points": []}))
    assert probe(tiny_data, out, _good(tmp_path)) == 2
    assert "--out: holds a sweep's study (study.json)" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == [STUDY_JSON]


# ---------------------------------------------------------------- a study of checkpoints

@pytest.mark.slow   # three probes and an aggregation: ~15 s
def test_three_checkpoints_are_runs_of_one_condition_aggregated_with_the_guard(tiny_data, tmp_path):
    """Three seeds of one recipe's checkpoints -> `noisesink analyze DIR`: one condition of three
    runs, too weak to interpret (random weights), each run's file in runs.csv."""
    import pandas as pd
    weights = [save(small_cnn(seed).state_dict(), tmp_path / f"seed{seed}.pt") for seed in range(3)]
    out = tmp_path / "study"
    assert probe(tiny_data, out, *weights, noise="gaussian,uniform", extra=["--condition", "recipe"]) == 0
    assert main(["analyze", str(out)]) == 0
    report = out / "report"
    runs = pd.read_csv(report / "runs.csv")
    assert sorted(runs["trial_id"]) == ["seed0", "seed1", "seed2"] and set(runs["condition"]) == {"arm=recipe"}
    assert sorted(runs["checkpoint"]) == sorted(str(w.resolve()) for w in weights)
    assert pd.read_csv(report / "problems.csv").empty
    guard = pd.read_csv(report / "accuracy_guard.csv")
    assert guard["condition"].tolist() == ["arm=recipe"] and guard["n_runs"].tolist() == [3]
    assert guard["too_weak"].tolist() == [True]
    text = (report / "report.md").read_text()
    assert "3 of the 3 runs are checkpoints trained elsewhere and probed by" in text and "too weak to interpret" in text


@pytest.mark.slow   # two probes and an aggregation: ~11 s
def test_a_second_condition_probed_into_the_same_folder(tiny_data, tmp_path):
    """Probing more checkpoints into DIR with another --condition adds a condition: study.json
    holds both, each run belongs to its point's config, seeds number each condition's files."""
    from analysis.load import load
    out = tmp_path / "study"
    first = [save(small_cnn(s).state_dict(), tmp_path / "a" / f"a{s}.pt") for s in range(2)]
    second = [save(small_cnn(s, classes=2).state_dict(), tmp_path / "b" / f"b{s}.pt") for s in range(2)]
    assert probe(tiny_data, out, *first, extra=["--condition", "all10"]) == 0
    assert probe(tiny_data, out, *second, extra=["--condition", "catdog", "--classes", "cat,dog"]) == 0
    study = json.loads((out / STUDY_JSON).read_text())
    assert study["axes"] == ["arm", "seed"] and study["grid"]["arm"] == ["all10", "catdog"]
    assert [(p["dir"], p["axes"]["seed"]) for p in study["points"]] == [("a0", 0), ("a1", 1), ("b0", 0), ("b1", 1)]
    data = load(str(out))
    assert not data.problems and len(data.runs) == 4
    assert {r["condition"] for r in data.runs} == {"arm=all10", "arm=catdog"}
