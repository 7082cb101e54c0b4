"""Training throughput, side by side in one run, and the accuracy check of the fast recipe.

    python -m study.bench throughput [--out FILE.json] [--steps N] [--ks 2,4,8] [--size gpu|cpu]
    python -m study.bench accuracy --seeds 4 [--epochs 18] [--lr 0.2] [--mode fused|packed|separate]
    python -m study.bench probes [--sweep sweeps/smoke.yaml] [--out FILE.json]
    python -m study.bench recipe [ROWS_OR_CONFIG ...] [--csv FILE] [--again]   (study/recipe.py)

throughput measures, on whatever device is present:
  (a) baseline: the recipe most users write - torchvision DataLoader, PIL transforms in worker
      processes, fp32, one ResNet-18;
  (b) this project's trainer (data on the device, batched augmentation, bf16, channels_last,
      fused SGD, no host sync in the step loop);
  (c) packed: k trainer processes sharing the device; fused: k seeds as one array model;
and prints images/s, s/epoch, trainings per device-hour at the recipe (probes included) and each
ratio against (a). On a CPU it runs a reduced size (small_cnn, few batches) so CI can run it.

probes measures what the probe-time experiments (study/explanation_probes.py) cost: the sweep's
first grid point as one trial without them (amplitudes [], n_bn 0, noise without the literature
families ODIN and Outlier Exposure use) and with them, in one process one after the other; the
difference of the probe phases against the trial's wall time.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from analysis.contract import COMPLETED

from .speed import baseline, rate, sizes, sync

RECIPE_IMAGES = 50_000  # a training epoch of the recipe: all of CIFAR-10's training set


def trial_config(p: dict, seed: int = 0, n_images: int | None = None) -> dict:
    """A trial config of the benchmark's size; p["trial"] may override keys (smaller probes)."""
    return {"model": p["model"], "batch_size": p["batch_size"], "epochs": 2, "seed": seed,
            "train_subset": n_images, "device": p["device"], "data_verify": p.get("data_verify", "full"),
            "data_root": p.get("data_root"), "n_noise": p["n_noise"], "lr": 0.2, **p.get("trial", {})}


# ---------------------------------------------------------------- (b), (c) this project

def _trainer(p: dict, seed: int):
    from .train import Trainer
    from .trial import new_model, setup
    s = setup(trial_config(p, seed, n_images=p["steps"] * p["batch_size"]))
    model = new_model(s)
    return Trainer(model, s.task.train_x, s.task.train_y, s.cfg, s.device, s.normalize, s.precision)


def project(p: dict) -> dict:
    trainer = _trainer(p, 0)
    trainer.run_epoch()  # warm-up: cuDNN autotuning, allocator
    sync(trainer.device)
    start = time.perf_counter()
    trainer.run_epoch()
    sync(trainer.device)
    return rate("b_project_trainer", p["steps"] * p["batch_size"], time.perf_counter() - start, 1)


def _packed_worker(p: dict, seed: int, barrier, queue) -> None:
    if p["device"] == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // p["k"]))
    trainer = _trainer(p, seed)
    trainer.run_epoch()
    sync(trainer.device)
    barrier.wait()
    start = time.time()
    trainer.run_epoch()
    sync(trainer.device)
    queue.put((start, time.time()))


def run_processes(ctx, target, arg_list: list[tuple], queue) -> list:
    """Start one process per argument tuple and collect one result from each; a process that
    dies without a result stops the benchmark with its exit code (instead of waiting forever)."""
    procs = [ctx.Process(target=target, args=(*args, queue)) for args in arg_list]
    for proc in procs:
        proc.start()
    results = []
    while len(results) < len(procs):
        try:
            results.append(queue.get(timeout=5))
        except Exception:  # queue.Empty: is everybody still alive?
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"{len(dead)} benchmark process(es) failed "
                                   f"(exit code {dead[0].exitcode})") from None
    for proc in procs:
        proc.join()
    return results


def packed(p: dict, k: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(k)
    spans = run_processes(ctx, _packed_worker, [({**p, "k": k}, seed, barrier) for seed in range(k)], ctx.Queue())
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return rate(f"c_packed_k{k}", k * p["steps"] * p["batch_size"], wall, k)


def fused(p: dict, k: int) -> dict:
    from .fused import FusedTrainer
    from .trial import new_model, setup
    setups = [setup(trial_config(p, seed, n_images=p["steps"] * p["batch_size"])) for seed in range(k)]
    trainer = FusedTrainer(setups, [new_model(s) for s in setups])
    trainer.run_epoch()
    sync(trainer.device)
    start = time.perf_counter()
    trainer.run_epoch()
    sync(trainer.device)
    return rate(f"c_fused_k{k}", k * p["steps"] * p["batch_size"], time.perf_counter() - start, k)


def probe_seconds(p: dict) -> float:
    """One model's probes at the recipe's sizes (10 noise families x 5000 images, the test set,
    the held-out classes): the cost every training pays after its last epoch."""
    from .trial import TrainedData, Training, finish, new_model, setup
    s = setup({**trial_config(p, 0, n_images=p["batch_size"]), "epochs": 1})
    model = new_model(s)
    untrained = Training(COMPLETED, [], [], 1, 0.0, TrainedData.untouched(s.task), [])
    with tempfile.TemporaryDirectory() as d:
        finish(s, model, untrained, d)  # warm-up
        sync(s.device)
        start = time.perf_counter()
        finish(s, model, untrained, d)
        sync(s.device)
    return time.perf_counter() - start


def throughput(p: dict, on_row=None) -> tuple[list[dict], float]:
    """Every setup, one after the other; `on_row(row)` gets each finished row at once (so that a
    run killed half-way still leaves the rows it measured)."""
    probe_s = probe_seconds(p)  # first: every row's s/training includes it
    setups = [lambda: baseline(p), lambda: project(p)]
    for k in p["ks"]:
        setups += [lambda k=k: packed(p, k), lambda k=k: fused(p, k)]
    rows = []
    for measure in setups:
        r = measure()
        r["s_per_epoch"] = RECIPE_IMAGES / r["images_per_s"] * r["models"]  # per model, wall
        per_training = p["epochs"] * RECIPE_IMAGES / r["images_per_s"] + probe_s
        r["seconds_per_training"] = per_training
        r["trainings_per_hour"] = 3600 / per_training
        r["speedup_vs_a"] = r["images_per_s"] / rows[0]["images_per_s"] if rows else 1.0
        rows.append(r)
        if on_row is not None:
            on_row(r)
    return rows, probe_s


def print_table(rows: list[dict], p: dict, probe_s: float, device: str) -> str:
    lines = [f"device: {device}; model {p['model']}, batch {p['batch_size']}, {p['steps']} timed steps per "
             f"model; recipe: {p['epochs']} epochs x {RECIPE_IMAGES} images + probes ({probe_s:.1f} s, "
             f"{p['n_noise']} images per noise family)",
             f"{'setup':<28}{'images/s':>12}{'s/epoch':>10}{'s/training':>12}{'trainings/h':>13}{'x (a)':>8}"]
    for r in rows:
        lines.append(f"{r['name']:<28}{r['images_per_s']:>12.0f}{r['s_per_epoch']:>10.2f}"
                     f"{r['seconds_per_training']:>12.1f}{r['trainings_per_hour']:>13.1f}{r['speedup_vs_a']:>8.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the accuracy check

def _accuracy_worker(cfg: dict, out: str, queue) -> None:
    from .trial import run_trial
    result = run_trial(cfg, out, log=lambda m: None)
    queue.put((cfg["seed"], result["test_accuracy"], result["timing"]))


def accuracy(args) -> dict:
    from .fused import run_fused_trials
    from .trial import run_trial
    cfg = {"model": args.model, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
           "device": "auto", "noise": "all", "n_noise": args.n_noise, "data_root": args.data_root,
           "train_subset": args.train_subset, "n_trajectory": min(500, args.n_noise)}
    seeds = list(range(args.seeds))
    out = Path(args.results or tempfile.mkdtemp())
    start = time.perf_counter()
    if args.mode == "fused":
        results = run_fused_trials([{**cfg, "seed": s} for s in seeds], [str(out / f"seed={s}") for s in seeds])
        accs = [r["test_accuracy"] for r in results]
    elif args.mode == "packed":
        ctx = mp.get_context("spawn")
        got = sorted(run_processes(ctx, _accuracy_worker, [({**cfg, "seed": s}, str(out / f"seed={s}")) for s in seeds],
                                   ctx.Queue()))
        accs = [a for _, a, _ in got]
    else:
        accs = [run_trial({**cfg, "seed": s}, str(out / f"seed={s}"), log=lambda m: None)["test_accuracy"]
                for s in seeds]
    wall = time.perf_counter() - start
    summary = {"mode": args.mode, "seeds": seeds, "epochs": args.epochs, "lr": args.lr,
               "test_accuracy": accs, "mean": statistics.mean(accs),
               "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
               "wall_seconds": wall, "seconds_per_training": wall / len(seeds),
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    print(f"accuracy ({args.mode}, {args.epochs} epochs, lr {args.lr}): "
          f"{summary['mean']:.4f} +- {summary['sd']:.4f} over {len(seeds)} seeds {[f'{a:.4f}' for a in accs]}; "
          f"{wall:.1f} s wall, {summary['seconds_per_training']:.1f} s per training (probes included)")
    return summary


NEW_FAMILIES = ("odin_gaussian", "oe_gaussian", "oe_blobs")   # the literature families the probes added


def probe_cost(sweep_path: str, out: str | None = None) -> dict:
    """The sweep's first grid point trained and probed twice (without, then with the new probes);
    returns and prints the timings and the new probes' share of the trial's wall time."""
    from .config import load_sweep
    from .noise import noise_families
    from .trial import run_trial
    cfg = load_sweep(sweep_path).points()[0]
    families = noise_families(cfg)
    without = {**cfg, "amplitudes": [], "n_bn": 0, "noise": [f for f in families if f not in NEW_FAMILIES]}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, c in (("without", without), ("with", cfg)):
            t = run_trial(c, f"{tmp}/{name}", log=lambda m: None)["timing"]
            rows[name] = {k: t.get(k, 0.0) for k in ("total_seconds", "train_seconds", "probe_seconds",
                                                     "hypothesis_probe_seconds")}
    added = rows["with"]["probe_seconds"] - rows["without"]["probe_seconds"]
    summary = {"sweep": sweep_path,
               "config": {k: cfg[k] for k in ("model", "classes", "epochs", "train_subset", "n_noise", "n_trajectory",
                                              "n_amplitude", "n_bn", "amplitudes")},
               "rows": rows, "added_seconds": added, "share_of_trial": added / rows["with"]["total_seconds"],
               "torch": torch.__version__, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"{'run':<10}{'total s':>9}{'train s':>9}{'probe s':>9}{'expl. probes s':>16}")
    for name, r in rows.items():
        print(f"{name:<10}{r['total_seconds']:>9.1f}{r['train_seconds']:>9.1f}{r['probe_seconds']:>9.1f}"
              f"{r['hypothesis_probe_seconds']:>16.1f}")
    print(f"added by the explanation probes (literature families, amplitude, BatchNorm): {added:.1f} s = "
          f"{100 * summary['share_of_trial']:.1f}% of the trial's {rows['with']['total_seconds']:.1f} s wall time")
    if out:
        Path(out).write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--size", choices=["auto", "gpu", "cpu"], default="auto")
    t.add_argument("--steps", type=int)
    t.add_argument("--ks", help="comma-separated packing factors, e.g. 2,4,8")
    t.add_argument("--out", help="write the figures to this JSON file (and a .csv beside it)")
    t.add_argument("--data-verify", choices=["full", "shapes"], default="full",
                   help="shapes: accept a partial CIFAR-10 copy (the tests run the benchmark on a tiny one)")
    a = sub.add_parser("accuracy")
    a.add_argument("--seeds", type=int, default=4)
    a.add_argument("--epochs", type=int, default=18)
    a.add_argument("--lr", type=float, default=0.2)
    a.add_argument("--batch-size", type=int, default=512)
    a.add_argument("--model", default="resnet18")
    a.add_argument("--mode", choices=["fused", "packed", "separate"], default="fused")
    a.add_argument("--train-subset", type=int, help="fewer training images (CPU checks of this command)")
    a.add_argument("--n-noise", type=int, default=5000)
    a.add_argument("--results", help="folder for the trials' artifacts (default: a temp folder)")
    a.add_argument("--out", help="write the summary to this JSON file")
    for sp in (t, a):
        sp.add_argument("--data-root", default=None, help="CIFAR-10 copy (default: NOISESINK_DATA)")
    rc = sub.add_parser("recipe", help="the recipe Pareto: accuracy against training time, a row per config")
    rc.add_argument("rows", nargs="*", help="rows files (YAML lists of {config, set}) or trial configs "
                    "(default: configs/pareto.yaml)")
    rc.add_argument("--csv", default=None, help="the table (default: docs/results/recipe-pareto.csv; a .png beside it)")
    rc.add_argument("--again", action="store_true", help="retrain configs whose row is already in the table")
    pr = sub.add_parser("probes")
    pr.add_argument("--sweep", default="sweeps/smoke.yaml", help="its first grid point is the trial measured")
    pr.add_argument("--out", help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.what == "recipe":
        from . import recipe
        csv_path = args.csv or recipe.DEFAULT_CSV
        rows = recipe.read_row_specs(args.rows or [recipe.DEFAULT_ROWS])
        recipe.run(rows, csv_path, again=args.again, log=lambda m: print(m, flush=True))
        print(f"recipe: figure {recipe.plot(csv_path)}")
        return 0
    if args.what == "probes":
        probe_cost(args.sweep, args.out)
        return 0
    if args.what == "accuracy":
        summary = accuracy(args)
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=1))
        return 0
    size = args.size if args.size != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    p = {**sizes(size), "data_root": args.data_root, "data_verify": args.data_verify}
    if args.steps:
        p["steps"] = args.steps
    if args.ks:
        p["ks"] = [int(k) for k in args.ks.split(",")]
    rows, probe_s = throughput(p)
    device = torch.cuda.get_device_name() if p["device"] == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(print_table(rows, p, probe_s, device))
    if args.out:
        record = {"device": device, "params": p, "probe_seconds": probe_s, "rows": rows,
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.out).write_text(json.dumps(record, indent=1))
        import csv
        with open(Path(args.out).with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
