"""Faults survived with real processes: a killed trial worker, a corrupt checkpoint, storage
that is read-only, full or unreachable, an object store that goes away mid-study and comes back,
a driver killed twice in a row, a diverging trial. Nothing lost, nothing counted twice."""
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


# ---------------------------------------------------------------- the object store goes away and comes back

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CuttableProxy:
    """A TCP forwarder from a loopback port to `target` (an S3 server), in threads of this
    process. cut(): every live connection is closed and new ones are refused (the port stays
    reserved by a socket that does not listen: a connect gets ECONNREFUSED, as from a store that
    went away); restore(): it forwards again. The server behind keeps its state."""

    def __init__(self, target_port: int):
        import threading
        self.target, self.port = ("127.0.0.1", target_port), free_port()
        self.lock, self.live, self.opened = threading.Lock(), set(), []
        self.listener = self.placeholder = self.thread = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _bound(self) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        return s

    def restore(self) -> None:
        import threading
        if self.placeholder:
            self.placeholder.close()
            self.placeholder = None
        self.listener = self._bound()
        self.listener.listen(128)
        self.listener.settimeout(0.1)
        self.thread = threading.Thread(target=self._accept, args=(self.listener,), daemon=True)
        self.thread.start()

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        self.thread.join()          # the accept loop sees listener gone within 0.1 s
        listener.close()
        self.placeholder = self._bound()   # bound, not listening: connections refused
        with self.lock:
            for s in self.live:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self.listener:
            self.cut()
        self.placeholder.close()
        with self.lock:
            for s in self.opened:
                s.close()

    def _accept(self, listener: socket.socket) -> None:
        import threading
        while self.listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.live |= {client, upstream}
                self.opened += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.lock:
            self.live -= {a, b}


@pytest.fixture
def s3_behind_proxy():
    """A moto S3 server on loopback with a bucket `results`, reached through a CuttableProxy."""
    import boto3
    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False
        wait_for(up, timeout=60, every=0.2)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="results")
        proxy = CuttableProxy(port)
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        try:
            yield proxy, s3, env
        finally:
            proxy.close()
    finally:
        moto.kill()
        moto.wait()


def bucket_keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="results", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_object_store_outage_mid_study_stops_it_with_a_message_and_resume_completes_it(
        tiny_data, tmp_path, s3_behind_proxy):
    """The bucket stops answering once a trial has checkpointed, and answers again only after the
    driver has ended. What Ray 2.60 does then: every trial's next storage call fails (pyarrow:
    "AWS Error NETWORK_CONNECTION ... Could not connect to server"), Tune retries each trial
    run.max_failures times (all fail at once while the store is down: the retry's first call reads
    the store), the trials end ERROR, and Tune's own read-back of the experiment folder raises
    OSError out of Tuner.fit. The driver turns that into one message naming the storage and
    --resume (no traceback through noisesink) and exits 1, nothing half-written is taken as
    finished, and --resume once the store is back completes every grid point exactly once.
    (An outage shorter than the retries is bridged by them: the study completes by itself; which
    of the two a given outage gives depends on how long the retries take, so only the longer one,
    whose outcome does not depend on timing, is asserted.)"""
    start = time.perf_counter()
    proxy, s3, env = s3_behind_proxy
    trial = fault_trial(tiny_data, epochs=3)
    sweep = {"name": "outage", "trial": {k: v for k, v in trial.items() if k != "seed"}, "grid": {"seed": [0, 1]},
             "resources": {"cpu": 1, "gpu": 0},
             "run": {"storage": "s3://results/studies", "max_failures": 2, "checkpoint_every": 1}}
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(sweep))
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        driver = subprocess.Popen(sweep_cmd(path), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_for(lambda: any("/checkpoint_" in k for k in bucket_keys(s3, "studies/outage/")), timeout=300, every=0.2)
        proxy.cut()
        cut = time.perf_counter()
        print(f"cut after {cut - start:.0f} s")
        driver.wait(timeout=400)
        outage = time.perf_counter() - cut
        proxy.restore()
    finally:
        if driver.poll() is None:
            kill_session_now(driver.pid)
    out = log.read_text()
    assert driver.returncode == 1, out[-4000:]
    assert "Could not connect to server" in out          # pyarrow's words for the refused connection
    said = [ln for ln in out.splitlines() if ln.startswith("sweep outage: ")]
    assert said and said[-1].startswith("sweep outage: Tune could not read or write the storage "
                                        "s3://results/studies/outage (OSError: "), out[-4000:]
    assert "rerun with --resume" in said[-1]
    assert "study/__main__.py" not in out, out[-4000:]   # a message, not a traceback through noisesink
    assert not [k for k in bucket_keys(s3, "studies/outage/") if k.endswith("/trial.json")]

    res = subprocess.run(sweep_cmd(path, "--resume", "--no-report"), cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    print(f"resumed by {time.perf_counter() - start:.0f} s")
    assert "resuming s3://results/studies/outage" in res.stdout
    assert "sweep outage: 2 of 2 trials ended, 0 failed" in res.stdout
    keys = bucket_keys(s3, "studies/outage/")
    assert sorted(k for k in keys if k.endswith("/trial.json")) == [f"studies/outage/seed={s}/trial.json"
                                                                    for s in (0, 1)]
    report = tmp_path / "report"
    res = subprocess.run([sys.executable, "-m", "analysis", "s3://results/studies/outage", "--out", str(report)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = pd.read_csv(report / "runs.csv")
    assert sorted(runs["seed"]) == [0, 1] and (runs["status"] == "completed").all()
    assert pd.read_csv(report / "problems.csv").empty
    print(f"outage {outage:.0f} s; wall time {time.perf_counter() - start:.0f} s")


# ---------------------------------------------------------------- the driver killed twice

def test_driver_killed_twice_in_a_row_then_resume_completes_each_grid_point_once(tiny_data, tmp_path):
    """The driver and its local Ray are killed at one instant (kill_session_now) once the first
    trial has finished; the first --resume is killed too, while another trial is mid-way (it has
    reported an epoch, two are left); a second --resume completes the study. Every grid point ends
    with one completed trial.json, the first one untouched (same bytes, same mtime: not
    recomputed), and the aggregation reads three runs and no problem."""
    from analysis.load import load
    start = time.perf_counter()
    trial = fault_trial(tiny_data, epochs=3)
    sweep = {"name": "twice", "trial": {k: v for k, v in trial.items() if k != "seed"}, "grid": {"seed": [0, 1, 2]},
             "resources": {"cpu": 1, "gpu": 0},
             "run": {"storage": str(tmp_path), "max_failures": 1, "checkpoint_every": 1, "max_concurrent": 1}}
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(sweep))
    study = tmp_path / "twice"

    def finished() -> list[Path]:
        return sorted(study.glob("*/trial.json"))

    def run_until(condition, *args):
        driver = subprocess.Popen(sweep_cmd(path, "--no-report", *args), cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: condition() or driver.poll() is not None, timeout=300)
        finally:
            kill_session_now(driver.pid)
            driver.wait()
        assert driver.returncode == -signal.SIGKILL, "the driver ended before it was killed"

    run_until(finished)                                   # 1: killed once the first trial is done
    (first,) = finished()
    before = (first.read_bytes(), first.stat().st_mtime_ns)

    def another_mid_way():
        return [d for d in study.glob("seed=*") if not (d / "trial.json").exists()
                and reported_pid(d, after_iteration=1)]
    run_until(another_mid_way, "--resume")               # 2: the resume killed mid-trial
    assert finished() == [first], "the trial killed mid-way must not have finished"

    res = subprocess.run(sweep_cmd(path, "--resume", "--no-report"), cwd=ROOT, capture_output=True, text=True,
                         timeout=400)                    # 3: the resume that completes it
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    assert "resuming" in res.stdout and "sweep twice: 3 of 3 trials ended, 0 failed" in res.stdout
    assert [p.parent.name for p in finished()] == ["seed=0", "seed=1", "seed=2"]
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before, f"{first.parent.name} was recomputed"
    for f in finished():
        assert json.loads(f.read_text())["status"] == "completed"
    loaded = load(str(study))
    assert sorted(r["seed"] for r in loaded.runs) == [0, 1, 2] and not loaded.problems
    print(f"wall time {time.perf_counter() - start:.0f} s")
