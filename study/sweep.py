"""The sweep layer on Ray Tune, the driver's side: runs a plan (study/plan.py) on Ray. With
study/tune_trial.py (what runs inside each Tune trial) the only modules that import Ray.

A sweep file's grid becomes one `tune.grid_search` per axis; each Tune trial (study/tune_trial.py)
resolves its config, runs its unit as the local executor does (study/units.py) with a callback
that reports every epoch (with a checkpoint every `checkpoint_every` epochs), and writes its
artifacts into its own trial folder in the storage. A trial whose trial.json is already complete
there is not computed again, so re-running or resuming a study never double-counts a grid point.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

from analysis.contract import STOPPED_JSON

from .artifacts import ArtifactDir
from .errors import InputError
from .plan import (
    ADDRESS_HELP,
    PENDING_RESTART_NOTE,
    Plan,
    aggregate_study,
    cluster_address,
    drop_finished_checkpoints,
    environment,
    fit_warning,
    grid_points,
    pending_timeout_error,
    probe_address,
    seed_groups,
    start_study,
    storage_lost_message,
    worker_env,
)
from .tune_trial import DRIVER_TOKEN, INPUT_ERROR, storage_is_shared, tune_folder, tune_trial
from .units import failure_reason


def init_ray(address: str | None) -> None:
    address, where = cluster_address(address)
    if not address:
        # A local Ray listens on loopback only. Ray otherwise swaps 127.0.0.1 for the machine's
        # routable address (for multi-node clusters); this setting, read when ray is first
        # imported, keeps every server and every connection on 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": worker_env()}
    if address:  # a running cluster: connect, never start a second Ray
        probe_address(address, where)
        try:
            # Under `ray job submit` the job's own runtime_env is merged with this one, and Ray
            # refuses a variable set in both; ours are this process's values, which already include
            # the job's, so letting ours win changes nothing but the refusal.
            # (Read in ray._private.worker; pinned by tests/test_ray_usage.py, checked on Ray 2.60.)
            with environment("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1"):
                ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(where, f"cannot connect to a Ray cluster at {address} ({str(e).splitlines()[0]})",
                             ADDRESS_HELP, address) from None
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=True,
                 runtime_env=runtime_env)


def check_shared_storage(plan: Plan) -> str | None:
    """A local run.storage on a cluster must be one folder for every node. Writes a fresh token
    into the study folder and asks each live node to read it back; refuses the sweep (before any
    trial) when a node cannot. Returns the token, which each trial checks again on the node it
    runs on (nodes the autoscaler adds later); None for a URI storage."""
    if "://" in plan.storage and not plan.storage.startswith("file://"):
        return None
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    experiment = plan.uri.removeprefix("file://")
    token = uuid.uuid4().hex
    (Path(experiment) / DRIVER_TOKEN).write_text(token)

    @ray.remote(num_cpus=0)
    def sees_token() -> bool:
        return storage_is_shared(experiment, token)

    nodes = [n for n in ray.nodes() if n["Alive"]]
    answers = ray.get([sees_token.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote() for n in nodes], timeout=300)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, answers) if not ok]
    if blind:
        raise InputError("run.storage", f"{experiment} is a folder on the driver's disk that node(s) "
                         f"{', '.join(blind)} do not see: their trials' results would stay on their own "
                         "disks", "a bucket URI (s3://..., gs://...) or a folder every node mounts at the "
                         "same path (NFS, EFS)", plan.storage)
    return token


def node_fit_warning(resources: dict) -> str | None:
    """On a running cluster: plan.fit_warning against the live nodes' resources now."""
    import ray
    return fit_warning([n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")], resources)


class PendingWatch:
    """Ends a study whose trials wait for resources longer than run.pending_timeout while none
    runs: no node can hold a trial (and no autoscaler added one). A Tune callback sees the
    trials' states each step; its stopper ends the experiment.

    Why the study stopped is written to its storage (STOPPED_JSON), not only kept here: a resumed
    study (`--resume`, every KubeRay retry) gets back, from Tune.restore, the callback and stopper
    the first run saved, not this process's watch. For the same reason a pickled watch forgets
    that it fired: restored, it watches afresh instead of stopping the resumed study at once."""

    def __init__(self, timeout_s: float | None, uri: str | None = None):
        from ray import tune
        from ray.tune.stopper import Stopper
        watch = self
        self.timeout_s, self.since, self.fired, self.uri = timeout_s, None, False, uri

        class _Callback(tune.Callback):
            # public Callback API; the Trial objects' status strings are pinned in tests/test_ray_usage.py
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
        if not self.fired and now - self.since > self.timeout_s:
            self.fired = True
            uri = getattr(self, "uri", None)   # a watch pickled by an older revision has none
            if uri:
                try:   # the stop itself must not fail on a storage error: the driver still reports it
                    ArtifactDir.at(uri).write_json(STOPPED_JSON, {"reason": "pending_timeout",
                                                                  "pending_timeout": self.timeout_s})
                except Exception as e:
                    print(f"WARNING: could not record the stop in {uri} ({type(e).__name__}: {e}); a --resume "
                          "will restore the stopped trials as they are", file=sys.stderr)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "since": None, "fired": False}

    @staticmethod
    def stopped(uri: str) -> bool:
        """Whether a watch (this run's, or the restored one of an earlier run) stopped the study."""
        return ArtifactDir.at(uri).exists(STOPPED_JSON)

    @staticmethod
    def clear(uri: str) -> None:
        ArtifactDir.at(uri).remove(STOPPED_JSON)


def tune_dirname(trial, axes: list[str]) -> str:
    return tune_folder(trial.config, axes)


def study_reporter(plan: Plan):
    """Tune's status table with the study's axes and the absorber forming (each epoch's top
    class of the trajectory's Gaussian noise and its share), headed by the count of the study's
    trials (a fused group of k seeds is k of them, one Tune trial)."""
    from ray.tune import CLIReporter

    fused = plan.sweep.run["fuse_seeds"] > 1 and "seed" in plan.sweep.grid
    columns = [a for a in plan.sweep.grid if not (fused and a == "seed")] + (["seeds"] if fused else [])
    total = len(plan.points)

    class StudyReporter(CLIReporter):
        def report(self, trials, done, *sys_info):
            by_status = Counter()
            for t in trials:
                by_status[t.status] += grid_points(t.config)
            line = f"Study {plan.name}: {total} trials (" + ", ".join(
                f"{n} {status}" for status, n in sorted(by_status.items())) + ")"
            if len(trials) < sum(by_status.values()):
                line += f", trained in {len(trials)} fused groups"
            super().report(trials, done, line, *sys_info)

    return StudyReporter(parameter_columns=columns, max_report_frequency=30, metric_columns={
        "epoch": "epoch", "train_loss": "loss", "gaussian_top": "gaussian noise ->",
        "gaussian_share": "share", "test_accuracy": "test acc"})


def tracker_callbacks(names: list[str], study: str) -> list:
    """Ray Tune's logger callbacks for run.callbacks (study/tracking.py)."""
    import importlib

    from .tracking import TRACKERS
    out = []
    for name in names:
        module, cls = TRACKERS[name].callback.rsplit(".", 1)
        out.append(getattr(importlib.import_module(module), cls)(**TRACKERS[name].arguments(study)))
    return out


def build_tuner(plan: Plan, resume: bool, watch: PendingWatch | None = None, token: str | None = None):
    from ray import tune

    s = plan.sweep
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, fixed=s.trial, axes=list(s.grid),
                             checkpoint_every=s.run["checkpoint_every"], experiment=plan.uri, token=token),
        {"cpu": s.resources["cpu"], "gpu": s.resources["gpu"]})
    if resume and tune.Tuner.can_restore(plan.uri):
        print(f"resuming {plan.uri}")
        return tune.Tuner.restore(plan.uri, trainable=trainable, resume_errored=True)
    fuse = s.run["fuse_seeds"]
    param_space = {axis: tune.grid_search(values) for axis, values in s.grid.items()
                   if not (fuse > 1 and axis == "seed")}
    if fuse > 1 and "seed" in s.grid:  # one Tune trial per group of seeds of a condition
        param_space["seeds"] = tune.grid_search(seed_groups(s.grid["seed"], fuse))
    name = partial(tune_dirname, axes=list(s.grid))
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=s.run["max_concurrent"],
            reuse_actors=True,  # keeps the data (and compiled graphs) in the worker between trials
            trial_dirname_creator=name,
            trial_name_creator=name,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            failure_config=tune.FailureConfig(max_failures=s.run["max_failures"]),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            stop=watch.stopper if watch else None,
            callbacks=([watch.callback] if watch else []) + tracker_callbacks(s.run["callbacks"], plan.name),
            progress_reporter=study_reporter(plan),
            verbose=1,
        ),
    )


def run(plan: Plan, resume: bool = False, report: bool = True, address: str | None = None) -> int:
    start = time.perf_counter()
    init_ray(address)  # first: a cluster that does not answer ends the sweep before anything is written
    warning = cluster_address(address)[0] and node_fit_warning(plan.sweep.resources)
    if warning:
        print(f"WARNING: {warning}")
    start_study(plan, resume)
    token = check_shared_storage(plan)
    print(f"TensorBoard (each trial's training curves and Gaussian-noise trajectory): tensorboard --logdir {plan.uri}")
    watch = PendingWatch(plan.sweep.run["pending_timeout"], plan.uri)
    if resume and PendingWatch.stopped(plan.uri):
        # Tune marked the trials the watch stopped as terminated, and a restored experiment never
        # starts them again: run the study afresh instead (its completed trials are reused)
        print(PENDING_RESTART_NOTE.format(name=plan.name))
        resume = False
    PendingWatch.clear(plan.uri)   # a stop recorded by an earlier run is not this run's
    # Tune's console reporter whose columns can be chosen (the default output infers them from
    # the first results, and shows no text column such as the absorbing class); the variable is read
    # in ray.tune.experimental.output, pinned by tests/test_ray_usage.py (checked on Ray 2.60)
    with environment("RAY_AIR_NEW_OUTPUT", "0"):
        try:
            results = build_tuner(plan, resume, watch, token).fit()
        except OSError as e:  # Tune reads the storage back when trials end and when it restores
            print(storage_lost_message(plan, failure_reason(e)), file=sys.stderr)
            return 1

    def name(r):
        return Path(r.path).name if r.path else "?"
    drop_finished_checkpoints(plan, {name(r) for r in results if r.error is None and (r.metrics or {}).get("done")})
    # counted in the study's trials (grid points): a fused group of k seeds is k of them
    size = {name(r): grid_points(r.config or {}) for r in results}
    failed = [(name(r), failure_reason(r.error)) for r in results if r.error is not None]
    failed += [(name(r), f"bad input, not retried: {r.metrics[INPUT_ERROR]}")
               for r in results if r.error is None and (r.metrics or {}).get(INPUT_ERROR)]
    # a trial that never reported (Tune numbers each report) never started: the pending watch stopped it
    never = [name(r) for r in results if r.error is None and (r.metrics or {}).get("training_iteration") is None]
    n_failed, n_never = sum(size[n] for n, _ in failed), sum(size[n] for n in never)
    print(f"sweep {plan.name}: {len(plan.points) - n_failed - n_never} of {len(plan.points)} trials ended, "
          f"{n_failed} failed, {n_never} never started; {time.perf_counter() - start:.0f} s")
    for name, reason in failed:
        print(f"  failed: {name}: {reason[:300]}")
    fired = watch.fired or PendingWatch.stopped(plan.uri)
    if never and not fired:  # stopped before they started by the user (Ctrl-C), not by resources
        print(f"sweep {plan.name}: interrupted before {n_never} trial(s) started; finished trials are kept in "
              f"{plan.uri}; rerun with --resume to continue", file=sys.stderr)
        return 1
    # the pending watch stopped the study: no node could hold its trials (restored ones that had
    # reported before may count as ended: every trial that did not finish counts)
    waiting = n_never or sum(size[name(r)] for r in results if r.error is None and not (r.metrics or {}).get("done"))
    if fired and waiting:
        raise pending_timeout_error(plan, waiting)
    if report and aggregate_study(plan):
        return 1
    return 0 if not failed else 1
