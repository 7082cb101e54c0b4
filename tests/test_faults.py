"""Faults survived with real processes: a killed trial worker, a corrupt checkpoint, storage
that is read-only, full or unreachable, a diverging trial. Nothing lost, nothing counted twice."""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, kill_session_now
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


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> dict:
    """fault_trial run once, uninterrupted: what an interrupted run of it must end up equal to."""
    return run_trial(fault_trial(tiny_data), str(tmp_path_factory.mktemp("reference")), log=lambda m: None)


def test_killed_trial_worker_resumes_and_matches_an_uninterrupted_run(tiny_data, tmp_path, uninterrupted):
    cfg = fault_trial(tiny_data)
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
    assert stable(result) == stable(uninterrupted)


def test_corrupt_checkpoint_restarts_the_trial_from_scratch_with_a_warning(tiny_data, tmp_path, uninterrupted):
    cfg = fault_trial(tiny_data)
    path = write_sweep(tmp_path, "corrupt", cfg, tmp_path / "results")
    driver = subprocess.Popen(sweep_cmd(path, "--no-report"), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    trial_dir = tmp_path / "results" / "corrupt" / "seed=0"
    wait_for(lambda: reported_pid(trial_dir, after_iteration=2))
    # the driver, the trial worker and the local cluster at one instant, 4 epochs before the end:
    # nothing writes any more
    kill_session_now(driver.pid)
    driver.wait()
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
    assert stable(result) == stable(uninterrupted)


# ---------------------------------------------------------------- storage

# These tests need a real filesystem that is read-only, tiny or filling up: a tmpfs. Where this
# process may not mount (not root, or a container without mount rights), each is run again inside
# a private user and mount namespace (`unshare -rm`, no privileges needed), where it may; the
# read-only one also runs on a read-only filesystem the machine already has (a container's /sys).
# Where none of that works, each is skipped with the sentence of what was not tested (its docstring).
IN_NAMESPACE = "NOISESINK_TEST_IN_NAMESPACE"


@functools.lru_cache(maxsize=1)
def can_mount() -> bool:
    if os.environ.get("NOISESINK_TEST_NO_MOUNT") and not os.environ.get(IN_NAMESPACE):  # to test the fallback
        return False
    with tempfile.TemporaryDirectory() as d:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True).returncode:
            return False
        subprocess.run(["umount", "-l", d], capture_output=True)
    return True


def existing_read_only_folder() -> Path | None:
    """A kernel filesystem (sysfs, proc) this machine mounts read-only, as containers without mount
    rights do: a real read-only filesystem, so `study check` meets EROFS there as on a read-only
    disk (it creates nothing). None where there is none, or no /proc/self/mounts (macOS)."""
    mounts = Path("/proc/self/mounts")
    if not mounts.is_file():
        return None
    for line in mounts.read_text().splitlines():
        _, folder, kind, options = line.split()[:4]
        if kind in ("sysfs", "proc") and "ro" in options.split(",") and not os.access(folder, os.W_OK):
            return Path(folder)
    return None


def needs_tmpfs(test=None, *, or_else=lambda: False):
    """Run the test here if this process may mount a tmpfs (or `or_else()` says the test has
    another real filesystem to use), else in a user namespace, else skip saying what was not tested."""
    if test is None:
        return functools.partial(needs_tmpfs, or_else=or_else)

    @functools.wraps(test)
    def run(*args, **kwargs):
        if can_mount() or or_else():
            return test(*args, **kwargs)
        what = " ".join(test.__doc__.split())
        if os.environ.get(IN_NAMESPACE) or shutil.which("unshare") is None or subprocess.run(
                ["unshare", "-rm", "true"], capture_output=True).returncode:
            pytest.skip(f"no tmpfs can be mounted here (neither with mount rights nor in an unprivileged "
                        f"user namespace): NOT TESTED: {what}")
        node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        res = subprocess.run(["unshare", "-rm", sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                              node], cwd=ROOT, capture_output=True, text=True, timeout=900,
                             env={**os.environ, IN_NAMESPACE: "1"})
        if res.returncode == 0 and " skipped" in res.stdout and " passed" not in res.stdout:
            pytest.skip(f"skipped in a user namespace too: {res.stdout[-500:]}")
        assert res.returncode == 0, f"in a user namespace:\n{res.stdout[-4000:]}{res.stderr[-2000:]}"
    return run


@contextmanager
def tmpfs(path: Path, options: str):
    """A real filesystem with the given mount options at `path` (see needs_tmpfs)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def check(path, *args):
    return subprocess.run([sys.executable, "-m", "study", "check", str(path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@needs_tmpfs(or_else=lambda: existing_read_only_folder() is not None)
def test_read_only_storage_is_refused_before_trials_start(tiny_data, tmp_path):
    """`study check` refuses run.storage on a read-only filesystem (exit 2, naming it)."""
    with (tmpfs(tmp_path / "ro", "ro,size=4m") if can_mount() else nullcontext(existing_read_only_folder())) as ro:
        path = write_sweep(tmp_path, "ro", fault_trial(tiny_data), ro / "noisesink-results")
        res = check(path)
        assert res.returncode == 2 and "run.storage: not writable" in res.stderr and str(ro) in res.stderr


@needs_tmpfs
def test_too_small_disk_is_refused_before_trials_start(tiny_data, tmp_path):
    """`study sweep` refuses run.storage on a 1 MB filesystem before writing anything (exit 2)."""
    with tmpfs(tmp_path / "small", "size=1m") as small:
        path = write_sweep(tmp_path, "small", fault_trial(tiny_data), small / "results")
        res = subprocess.run(sweep_cmd(path), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "run.storage: only 1 MB free" in res.stderr
        assert list(small.iterdir()) == []  # nothing written


@needs_tmpfs
def test_disk_filling_up_mid_study_fails_later_trials_and_keeps_earlier_results(tiny_data, tmp_path):
    """A disk that fills up mid-study: the later trials fail, the study exits non-zero, the trial
    written before is intact and the aggregation reports the rest as problems."""
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
