"""The device path without a GPU: probes are fp32 whatever training used, and a trial that should
run on CUDA but sees none fails at once, naming the node and the torch build.

The "no CUDA" tests only mean something where torch sees no CUDA device (CI, laptops); on a GPU
machine they are skipped.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from study.errors import InputError
from study.explain import logit_decomposition
from study.models import build_model
from study.noise import NOISE_FAMILIES
from study.train import Normalizer, Precision, no_cuda_reason, predict, resolve_device
from study.trial import run_trial

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_a_bf16_trial_probes_in_fp32(tiny_config, tmp_path):
    """precision: bf16 trains under bf16 autocast (on the CPU here); the probes are fp32, so the
    logits equal w . f + b of the recorded features to fp32 rounding, for every noise family.
    One training step (train_subset = batch_size): a bf16 step costs seconds on CPUs without bf16
    units, and one is as good as many for what is checked here."""
    result = run_trial(tiny_config(precision="bf16", train_subset=50, batch_size=50, sample_per_class=5), str(tmp_path),
                       log=lambda m: None)
    assert result["status"] == "completed"
    assert result["compute"] == {"device": "cpu", "training_precision": "bf16", "probe_precision": "fp32"}
    errors = {f: d["reconstruction_error"] for f, d in result["logit_decomposition"].items()}
    assert set(errors) == set(NOISE_FAMILIES)
    assert max(errors.values()) < 1e-4, errors
    assert json.loads((tmp_path / "trial.json").read_text())["compute"]["probe_precision"] == "fp32"


def test_the_reconstruction_check_would_catch_bf16_probes():
    """The 1e-4 bound above is not loose: the same features and logits taken under bf16 autocast
    (what the probes did before) miss w . f + b by far more."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, seed=0)
    images = torch.rand(16, 3, 32, 32)
    norm = Normalizer([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    bf16 = Precision(torch.device("cpu"), "bf16", channels_last=True)
    w = model.head.weight.detach().numpy()
    b = model.head.bias.detach().numpy()
    classes = [str(i) for i in range(10)]

    logits, feats = predict(model, images, norm, bf16, 32, torch.device("cpu"))
    exact = logit_decomposition(logits, feats, w, b, classes, feats, np.random.default_rng(0))["reconstruction_error"]
    with torch.no_grad(), bf16.autocast():
        f = model.eval().features(bf16.layout(norm(images)))
        z = model.head(f)
    rounded = logit_decomposition(z.float().numpy(), f.float().numpy(), w, b, classes, feats,
                                  np.random.default_rng(0))["reconstruction_error"]
    assert exact < 1e-4 < rounded, (exact, rounded)


def test_precision_names_what_training_uses():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert Precision(cpu, "auto", True).training == "fp32"
    assert Precision(cpu, "bf16", True).training == "bf16"
    assert Precision(cuda, "auto", True).training == "bf16"
    assert Precision(cuda, "fp32", True).training == "fp32"


@no_cuda
def test_auto_without_an_assigned_gpu_is_the_cpu(monkeypatch):
    for hidden in ("", "-1"):  # the usual ways of hiding every GPU
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", gpus=[]) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("how", ["scheduler", "environment", "config"])
def test_no_silent_cpu_fallback(how, monkeypatch):
    """Given a GPU by the scheduler (Ray's get_gpu_ids, passed in), by CUDA_VISIBLE_DEVICES (what
    Ray and the local executor set for a trial with resources.gpu > 0), or asked for by the
    config: no CUDA here is an error naming the node and the torch build's CUDA."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if how == "scheduler":
        call = lambda: resolve_device("auto", gpus=[0])  # noqa: E731
    elif how == "environment":
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        call = lambda: resolve_device("auto")  # noqa: E731
    else:
        call = lambda: resolve_device("cuda:0")  # noqa: E731
    with pytest.raises(InputError) as err:
        call()
    msg = str(err.value)
    assert no_cuda_reason() in msg and f"node {socket.gethostname()}" in msg
    assert f"torch {torch.__version__}" in msg
    assert ("CUDA " + str(torch.version.cuda)) in msg if torch.version.cuda else "CPU-only build" in msg


@no_cuda
def test_an_explicit_cpu_config_is_obeyed_whatever_was_assigned(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu", gpus=[0]) == torch.device("cpu")


@no_cuda
def test_a_trial_given_a_gpu_fails_before_any_work(tiny_config, tmp_path):
    out = tmp_path / "t"
    with pytest.raises(InputError, match="no CUDA device"):
        run_trial(tiny_config(device="auto"), str(out), log=lambda m: None, gpus=["0"])
    assert not out.exists()  # nothing trained, nothing written


def test_probes_restore_the_tf32_setting():
    """predict turns TF32 off for its own block only (training keeps torch's default)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    model = build_model("small_cnn", 3, seed=0)
    norm = Normalizer([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    logits, feats = predict(model, torch.zeros(4, 3, 32, 32, dtype=torch.uint8), norm,
                            Precision(torch.device("cpu"), "fp32", False), 2, torch.device("cpu"))
    assert logits.dtype == np.float32 and logits.shape == (4, 3)
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


@no_cuda
@pytest.mark.slow
def test_a_ray_trial_given_a_gpu_fails_instead_of_training_on_the_cpu(tiny_data, tmp_path):
    """Through the real Ray path: a local Ray that declares one GPU on this CPU-only machine gives
    it to the sweep's trial (resources.gpu: 1, device: auto); the trial fails at once with the
    node and the torch build named, and writes no result."""
    sets = {"trial.train_subset": 100, "trial.test_subset": 40, "trial.epochs": 1, "trial.batch_size": 50,
            "trial.n_noise": 40, "trial.n_trajectory": 20, "trial.data_root": str(tiny_data),
            "trial.data_verify": "shapes", "trial.device": "auto", "trial.sample_per_class": 20,
            "trial.n_frequency": 40, "resources.gpu": 1, "grid.seed": [0], "grid.classes": ["all"],
            "run.max_failures": 0, "run.storage": str(tmp_path)}
    argv = ["sweep", "sweeps/smoke.yaml", "--no-report", *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]
    script = ("import os, sys, ray\n"
              "ray.init(num_cpus=2, num_gpus=1, _node_ip_address='127.0.0.1', include_dashboard=False)\n"
              "from study.__main__ import main\n"
              f"sys.exit(main({argv!r}))\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    output = res.stdout + res.stderr
    assert res.returncode == 1, output[-4000:]
    assert "0 of 1 trials ended, 1 failed" in output or "1 failed" in output, output[-4000:]
    assert "gave this trial GPU(s)" in output and "torch sees no CUDA device on node" in output, output[-4000:]
    assert not list(tmp_path.glob("smoke/*/trial.json"))
