"""One trial end to end on tiny data: artifacts, determinism, divergence, resume, the CLI."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import yaml

from study.__main__ import main
from study.artifacts import ArtifactDir
from study.data import CIFAR10_CLASSES
from study.noise import NOISE_FAMILIES
from study.trial import TrainedData, clutter_sample, run_trial, setup

TOP_KEYS = {"config", "status", "seed", "noise_seed", "classes", "heldout_classes", "test_accuracy",
            "per_class_accuracy", "confusion", "timing", "versions", "code_revision", "absorption",
            "absorber", "mst", "distance", "noise_neighbour", "heldout", "trajectory", "arrays",
            "normalization", "data", "train_history", "warnings", "architecture"}
VARIABLE = ("timing", "versions", "code_revision", "arrays")  # differ between identical runs


def stable(result: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(result)).items() if k not in VARIABLE}


@pytest.fixture(scope="module")
def subset_trial(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trial")
    cfg = {"model": "small_cnn", "epochs": 2, "batch_size": 40, "lr": 0.05, "n_noise": 40, "n_trajectory": 20,
           "data_root": str(tiny_data), "data_verify": "shapes", "device": "cpu", "threads": 1,
           "sample_per_class": 20, "n_frequency": 40,
           "classes": ["dog", "cat", "bird"]}
    return run_trial(cfg, str(out), log=lambda m: None), out


def test_trial_json_holds_every_measurement(subset_trial):
    result, out = subset_trial
    on_disk = json.loads((out / "trial.json").read_text())
    assert TOP_KEYS <= set(on_disk)
    assert on_disk["status"] == "completed" and on_disk["classes"] == ["dog", "cat", "bird"]
    assert 0 <= on_disk["test_accuracy"] <= 1
    families = list(NOISE_FAMILIES)
    assert list(on_disk["absorption"]) == families
    for f in families:
        shares = on_disk["absorption"][f]
        assert list(shares) == ["dog", "cat", "bird"] and sum(shares.values()) == pytest.approx(1)
        assert on_disk["distance"][f]["nodes"] == ["dog", "cat", "bird", "noise"]
        matrix = np.array(on_disk["distance"][f]["matrix"])
        assert matrix.shape == (4, 4) and np.allclose(matrix, matrix.T)
        assert len(on_disk["mst"][f]) == 3 and all(u < v for u, v, _ in on_disk["mst"][f])
    assert set(on_disk["heldout"]) == {"airplane", "automobile", "deer", "frog", "horse", "ship", "truck"}
    assert all(sum(s.values()) == pytest.approx(1) for s in on_disk["heldout"].values())
    assert [p["epoch"] for p in on_disk["trajectory"]] == [0, 1, 2]
    assert on_disk["versions"]["torch"] and on_disk["code_revision"]["source_sha256"]
    assert on_disk["config"]["seed"] == on_disk["seed"] == 0
    # the probe-time experiments (n_amplitude and n_bn default to n_trajectory): one row per
    # amplitude, every BatchNorm mode, their seconds
    amp = on_disk["amplitude"]
    assert [r["amplitude"] for r in amp["rows"]] == [0.25, 0.5, 1, 2, 4, 8, 16] and amp["n_images"] == 20
    assert amp["not_piecewise_affine"] == []   # small_cnn: ReLU, max-pooling, BatchNorm (Hein et al.'s theorem applies)
    assert amp["label_frequencies"] == pytest.approx({"dog": 1 / 3, "cat": 1 / 3, "bird": 1 / 3}, abs=0.02)
    for r in amp["rows"]:
        assert sum(r["shares"].values()) == pytest.approx(1) and 1 / 3 <= r["mean_max_softmax"] <= 1
        assert r["kl_uniform"] >= 0 and r["feature_norm_ratio"] > 0
    bn = on_disk["batchnorm"]
    assert bn["applicable"] and set(bn["modes"]) == {"eval", "batch_stats", "noise_stats"} and bn["n_images"] == 20
    assert 0 < on_disk["timing"]["hypothesis_probe_seconds"] < on_disk["timing"]["probe_seconds"]


def test_arrays_match_the_json_and_its_checksum(subset_trial):
    result, out = subset_trial
    raw = (out / "arrays.npz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == result["arrays"]["sha256"]
    z = np.load(out / "arrays.npz")
    assert z["class_means"].shape == (3, 128) and z["noise_means"].shape == (len(NOISE_FAMILIES), 128)
    # the mean training image of each class: the tiny data colours class c's channel c % 3 brightest
    assert z["class_mean_images"].shape == (3, 32, 32, 3) and list(z["class_mean_counts"]) == [20, 20, 20]
    brightest = z["class_mean_images"].reshape(3, -1, 3).mean(1).argmax(1)
    assert list(brightest) == [CIFAR10_CLASSES.index(c) % 3 for c in ["dog", "cat", "bird"]]
    for f in NOISE_FAMILIES:
        assert z[f"pred_{f}"].shape == (40,)
        shares = np.bincount(z[f"pred_{f}"], minlength=3) / 40
        assert np.allclose(shares, list(result["absorption"][f].values()))
        assert np.allclose(z[f"distance_{f}"], result["distance"][f]["matrix"])


def test_same_config_and_seed_give_identical_results(tiny_config, tmp_path):
    """Every stream of the seed (init, order and augmentation, train subset) repeats; another seed
    trains on other images in another order from other weights. A run-only key (eval_batch_size,
    outside config_digest) changes nothing measured: not even the BatchNorm probe's batch statistics."""
    cfg = tiny_config(epochs=2, noise=["gaussian", "uniform"], train_subset=150, augmentation="flip_crop_cutout")
    a = run_trial(cfg, str(tmp_path / "a"), log=lambda m: None)
    b = run_trial({**cfg, "eval_batch_size": 7}, str(tmp_path / "b"), log=lambda m: None)
    assert a["batchnorm"]["applicable"] and a["batchnorm"]["batch_size"] == min(cfg["batch_size"], cfg["n_trajectory"])
    assert a["config_digest"] == b["config_digest"]
    assert stable(a) == stable({**b, "config": a["config"]})
    c = run_trial({**cfg, "seed": 1}, str(tmp_path / "c"), log=lambda m: None)
    assert stable(c)["train_history"] != stable(a)["train_history"]


def test_architecture_factors_are_trained_and_recorded(tiny_config, tmp_path):
    result = run_trial(tiny_config(activation="tanh", pool="avg", norm="layer", noise=["gaussian"], train_subset=100),
                       str(tmp_path), log=lambda m: None)
    on_disk = json.loads((tmp_path / "trial.json").read_text())
    assert result["status"] == "completed"
    assert {k: on_disk["config"][k] for k in ("activation", "pool", "norm")} == {"activation": "tanh", "pool": "avg",
                                                                                 "norm": "layer"}
    arch = on_disk["architecture"]
    assert (arch["model"], arch["activation"], arch["pool"], arch["norm"]) == ("small_cnn", "tanh", "avg", "layer")
    default = json.loads(json.dumps(run_trial(tiny_config(noise=["gaussian"], train_subset=100), str(tmp_path / "d"),
                                              log=lambda m: None)))
    assert default["config"]["norm"] is None and default["architecture"]["norm"] == "batch"


@pytest.mark.parametrize("model", ["timm:test_convnext", "timm:test_vit"])
def test_a_timm_model_goes_through_every_probe(tiny_config, tmp_path, model):
    """The probes read timm's pooled pre-logits as the features and its classifier as the head:
    the logit decomposition rebuilds the logits from them (a known answer), the clutter and OOD
    measures run on them."""
    result = run_trial(tiny_config(model=model, noise=["gaussian"]), str(tmp_path), log=lambda m: None)
    assert result["status"] == "completed" and result["architecture"]["model"] == model
    assert result["logit_decomposition"]["gaussian"]["reconstruction_error"] < 1e-4
    assert {r["detector"] for r in result["ood"]["rows"]} >= {"msp", "mahalanobis", "knn"}
    assert np.load(tmp_path / "arrays.npz")["class_means"].shape[1] == result["architecture"]["feature_dim"]


def test_absurd_learning_rate_is_recorded_as_diverged(tiny_config, tmp_path):
    result = run_trial(tiny_config(lr=1e12, epochs=3), str(tmp_path), log=lambda m: None)
    assert result["status"] == "diverged" and result["diverged_at_epoch"] == 1
    on_disk = json.loads((tmp_path / "trial.json").read_text())
    assert on_disk["status"] == "diverged" and "absorption" not in on_disk


def test_resume_from_a_snapshot_gives_the_uninterrupted_result(tiny_config, tmp_path):
    cfg = tiny_config(epochs=3, noise=["gaussian"], train_subset=150)
    snapshots = {}

    def keep(epoch, metrics, snapshot):
        snapshots[epoch] = snapshot()

    full = run_trial(cfg, str(tmp_path / "full"), on_epoch=keep, log=lambda m: None)
    assert snapshots[1]["trainer"]["epoch"] == 1  # not a view of the live, later state
    resumed = run_trial(cfg, str(tmp_path / "resumed"), resume=snapshots[1], log=lambda m: None)
    assert stable(resumed) == stable(full)


def test_trial_artifacts_go_to_any_pyarrow_filesystem(tiny_config, tmp_path):
    from study.config import validate_trial
    from study.plan import result_state
    out = ArtifactDir.at(f"file://{tmp_path}/uri-out")
    cfg = tiny_config(noise=["gaussian"], train_subset=100)
    run_trial(cfg, out, log=lambda m: None)
    assert result_state(out, validate_trial(cfg)) == [] and (tmp_path / "uri-out" / "trial.json").exists()
    assert not list((tmp_path / "uri-out").glob(".*tmp*"))  # no temporary files left behind


# ---------------------------------------------------------------- the command line

def write(tmp_path, cfg, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg) if isinstance(cfg, dict) else cfg)
    return str(path)


def test_cli_runs_one_trial(tiny_config, tmp_path, capsys):
    path = write(tmp_path, tiny_config(noise=["gaussian"], train_subset=100))
    assert main(["trial", path, "--out", str(tmp_path / "out"), "--set", "epochs=1"]) == 0
    assert "status completed" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "trial.json").read_text())["config"]["epochs"] == 1


@pytest.mark.parametrize("change, expected", [
    ({"classes": ["cat", "unicorn"]}, "classes: unknown class 'unicorn'"),
    ({"noise": ["gaussian", "plaid"]}, "noise: unknown name 'plaid'"),
    ({"model": "vgg99"}, "model: unknown value"),
    ({"model": "timm:vgg99"}, "model: unknown timm model"),
    ({"norm": "instance"}, "norm: unknown value"),
    ({"model": "resnet18_imagenet", "pool": "max"}, "pool: model resnet18_imagenet has no architecture factors"),
    ({"pretrained": "imagenet"}, "pretrained: only resnet18_imagenet and timm models take pretrained weights"),
    ({"augmentation": "mixup"}, "augmentation: unknown value"),
    ({"learning_rate": 0.1}, "learning_rate: unknown key"),
    ({"data_root": "/no/such/cifar"}, "data_root: no such file or folder"),
    ({"epochs": 0}, "epochs: out of range"),
    ({"lr": -0.1}, "lr: out of range"),
    ({"classes": ["cat", "cat"]}, "given twice"),
    ({"classes": ["cat"]}, "at least two classes"),
    ({"train_subset": 100, "batch_size": 500}, "batch_size: larger than the training subset"),
])
def test_cli_bad_input_exits_2_before_training(tiny_config, tmp_path, capsys, change, expected):
    path = write(tmp_path, tiny_config(**change))
    assert main(["trial", path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_malformed_yaml_and_bad_set(tiny_config, tmp_path, capsys):
    bad = write(tmp_path, "model: [small_cnn\n", "bad.yaml")
    assert main(["trial", bad, "--out", str(tmp_path / "o")]) == 2
    assert "YAML syntax error" in capsys.readouterr().err
    good = write(tmp_path, tiny_config())
    assert main(["trial", good, "--out", str(tmp_path / "o"), "--set", "epoch=2"]) == 2
    assert "--set epoch: no such key" in capsys.readouterr().err


def test_setup_is_immutable_and_the_trained_data_is_passed_explicitly(tiny_config):
    """The clutter sample comes from the data handed in (here: the target class cut to 5 images,
    as a subsample intervention leaves it), never from state patched onto the setup."""
    s = setup(tiny_config(classes=["cat", "dog"], sample_per_class=20))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cfg = {}
    keep = np.flatnonzero(s.task.train_y == 1).tolist() + np.flatnonzero(s.task.train_y == 0)[:5].tolist()
    trained = TrainedData(s.task.train_x[keep], s.task.train_y[keep], {"kind": "subsample"})
    x, y = clutter_sample(s, trained)
    assert np.bincount(y).tolist() == [5, 20]
    np.testing.assert_array_equal(x[y == 0], s.task.train_x[keep[-5:]])
    x2, y2 = clutter_sample(s, TrainedData.untouched(s.task))
    assert np.bincount(y2).tolist() == [20, 20]


def test_the_code_revision_is_the_code_imported_not_the_checkout_at_the_trials_end(monkeypatch):
    """A long study in one process: its checkout may move on while it runs. The revision a trial
    records is the one taken when the code was imported; nothing is asked of git again."""
    import subprocess

    from analysis import revision
    from study import provenance
    before = provenance.code_revision()

    def moved_on(*args, **kwargs):
        raise AssertionError("code_revision asked git again")
    monkeypatch.setattr(subprocess, "run", moved_on)
    monkeypatch.setattr(revision, "source_digest", lambda: "another tree")
    assert provenance.code_revision() == before and before["source_sha256"] != "another tree"
