"""Sweeps through real Ray Tune (local, 2 CPUs): the shipped smoke sweep at a tiny size, resume
after the driver is killed, and `study check`."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, wait_for_session_end

pytestmark = pytest.mark.slow


def tiny_overrides(tiny_data: Path, storage: Path) -> list[str]:
    sets = {"trial.train_subset": 100, "trial.test_subset": 40, "trial.epochs": 1, "trial.batch_size": 50,
            "trial.n_noise": 40, "trial.n_trajectory": 20, "trial.data_root": str(tiny_data),
            "trial.data_verify": "shapes", "run.storage": str(storage), "trial.sample_per_class": 20,
            "trial.n_frequency": 40}
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def study_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "study", *args]


def trial_files(study: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in study.glob("*/trial.json")}


def test_check_describes_the_smoke_sweep(tiny_data, tmp_path):
    res = subprocess.run(study_cmd("check", "sweeps/smoke.yaml", *tiny_overrides(tiny_data, tmp_path / "r")),
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "grid: 4 trials = 2 classes x 2 seed" in out
    assert "resources per trial: cpu 1.0, gpu 0" in out and "at once" in out
    assert "first trial (classes=all_seed=0)" in out and "  epochs: 1" in out
    assert not (tmp_path / "r").exists()  # check writes nothing


def test_smoke_sweep_runs_on_ray_and_writes_one_result_per_grid_point(tiny_data, tmp_path):
    res = subprocess.run(study_cmd("sweep", "sweeps/smoke.yaml", *tiny_overrides(tiny_data, tmp_path)),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = tmp_path / "smoke"
    files = trial_files(study)
    assert sorted(files) == ["classes=all_seed=0", "classes=all_seed=1", "classes=cat.dog_seed=0",
                             "classes=cat.dog_seed=1"]
    for name, f in files.items():
        t = json.loads(f.read_text())
        assert t["status"] == "completed" and len(t["absorption"]) == 10
        assert t["config"]["seed"] == int(name[-1])
        assert (f.parent / "arrays.npz").exists()
    assert json.loads((study / "study.json").read_text())["axes"] == ["classes", "seed"]
    runs = pd.read_csv(study / "report" / "runs.csv")
    assert len(runs) == 4 and set(runs["condition"]) == {"classes=all", "classes=cat.dog"}
    assert (study / "report" / "report.md").exists()


def test_killed_driver_resumes_without_recomputing_finished_trials(tiny_data, tmp_path):
    sweep = {"name": "resumable",
             "trial": {"model": "small_cnn", "epochs": 3, "batch_size": 50, "n_noise": 40, "n_trajectory": 20,
                       "noise": ["gaussian", "uniform"], "data_root": str(tiny_data), "data_verify": "shapes",
                       "device": "cpu", "classes": ["cat", "dog", "frog"], "sample_per_class": 20,
                       "n_frequency": 40},
             "grid": {"seed": [0, 1, 2, 3, 4, 5]},
             "resources": {"cpu": 1, "gpu": 0},
             # two at a time: with 2 or more finished, at least 2 cannot have finished yet
             "run": {"storage": str(tmp_path), "max_failures": 1, "checkpoint_every": 1, "max_concurrent": 2}}
    path = tmp_path / "resumable.yaml"
    path.write_text(yaml.safe_dump(sweep))
    study = tmp_path / "resumable"
    driver = subprocess.Popen(study_cmd("sweep", str(path), "--no-report"), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(trial_files(study)) < 2:
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    wait_for_session_end(driver.pid)  # nothing of the killed study writes any more
    before = {name: hashlib.sha256(f.read_bytes()).hexdigest() for name, f in trial_files(study).items()}
    assert 2 <= len(before) < 6, before

    res = subprocess.run(study_cmd("sweep", str(path), "--resume"), cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming" in res.stdout
    after = {name: hashlib.sha256(f.read_bytes()).hexdigest() for name, f in trial_files(study).items()}
    assert sorted(after) == [f"seed={s}" for s in range(6)]
    for name, digest in before.items():
        assert after[name] == digest, f"{name} was recomputed"
    runs = pd.read_csv(study / "report" / "runs.csv")
    assert sorted(runs["seed"]) == [0, 1, 2, 3, 4, 5]


def test_fused_seeds_write_the_same_grid_point_folders(tiny_data, tmp_path):
    sweep = {"name": "fusedstudy",
             "trial": {"model": "small_cnn", "epochs": 1, "batch_size": 50, "n_noise": 40, "n_trajectory": 20,
                       "noise": ["gaussian"], "data_root": str(tiny_data), "data_verify": "shapes",
                       "device": "cpu", "classes": ["cat", "dog"], "sample_per_class": 20, "n_frequency": 40},
             "grid": {"seed": [0, 1, 2]},
             "resources": {"cpu": 1, "gpu": 0},
             "run": {"storage": str(tmp_path), "fuse_seeds": 2}}
    path = tmp_path / "fused.yaml"
    path.write_text(yaml.safe_dump(sweep))
    res = subprocess.run(study_cmd("sweep", str(path)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = tmp_path / "fusedstudy"
    assert sorted(trial_files(study)) == ["seed=0", "seed=1", "seed=2"]
    assert sorted(p.name for p in study.glob("fused_*")) == ["fused_seeds=0.1", "fused_seeds=2"]
    fused = json.loads((study / "seed=1" / "trial.json").read_text())
    assert fused["timing"]["fused_models"] == 2 and fused["seed"] == 1
    assert pd.read_csv(study / "report" / "problems.csv").empty
    assert len(pd.read_csv(study / "report" / "runs.csv")) == 3


def test_a_failing_aggregation_keeps_the_trials_and_says_how_to_rerun_it(tiny_data, tmp_path, monkeypatch, capsys):
    """In process, with Tune stubbed out: the trials are done, then the aggregation raises. The
    driver exits 1 and names the command that aggregates the kept trials again."""
    import analysis.pipeline
    from study import sweep
    from study.plan import prepare

    plan = prepare(str(ROOT / "sweeps" / "smoke.yaml"), tiny_overrides(tiny_data, tmp_path)[1::2])
    monkeypatch.setattr(sweep, "_init_ray", lambda address: None)
    monkeypatch.setattr(sweep, "build_tuner", lambda plan, resume: type("T", (), {"fit": lambda self: []})())

    def broken(*args):
        raise ValueError("a plot refused its data")
    monkeypatch.setattr(analysis.pipeline, "aggregate", broken)
    assert sweep.run(plan) == 1
    err = capsys.readouterr().err
    assert "a plot refused its data" in err and f"python -m analysis {plan.uri}" in err
    assert (Path(plan.uri) / "study.json").exists()
