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


@pytest.mark.slow  # decodes all of real CIFAR-10 into the tests' private cache first
@pytest.mark.realdata
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_study_check_passes_on_real_data(path, real_tar, capsys):
    import torch

    from study.__main__ import main
    # a GPU study checked on a machine without one: validated for the cluster it is meant for
    where = ["--cluster"] if load_sweep(path).resources["gpu"] > torch.cuda.device_count() else []
    assert main(["check", str(path), "--set", f"trial.data_root={real_tar}", *where]) == 0
    out = capsys.readouterr().out
    assert "grid:" in out and "power at alpha = 0.05" in out and "absorber consistency, K =" in out
