"""A study's plan: the grid points, where their results go, and the checks that must pass before
anything runs (data, storage, room on the disk). No Ray here.

`study check` prints a plan; `study sweep` hands it to the Ray adapter (study/sweep.py) or, with
`--executor local`, to the local executor (study/local.py); what both do before, around and after
the trials is here too. `prepare` validates everything first, so bad input ends in one InputError
before any training.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from analysis.contract import REPORT_DIR, STUDY_JSON, join_uri, trial_dirname
from analysis.load import check_writable

from .artifacts import ArtifactDir, json_safe
from .config import NAME_CHECK, Sweep, _storage, load_sweep, trained_classes
from .data import check_source, is_uri, load_cifar10
from .errors import InputError
from .task import check_task


def study_footprint(points: list[dict], concurrent: int, keep_checkpoints: int = 2) -> int:
    """Bytes a study will need in its storage, roughly: every trial's arrays and trial.json, and
    the checkpoints (weights + momentum, `keep_checkpoints` each) of the trials running at once;
    a finished trial's checkpoints are deleted."""
    from .models import build_model, factors_of
    from .noise import NOISE_FAMILIES
    sizes, artifacts = {}, 0
    for p in points:
        key = (p["model"], len(trained_classes(p)), *factors_of(p).values())
        if key not in sizes:  # builds every model once: one that cannot be built fails here, before any trial
            model = build_model(p["model"], key[1], 0, **factors_of(p))
            sizes[key] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        families = len(NOISE_FAMILIES) if p["noise"] == "all" else len(p["noise"])
        artifacts += p["n_noise"] * families * 2 + 3_000_000    # labels, noise-mean images, json
    return artifacts + concurrent * keep_checkpoints * 2 * max(sizes.values())


def check_storage(storage: str, needed_bytes: int = 0) -> None:
    """Fail before any trial starts if the results cannot be written there (creates nothing):
    a file, a folder under a file, a read-only or too small local folder, an unreachable or
    missing bucket."""
    check_writable(storage, "run.storage")
    if "://" not in storage or storage.startswith("file://"):
        probe = Path(storage.removeprefix("file://")).expanduser().resolve()
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < needed_bytes:
            raise InputError("run.storage", f"only {free / 1e6:.0f} MB free at {probe}, the study needs "
                             f"about {needed_bytes / 1e6:.0f} MB (artifacts and checkpoints)",
                             "a folder on a disk with room, or a bucket URI", storage)


def _absolute_data_paths(sweep: Sweep) -> None:
    """Trials run in other working folders (Ray workers): a relative data path given to the
    driver, in NOISESINK_DATA or in the sweep file, is made absolute here."""
    env = os.environ.get("NOISESINK_DATA")
    if env and "://" not in env:
        os.environ["NOISESINK_DATA"] = str(Path(env).expanduser().resolve())
    def absolute(v):  # a URI (s3://...) stays as it is
        return str(Path(v).expanduser().resolve()) if v and not is_uri(v) else v
    if sweep.trial.get("data_root"):
        sweep.trial["data_root"] = absolute(sweep.trial["data_root"])
    if "data_root" in sweep.grid:
        sweep.grid["data_root"] = [absolute(v) for v in sweep.grid["data_root"]]


def check_data(points: list[dict]) -> None:
    """Every data source the study names is readable, verified, and big enough for each grid
    point (decoding it here also fills the cache the trials on this machine will read)."""
    for root, verify in sorted({(p["data_root"] or "", p["data_verify"]) for p in points}):
        check_source(root or None)
        data = load_cifar10(root or None, verify)
        for p in points:
            if (p["data_root"] or "", p["data_verify"]) == (root, verify):
                try:
                    check_task(data, p, trained_classes(p))
                except InputError as e:
                    raise InputError(f"trial.{e.where}", f"{e.problem} (grid point seed={p['seed']}, "
                                     f"classes={p['classes']})", e.allowed, e.value) from None


def local_slots(sweep: Sweep) -> int:
    """How many trials fit on this machine at once (its CPUs and GPUs, and run.max_concurrent)."""
    cpu, gpu = sweep.resources["cpu"], sweep.resources["gpu"]
    limits = [int((os.cpu_count() or 1) // cpu)]
    if gpu:
        import torch
        n_gpu = torch.cuda.device_count()
        limits.append(int(n_gpu // gpu) if n_gpu else 0)
    if sweep.run["max_concurrent"]:
        limits.append(sweep.run["max_concurrent"])
    return max(0, min(limits))


@dataclass
class Plan:
    sweep: Sweep
    file: str
    storage: str
    points: list[dict]
    dirnames: list[str]

    @property
    def name(self) -> str:
        return self.sweep.name

    @property
    def uri(self) -> str:
        return join_uri(self.storage, self.name)

    def concurrency(self) -> str:
        here = local_slots(self.sweep)
        return (f"{here} at once on this machine" if here else "none on this machine (no GPU "
                "here); on a cluster as many as its resources allow")

    def describe(self) -> str:
        s = self.sweep
        lines = [f"study {self.name} ({self.file})",
                 f"grid: {len(self.points)} trials = " + " x ".join(f"{len(v)} {k}" for k, v in s.grid.items()),
                 f"resources per trial: cpu {s.resources['cpu']}, gpu {s.resources['gpu']}",
                 f"concurrency: {self.concurrency()}",
                 f"storage: {self.uri}",
                 f"data: {sorted({check_source(p['data_root']) for p in self.points})}",
                 f"first trial ({self.dirnames[0]}):"]
        lines += [f"  {k}: {json.dumps(v)}" for k, v in self.points[0].items()]
        return "\n".join(lines)


def prepare(path: str, sets: list[str] | None = None, storage: str | None = None,
            name: str | None = None) -> Plan:
    """Validate everything a sweep needs before anything runs."""
    sweep = load_sweep(path, sets)
    _absolute_data_paths(sweep)
    if name is not None:
        sweep.name = NAME_CHECK(name, "--name")
    if storage is not None:
        sweep.run["storage"] = _storage(storage, "--storage")
    points = sweep.points()
    check_data(points)
    if "://" not in sweep.run["storage"]:  # Tune wants an absolute local path
        sweep.run["storage"] = str(Path(sweep.run["storage"]).expanduser().resolve())
    concurrent = min(len(points), max(1, local_slots(sweep)))
    check_storage(sweep.run["storage"], study_footprint(points, concurrent))
    dirnames = [trial_dirname(sweep.axis_values(p)) for p in points]
    return Plan(sweep, str(path), sweep.run["storage"], points, dirnames)


def study_record(plan: Plan) -> dict:
    """study.json: what the aggregation needs to know about the design."""
    s = plan.sweep
    return json_safe({"name": plan.name, "file": plan.file, "axes": list(s.grid), "grid": s.grid,
                      "trial": s.trial, "resources": s.resources, "run": s.run,
                      "points": [{"dir": d, "axes": s.axis_values(p)}
                                 for d, p in zip(plan.dirnames, plan.points)]})


def seed_groups(seeds: list[int], size: int) -> list[list[int]]:
    """The seeds of one condition in groups of `size`, each trained as one array (run.fuse_seeds)."""
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


# ---------------------------------------------------------------- what every executor does

CHECKPOINT_FILE = "state.pt"          # a trial's saved state inside a checkpoint folder
LOCAL_CHECKPOINT = "checkpoint_local"  # the local executor's checkpoint folder in a trial folder


def start_study(plan: Plan, resume: bool) -> None:
    """study.json, written before any trial (a note when an earlier run of the study is there)."""
    exp = ArtifactDir.at(plan.uri)
    if not resume and exp.exists(STUDY_JSON):
        print(f"note: {plan.uri} holds an earlier run of this study; its completed trials are "
              "reused (use --resume to also continue interrupted ones from their checkpoints)")
    exp.write_json(STUDY_JSON, study_record(plan))


def final_metrics(result: dict) -> dict:
    """A finished trial's headline numbers, as the executors report them."""
    gaussian = (result.get("absorber") or {}).get("gaussian") or {}
    return {"status": result["status"], "test_accuracy": result.get("test_accuracy"),
            "gaussian_top": gaussian.get("absorber"), "gaussian_share": gaussian.get("top_share"),
            "done": True}


def drop_checkpoints(out: ArtifactDir) -> None:
    """A finished trial's result is its trial.json; its checkpoints only cost storage (a study
    of 600 ResNet-18 trials would keep about 100 GB of them)."""
    for info in out.fs.get_file_info(pafs.FileSelector(out.path)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            out.fs.delete_dir(info.path)


def aggregate_study(plan: Plan) -> int:
    """The report after the trials: 0, or 1 when the aggregation failed (the trials are kept and
    the message names the command that aggregates them again)."""
    from analysis.pipeline import aggregate
    out = join_uri(plan.storage, plan.name, REPORT_DIR)
    try:
        print(aggregate(plan.uri, out))
    except Exception:  # the trials are safe in storage; say so, and how to aggregate again
        traceback.print_exc()
        print(f"error: the trials finished and are kept in {plan.uri}, but the aggregation failed "
              f"(traceback above). Fix the cause, then run: python -m analysis {plan.uri}", file=sys.stderr)
        return 1
    return 0
