"""Shared fixtures: tiny CIFAR-10-shaped data made by the tests, a private cache folder, and the
real CIFAR-10 tar where it exists."""
from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from pathlib import Path

# torch and numpy's OpenBLAS start one thread per core (read from these at import): beside
# pytest-xdist's other worker (and Ray's) those threads spin against each other on 2 cores (a 512-d
# eigvalsh of a trial's clutter measures took seconds under load; the device script's dry run probed 3x
# slower in-process than in worker processes). Every process of the tests, subprocesses too, gets one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from study.data import CIFAR10_CLASSES  # noqa: E402

SHARED_TAR = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar"

# The files whose tests take minutes (then those the fast subset spends most on), longest first
# (pytest --durations on 2 cores). pytest-xdist gives each worker a whole file at a time in
# collection order: a file of many minutes (the calibration over null studies) that started last
# would run alone while the other core idles, so these start first and short files fill in beside.
LONGEST_FIRST = ("test_faults.py", "test_cluster.py", "test_nulls.py", "test_bad_input.py", "test_gpu_check.py",
                 "test_sweep.py", "test_why_pipeline.py", "test_calibration.py", "test_report.py", "test_trial.py",
                 "test_probe_checkpoints.py", "test_analysis.py", "test_registries.py")


def pytest_collection_modifyitems(config, items):
    rank = dict(zip(LONGEST_FIRST, range(len(LONGEST_FIRST))))
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole, in order


def class_images(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n 32x32 RGB images whose colour and stripe orientation depend on the class, plus noise:
    learnable in one epoch, so tests can check that training does something."""
    base = np.zeros((32, 32, 3))
    base[..., label % 3] = 0.5 + 0.04 * label
    yy, xx = np.mgrid[0:32, 0:32]
    stripes = np.sin((yy if label % 2 else xx) * (0.3 + 0.1 * label))[..., None]
    imgs = base + 0.25 * stripes + rng.normal(0, 0.12, (n, 32, 32, 3))
    return (np.clip(imgs, 0, 1) * 255).astype(np.uint8)


def write_torchvision_folder(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A `cifar-10-batches-py` folder in torchvision's pickle format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n_per_class):
        xs = np.concatenate([class_images(c, n_per_class, rng) for c in range(10)])
        ys = np.repeat(np.arange(10), n_per_class)
        order = rng.permutation(len(ys))
        return {b"data": xs[order].transpose(0, 3, 1, 2).reshape(len(ys), -1), b"labels": ys[order].tolist()}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)
    return folder


def write_image_tree(root: Path, n_train: int, n_test: int, seed: int = 0, size: int = 32) -> Path:
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, cls in enumerate(CIFAR10_CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i, img in enumerate(class_images(label, n, rng)):
                im = Image.fromarray(img)
                if size != 32:
                    im = im.resize((size, size))
                im.save(root / split / cls / f"{i:04d}.png")
    return root


def session_processes(sid: int) -> list[int]:
    """The live processes of session `sid` (a driver started with start_new_session=True, and the
    local Ray cluster it started: Ray's servers and workers stay in their driver's session).
    Zombies are dead and left out: they write nothing (a container's init may never reap them)."""
    if not Path("/proc").is_dir():  # macOS: ask ps
        import subprocess
        rows = subprocess.run(["ps", "-A", "-o", "pid=,stat="], capture_output=True, text=True).stdout
        alive = []
        for pid, state in (r.split()[:2] for r in rows.splitlines() if r.strip()):
            try:
                if os.getsid(int(pid)) == sid and not state.startswith("Z"):
                    alive.append(int(pid))
            except OSError:
                pass
        return alive
    alive = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            state, _, _, session = stat.rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(session) == sid and state != "Z":
            alive.append(int(name))
    return alive


def wait_for_session_end(sid: int, timeout: float = 120) -> None:
    """Wait until every process of a killed driver's session is gone (Ray's reaper takes the local
    cluster down with its driver), so nothing of it can still write; what outlives `timeout` is
    killed, so a later run never meets a half-dead cluster."""
    deadline = time.time() + timeout
    while session_processes(sid) and time.time() < deadline:
        time.sleep(0.1)
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.time() + 30
    while session_processes(sid) and time.time() < deadline:
        time.sleep(0.1)
    assert not session_processes(sid), f"processes of session {sid} survive SIGKILL"


def kill_session_now(sid: int) -> None:
    """Kill a driver (started with start_new_session=True) and its local Ray cluster at one
    instant: every process of the session is stopped first (SIGSTOP, repeated until no process of
    it is left running, so a child forked meanwhile is caught too), then all are killed. What is
    on disk afterwards is what the instant of the stop left, so a test can count finished trials
    without racing Ray's workers, which would otherwise go on until the reaper takes them down."""
    stopped: set[int] = set()
    while True:
        running = [pid for pid in session_processes(sid) if pid not in stopped]
        if not running:
            break
        for pid in running:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                pass  # gone meanwhile
            stopped.add(pid)
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    wait_for_session_end(sid, timeout=30)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Decoded arrays go to a test-only cache, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("NOISESINK_CACHE")
    os.environ["NOISESINK_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("NOISESINK_CACHE", None)
    else:
        os.environ["NOISESINK_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """60 train + 20 test images per class (torchvision format); data_verify: shapes."""
    return write_torchvision_folder(tmp_path_factory.mktemp("tiny"), n_train=60, n_test=20)


@pytest.fixture
def tiny_config(tiny_data):
    def make(**overrides):
        cfg = {"model": "small_cnn", "epochs": 1, "batch_size": 50, "lr": 0.05, "n_noise": 40,
               "n_trajectory": 20, "eval_batch_size": 256, "data_root": str(tiny_data),
               "data_verify": "shapes", "device": "cpu", "threads": 1, "sample_per_class": 20,
               "n_frequency": 40}
        cfg.update(overrides)
        return cfg
    return make


@pytest.fixture(scope="session")
def real_tar() -> Path:
    env = os.environ.get("NOISESINK_DATA")
    for candidate in (env, SHARED_TAR):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.skip("real CIFAR-10 not available (set NOISESINK_DATA to cifar10-jpg.tar): NOT TESTED on real "
                "data: this test (the full-size check, a trial on a real slice, `study check` of the shipped "
                "sweeps)")
