"""The local executor (`study sweep --executor local`, study/local.py): the Ray adapter's grid,
folders, study.json, resume and report without Ray, in this process or in worker processes."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.contract import trial_dirname
from conftest import ROOT
from study import local
from study.config import validate_sweep
from study.errors import InputError
from study.plan import LOCAL_CHECKPOINT, Plan, prepare

TINY = {"model": "small_cnn", "epochs": 1, "batch_size": 50, "n_noise": 40, "n_trajectory": 20,
        "noise": ["gaussian", "uniform"], "data_verify": "shapes", "device": "cpu", "sample_per_class": 20,
        "n_frequency": 40, "threads": 1}


def make_plan(tmp_path: Path, grid: dict, trial: dict | None = None, run: dict | None = None,
              resources: dict | None = None, name: str = "local") -> Plan:
    sweep = validate_sweep({"name": name, "trial": {**TINY, **(trial or {})}, "grid": grid,
                            "resources": resources or {"cpu": 1, "gpu": 0},
                            "run": {"storage": str(tmp_path / "results"), **(run or {})}})
    points = sweep.points()
    return Plan(sweep, "test.yaml", str(tmp_path / "results"), points,
                [trial_dirname(sweep.axis_values(p)) for p in points])


def complete(plan: Plan, dirname: str) -> None:
    folder = Path(plan.uri) / dirname
    folder.mkdir(parents=True)
    (folder / "trial.json").write_text(json.dumps({"status": "completed"}))


def test_units_skip_complete_points_and_group_fused_seeds_as_ray_does(tmp_path):
    plan = make_plan(tmp_path, {"classes": [["cat", "dog"], ["cat", "frog"]], "seed": [0, 1, 2]},
                     run={"fuse_seeds": 2})
    complete(plan, "classes=cat.dog_seed=1")
    units, skipped = local.work_units(plan, lambda d: (Path(plan.uri) / d / "trial.json").exists())
    assert skipped == ["classes=cat.dog_seed=1"]
    # seed_groups over the grid's seeds: [0, 1], [2] per condition; seed 1 of cat.dog is done
    assert [u.dirnames for u in units] == [["classes=cat.dog_seed=0"], ["classes=cat.dog_seed=2"],
                                           ["classes=cat.frog_seed=0", "classes=cat.frog_seed=1"],
                                           ["classes=cat.frog_seed=2"]]
    assert [c["seed"] for c in units[2].configs] == [0, 1]
    single = make_plan(tmp_path / "b", {"seed": [0, 1]})
    assert [u.dirnames for u in local.work_units(single, lambda d: False)[0]] == [["seed=0"], ["seed=1"]]


def test_each_worker_sees_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    quarter = make_plan(tmp_path, {"seed": [0]}, trial={"device": "auto"}, resources={"cpu": 1, "gpu": 0.25})
    assert local.slot_gpus(quarter) == [["2"]] * 4 + [["3"]] * 4
    whole = make_plan(tmp_path, {"seed": [0]}, trial={"device": "auto"}, resources={"cpu": 1, "gpu": 1})
    assert local.slot_gpus(whole) == [["2"], ["3"]]
    forty = make_plan(tmp_path, {"seed": [0]}, trial={"device": "auto"}, resources={"cpu": 1, "gpu": 0.4})
    assert local.slot_gpus(forty) == [["2"], ["2"], ["3"], ["3"]]  # as Ray: no trial spans two GPUs
    two = make_plan(tmp_path, {"seed": [0]}, trial={"device": "auto"}, resources={"cpu": 1, "gpu": 2})
    assert local.slot_gpus(two) == [["2", "3"]]
    assert local.slot_gpus(make_plan(tmp_path, {"seed": [0]})) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_plan_with_gpus_fails_before_any_trial_where_there_is_no_cuda(tiny_data, tmp_path):
    plan = make_plan(tmp_path, {"seed": [0, 1]}, trial={"data_root": str(tiny_data), "device": "auto"},
                     resources={"cpu": 1, "gpu": 0.5})
    with pytest.raises(InputError, match="resources.gpu: gives each trial 0.5 GPU, but torch sees no CUDA device on "
                                         "node"):
        local.execute(plan)
    assert not Path(plan.uri).exists()


def test_executor_options_are_checked_before_any_work(capsys):
    from study.__main__ import main
    assert main(["sweep", "sweeps/smoke.yaml", "--executor", "local", "--address", "127.0.0.1:6379"]) == 2
    assert "--address: names a Ray cluster" in capsys.readouterr().err
    assert main(["sweep", "sweeps/smoke.yaml", "--time-limit", "60"]) == 2
    assert "--time-limit: is the local executor's" in capsys.readouterr().err


@pytest.mark.slow
def test_a_trial_stopped_at_the_time_limit_resumes_from_its_checkpoint(tiny_data, tmp_path, capsys):
    """In this process: the time limit stops the trial after its first epoch (checkpointed, no
    trial.json); --resume continues from that epoch and ends with the same result as a trial
    that was never stopped."""
    trial = {"data_root": str(tiny_data), "epochs": 3, "classes": ["cat", "dog", "frog"]}
    plan = make_plan(tmp_path / "a", {"seed": [0]}, trial=trial)
    local.start_study(plan, resume=False)
    stopped = local.execute(plan, time_limit=1e-3)
    folder = Path(plan.uri) / "seed=0"
    assert stopped.stopped == ["seed=0"] and not (folder / "trial.json").exists()
    assert (folder / LOCAL_CHECKPOINT / "state.pt").exists()

    resumed = local.execute(plan, resume=True)
    assert resumed.completed == ["seed=0"] and "resumed from the checkpoint of epoch 1" in capsys.readouterr().out
    assert not (folder / LOCAL_CHECKPOINT).exists()  # a finished trial keeps no checkpoint
    again = local.execute(plan, resume=True)
    assert again.skipped == ["seed=0"] and not again.completed  # complete: never recomputed

    straight = make_plan(tmp_path / "b", {"seed": [0]}, trial=trial)
    local.execute(straight)
    a = json.loads((folder / "trial.json").read_text())
    b = json.loads((Path(straight.uri) / "seed=0" / "trial.json").read_text())
    assert [h["epoch"] for h in a["train_history"]] == [1, 2, 3]
    for key in ("train_history", "trajectory", "absorption", "test_accuracy", "confusion"):
        assert a[key] == b[key], key


@pytest.mark.slow
def test_the_smoke_sweep_runs_without_ray_in_worker_processes(tiny_data, tmp_path):
    """`python -m study sweep --executor local` with `import ray` failing: 2 worker processes
    (cpu: 1 each on this machine's 2 cores), the Ray adapter's folders, study.json, the report;
    run again, nothing is recomputed."""
    blocker = tmp_path / "noray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('ray is not installed here (test)')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    assert subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True).returncode != 0
    sets = {"trial.train_subset": 100, "trial.test_subset": 40, "trial.epochs": 1, "trial.batch_size": 50,
            "trial.n_noise": 40, "trial.n_trajectory": 20, "trial.data_root": str(tiny_data),
            "trial.data_verify": "shapes", "run.storage": str(tmp_path / "r"), "trial.sample_per_class": 20,
            "trial.n_frequency": 40}
    cmd = [sys.executable, "-m", "study", "sweep", "sweeps/smoke.yaml", "--executor", "local",
           *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 at a time in worker processes" in res.stdout
    study = tmp_path / "r" / "smoke"
    files = {p.parent.name: p for p in study.glob("*/trial.json")}
    assert sorted(files) == ["classes=all_seed=0", "classes=all_seed=1", "classes=cat.dog_seed=0",
                             "classes=cat.dog_seed=1"]
    for name, f in files.items():
        t = json.loads(f.read_text())
        assert t["status"] == "completed" and t["config"]["seed"] == int(name[-1])
        assert t["compute"] == {"device": "cpu", "training_precision": "fp32", "probe_precision": "fp32"}
    assert not list(study.glob(f"*/{LOCAL_CHECKPOINT}"))
    assert json.loads((study / "study.json").read_text())["axes"] == ["classes", "seed"]
    runs = pd.read_csv(study / "report" / "runs.csv")
    assert len(runs) == 4 and set(runs["condition"]) == {"classes=all", "classes=cat.dog"}

    before = {n: hashlib.sha256(f.read_bytes()).hexdigest() for n, f in files.items()}
    again = subprocess.run([*cmd, "--no-report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "(4 of 4 trials already complete)" in again.stdout
    assert {n: hashlib.sha256(f.read_bytes()).hexdigest() for n, f in files.items()} == before


def test_check_shows_the_plan_the_local_executor_runs(tiny_data, tmp_path):
    plan = prepare(str(ROOT / "sweeps" / "gpu_one_call.yaml"),
                   [f"trial.data_root={tiny_data}", "trial.data_verify=shapes", "trial.train_subset=100",
                    "trial.batch_size=50"],
                   storage=str(tmp_path), local=False)  # planned for the GPU machine, not this one
    assert len(plan.points) == 32 and plan.dirnames[:2] == ["seed=0_classes=all", "seed=0_classes=cat.dog"]
    assert plan.sweep.resources["gpu"] == 0.25
