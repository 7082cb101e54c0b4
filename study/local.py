"""The local executor: a plan (study/plan.py) run without Ray, on this machine.

    python -m study sweep SWEEP.yaml --executor local [--resume] [--time-limit SECONDS]

The same grid, trial folders, study.json and report as the Ray adapter (study/sweep.py), for a
machine that has no Ray (the lent GPU machine, a GPU box without a cluster). Trials run in this
process when one fits at a time, else in k long-lived worker processes, k as `resources` allow
on this machine (`resources.gpu: 0.25` puts four on each GPU, each worker seeing only its own
GPU through CUDA_VISIBLE_DEVICES). As with Ray: a grid point whose trial.json is complete is
never recomputed, a trial saves a checkpoint every `run.checkpoint_every` epochs that `--resume`
continues from, `run.fuse_seeds` trains seeds of a condition as one array, and a crashed trial
is retried `run.max_failures` times (a bad-input error is not: it would fail again).

This module imports no torch at import time: a spawned worker sets CUDA_VISIBLE_DEVICES and its
thread count before torch starts.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from analysis.contract import join_uri

from .artifacts import ArtifactDir
from .errors import InputError
from .plan import (
    CHECKPOINT_FILE,
    LOCAL_CHECKPOINT,
    Plan,
    aggregate_study,
    drop_checkpoints,
    final_metrics,
    is_done,
    local_slots,
    seed_groups,
    start_study,
)
from .units import read_state, run_group, run_point

GRACE_SECONDS = 30   # past the time limit, trials still probing get this long before they are stopped


class TimeLimit(Exception):
    """The study's time limit passed: the trial stops after saving its checkpoint."""


@dataclass
class Unit:
    """What one worker runs at once: a grid point, or the seeds of a condition fused into one array."""
    configs: list[dict]
    dirnames: list[str]
    attempts: int = 0

    @property
    def label(self) -> str:
        return self.dirnames[0] if len(self.dirnames) == 1 else f"{' + '.join(self.dirnames)} (fused)"


@dataclass(frozen=True)
class Settings:
    """What every unit of one run needs besides itself (sent to each worker)."""
    uri: str                  # the study's folder
    checkpoint_every: int     # run.checkpoint_every
    resume: bool              # continue from a trial's checkpoint when there is one
    deadline: float | None    # time.time() after which trials stop at their next epoch


@dataclass
class Outcome:
    completed: list[str] = field(default_factory=list)   # trial folders finished now (status completed/diverged)
    skipped: list[str] = field(default_factory=list)     # complete before this run
    failed: dict[str, str] = field(default_factory=dict) # label -> the error's last line
    stopped: list[str] = field(default_factory=list)     # not finished when the time limit passed
    workers: int = 0                                     # trials at once (1: in this process)


def work_units(plan: Plan, done: Callable[[str], bool]) -> tuple[list[Unit], list[str]]:
    """The plan's grid points still to run, as units in the plan's order, and those already done.
    With run.fuse_seeds > 1, a condition's seeds are grouped as the Ray adapter groups them
    (seed_groups over the grid's seed axis); complete seeds drop out of their group."""
    fuse = plan.sweep.run["fuse_seeds"]
    skipped = [d for d in plan.dirnames if done(d)]
    if fuse <= 1:
        units = [Unit([p], [d]) for p, d in zip(plan.points, plan.dirnames) if d not in skipped]
        return units, skipped
    conditions: dict[str, list[tuple[dict, str]]] = {}
    for p, d in zip(plan.points, plan.dirnames):
        key = repr({a: v for a, v in plan.sweep.axis_values(p).items() if a != "seed"})
        conditions.setdefault(key, []).append((p, d))
    units = []
    for members in conditions.values():
        by_seed = {p["seed"]: (p, d) for p, d in members}
        for group in seed_groups(plan.sweep.grid["seed"], fuse):
            todo = [by_seed[s] for s in group if by_seed[s][1] not in skipped]
            if todo:
                units.append(Unit([p for p, _ in todo], [d for _, d in todo]))
    return units, skipped


# ---------------------------------------------------------------- one unit, in whichever process

def checkpoint_dir(out: ArtifactDir) -> ArtifactDir:
    return ArtifactDir(out.fs, f"{out.path}/{LOCAL_CHECKPOINT}")


def _load_checkpoint(out: ArtifactDir, notes: list[str]):
    """The trial's saved state, or None (with a note when it exists but cannot be read)."""
    folder = checkpoint_dir(out)
    if not folder.exists(CHECKPOINT_FILE):
        return None
    return read_state(lambda: folder.read_bytes(CHECKPOINT_FILE), f"{folder}/{CHECKPOINT_FILE}", notes)


def run_unit(unit: Unit, run: Settings, gpus: list[str]) -> list[tuple[str, dict]]:
    """Train and probe the unit's trials into their folders; [(folder, final metrics)]."""
    def check_time() -> None:
        if run.deadline is not None and time.time() > run.deadline:
            raise TimeLimit()

    outs = [ArtifactDir.at(join_uri(run.uri, d)) for d in unit.dirnames]
    if len(unit.configs) > 1:  # no mid-training checkpoints for an array, as on Ray
        results = run_group(unit.configs, outs, log=lambda m: print(f"[{unit.label}] {m}", flush=True),
                            on_epoch=lambda epoch, metrics: check_time(), gpus=gpus)
        return [(d, final_metrics(r)) for d, r in zip(unit.dirnames, results)]

    cfg, out = unit.configs[0], outs[0]
    notes: list[str] = []

    def after_epoch(epoch: int, metrics: dict, saved: bytes | None) -> None:
        if saved is not None:
            checkpoint_dir(out).write_bytes(CHECKPOINT_FILE, saved)
        check_time()

    result = run_point(cfg, out, state=_load_checkpoint(out, notes) if run.resume else None, notes=notes,
                       gpus=gpus, checkpoint_every=run.checkpoint_every, after_epoch=after_epoch,
                       log=lambda m: print(f"[{unit.dirnames[0]}] {m}", flush=True))
    drop_checkpoints(out)
    return [(unit.dirnames[0], final_metrics(result))]


def _guarded(unit: Unit, run: Settings, gpus: list[str]) -> tuple:
    """run_unit's outcome as a message: ("done", rows) | ("stopped",) | ("error", text, retry)."""
    try:
        return ("done", run_unit(unit, run, gpus))
    except TimeLimit:
        return ("stopped",)
    except InputError as e:  # the same input fails the same way again: no retry
        return ("error", str(e), False)
    except Exception:
        return ("error", traceback.format_exc(), True)


def _worker(conn, gpus: list[str], threads: int, run: Settings) -> None:
    """A worker process: its GPU(s) and threads first (before torch starts), then unit after unit."""
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch
    torch.set_num_threads(threads)
    while True:
        unit = conn.recv()
        if unit is None:
            return
        conn.send(_guarded(unit, run, gpus))


# ---------------------------------------------------------------- the driver

def slot_gpus(plan: Plan) -> list[list[str]] | None:
    """The GPUs of each worker slot this machine has: with resources.gpu = g < 1, floor(1/g) slots
    per GPU, each seeing that GPU; with g >= 1, g GPUs per slot. Ids as CUDA_VISIBLE_DEVICES names
    them (else 0..n-1). None when trials get no GPU."""
    gpu = plan.sweep.resources["gpu"]
    if not gpu:
        return None
    import torch

    from .train import visible_gpus
    ids = visible_gpus() or [str(i) for i in range(torch.cuda.device_count())]
    if gpu < 1:  # as Ray packs fractions: a trial never spans two GPUs
        return [[g] for g in ids for _ in range(int(1 // gpu))]
    return [ids[i:i + int(gpu)] for i in range(0, len(ids) - int(gpu) + 1, int(gpu))]


def require_cuda(plan: Plan) -> None:
    """A plan that gives trials GPUs fails here, before any trial, where torch sees none."""
    gpu = plan.sweep.resources["gpu"]
    if gpu:
        import torch

        from .train import no_cuda_reason
        if not torch.cuda.is_available():
            raise InputError("resources.gpu", f"gives each trial {gpu} GPU, but {no_cuda_reason()}",
                             "resources.gpu: 0 (e.g. --set resources.gpu=0) on a machine without a GPU", gpu)


def execute(plan: Plan, resume: bool = False, time_limit: float | None = None,
            on_result: Callable[[str, dict], None] | None = None, workers: int | None = None) -> Outcome:
    """Run every incomplete grid point of the plan; `on_result(folder, final metrics)` as each ends."""
    require_cuda(plan)
    start = time.time()
    deadline = start + time_limit if time_limit else None
    configs = dict(zip(plan.dirnames, plan.points))  # complete means complete for this config
    units, skipped = work_units(plan, lambda d: is_done(ArtifactDir.at(join_uri(plan.uri, d)), configs[d]))
    outcome = Outcome(skipped=skipped)
    gpu_sets = slot_gpus(plan)
    slots = min(workers or local_slots(plan.sweep), len(units), *([len(gpu_sets)] if gpu_sets else []))
    slots = outcome.workers = max(1, slots)
    max_failures = plan.sweep.run["max_failures"]
    run = Settings(plan.uri, plan.sweep.run["checkpoint_every"], resume, deadline)
    total = len(plan.points)
    print(f"local executor: {len(units)} unit(s) to run ({len(skipped)} of {total} trials already complete), "
          f"{slots} at a time{' in this process' if slots == 1 else ' in worker processes'}", flush=True)

    def handle(unit: Unit, message: tuple, queue: deque) -> None:
        if message[0] == "done":
            for folder, metrics in message[1]:
                outcome.completed.append(folder)
                if on_result is not None:
                    on_result(folder, metrics)
                acc = metrics["test_accuracy"]
                share = metrics["gaussian_share"]
                print(f"[{len(outcome.completed) + len(skipped)}/{total}] {folder}: {metrics['status']}"
                      + (f", test accuracy {acc:.4f}" if acc is not None else "")
                      + (f", gaussian noise -> {metrics['gaussian_top']} ({share:.0%})" if share is not None else "")
                      + f"; {time.time() - start:.0f} s", flush=True)
        elif message[0] == "stopped":
            outcome.stopped += unit.dirnames
        else:
            _, text, retry = message
            unit.attempts += 1
            last = text.strip().splitlines()[-1][:300] if text.strip() else "no message"
            if retry and (max_failures < 0 or unit.attempts <= max_failures):
                print(f"{unit.label}: failed ({last}); retry {unit.attempts} of "
                      f"{'unlimited' if max_failures < 0 else max_failures}\n{text}", flush=True)
                queue.append(unit)
            else:
                print(f"{unit.label}: FAILED: {text}", flush=True)
                outcome.failed[unit.label] = last

    queue = deque(units)
    gpus = gpu_sets[:slots] if gpu_sets else [[] for _ in range(slots)]
    if slots == 1:
        while queue:
            if deadline is not None and time.time() > deadline:
                outcome.stopped += [d for u in queue for d in u.dirnames]
                break
            unit = queue.popleft()
            handle(unit, _guarded(unit, run, gpus[0]), queue)
        return outcome
    _run_workers(plan, gpus, run, queue, handle, outcome)
    return outcome


def _run_workers(plan: Plan, gpus: list[list[str]], run: Settings, queue: deque, handle, outcome: Outcome) -> None:
    """One worker process per slot (`gpus[i]`: what slot i sees), each sent one unit at a time."""
    ctx = mp.get_context("spawn")   # a fresh interpreter: no CUDA state or threads inherited
    threads = max(1, int(plan.sweep.resources["cpu"]))
    slots, deadline = len(gpus), run.deadline
    workers: list = [None] * slots
    busy: dict[int, Unit] = {}

    def start_worker(i: int) -> None:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, gpus[i], threads, run), daemon=True)
        proc.start()
        child.close()
        workers[i] = (proc, parent)

    try:
        for i in range(slots):
            start_worker(i)
        while queue or busy:
            for i in range(slots):
                if i not in busy and queue:
                    if not workers[i][0].is_alive():  # died while idle
                        start_worker(i)
                    busy[i] = queue.popleft()
                    workers[i][1].send(busy[i])
            if deadline is not None and time.time() > deadline + GRACE_SECONDS:
                for i, unit in busy.items():
                    workers[i][0].kill()
                    outcome.stopped += unit.dirnames
                outcome.stopped += [d for u in queue for d in u.dirnames]
                print(f"time limit: stopped {len(busy)} running unit(s) that were still probing", flush=True)
                busy.clear()
                queue.clear()
                break
            ready = wait([workers[i][1] for i in busy] + [workers[i][0].sentinel for i in busy], timeout=5)
            for i in list(busy):
                proc, conn = workers[i]
                if conn in ready or conn.poll():
                    try:
                        message = conn.recv()
                    except EOFError:   # died while sending
                        message = None
                    if message is not None:
                        handle(busy.pop(i), message, queue)
                        continue
                if not proc.is_alive():  # killed (out of memory, a signal) or crashed in C code
                    unit = busy.pop(i)
                    handle(unit, ("error", f"worker process died (exit code {proc.exitcode}) while running "
                                           f"{unit.label}", True), queue)
                    start_worker(i)
            if deadline is not None and time.time() > deadline:
                outcome.stopped += [d for u in queue for d in u.dirnames]
                queue.clear()  # no new units; running ones stop at their next epoch
    finally:
        for proc, conn in (w for w in workers if w is not None):
            try:
                if proc.is_alive():
                    conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc, _ in (w for w in workers if w is not None):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def run(plan: Plan, resume: bool = False, report: bool = True, time_limit: float | None = None) -> int:
    """`study sweep --executor local`: study.json, the trials, the summary line, the report."""
    start = time.perf_counter()
    start_study(plan, resume)
    outcome = execute(plan, resume=resume, time_limit=time_limit)
    print(f"sweep {plan.name}: {len(outcome.completed)} trials ended now, {len(outcome.skipped)} were complete, "
          f"{len(outcome.failed)} failed, {len(outcome.stopped)} stopped at the time limit "
          f"(of {len(plan.points)}); {time.perf_counter() - start:.0f} s", flush=True)
    for label, last in outcome.failed.items():
        print(f"  failed: {label}: {last}")
    if outcome.stopped:
        print(f"  not finished: {len(outcome.stopped)} trials; run again with --resume to finish them")
    code = 0 if not (outcome.failed or outcome.stopped) else 1
    if report and (outcome.completed or outcome.skipped):
        code = max(code, aggregate_study(plan))
    sys.stdout.flush()
    return code
