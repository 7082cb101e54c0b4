"""The prepared GPU run (benchmarks/gpu_kit.py, benchmarks/gpu_check.py) without a GPU: the kit's
contents, the archive's size rules, the documented device command, and the whole device script
as a CPU dry run at tiny sizes (both parts: the check and the local-executor study, with the
archive aggregated again here as docs/performance.md says)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, write_image_tree

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check
import gpu_kit

PERFORMANCE = (ROOT / "docs" / "performance.md").read_text()


def image_tar(tmp_path: Path, n_train: int = 12, n_test: int = 6) -> Path:
    tree = write_image_tree(tmp_path / "tree", n_train, n_test)
    path = tmp_path / "data.tar"
    with tarfile.open(path, "w") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
    return path


def test_the_kit_carries_what_the_device_lacks_and_nothing_else():
    """pytorch-ood (the trials' OOD metrics) and no dependency of it the device already has
    (numpy, scipy, torch, torchvision, typing-extensions); Ray is not needed there."""
    missing = gpu_kit.missing_on_device()
    assert missing == {"pytorch-ood": metadata.version("pytorch-ood")}
    has = gpu_kit.closure(gpu_kit.DEVICE_HAS)
    assert {"numpy", "scipy", "torch", "torchvision", "typing-extensions"} <= has
    assert "ray" not in has and "pytorch-ood" not in has


def test_requirement_names_keep_unconditional_requirements_only():
    assert gpu_kit.requirement_names(["numpy>=1.24", "ray[default,tune]==2.60.*", "Typing_Extensions",
                                      "pytest; extra == 'test'", "tomli; python_version < '3.11'"]) \
        == ["numpy", "ray", "typing-extensions"]


def test_kit_build_packs_the_data_and_a_manifest(tmp_path):
    kit = tmp_path / "kit"
    manifest = gpu_kit.build(kit, image_tar(tmp_path), wheels=False)
    assert set(manifest["files"]) == {gpu_kit.DATA_FILE}
    assert json.loads((kit / gpu_kit.MANIFEST).read_text())["data_source_sha256"] == manifest["data_source_sha256"]
    with np.load(kit / gpu_kit.DATA_FILE) as z:
        assert len(z["names"]) == 10 * (12 + 6)
    assert manifest["total_mib"] < gpu_kit.KIT_LIMIT_MIB


def test_the_device_command_is_documented_as_the_tool_needs_it():
    """docs/performance.md gives the exact `run` commands: install the kit's wheels into a target
    folder on the path, then one part of the check, carrying .device."""
    install = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
               "--target /tmp/site .device/whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH")
    for part in ("check", "study"):
        assert f"{install} && python3 benchmarks/gpu_check.py {part} --kit .device --out $OUT" in PERFORMANCE
    assert 'carry: [".device"]' in PERFORMANCE
    assert "python benchmarks/gpu_kit.py build .device" in PERFORMANCE


def fake_study(folder: Path, trials: int, bytes_per_trial: int) -> Path:
    study = folder / "gpu_one_call"
    rng = np.random.default_rng(0)
    for i in range(trials):
        t = study / f"seed={i}"
        (t / "checkpoint_local").mkdir(parents=True)
        (t / "checkpoint_local" / "state.pt").write_bytes(b"x" * 1000)
        (t / "trial.json").write_text(json.dumps({"seed": i}))
        (t / "arrays.npz").write_bytes(rng.bytes(bytes_per_trial))  # incompressible
    (study / "report").mkdir()
    (study / "report" / "runs.csv").write_text("seed\n0\n")
    (study / "study.json").write_text("{}")
    return study


def archive_args(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    for name in (gpu_check.ROWS, gpu_check.LOG, gpu_check.SUMMARY):
        (out / name).write_text("")
    return type("Args", (), {"out": out, "scratch": tmp_path / "scratch"})(), gpu_check.Out(out, "archive")


@pytest.mark.parametrize("trials, mib, expect", [(3, 1, "one file"), (6, 5, "parts"), (30, 5, "report only")])
def test_the_archive_fits_the_files_that_come_back(tmp_path, monkeypatch, trials, mib, expect):
    """At most 16 MiB per file and 8 files: one .tar.gz, else parts of 15 MiB that join back,
    else (too many parts) the report folder alone. Checkpoints never travel."""
    args, out = archive_args(tmp_path)
    study = fake_study(args.scratch / "studies", trials, mib * 2**20)
    monkeypatch.setattr(gpu_check, "study_dir", lambda a: study)
    gpu_check.stage_archive(args, out)
    files = sorted(p.name for p in args.out.iterdir())
    assert len(files) <= gpu_check.MAX_FILES
    assert all((args.out / f).stat().st_size <= gpu_check.FILE_LIMIT for f in files)
    parts = sorted(args.out.glob(f"{gpu_check.ARCHIVE}*"))
    if expect == "one file":
        assert [p.name for p in parts] == [gpu_check.ARCHIVE]
    else:
        assert len(parts) > 1 or expect == "report only"
    joined = tmp_path / "joined.tar.gz"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tf:
        names = tf.getnames()
    assert not any("checkpoint" in n for n in names)
    assert "gpu_one_call/report/runs.csv" in names
    assert (len([n for n in names if n.endswith("arrays.npz")]) == trials) == (expect != "report only")


@pytest.mark.slow
def test_the_whole_device_script_runs_dry_on_the_cpu(tmp_path):
    """`gpu_check.py all --dry-run`: every stage of both parts at tiny sizes (the kit unpacked, a
    smoke trial and a fused pair, the recipe through the local executor's worker processes, the
    throughput table, the study, its report and archive), without Ray; then the archive is
    aggregated again here, as docs/performance.md tells a GPU session to."""
    kit = tmp_path / "kit"
    gpu_kit.build(kit, image_tar(tmp_path, n_train=30, n_test=10), wheels=False)
    blocker = tmp_path / "noray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('ray is not installed here (test)')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(blocker)}
    out = tmp_path / "out"
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "all", "--dry-run", "--kit", str(kit),
                          "--out", str(out), "--scratch", str(tmp_path / "scratch")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    log = (out / gpu_check.LOG).read_text() if (out / gpu_check.LOG).exists() else ""
    assert res.returncode == 0, res.stdout[-4000:] + log[-6000:]
    print(f"dry run of both parts: {wall:.0f} s wall")
    rows = [json.loads(x) for x in (out / gpu_check.ROWS).read_text().splitlines()]
    by = lambda stage, kind: [r for r in rows if r["stage"] == stage and r["kind"] == kind]  # noqa: E731
    assert [r["status"] for r in by("driver", "stage")] == ["ok"] * 7
    assert len(by("smoke", "training")) == 3 and len(by("recipe", "training")) == 2
    recipe = by("recipe", "recipe")[0]
    assert recipe["seeds"] == 2 and recipe["train_flops"] > 0 and recipe["mfu_amortized"] > 0
    assert [r["name"] for r in by("throughput", "setup")] == [
        "a_baseline_dataloader_fp32", "b_project_trainer", "c_packed_k2", "c_fused_k2"]
    trainings = by("study", "training")
    assert len(trainings) == 4 and all(r["probe_precision"] == "fp32" for r in trainings)
    assert all(r["max_reconstruction_error"] < 1e-4 for r in trainings)
    assert len(list(out.iterdir())) <= gpu_check.MAX_FILES
    assert "ray is not installed" not in log

    results = tmp_path / "here"
    with tarfile.open(out / gpu_check.ARCHIVE) as tf:
        tf.extractall(results, filter="data")
    study = results / "gpu_one_call"
    assert sorted(p.parent.name for p in study.glob("*/trial.json")) == [
        "seed=0_classes=all", "seed=0_classes=cat.dog", "seed=1_classes=all", "seed=1_classes=cat.dog"]
    assert not list(study.glob("*/checkpoint_*"))
    again = subprocess.run([sys.executable, "-m", "analysis", str(study), "--out", str(tmp_path / "tables")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "tables" / "runs.csv")
    assert len(runs) == 4 and set(runs["seed"]) == {0, 1}
    assert re.search(r"gaussian", (tmp_path / "tables" / "report.md").read_text())

    # a second call given the first one's archive recomputes nothing
    out2 = tmp_path / "out2"
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "study", "--dry-run", "--kit", str(kit),
                          "--out", str(out2), "--scratch", str(tmp_path / "scratch2"),
                          "--previous", str(out / gpu_check.ARCHIVE)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    rows = [json.loads(x) for x in (out2 / gpu_check.ROWS).read_text().splitlines()]
    executor = [r for r in rows if r["kind"] == "executor"][0]
    assert (executor["skipped"], executor["completed"]) == (4, 0)
