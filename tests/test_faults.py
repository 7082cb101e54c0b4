"""Faults survived with real processes: a killed trial worker, a corrupt checkpoint, storage
that is read-only, full or unreachable, a diverging trial. Nothing lost, nothing counted twice."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from study.trial import run_trial

pytestmark = pytest.mark.slow
VARIABLE = ("timing", "versions", "code_revision", "arrays", "warnings")


def stable(t: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(t)).items() if k not in VARIABLE}


def fault_trial(tiny_data, **over) -> dict:
    """Slow enough per epoch (batch 10: 60 steps) to be interrupted mid-epoch."""
    cfg = {"model": "small_cnn", "epochs": 6, "batch_size": 10, "lr": 0.02, "n_noise": 40, "n_trajectory": 20,
           "noise": ["gaussian", "uniform"], "data_root": str(tiny_data), "data_verify": "shapes",
           "device": "cpu", "threads": 1, "classes": ["cat", "dog", "ship"], "sample_per_class": 20,
           "n_frequency": 40}
    return {**cfg, **over}


def write_sweep(tmp_path: Path, name: str, trial: dict, storage: Path, **run) -> Path:
    sweep = {"name": name, "trial": {k: v for k, v in trial.items() if k != "seed"},
             "grid": {"seed": [trial.get("seed", 0)]}, "resources": {"cpu": 1, "gpu": 0},
             "run": {"storage": str(storage), "max_failures": 2, "checkpoint_every": 1, **run}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "study", "sweep", *map(str, args)]


def wait_for(condition, timeout: float = 240, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met")


def reported_pid(trial_dir: Path, after_iteration: int):
    """The worker's pid from Tune's result.json, once the trial has reported `after_iteration`."""
    try:
        lines = [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return None
    done = [x for x in lines if x.get("training_iteration", 0) >= after_iteration and not x.get("done")]
    return done[-1]["pid"] if done else None


def test_killed_trial_worker_resumes_and_matches_an_uninterrupted_run(tiny_data, tmp_path):
    cfg = fault_trial(tiny_data)
    reference = run_trial(cfg, str(tmp_path / "reference"), log=lambda m: None)
    path = write_sweep(tmp_path, "killworker", cfg, tmp_path / "results")
    driver = subprocess.Popen(sweep_cmd(path, "--no-report"), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    trial_dir = tmp_path / "results" / "killworker" / "seed=0"
    pid = wait_for(lambda: reported_pid(trial_dir, after_iteration=2))
    os.kill(pid, signal.SIGKILL)  # mid-epoch 3 of 6: the worker dies between two checkpoints
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, out[-4000:]
    assert "resumed from the checkpoint of epoch" in out
    result = json.loads((trial_dir / "trial.json").read_text())
    assert result["status"] == "completed"
    assert stable(result) == stable(reference)


def test_corrupt_checkpoint_restarts_the_trial_from_scratch_with_a_warning(tiny_data, tmp_path):
    cfg = fault_trial(tiny_data, epochs=8)
    reference = run_trial(cfg, str(tmp_path / "reference"), log=lambda m: None)
    path = write_sweep(tmp_path, "corrupt", cfg, tmp_path / "results")
    driver = subprocess.Popen(sweep_cmd(path, "--no-report"), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    trial_dir = tmp_path / "results" / "corrupt" / "seed=0"
    wait_for(lambda: reported_pid(trial_dir, after_iteration=2))
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(3)  # Ray's reaper stops the local cluster
    assert not (trial_dir / "trial.json").exists()
    checkpoints = sorted(trial_dir.glob("checkpoint_*/state.pt"))
    assert checkpoints
    for state in checkpoints:  # a torn write: half the file
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    res = subprocess.run(sweep_cmd(path, "--resume", "--no-report"), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "restarted from scratch" in res.stdout + res.stderr
    result = json.loads((trial_dir / "trial.json").read_text())
    assert result["status"] == "completed"
    assert any("unreadable" in w and "restarted from scratch" in w for w in result["warnings"])
    assert stable(result) == stable(reference)


# ---------------------------------------------------------------- storage

@contextmanager
def tmpfs(path: Path, options: str):
    """A real filesystem with the given mount options (root), else skip."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root with mount rights to make a read-only or full filesystem")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def check(path, *args):
    return subprocess.run([sys.executable, "-m", "study", "check", str(path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_read_only_storage_is_refused_before_trials_start(tiny_data, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=4m") as ro:
        path = write_sweep(tmp_path, "ro", fault_trial(tiny_data), ro / "results")
        res = check(path)
        assert res.returncode == 2 and "run.storage: not writable" in res.stderr and str(ro) in res.stderr


def test_too_small_disk_is_refused_before_trials_start(tiny_data, tmp_path):
    with tmpfs(tmp_path / "small", "size=1m") as small:
        path = write_sweep(tmp_path, "small", fault_trial(tiny_data), small / "results")
        res = subprocess.run(sweep_cmd(path), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "run.storage: only 1 MB free" in res.stderr
        assert list(small.iterdir()) == []  # nothing written


def test_disk_filling_up_mid_study_fails_later_trials_and_keeps_earlier_results(tiny_data, tmp_path):
    with tmpfs(tmp_path / "disk", "size=48m") as disk:
        trial = fault_trial(tiny_data, epochs=1, batch_size=50)
        sweep = {"name": "full", "trial": trial, "grid": {"seed": [0, 1, 2]},
                 "resources": {"cpu": 1, "gpu": 0},
                 "run": {"storage": str(disk), "max_failures": 1, "max_concurrent": 1}}
        path = tmp_path / "full.yaml"
        path.write_text(yaml.safe_dump({**sweep, "trial": {k: v for k, v in trial.items() if k != "seed"}}))
        study = disk / "full"
        driver = subprocess.Popen(sweep_cmd(path, "--no-report"), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        first = wait_for(lambda: next(iter(study.glob("*/trial.json")), None))
        before = first.read_bytes()
        filler = disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)  # until ENOSPC
        out, _ = driver.communicate(timeout=300)
        assert driver.returncode != 0, "a study with failed trials must not report success"
        assert first.read_bytes() == before                   # what was written is intact
        filler.unlink()
        res = subprocess.run([sys.executable, "-m", "analysis", str(study), "--out", str(tmp_path / "report")],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        runs = pd.read_csv(tmp_path / "report" / "runs.csv")
        problems = pd.read_csv(tmp_path / "report" / "problems.csv")
        assert first.parent.name in set(runs["trial_id"])
        assert len(runs) + len(problems) == 3 and len(problems) >= 1


def test_unreachable_object_store_is_refused_before_trials_start(tiny_data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    path = write_sweep(tmp_path, "s3", fault_trial(tiny_data), tmp_path / "unused")
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    res = subprocess.run([sys.executable, "-m", "study", "check", str(path), "--storage", "s3://results/studies"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "run.storage: cannot reach the storage" in res.stderr


def test_diverging_trial_is_recorded_reported_and_excluded(tiny_data, tmp_path):
    trial = fault_trial(tiny_data, epochs=2, batch_size=50)
    trial.pop("lr")
    sweep = {"name": "diverge", "trial": trial, "grid": {"lr": [0.02, 1e12], "seed": [0, 1, 2]},
             "resources": {"cpu": 1, "gpu": 0}, "run": {"storage": str(tmp_path)}}
    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump(sweep))
    res = subprocess.run(sweep_cmd(path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    report = tmp_path / "diverge" / "report"
    runs = pd.read_csv(report / "runs.csv")
    assert (runs["status"] == "diverged").sum() == 3 and (runs["status"] == "completed").sum() == 3
    cons = pd.read_csv(report / "consistency.csv")
    assert set(cons["condition"]) == {"lr=0.02"} and (cons["n_runs"] == 3).all()
    text = (report / "report.md").read_text()
    assert "3 diverged (excluded from all statistics)" in text
