"""Sweeps through real Ray Tune (local, 2 CPUs): the shipped smoke sweep at a tiny size, fused
seeds, trackers, interruption and `study check` (the driver killed and resumed: tests/test_faults.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from study.noise import NOISE_FAMILIES

pytestmark = pytest.mark.slow


def tiny_overrides(tiny_data: Path, storage: Path) -> list[str]:
    sets = {"trial.train_subset": 100, "trial.test_subset": 40, "trial.epochs": 1, "trial.batch_size": 50,
            "trial.n_noise": 40, "trial.n_trajectory": 20, "trial.data_root": str(tiny_data),
            "trial.data_verify": "shapes", "run.storage": str(storage), "trial.sample_per_class": 20,
            "trial.n_frequency": 40}
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def study_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "study", *args]


# Deprecations shown in every process of a sweep (the driver and Ray's workers; Python hides them
# outside __main__), Ray Train's V2 migration warnings included, so that the next Ray migration
# fails here instead of in a user's cluster.
WARNINGS_SHOWN = {"PYTHONWARNINGS": "default::DeprecationWarning", "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "1"}


def run_sweep(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(study_cmd("sweep", *args), cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, **WARNINGS_SHOWN, **(env or {})})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    shown = [ln for ln in (res.stdout + res.stderr).splitlines() if "DeprecationWarning" in ln]
    assert not shown, shown
    return res


def event_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TensorBoard event files in a trial folder (TFRecord framing:
    length, its crc, the Event proto, its crc)."""
    import struct

    from tensorboardX.proto import event_pb2
    out: dict[str, list] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


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
    res = run_sweep("sweeps/smoke.yaml", *tiny_overrides(tiny_data, tmp_path), "--set", "trial.epochs=2")
    study = tmp_path / "smoke"
    files = trial_files(study)
    assert sorted(files) == ["classes=all_seed=0", "classes=all_seed=1", "classes=cat.dog_seed=0",
                             "classes=cat.dog_seed=1"]
    for name, f in files.items():
        t = json.loads(f.read_text())
        assert t["status"] == "completed" and len(t["absorption"]) == len(NOISE_FAMILIES)   # noise: all
        assert t["config"]["seed"] == int(name[-1])
        assert (f.parent / "arrays.npz").exists()
    assert json.loads((study / "study.json").read_text())["axes"] == ["classes", "seed"]
    # a finished trial keeps no checkpoint, even where Tune ended it at its final report
    assert not list(study.glob("*/checkpoint_*"))
    runs = pd.read_csv(study / "report" / "runs.csv")
    assert len(runs) == 4 and set(runs["condition"]) == {"classes=all", "classes=cat.dog"}
    assert (study / "report" / "report.md").exists()

    # Tune's status table: the study's axes and the absorber, no internals
    header = [ln for ln in res.stdout.splitlines() if ln.startswith("| Trial name")][-1]   # the final table
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[3:] == ["classes", "seed", "gaussian noise ->", "share", "test acc"], columns
    assert "_fixed" not in res.stdout and "Study smoke: 4 trials (4 TERMINATED)" in res.stdout
    for f in files.values():
        t = json.loads(f.read_text())
        params = json.loads((f.parent / "params.json").read_text())   # Tune's record of the trial's config
        assert params == {k: t["config"][k] for k in ("classes", "seed")}
        # TensorBoard: the training curve and the trajectory's share of every class, each epoch
        scalars = event_scalars(f.parent)
        assert [v for _, v in scalars["ray/tune/epoch"]] == [1.0, 2.0]
        assert len(scalars["ray/tune/train_loss"]) == 2
        for epoch, point in enumerate(t["trajectory"][1:], start=1):
            for cls, share in point["shares"].items():
                assert scalars[f"ray/tune/trajectory/{cls}"][epoch - 1] == (epoch, pytest.approx(share))
    assert f"tensorboard --logdir {study}" in res.stdout


# The driver killed once a trial has finished, then --resume: the first two steps of
# tests/test_faults.py::test_driver_killed_twice_in_a_row_then_resume_completes_each_grid_point_once.


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
    res = run_sweep(str(path))
    study = tmp_path / "fusedstudy"
    # the study's trials are counted, not Tune's: 3 seeds in 2 fused groups
    assert "Study fusedstudy: 3 trials (3 TERMINATED), trained in 2 fused groups" in res.stdout
    assert "sweep fusedstudy: 3 of 3 trials ended, 0 failed" in res.stdout
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
    monkeypatch.setattr(sweep, "init_ray", lambda address: None)
    monkeypatch.setattr(sweep, "check_shared_storage", lambda plan: None)
    monkeypatch.setattr(sweep, "build_tuner", lambda *args: type("T", (), {"fit": lambda self: []})())

    def broken(*args):
        raise ValueError("a plot refused its data")
    monkeypatch.setattr(analysis.pipeline, "aggregate", broken)
    assert sweep.run(plan) == 1
    err = capsys.readouterr().err
    assert "a plot refused its data" in err and f"python -m analysis {plan.uri}" in err
    assert (Path(plan.uri) / "study.json").exists()


def test_mlflow_tracking_through_tunes_callback(tiny_data, tmp_path):
    """run.callbacks: [mlflow] with a local MLflow file store: one MLflow run per trial, in an
    experiment named after the study, with the grid point as parameters and each epoch's metrics."""
    pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'noisesink[mlflow]'")
    from mlflow.tracking import MlflowClient
    store = f"file://{tmp_path / 'mlruns'}"
    sets = ["--set", "grid.seed=[0]", "--set", "grid.classes=[[cat, dog]]", "--set", "trial.epochs=2",
            "--set", "run.callbacks=[mlflow]", "--no-report", "--name", "tracked"]
    # MLflow 3 keeps the file store only on request; a tracking server or sqlite needs no flag
    run_sweep("sweeps/smoke.yaml", *tiny_overrides(tiny_data, tmp_path), *sets,
              env={"MLFLOW_TRACKING_URI": store, "MLFLOW_ALLOW_FILE_STORE": "true"})
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        client = MlflowClient(store)
        experiment = client.get_experiment_by_name("tracked")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.run_name == "classes=cat.dog_seed=0"
        assert run.data.params["seed"] == "0"
        shares = client.get_metric_history(run.info.run_id, "gaussian_share")
        assert len(shares) == 3     # two epochs of the trajectory, then the final probe
        trial = json.loads((tmp_path / "tracked" / "classes=cat.dog_seed=0" / "trial.json").read_text())
        assert shares[-1].value == pytest.approx(trial["absorber"]["gaussian"]["top_share"])
        assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch")] == [1.0, 2.0]
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE")


def test_an_interrupted_sweep_is_not_called_a_resource_problem(tiny_data, tmp_path, monkeypatch, capsys):
    """In process, with Tune stubbed out: Ctrl-C stops the sweep before some trials start (they
    never reported) while the pending watch never fired. The driver says it was interrupted and how
    to continue, not that trials waited past run.pending_timeout."""
    from types import SimpleNamespace

    from study import sweep
    from study.plan import prepare

    plan = prepare(str(ROOT / "sweeps" / "smoke.yaml"), tiny_overrides(tiny_data, tmp_path)[1::2])
    unstarted = [SimpleNamespace(path=str(Path(plan.uri) / f"t{i}"), config={}, error=None, metrics={})
                 for i in range(2)]
    monkeypatch.setattr(sweep, "init_ray", lambda address: None)
    monkeypatch.setattr(sweep, "check_shared_storage", lambda plan: None)
    monkeypatch.setattr(sweep, "build_tuner", lambda *args: SimpleNamespace(fit=lambda: unstarted))
    assert sweep.run(plan) == 1
    err = capsys.readouterr().err
    assert "interrupted before 2 trial(s) started" in err and "--resume" in err
    assert "pending_timeout" not in err
