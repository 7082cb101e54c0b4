"""Every GPU measurement of noisesink, prepared to run in one call on a bare, offline GPU machine.

    python3 benchmarks/gpu_check.py check --kit .device --out $OUT    # the device check: <= 480 s
    python3 benchmarks/gpu_check.py study --kit .device --out $OUT    # the GPU study: <= 540 s
    python benchmarks/gpu_check.py all --dry-run --kit KIT --out DIR   # both, CPU, tiny sizes (CI)

The kit (benchmarks/gpu_kit.py) carries CIFAR-10 and the wheels the machine lacks; the exact
device command is in docs/performance.md. Each part is a list of stages, each run as its own
process with its own time limit inside the part's budget:

  check: env (versions, the data rebuilt from the kit and decoded), smoke (one CUDA trial and a
         fused pair: device, bf16 training, fp32 probes), throughput (DataLoader fp32 baseline vs
         the trainer vs packed and fused k = 2, 4, 8), recipe (the ResNet-18 recipe over 4 seeds
         through the local executor, 4 processes on the GPU: test accuracy, each seed's
         Gaussian-noise absorber, seconds per training amortized, FLOPs, MFU);
  study: env, study (sweeps/gpu_one_call.yaml through the local executor, with a time limit),
         report (the aggregation), archive (the trial folders without checkpoints, one .tar.gz
         under $OUT, split into parts of < 16 MiB; the report folder alone if even that is too
         many files).

What comes back, at most 8 files: rows.jsonl (one JSON row per training, per benchmark setup,
per stage, appended and flushed as each finishes, so a killed run still returns its numbers),
log.txt (every stage's output under a header), summary.md (the tables so far, rewritten after
every stage) and the archive. A stage that fails or overruns stops the part (its log is in
log.txt), except the report, whose failure still leaves the trials to archive.

--dry-run runs the same stages on the CPU at tiny sizes (small_cnn, a few images), so CI keeps the
script from rotting; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from analysis.contract import COMPLETED, TRIAL_JSON  # noqa: E402  (the contract's names, not spelled here)

PEAK_FLOPS = 790e12           # the H200's dense bf16 FLOP/s, the peak the recipe's MFU is quoted against
SWEEP = ROOT / "sweeps" / "gpu_one_call.yaml"
ROWS, LOG, SUMMARY = "rows.jsonl", "log.txt", "summary.md"
ARCHIVE = SWEEP.stem + ".tar.gz"   # the study (named as its file), to aggregate here (docs/performance.md)
FILE_LIMIT = 16 * 2**20       # what one returned file may hold
PART_BYTES = 15 * 2**20
MAX_FILES = 8                 # files the device tool brings back
RECIPE_SEEDS = 4
BUDGET = {"check": 480, "study": 540}
# (stage, seconds it may take, required: a failure stops the part)
STAGES = {   # the recipe last: it takes what the others left (a slow GPU still yields the table)
    "check": [("env", 60, True), ("smoke", 60, True), ("throughput", 150, False), ("recipe", 240, True)],
    "study": [("env", 60, True), ("study", 440, True), ("report", 45, False), ("archive", 25, True)],
}
STUDY_STARTUP = 20            # study stage: seconds before its executor starts (imports, plan, data)
# Tiny sizes for the CPU dry run: every stage's code path at a cost of seconds.
DRY_TRIAL = {"model": "small_cnn", "train_subset": 50, "test_subset": 20, "epochs": 1, "batch_size": 25, "lr": 0.05,
             "n_noise": 10, "n_trajectory": 10, "sample_per_class": 5, "n_frequency": 10,
             "data_verify": "shapes", "device": "cpu", "eval_batch_size": 256}
DRY_SLOWDOWN = 4              # dry run: stage limits x this (a shared 2-core CI machine, not a GPU)
SMOKE_TRIAL = {"model": "resnet18", "epochs": 1, "train_subset": 2048, "test_subset": 1000, "n_noise": 200,
               "n_trajectory": 100, "sample_per_class": 50, "n_frequency": 100, "device": "cuda"}


# ---------------------------------------------------------------- rows and summary

class Out:
    def __init__(self, folder: Path, stage: str = ""):
        self.folder, self.stage = folder, stage
        folder.mkdir(parents=True, exist_ok=True)

    def row(self, kind: str, **fields) -> dict:
        """Append one row to rows.jsonl now (flushed to disk: a kill keeps it)."""
        row = {"stage": self.stage, "kind": kind, "time": time.strftime("%H:%M:%S"), **fields}
        with open(self.folder / ROWS, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print("row:", json.dumps(row, default=str), flush=True)
        return row

    def rows(self) -> list[dict]:
        path = self.folder / ROWS
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def fmt(v, spec: str = ".4g") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def write_summary(out: Out) -> None:
    """summary.md: one table per kind of row, in the order the rows came."""
    rows = out.rows()
    lines = ["# GPU check: what this run measured", "",
             "Every row of rows.jsonl, by kind. Times in seconds; accuracy on the trained classes' test set.", ""]
    kinds: dict[str, list[dict]] = {}
    for r in rows:
        kinds.setdefault(f"{r['stage']} / {r['kind']}", []).append(r)
    for title, group in kinds.items():
        keys = [k for k in group[0] if k not in ("stage", "kind")]
        for r in group[1:]:
            keys += [k for k in r if k not in keys and k not in ("stage", "kind")]
        lines += [f"## {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in group]
        lines.append("")
    (out.folder / SUMMARY).write_text("\n".join(lines))


# ---------------------------------------------------------------- stages

def scratch_paths(args) -> dict[str, Path]:
    return {"data": args.scratch / "cifar10.tar", "studies": args.scratch / "studies"}


def trial_overrides(args) -> dict:
    return dict(DRY_TRIAL) if args.dry_run else {}


def sweep_sets(args, **extra) -> list[str]:
    """--set overrides of sweeps/gpu_one_call.yaml: the dry run's tiny sizes on the CPU, and `extra`."""
    sets = {f"trial.{k}": v for k, v in trial_overrides(args).items()}
    if args.dry_run:
        sets.update({"resources.gpu": 0, "resources.cpu": 1, "grid.seed": [0, 1]})
    sets.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in sets.items()]


def stage_env(args, out: Out) -> None:
    """Versions, the GPU, pytorch-ood present, CIFAR-10 rebuilt from the kit and decoded."""
    import torch

    from device_data import unpack
    from gpu_kit import DATA_FILE
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"not run ({type(e).__name__})"
    import pytorch_ood  # the trials' OOD metrics: the kit's wheel must have installed
    info["pytorch_ood"] = getattr(pytorch_ood, "__version__", "present")
    if not args.dry_run and not torch.cuda.is_available():
        from study.train import no_cuda_reason
        raise SystemExit(f"no GPU: {no_cuda_reason()}")
    out.row("versions", **info)

    data = scratch_paths(args)["data"]
    t = time.perf_counter()
    data.parent.mkdir(parents=True, exist_ok=True)
    unpack(str(args.kit / DATA_FILE), str(data))
    unpacked = time.perf_counter() - t
    from study.data import load_cifar10
    t = time.perf_counter()
    d = load_cifar10(str(data), "shapes" if args.dry_run else "full")
    out.row("data", unpack_seconds=round(unpacked, 1), decode_seconds=round(time.perf_counter() - t, 1),
            train=len(d.train_x), test=len(d.test_x), sha256=d.checksum[:16])


def training_row(out: Out, folder: str, result: dict, **extra) -> dict:
    g = (result.get("absorber") or {}).get("gaussian") or {}
    dec = result.get("logit_decomposition") or {}
    timing = result.get("timing") or {}
    compute = result.get("compute") or {}
    return out.row("training", trial=folder, seed=result["seed"], classes=len(result["classes"]),
                   status=result["status"], test_accuracy=result.get("test_accuracy"),
                   gaussian_absorber=g.get("absorber"), gaussian_share=g.get("top_share"),
                   train_seconds=timing.get("train_seconds"), probe_seconds=timing.get("probe_seconds"),
                   total_seconds=timing.get("total_seconds"), device=compute.get("device"),
                   training_precision=compute.get("training_precision"),
                   probe_precision=compute.get("probe_precision"),
                   max_reconstruction_error=max((d["reconstruction_error"] for d in dec.values()), default=None),
                   **extra)


def check_training(row: dict, dry_run: bool) -> None:
    """What every GPU training must show: CUDA, bf16 training, fp32 probes that reconstruct."""
    problems = []
    if row["status"] != COMPLETED:
        problems.append(f"status {row['status']}")
    if not dry_run and not str(row["device"]).startswith("cuda"):
        problems.append(f"ran on {row['device']}, not CUDA")
    if not dry_run and row["training_precision"] != "bf16":
        problems.append(f"trained in {row['training_precision']}, not bf16")
    if row["probe_precision"] != "fp32" or not (row["max_reconstruction_error"] or 0) < 1e-4:
        problems.append(f"probes {row['probe_precision']}, reconstruction error {row['max_reconstruction_error']}")
    if problems:
        raise SystemExit(f"{row['trial']}: " + "; ".join(problems))


def stage_smoke(args, out: Out) -> None:
    """One short CUDA trial and a fused pair: catches a broken CUDA path in seconds."""
    from study.fused import run_fused_trials
    from study.trial import run_trial
    cfg = {**SMOKE_TRIAL, "data_root": str(scratch_paths(args)["data"]), **trial_overrides(args)}
    folder = args.scratch / "smoke"
    t = time.perf_counter()
    result = run_trial(cfg, str(folder / "single"), log=lambda m: print(m, flush=True))
    check_training(training_row(out, "single", result, wall_seconds=time.perf_counter() - t), args.dry_run)
    t = time.perf_counter()
    results = run_fused_trials([{**cfg, "seed": s} for s in (0, 1)], [str(folder / f"fused{s}") for s in (0, 1)],
                               log=lambda m: print(m, flush=True))
    for s, r in zip((0, 1), results):
        check_training(training_row(out, f"fused{s}", r, wall_seconds=time.perf_counter() - t), args.dry_run)


def run_plan(args, out: Out, plan, time_limit: float | None) -> dict:
    """The plan through the local executor; a training row as each trial ends."""
    from study import local
    from study.plan import start_study
    start_study(plan, resume=False)
    rows = {}

    def on_result(folder: str, metrics: dict) -> None:
        result = json.loads((Path(plan.uri) / folder / TRIAL_JSON).read_text())
        rows[folder] = training_row(out, folder, result)
    t = time.perf_counter()
    outcome = local.execute(plan, time_limit=time_limit, on_result=on_result)
    wall = time.perf_counter() - t
    out.row("executor", trials=len(plan.points), completed=len(outcome.completed), skipped=len(outcome.skipped),
            failed=len(outcome.failed), stopped=len(outcome.stopped), at_once=outcome.workers,
            wall_seconds=round(wall, 1))
    return {"rows": rows, "wall": wall, "outcome": outcome}


def stage_recipe(args, out: Out) -> None:
    """The sweeps' ResNet-18 recipe over RECIPE_SEEDS seeds, as the study runs it (the local
    executor, gpu_one_call.yaml's resources): accuracy, absorbers, seconds, FLOPs, MFU."""
    from study.plan import prepare
    from study.speed import training_flops
    seeds = list(range(2 if args.dry_run else RECIPE_SEEDS))
    plan = prepare(str(SWEEP), sweep_sets(args, **{"grid.seed": seeds, "grid.classes": ["all"]}),
                   storage=str(scratch_paths(args)["studies"]), name="gpu-recipe")
    ran = run_plan(args, out, plan, time_limit=None)
    for row in ran["rows"].values():
        check_training(row, args.dry_run)
    if len(ran["rows"]) < len(seeds):
        raise SystemExit(f"only {len(ran['rows'])} of {len(seeds)} recipe trainings completed")
    accs = [r["test_accuracy"] for r in ran["rows"].values()]
    cfg = plan.points[0]
    n_train = json.loads((Path(plan.uri) / plan.dirnames[0] / TRIAL_JSON).read_text())["n_train"]
    flops = training_flops(cfg, n_train)
    per_training = ran["wall"] / len(accs)   # executor start-up included, over only 4 trainings
    out.row("recipe", seeds=len(accs), epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"],
            test_accuracy_mean=statistics.mean(accs), test_accuracy_sd=statistics.stdev(accs),
            absorbers=[r["gaussian_absorber"] for r in ran["rows"].values()],
            at_once=ran["outcome"].workers, wall_seconds=round(ran["wall"], 1),
            seconds_per_training_amortized=per_training,
            trial_seconds_mean=statistics.mean(r["total_seconds"] for r in ran["rows"].values()),
            trainings_per_hour=3600 / per_training, train_flops=flops, mfu_amortized=flops / per_training / PEAK_FLOPS)


def stage_throughput(args, out: Out) -> None:
    """study.bench's table, a row per setup as it is measured."""
    from study import bench, speed
    p = {**speed.sizes("cpu" if args.dry_run else "gpu"), "data_root": str(scratch_paths(args)["data"])}
    if args.dry_run:
        p.update({"batch_size": 20, "steps": 2, "ks": [2], "workers": 1, "n_noise": DRY_TRIAL["n_noise"],
                  "data_verify": "shapes",
                  "trial": {k: DRY_TRIAL[k] for k in ("test_subset", "n_trajectory", "sample_per_class",
                                                      "n_frequency")}})
    per_image = speed.flops_per_image(p["model"], 10, train=True)   # the MFU of each setup's training rate
    rows, probe_s = bench.throughput(p, on_row=lambda r: out.row("setup", **r, mfu=r["images_per_s"] * per_image
                                                                 / PEAK_FLOPS))
    out.row("probes", seconds=probe_s, n_noise=p["n_noise"])
    print(bench.print_table(rows, p, probe_s, "dry run" if args.dry_run else "GPU"))


def stage_study(args, out: Out) -> None:
    """sweeps/gpu_one_call.yaml through the local executor, stopped at args.time_limit."""
    from study.plan import prepare
    plan = prepare(str(SWEEP), sweep_sets(args), storage=str(scratch_paths(args)["studies"]))
    if args.previous:   # an earlier call's archive (its parts in order): its trials are not recomputed
        joined = args.scratch / ARCHIVE
        joined.write_bytes(b"".join(p.read_bytes() for p in args.previous))
        with tarfile.open(joined) as tf:
            tf.extractall(scratch_paths(args)["studies"], filter="data")
    ran = run_plan(args, out, plan, time_limit=args.time_limit)
    if not ran["rows"] and not ran["outcome"].skipped:
        raise SystemExit("no trial of the study completed")


def study_dir(args) -> Path:
    from study.config import load_sweep
    return scratch_paths(args)["studies"] / load_sweep(str(SWEEP)).name


def stage_report(args, out: Out) -> None:
    from analysis.pipeline import aggregate
    t = time.perf_counter()
    print(aggregate(str(study_dir(args))))
    out.row("report", seconds=round(time.perf_counter() - t, 1))


def stage_archive(args, out: Out) -> None:
    """The study folder as one .tar.gz (trial.json, arrays.npz, study.json, report; no checkpoints),
    split into parts that fit; if the parts would be too many files, the report folder alone."""
    study = study_dir(args)
    target = args.out / ARCHIVE

    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        return None if any(p.startswith(("checkpoint_", ".")) for p in parts) else info

    def pack(folder: Path, name: str) -> int:
        with tarfile.open(target, "w:gz") as tf:
            tf.add(folder, arcname=name, filter=keep)
        return target.stat().st_size

    size = pack(study, study.name)
    files_left = MAX_FILES - len([p for p in args.out.iterdir() if p != target]) - 1
    if size > PART_BYTES * files_left and (study / "report").exists():
        size = pack(study / "report", f"{study.name}/report")
        out.row("archive", content="report folder only (the trial folders did not fit)", bytes=size)
    else:
        out.row("archive", content="trial folders and report", bytes=size,
                trials=len(list(study.glob(f"*/{TRIAL_JSON}"))))
    if size > FILE_LIMIT:
        data = target.read_bytes()
        target.unlink()
        for i in range(math.ceil(len(data) / PART_BYTES)):
            (args.out / f"{ARCHIVE}.part{i:02d}").write_bytes(data[i * PART_BYTES:(i + 1) * PART_BYTES])
        out.row("archive_parts", parts=math.ceil(len(data) / PART_BYTES), note=f"cat {ARCHIVE}.part* > {ARCHIVE}")


STAGE_FUNCTIONS = {"env": stage_env, "smoke": stage_smoke, "recipe": stage_recipe, "throughput": stage_throughput,
                   "study": stage_study, "report": stage_report, "archive": stage_archive}


# ---------------------------------------------------------------- the driver

def run_stage(args, name: str, timeout: float, extra: list[str]) -> tuple[str, float]:
    """One stage in its own process (own session: a timeout kills all it started), its output
    appended to log.txt."""
    cmd = [sys.executable, __file__, "stage", name, "--kit", str(args.kit), "--out", str(args.out),
           "--scratch", str(args.scratch), *(["--dry-run"] if args.dry_run else []), *extra]
    start = time.perf_counter()
    with open(args.out / LOG, "a") as log:
        log.write(f"\n===== stage {name} ({time.strftime('%H:%M:%S')}, limit {timeout:.0f} s): {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            status = "ok" if proc.wait(timeout=timeout) == 0 else f"failed (exit code {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {timeout:.0f} s"
        log.write(f"===== stage {name}: {status}, {time.perf_counter() - start:.1f} s\n")
    return status, time.perf_counter() - start


def drive(args, parts: list[str]) -> int:
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["NOISESINK_DATA"] = str(scratch_paths(args)["data"])
    os.environ["PYTHONUNBUFFERED"] = "1"
    out = Out(args.out, "driver")
    stages = [s for p in parts for s in STAGES[p]]
    stages = [s for i, s in enumerate(stages) if s[0] not in [t[0] for t in stages[:i]]]  # env once
    budget = sum(BUDGET[p] for p in parts) * (DRY_SLOWDOWN if args.dry_run else 1)
    for name, limit, required in stages:
        limit *= DRY_SLOWDOWN if args.dry_run else 1
        left = budget - (time.perf_counter() - start)
        if left < 5:
            out.row("stage", name=name, status="not started: the part's time budget is spent")
            break
        extra = []
        if name == "study":
            # the executor starts no trial after its time limit and stops the running ones within
            # its grace: both inside the stage's limit
            from study.local import GRACE_SECONDS
            extra = ["--time-limit", str(max(10, min(limit, left) - STUDY_STARTUP - GRACE_SECONDS))]
            extra += [x for p in args.previous or [] for x in ("--previous", str(p))]
        print(f"== {name} (limit {min(limit, left):.0f} s)", flush=True)
        status, seconds = run_stage(args, name, min(limit, left), extra)
        out.row("stage", name=name, status=status, seconds=round(seconds, 1))
        write_summary(out)
        if status != "ok":
            tail = (args.out / LOG).read_text().splitlines()[-40:]
            print("\n".join(tail), flush=True)
            if required:
                print(f"stage {name} {status}: stopped (log in {args.out / LOG})", flush=True)
                return 1
    print(f"done in {time.perf_counter() - start:.0f} s; rows in {args.out / ROWS}, tables in {args.out / SUMMARY}")
    print((args.out / SUMMARY).read_text())
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["check", "study", "all", "stage"])
    ap.add_argument("name", nargs="?", help="(stage only) the stage to run")
    ap.add_argument("--kit", type=Path, default=ROOT / ".device", help="the carried kit (gpu_kit.py build)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "out")),
                    help="where rows, logs, summary and archive go (default: $OUT)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/noisesink-gpu"),
                    help="data, trial folders (not returned)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, measures nothing")
    ap.add_argument("--previous", type=Path, action="append",
                    help="study: an earlier call's archive (or its parts, in order): its trials are kept")
    ap.add_argument("--time-limit", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.kit, args.out, args.scratch = args.kit.resolve(), args.out.resolve(), args.scratch.resolve()
    if args.part == "stage":
        out = Out(args.out, args.name)
        STAGE_FUNCTIONS[args.name](args, out)
        return 0
    return drive(args, ["check", "study"] if args.part == "all" else [args.part])


if __name__ == "__main__":
    raise SystemExit(main())
