"""Every shipped sweep file is valid, and its header states its true size and its GPU-hours."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT
from study.config import load_sweep

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_the_issue_list_of_sweeps_is_shipped():
    names = {p.stem for p in SWEEPS}
    assert {"smoke", "seeds", "catdog", "subsets", "augmentation", "full"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_is_valid_and_its_header_gives_size_and_cost(path):
    sweep = load_sweep(path)
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    size = re.search(r"(\d[\d,]*) trials", header)
    assert size, f"{path.name}: header must give the number of trials"
    assert int(size.group(1).replace(",", "")) == len(sweep.points())
    assert re.search(r"GPU-hours", header), f"{path.name}: header must give the GPU-hours"
    assert sweep.name == path.stem


def test_paired_sweeps_use_the_same_seeds_in_every_arm():
    sweep = load_sweep(ROOT / "sweeps" / "augmentation.yaml")
    seeds_per_arm = {}
    for p in sweep.points():
        seeds_per_arm.setdefault(p["augmentation"], set()).add(p["seed"])
    assert len(seeds_per_arm) == 5 and len({frozenset(s) for s in seeds_per_arm.values()}) == 1
    assert len(next(iter(seeds_per_arm.values()))) >= 10


def stand_in_imagenet_weights(folder) -> str:
    """A torchvision ResNet-18 state dict with random weights, where ImageNet's cannot be downloaded:
    the fine-tune path (load, replace the head, resize the images) runs on it unchanged."""
    import torch
    from torchvision.models import resnet18
    torch.manual_seed(0)
    path = folder / "resnet18-stand-in.pth"
    torch.save(resnet18().state_dict(), path)
    return str(path)


@pytest.mark.slow   # a ResNet-18 at 48x48, 1 epoch and its probes: ~30 s on 2 cores
def test_the_finetune_sweep_trains_and_probes_a_tiny_run_with_stand_in_weights(tiny_config, tmp_path):
    """sweeps/finetune.yaml's trial, as shipped but at toy sizes: the pretrained backbone loads, a new
    head is trained, training, test and noise images are resized to image_size alike, and the trial
    writes its artifacts (the GPU sweep resizes to 224; here 48 keeps it a few seconds)."""
    import json

    from study.trial import run_trial
    shipped = load_sweep(ROOT / "sweeps" / "finetune.yaml")
    assert shipped.trial["image_size"] == 224 and shipped.trial["model"] == "resnet18_imagenet"
    cfg = tiny_config(**{k: shipped.trial[k] for k in ("model", "augmentation")}, classes=["cat", "dog"],
                      pretrained=stand_in_imagenet_weights(tmp_path), image_size=48, noise=["gaussian"],
                      n_bn=0, amplitudes=[], test_subset=40)
    result = run_trial(cfg, str(tmp_path / "trial"))
    assert result["status"] == "completed" and result["config"]["image_size"] == 48
    stored = json.loads((tmp_path / "trial" / "trial.json").read_text())
    assert stored["absorber"]["gaussian"]["absorber"] in ("cat", "dog")


@pytest.mark.slow  # decodes all of real CIFAR-10 into the tests' private cache first
@pytest.mark.realdata
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_study_check_passes_on_real_data(path, real_tar, capsys, tmp_path):
    import torch

    from study.__main__ import main
    # a GPU study checked on a machine without one: validated for the cluster it is meant for
    where = ["--cluster"] if load_sweep(path).resources["gpu"] > torch.cuda.device_count() else []
    if load_sweep(path).trial.get("pretrained") == "imagenet":   # offline: torchvision's architecture, random weights
        where += ["--set", f"trial.pretrained={stand_in_imagenet_weights(tmp_path)}"]
    assert main(["check", str(path), "--set", f"trial.data_root={real_tar}", *where]) == 0
    out = capsys.readouterr().out
    assert "grid:" in out and "power at alpha = 0.05" in out and "absorber consistency, K =" in out
