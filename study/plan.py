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
import re
import shutil
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from analysis.contract import (
    CIFAR10_CLASSES,
    COMPLETED,
    FINAL_STATUSES,
    MEASUREMENT_CHANGES,
    MEASUREMENTS,
    REPORT_DIR,
    STUDY_JSON,
    TRIAL_JSON,
    config_changes,
    config_digest,
    join_uri,
    trial_dirname,
)
from analysis.storage import check_writable

from .artifacts import ArtifactDir, filesystem, json_safe
from .config import NAME_CHECK, TRIAL_BEFORE_KEY, Sweep, load_sweep, storage_value, trained_classes
from .data import check_source, is_uri, load_cifar10
from .errors import InputError
from .task import check_task


def study_footprint(points: list[dict], concurrent: int, keep_checkpoints: int = 2) -> int:
    """Bytes a study will need in its storage, roughly: every trial's arrays and trial.json, and
    the checkpoints (weights + momentum, `keep_checkpoints` each) of the trials running at once;
    a finished trial's checkpoints are deleted."""
    from .models import build_model, factors_of
    from .noise import noise_families
    sizes, artifacts = {}, 0
    for p in points:
        key = (p["model"], len(trained_classes(p)), *factors_of(p).values())
        if key not in sizes:  # builds every model once: one that cannot be built fails here, before any trial
            model = build_model(p["model"], key[1], 0, **factors_of(p))
            sizes[key] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        families = len(noise_families(p))
        artifacts += p["n_noise"] * families * 2 + 3_000_000    # labels, noise-mean images, json
    return artifacts + concurrent * keep_checkpoints * 2 * max(sizes.values())


def check_storage(storage: str, needed_bytes: int = 0, where: str = "run.storage") -> None:
    """Fail before any trial starts if the results cannot be written there (creates nothing):
    a file, a folder under a file, a read-only or too small local folder, an unreachable or
    missing bucket."""
    check_writable(storage, where)
    if "://" not in storage or storage.startswith("file://"):
        probe = Path(storage.removeprefix("file://")).expanduser().resolve()
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < needed_bytes:
            raise InputError(where, f"only {free / 1e6:.0f} MB free at {probe}, the study needs "
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


def check_trials(points: list[dict], locate=None, gpu_here: bool = False) -> list[str]:
    """The one check of what the trials need beyond their keys, shared by `study trial`, `study
    check`, `study sweep` and any executor of a plan, so that none of them accepts what a trial
    would then fail on: each data source readable, verified, and big enough for each point's
    subsets and batch; each pretrained weights source present and loadable into its model.
    Raises InputError (`locate(point, error)` names the grid point); returns warnings for what a
    trial will apply otherwise than written (sample_per_class beyond a class's images, compile
    without CUDA). `gpu_here`: whether the trials will see a GPU. Decoding the data here also
    fills the cache the trials on this machine will read."""
    from .models import build_model, factors_of
    locate = locate or (lambda point, e: e)
    warnings: list[str] = []
    for root, verify in sorted({(p["data_root"] or "", p["data_verify"]) for p in points}):
        check_source(root or None)
        data = load_cifar10(root or None, verify)
        for p in points:
            if (p["data_root"] or "", p["data_verify"]) != (root, verify):
                continue
            classes = trained_classes(p)
            try:
                check_task(data, p, classes)
            except InputError as e:
                raise locate(p, e) from None
            per_class = int(np.bincount(data.train_y, minlength=10)[[CIFAR10_CLASSES.index(c) for c in classes]].min())
            if p["train_subset"] is not None:
                per_class = min(per_class, p["train_subset"] // len(classes))
            if p["sample_per_class"] > per_class:
                warnings.append(f"sample_per_class {p['sample_per_class']} is more than the {per_class} training "
                                f"images of the smallest class (classes={p['classes']}, train_subset="
                                f"{p['train_subset']}): the clutter measures and the OOD detectors use those "
                                "(recorded in trial.json as clutter.images_per_class)")
    first: dict[str, dict] = {}  # each distinct model and weights once, named by its first grid point
    for p in points:
        if p["pretrained"] is not None:
            first.setdefault(json.dumps([p["model"], p["pretrained"], factors_of(p)]), p)
    for p in first.values():
        try:  # fetches or reads the weights and loads them into the model, as the trial will
            build_model(p["model"], len(trained_classes(p)), 0, p["pretrained"], **factors_of(p))
        except InputError as e:
            raise locate(p, e) from None
    from .recipe import weak_recipe_warnings
    warnings += weak_recipe_warnings(points)
    compiled = sorted({str(p["compile"]) for p in points if p["compile"] and
                       (p["device"] == "cpu" or not gpu_here)})
    if compiled:
        warnings.append(f"compile: {', '.join(compiled)} applies on CUDA only and these trials run on a CPU: "
                        "they run without torch.compile (recorded in trial.json as applied.compile)")
    return list(dict.fromkeys(warnings))


def cluster_address(address: str | None) -> tuple[str | None, str]:
    """(the Ray cluster to use, where it was named): --address, else $RAY_ADDRESS, else None (a
    local Ray started here)."""
    if address:
        return address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, ""


ADDRESS_HELP = ("the address of a running Ray cluster's head: host:6379 (the GCS port), ray://host:10001 "
                "(Ray Client) or auto; `ray start --head` prints it")


def probe_address(address: str, where: str, timeout_s: float = 10) -> None:
    """Fail within seconds when nothing listens at the address (ray.init would retry for minutes):
    one TCP connection to the head, nothing sent."""
    import socket
    from urllib.parse import urlsplit
    if address == "auto":  # Ray's own lookup of the cluster started on this machine
        return
    if re.match(r"https?://", address):
        raise InputError(where, "is the dashboard's job-submission address, which `ray job submit` takes; "
                         "a driver connects to the head's GCS port", ADDRESS_HELP, address)
    parts = urlsplit(address if "://" in address else f"ray-gcs://{address}")
    try:
        host, port = parts.hostname, parts.port or (10001 if parts.scheme == "ray" else 6379)
    except ValueError:
        host = None
    if not host:
        raise InputError(where, "malformed address", ADDRESS_HELP, address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise InputError(where, f"no Ray cluster answers at {host}:{port} ({reason})", ADDRESS_HELP,
                         address) from None


def check_resources(sweep: Sweep) -> None:
    """For a study run by a Ray started here: a trial that asks for more CPUs or GPUs than this
    machine has would wait forever (PENDING); refuse it."""
    cpu, gpu = sweep.resources["cpu"], sweep.resources["gpu"]
    cluster = "or run it on a cluster (study sweep --address / RAY_ADDRESS; study check --cluster validates for one)"
    cpus = os.cpu_count() or 1
    if cpu > cpus:
        raise InputError("resources.cpu", f"a trial asks for {cpu:g} CPUs and this machine has {cpus}: no "
                         "trial could ever start", f"at most {cpus} here, {cluster}", cpu)
    if gpu:
        import torch
        gpus = torch.cuda.device_count()
        if gpu > gpus:
            raise InputError("resources.gpu", f"a trial asks for {gpu:g} GPU and this machine has "
                             f"{gpus or 'none'}: no trial could ever start",
                             f"{'0 (CPU trials)' if not gpus else f'at most {gpus}'} here, {cluster}", gpu)


def fit_warning(nodes: list[dict], resources: dict) -> str | None:
    """On a running cluster: a warning when none of the live nodes (their resources, {"CPU": n,
    "GPU": n} as Ray lists them) could hold one trial now (an autoscaler may still add one;
    run.pending_timeout then ends the wait)."""
    need_cpu, need_gpu = resources["cpu"], resources["gpu"]
    if any(n.get("CPU", 0) >= need_cpu and n.get("GPU", 0) >= need_gpu for n in nodes):
        return None
    have = ", ".join(f"cpu {n.get('CPU', 0):g} gpu {n.get('GPU', 0):g}" for n in nodes) or "no live node"
    return (f"no node of the cluster can hold one trial now (a trial asks for cpu {need_cpu:g}, gpu "
            f"{need_gpu:g}; nodes: {have}). An autoscaler may add one; trials still waiting after "
            "run.pending_timeout seconds end the study")


# what a resumed study says when its last run was stopped by run.pending_timeout (sweep.run)
PENDING_RESTART_NOTE = ("note: the last run of {name} was stopped by run.pending_timeout; the trials that had not "
                        "finished start anew, from epoch 0 (completed ones are reused; a trial that had failed and "
                        "kept a checkpoint does not continue from it)")


def storage_lost_message(plan: Plan, reason: str) -> str:
    """Why a study ended when Tune could not read or write its storage: a bucket that stopped
    answering for longer than the trials' retries (`reason`: the error, in one line)."""
    return (f"sweep {plan.name}: Tune could not read or write the storage {plan.uri} ({reason[:300]}), so the "
            "study stopped. Finished trials are kept there and are not recomputed; once the storage answers "
            "again, rerun with --resume (the others continue from the last checkpoint Tune recorded there, or "
            "start over)")


def pending_timeout_error(plan: Plan, waiting: int) -> InputError:
    """Why a study stopped by run.pending_timeout failed: `waiting` of its trials found no node."""
    r = plan.sweep.resources
    return InputError("resources", f"{waiting} trial(s) waited more than run.pending_timeout = "
                      f"{plan.sweep.run['pending_timeout']:g} s for a node with cpu {r['cpu']:g} and gpu "
                      f"{r['gpu']:g} free while none ran, so the study was stopped (finished trials are "
                      f"kept in {plan.uri}; rerun with --resume)",
                      "resources that a node of the cluster can hold, or a larger run.pending_timeout "
                      "(null waits forever)", {"cpu": r["cpu"], "gpu": r["gpu"]})


def result_state(out: ArtifactDir, cfg: dict) -> list[str] | None:
    """What a grid point's folder holds, for every executor (skip-if-complete, --resume, fused
    seeds): None when no finished result (run the trial); [] when a finished result of this very
    config (skip it); else the config keys that differ (`key: was X, now Y`): a result of
    another config, never to be reused as this point's, nor overwritten."""
    if not out.exists(TRIAL_JSON):
        return None
    try:
        t = out.read_json()
    except (ValueError, OSError):
        return None  # torn or unreadable: the trial runs again and replaces it
    if not isinstance(t, dict) or t.get("status") not in FINAL_STATUSES:
        return None
    if not isinstance(t.get("config"), dict):
        return ["config: absent from trial.json"]
    from .noise import noise_families
    missing = []
    if t["status"] == COMPLETED:   # a result of older code lacks what the code measures since
        old = t.get("measurements", 1)
        if old < MEASUREMENTS:
            missing.append(f"measurements: revision {old}, now {MEASUREMENTS} (since: "
                           f"{'; '.join(MEASUREMENT_CHANGES[r] for r in range(old + 1, MEASUREMENTS + 1))})")
        # `noise: all` grows with the registry
        lacking = [f for f in noise_families(cfg) if f not in t.get("noise_families", [])]
        if lacking:
            missing.append(f"noise: {json.dumps(cfg['noise'])} probes {', '.join(lacking)}, which the stored "
                           "result lacks")
    if t.get("config_digest") == config_digest(cfg):
        return missing
    return config_changes(t["config"], cfg, TRIAL_BEFORE_KEY) + missing


STALE_HELP = ("the config those results were made with; or a new study name (--name NEW) for the new "
              "config; or remove the old results first")


def is_done(out: ArtifactDir, cfg: dict) -> bool:
    """An executor's skip-if-complete: True when `out` holds this config's finished result (skip
    the trial), False when it holds none (run it); a result of another config is an InputError."""
    changes = result_state(out, cfg)
    if changes:
        raise InputError(str(out), f"holds a finished trial of another config ({'; '.join(changes)})", STALE_HELP)
    return changes == []


def check_existing(plan: Plan, workers: int = 16) -> int:
    """The study folder may hold results of an earlier run: each grid point's result must belong
    to its config (reused), or be absent (run). A result of another config (a trial key changed
    since) is refused, never mixed in. Returns how many results are reused."""
    fs, root = filesystem(plan.uri)
    present = {i.base_name for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
               if i.type == pafs.FileType.Directory}
    todo = [(d, p) for d, p in zip(plan.dirnames, plan.points) if d in present]
    with ThreadPoolExecutor(workers) as pool:
        states = list(pool.map(lambda dp: result_state(ArtifactDir(fs, f"{root}/{dp[0]}"), dp[1]), todo))
    stale = [(d, changes) for (d, _), changes in zip(todo, states) if changes]
    if stale:
        d, changes = stale[0]
        raise InputError(join_uri(plan.uri, d), f"holds a finished trial of another config ({'; '.join(changes)})"
                         + (f"; so do {len(stale) - 1} other grid point(s)" if len(stale) > 1 else ""),
                         STALE_HELP)
    return sum(changes == [] for changes in states)


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
    local: bool = True          # run by a Ray started here (else on a cluster)
    warnings: list[str] = field(default_factory=list)   # what trials will apply otherwise than written
    reused: int = 0             # finished results of an earlier run, kept

    @property
    def name(self) -> str:
        return self.sweep.name

    @property
    def uri(self) -> str:
        return join_uri(self.storage, self.name)

    def concurrency(self) -> str:
        if not self.local:
            return "on the cluster, as many as its nodes hold"
        return f"{local_slots(self.sweep)} at once on this machine"

    def describe(self) -> str:
        s = self.sweep
        lines = [f"study {self.name} ({self.file})",
                 f"grid: {len(self.points)} trials = " + " x ".join(f"{len(v)} {k}" for k, v in s.grid.items()),
                 f"resources per trial: cpu {s.resources['cpu']}, gpu {s.resources['gpu']}",
                 f"concurrency: {self.concurrency()}",
                 f"storage: {self.uri}" + (f" ({self.reused} finished trials of an earlier run are reused)"
                                           if self.reused else ""),
                 f"data: {sorted({check_source(p['data_root']) for p in self.points})}",
                 f"first trial ({self.dirnames[0]}):"]
        lines += [f"  {k}: {json.dumps(v)}" for k, v in self.points[0].items()]
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)

    def power(self) -> str:
        """The power of the absorber tests the aggregation will run on this design, and the seeds
        each needs for 80% (analysis/power.py, by simulating the tests themselves)."""
        from analysis.contract import NETWORK_KEYS
        from analysis.power import design_block  # statsmodels and scipy: only when a check asks
        return design_block([(self.sweep.axis_values(p), trained_classes(p), json.dumps([p[k] for k in NETWORK_KEYS]))
                             for p in self.points])


def prepare(path: str, sets: list[str] | None = None, storage: str | None = None,
            name: str | None = None, local: bool = True) -> Plan:
    """Validate everything a sweep needs before anything runs. `local`: the study runs on a Ray
    started on this machine (its CPUs and GPUs bound what a trial may ask for)."""
    sweep = load_sweep(path, sets)
    _absolute_data_paths(sweep)
    if name is not None:
        sweep.name = NAME_CHECK(name, "--name")
    if storage is not None:
        sweep.run["storage"] = storage_value(storage, "--storage")
    if local:
        check_resources(sweep)
    points = sweep.points()
    dirnames = [trial_dirname(sweep.axis_values(p)) for p in points]
    twice = next((d for d in dirnames if dirnames.count(d) > 1), None)
    if twice is not None:   # two grid points in one folder would overwrite (or reuse) each other's result
        raise InputError("grid", f"two grid points share the trial folder {twice} (e.g. two arms of one name)",
                         "grid values that name each point once (arms with distinct names)", twice)
    warnings = check_trials(points, sweep.locate, gpu_here=sweep.resources["gpu"] > 0)
    if "://" not in sweep.run["storage"]:  # Tune wants an absolute local path
        sweep.run["storage"] = str(Path(sweep.run["storage"]).expanduser().resolve())
    concurrent = min(len(points), max(1, local_slots(sweep)))
    check_storage(sweep.run["storage"], study_footprint(points, concurrent))
    plan = Plan(sweep, str(path), sweep.run["storage"], points, dirnames, local, warnings)
    plan.reused = check_existing(plan)
    return plan


def study_record(plan: Plan) -> dict:
    """study.json: what the aggregation needs to know about the design."""
    s = plan.sweep
    # every point's resolved config is `resolved` with its axes; the aggregation checks each
    # trial.json's config against it (contract.config_changes), so no stale result is mixed in
    # an arm axis sets other keys too: those that differ between points are each point's `keys`
    varying = {k for k in plan.points[0] if k not in s.grid
               and len({json.dumps(p[k], sort_keys=True) for p in plan.points}) > 1}
    resolved = {k: v for k, v in plan.points[0].items() if k not in s.grid and k not in varying}
    return json_safe({"name": plan.name, "file": plan.file, "axes": list(s.grid), "grid": s.grid,
                      "trial": s.trial, "resources": s.resources, "run": s.run,
                      "resolved": resolved, "before_key": TRIAL_BEFORE_KEY,
                      "points": [{"dir": d, "axes": s.axis_values(p), **({"keys": {k: p[k] for k in sorted(varying)}}
                                                                         if varying else {})}
                                 for d, p in zip(plan.dirnames, plan.points)]})


def seed_groups(seeds: list[int], size: int) -> list[list[int]]:
    """The seeds of one condition in groups of `size`, each trained as one array (run.fuse_seeds)."""
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def grid_points(config: dict) -> int:
    """How many of the study's trials (grid points) one executor's trial holds: a fused group, its seeds."""
    return len(config.get("seeds") or [None])


# ---------------------------------------------------------------- what every executor does

# What a trial needs from the driver's environment, passed to every trial through Ray's runtime
# environment: a worker does not share the driver's shell (another node, or a node started
# before the variable was set). Never credentials: those come from each node's own identity.
WORKER_ENV = ("NOISESINK_DATA", "NOISESINK_CACHE", "XDG_CACHE_HOME", "TORCH_HOME", "AWS_ENDPOINT_URL")


def worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in WORKER_ENV if os.environ.get(k)}


@contextmanager
def environment(name: str, value: str):
    """os.environ[name] = value for the duration (Ray reads some settings from the environment)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old



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


def drop_finished_checkpoints(plan: Plan, done: set[str], workers: int = 16) -> None:
    """The driver's tidy-up after Tune's fit: the checkpoints of the grid points in `done` (the
    trials Tune itself recorded as finished, so no resume will ask for their checkpoints) whose
    result is complete. A trial drops its own after its final report, but Tune often ends the
    trial at that report (the result says `done`) before the line after it runs. Storage errors
    only cost the space: a warning, and the other points are tidied."""
    fs, root = filesystem(plan.uri)

    def tidy(dirname: str, cfg: dict) -> None:
        out = ArtifactDir(fs, f"{root}/{dirname}")
        try:
            if result_state(out, cfg) == []:
                drop_checkpoints(out)
        except OSError as e:   # gone already (the trial's own drop), or the store away
            print(f"WARNING: {join_uri(plan.uri, dirname)}: its checkpoints are kept ({type(e).__name__}: {e})")
    todo = [(d, p) for d, p in zip(plan.dirnames, plan.points) if d in done]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda dp: tidy(*dp), todo))


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
