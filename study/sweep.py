"""The sweep layer on Ray Tune: runs a plan (study/plan.py) on Ray. The only module that imports Ray.

A sweep file's grid becomes one `tune.grid_search` per axis; each Tune trial resolves its config,
runs `study.trial.run_trial` with a callback that reports every epoch (with a checkpoint every
`checkpoint_every` epochs) and writes its artifacts into its own trial folder in the storage.
A trial whose trial.json is already complete there is not computed again, so re-running or
resuming a study never double-counts a grid point.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from analysis.contract import TUNE_ERROR_TXT, trial_dirname

from .artifacts import ArtifactDir
from .config import validate_trial
from .errors import InputError
from .plan import (CHECKPOINT_FILE, Plan, aggregate_study, drop_checkpoints, final_metrics, seed_groups,
                   start_study)
# A trial that meets bad input reports it under this key and ends: Tune retries every exception
# (FailureConfig.max_failures counts them all alike), and no retry can fix bad input.
INPUT_ERROR = "input_error"


# ---------------------------------------------------------------- inside a Tune trial

def _load_checkpoint(checkpoint, notes: list[str]):
    """The saved state, or None (with a note) when there is none or it cannot be read."""
    if checkpoint is None:
        return None
    import torch
    try:
        with checkpoint.as_directory() as d:
            return torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, missing: start over rather than crash
        notes.append(f"checkpoint {checkpoint.path} unreadable ({type(e).__name__}: {e}); "
                     "restarted from scratch")
        print(f"WARNING: {notes[-1]}")
        return None


def tune_trial(config: dict) -> None:
    """The Tune function trainable: bad input ends the trial with its reason, never a retry."""
    from ray import tune
    storage = tune.get_context().get_storage()
    try:
        return _tune_trial(config, storage)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        try:  # the reason beside the trial, where the aggregation reports it
            ArtifactDir(storage.storage_filesystem, storage.trial_fs_path).write_bytes(
                TUNE_ERROR_TXT, f"InputError: {e}\n".encode())
        except OSError:
            pass
        tune.report({INPUT_ERROR: str(e), "done": True})


def _tune_trial(config: dict, storage) -> None:
    """Resolve, skip if done, resume if possible, run, report."""
    import ray
    import torch
    from ray import tune

    from .trial import run_trial

    gpus = ray.get_gpu_ids()  # what Ray gave this trial: with GPUs and no CUDA it must fail, not train on the CPU
    axes = {k: v for k, v in config.items() if not k.startswith("_")}
    if "_seeds" in config:
        return _fused_tune_trial(axes, config, storage, gpus)
    cfg = validate_trial({**config["_fixed"], **axes})
    every = config["_checkpoint_every"]
    out = ArtifactDir(storage.storage_filesystem, storage.trial_fs_path)
    if out.completed():
        print(f"{out}: trial.json already complete, not recomputed")
        tune.report(final_metrics(out.read_json()))
        return

    notes: list[str] = []
    resume = _load_checkpoint(tune.get_checkpoint(), notes)

    def on_epoch(epoch: int, metrics: dict, snapshot) -> None:
        metrics = {k: metrics[k] for k in ("epoch", "train_loss", "train_accuracy", "seconds")}
        if epoch % every and epoch != cfg["epochs"]:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(snapshot(), Path(d) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    result = run_trial(cfg, out, on_epoch=on_epoch, resume=resume, notes=notes, gpus=gpus)
    tune.report(final_metrics(result))
    drop_checkpoints(out)


def _fused_tune_trial(axes: dict, config: dict, storage, gpus: list) -> None:
    """Several seeds of one condition as one array model (run.fuse_seeds). Each seed's artifacts
    go to its own grid-point folder, exactly where a separate trial would put them; seeds already
    complete there are skipped. (No mid-training checkpoints: a crash retrains the array.)"""
    from ray import tune

    from .fused import run_fused_trials
    todo = []
    for seed in config["_seeds"]:
        point = {**axes, "seed": seed}
        out = ArtifactDir(storage.storage_filesystem,
                          f"{storage.experiment_fs_path}/{trial_dirname(order_axes(point, config['_axes']))}")
        if out.completed():
            print(f"{out}: trial.json already complete, not recomputed")
        else:
            todo.append((validate_trial({**config["_fixed"], **point}), out))
    if todo:
        run_fused_trials([c for c, _ in todo], [o for _, o in todo],
                         on_epoch=lambda e, m: tune.report({"epoch": e, "train_loss": float(np.mean(m["train_loss"])),
                                                            "seconds": m["seconds"]}),
                         gpus=gpus)
    tune.report({"done": True, "fused_seeds": len(todo)})


def order_axes(values: dict, axes: list[str]) -> dict:
    return {a: values[a] for a in axes}


# ---------------------------------------------------------------- the driver

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


def _init_ray(address: str | None) -> None:
    address, where = cluster_address(address)
    if not address:
        # A local Ray listens on loopback only. Ray otherwise swaps 127.0.0.1 for the machine's
        # routable address (for multi-node clusters); this setting, read when ray is first
        # imported, keeps every server and every connection on 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    if ray.is_initialized():
        return
    if address:  # a running cluster: connect, never start a second Ray
        probe_address(address, where)
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(where, f"cannot connect to a Ray cluster at {address} ({str(e).splitlines()[0]})",
                             ADDRESS_HELP, address) from None
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=True)


def node_fit_warning(resources: dict) -> str | None:
    """On a running cluster: a warning when no live node could hold one trial now (an autoscaler
    may still add one; run.pending_timeout then ends the wait)."""
    import ray
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    need_cpu, need_gpu = resources["cpu"], resources["gpu"]
    if any(n.get("CPU", 0) >= need_cpu and n.get("GPU", 0) >= need_gpu for n in nodes):
        return None
    have = ", ".join(f"cpu {n.get('CPU', 0):g} gpu {n.get('GPU', 0):g}" for n in nodes) or "no live node"
    return (f"no node of the cluster can hold one trial now (a trial asks for cpu {need_cpu:g}, gpu "
            f"{need_gpu:g}; nodes: {have}). An autoscaler may add one; trials still waiting after "
            "run.pending_timeout seconds end the study")


class PendingWatch:
    """Ends a study whose trials wait for resources longer than run.pending_timeout while none
    runs: no node can hold a trial (and no autoscaler added one). A Tune callback sees the
    trials' states each step; its stopper ends the experiment."""

    def __init__(self, timeout_s: float | None):
        from ray import tune
        from ray.tune.stopper import Stopper
        watch = self
        self.timeout_s, self.since, self.fired = timeout_s, None, False

        class _Callback(tune.Callback):
            def on_step_begin(self, iteration, trials, **info):
                watch.observe([t.status for t in trials])

        class _Stopper(Stopper):
            def __call__(self, trial_id, result):
                return False

            def stop_all(self):
                return watch.fired

        self.callback, self.stopper = _Callback(), _Stopper()

    def observe(self, statuses: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.timeout_s is None or "RUNNING" in statuses or "PENDING" not in statuses:
            self.since = None
            return
        self.since = now if self.since is None else self.since
        self.fired = self.fired or now - self.since > self.timeout_s


def failure_reason(error) -> str:
    """The cause of a failed trial in one line (Ray wraps it in a RayTaskError whose text starts
    with the worker's pid)."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return text if text.startswith(type(cause).__name__) else f"{type(cause).__name__}: {text}"


def tune_dirname(trial) -> str:
    """A grid point's folder; a fused group's Tune folder is named after its seeds
    (`fused_classes=all_seeds=0.1.2.3`) and holds only Tune's own files."""
    c = trial.config
    if "_seeds" in c:
        return "fused_" + trial_dirname({**{a: c[a] for a in c["_axes"] if a != "seed"}, "seeds": c["_seeds"]})
    return trial_dirname({a: c[a] for a in c["_axes"]})


def build_tuner(plan: Plan, resume: bool, watch: PendingWatch | None = None):
    from ray import tune

    s = plan.sweep
    trainable = tune.with_resources(tune_trial, {"cpu": s.resources["cpu"], "gpu": s.resources["gpu"]})
    exp = plan.uri
    if resume and tune.Tuner.can_restore(exp):
        print(f"resuming {exp}")
        return tune.Tuner.restore(exp, trainable=trainable, resume_errored=True)
    fuse = s.run["fuse_seeds"]
    param_space = {axis: tune.grid_search(values) for axis, values in s.grid.items()
                   if not (fuse > 1 and axis == "seed")}
    if fuse > 1:  # one Tune trial per group of seeds of a condition
        param_space["_seeds"] = tune.grid_search(seed_groups(s.grid["seed"], fuse))
    param_space["_fixed"] = s.trial
    param_space["_axes"] = list(s.grid)
    param_space["_checkpoint_every"] = s.run["checkpoint_every"]
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=s.run["max_concurrent"],
            reuse_actors=True,  # keeps the data (and compiled graphs) in the worker between trials
            trial_dirname_creator=tune_dirname,
            trial_name_creator=tune_dirname,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            failure_config=tune.FailureConfig(max_failures=s.run["max_failures"]),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            stop=watch.stopper if watch else None,
            callbacks=[watch.callback] if watch else None,
            verbose=1,
        ),
    )


def run(plan: Plan, resume: bool = False, report: bool = True, address: str | None = None) -> int:
    start = time.perf_counter()
    _init_ray(address)  # first: a cluster that does not answer ends the sweep before anything is written
    if cluster_address(address)[0]:
        warning = node_fit_warning(plan.sweep.resources)
        if warning:
            print(f"WARNING: {warning}")
    start_study(plan, resume)
    watch = PendingWatch(plan.sweep.run["pending_timeout"])
    results = build_tuner(plan, resume, watch).fit()
    def name(r):
        return Path(r.path).name if r.path else "?"
    failed = [(name(r), failure_reason(r.error)) for r in results if r.error is not None]
    failed += [(name(r), f"bad input, not retried: {r.metrics[INPUT_ERROR]}")
               for r in results if r.error is None and (r.metrics or {}).get(INPUT_ERROR)]
    # a trial that never reported (Tune numbers each report) never started: the pending watch stopped it
    never = [name(r) for r in results if r.error is None and (r.metrics or {}).get("training_iteration") is None]
    print(f"sweep {plan.name}: {len(results) - len(failed) - len(never)} of {len(results)} trials ended, "
          f"{len(failed)} failed, {len(never)} never started; {time.perf_counter() - start:.0f} s")
    for name, reason in failed:
        print(f"  failed: {name}: {reason[:300]}")
    if never:  # only the pending watch stops trials before they start
        r = plan.sweep.resources
        raise InputError("resources", f"{len(never)} trial(s) waited more than run.pending_timeout = "
                         f"{plan.sweep.run['pending_timeout']:g} s for a node with cpu {r['cpu']:g} and gpu "
                         f"{r['gpu']:g} free while none ran, so the study was stopped (finished trials are "
                         f"kept in {plan.uri}; rerun with --resume)",
                         "resources that a node of the cluster can hold, or a larger run.pending_timeout "
                         "(null waits forever)", {"cpu": r["cpu"], "gpu": r["gpu"]})
    if report and aggregate_study(plan):
        return 1
    return 0 if not failed else 1
