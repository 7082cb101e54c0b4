"""The recipe Pareto: test accuracy against training time, one row per trial config.

    noisesink bench recipe [ROWS_OR_CONFIG ...] [--csv docs/results/recipe-pareto.csv] [--again]

The rows (default: configs/pareto.yaml) are trial configs, each with the keys its row changes: the
arguments of `noisesink trial CONFIG --set KEY=VALUE ... --out DIR`, which is what the table's
`config` column holds. Each is trained exactly as that trial trains it (the trial's setup, model and
Trainer), on the config's training set, and tested on its whole test set: the single-view
`test_accuracy` (what every probe sees: one plain forward pass) and, where the config sets `tta`,
`tta_accuracy`. No probes run: this measures the recipe.

The CSV gets each row as soon as it is measured (a run stopped half-way keeps its rows), and a row
already there with the same config digest is not trained again, so a Pareto can be measured over
several sessions; `--again` measures such rows anew. Every row carries `baseline_img_s`, the
torchvision-DataLoader baseline of `study.bench` measured in the same run (on a quiet machine:
nothing else should run while the bench does), so that times from another machine can be put on
one scale: seconds x baseline_img_s / 478, the baseline of the machine the goals were set on.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.contract import RUN_ONLY_KEYS, config_digest

from .errors import InputError

COLUMNS = ["model", "width", "epochs", "classes", "train_images", "test_accuracy", "tta_accuracy", "seconds",
           "cpu_seconds", "baseline_img_s", "config", "eval_seconds", "train_flops", "config_digest",
           "device", "torch", "date", "code", "note"]
DEFAULT_CSV = "docs/results/recipe-pareto.csv"
REFERENCE_BASELINE_IMG_S = 478   # the baseline of the machine the goals were set on


DEFAULT_ROWS = "configs/pareto.yaml"


@dataclass(frozen=True)
class Row:
    config: str                 # a trial config file
    sets: tuple = ()            # KEY=VALUE overrides, as `noisesink trial --set` takes them

    @property
    def label(self) -> str:
        """The `config` column: the arguments of `noisesink trial` that retrain this row."""
        return " ".join([self.config, *(f"--set {kv}" for kv in self.sets)])


def read_row_specs(paths: list[str]) -> list[Row]:
    """Rows from a rows file ({rows: a list of {config, set}}) or from trial config files as they are."""
    from .config import read_yaml
    rows = []
    for path in paths:
        data = read_yaml(path)
        if set(data) != {"rows"}:
            rows.append(Row(path))
            continue
        if not isinstance(data["rows"], list) or not data["rows"]:
            raise InputError(f"{path}: rows", "must be a non-empty list", "a list of {config: FILE, set: {KEY: VALUE}}",
                             data["rows"])
        for i, item in enumerate(data["rows"]):
            if not isinstance(item, dict) or "config" not in item or set(item) - {"config", "set"} \
                    or not isinstance(item.get("set", {}), dict):
                raise InputError(f"{path}: rows[{i}]", "a row is a mapping {config: FILE, set: {KEY: VALUE}}",
                                 "config (a trial config path) and optionally set (a mapping of trial keys)", item)
            sets = tuple(f"{k}={json.dumps(v)}" for k, v in item.get("set", {}).items())
            rows.append(Row(str(item["config"]), sets))
    return rows


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    """The whole table, atomically (a temp file renamed over the old one)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def baseline_img_s(steps: int = 30) -> float:
    """The benchmark's baseline (a), study/speed.py: torchvision DataLoader, PIL transforms in 2 workers, fp32
    small_cnn at batch 64, on the CPU."""
    from .speed import baseline, sizes
    p = {**sizes("cpu"), "steps": steps}
    return baseline(p)["images_per_s"]


def measure(cfg: dict, config_path: str, log=print) -> dict:
    """Train `cfg` as a trial does and test it; the row of the table (without the baseline)."""
    from .speed import training_flops
    from .train import Trainer, predict
    from .trial import new_model, setup, tta_accuracy
    s = setup(cfg)
    cpu0, t0 = time.process_time(), time.perf_counter()
    model = new_model(s)
    trainer = Trainer(model, s.task.train_x, s.task.train_y, s.cfg, s.device, s.normalize, s.precision,
                      classes=s.task.classes)
    while trainer.epoch < s.cfg["epochs"]:
        m = trainer.run_epoch()
        log(f"  epoch {m['epoch']}/{s.cfg['epochs']}: loss {m['train_loss']:.4f}, train acc "
            f"{m['train_accuracy']:.3f}, {m['seconds']:.0f} s")
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    t1 = time.perf_counter()
    logits, _ = predict(model, torch.from_numpy(s.task.test_x).permute(0, 3, 1, 2), s.normalize, s.precision,
                        s.cfg["eval_batch_size"], s.device)
    acc = float((logits.argmax(1) == s.task.test_y).mean())
    tta = tta_accuracy(s, model)
    return {"model": s.cfg["model"], "width": s.cfg["width"] if s.cfg["width"] is not None else 1.0,
            "epochs": s.cfg["epochs"], "classes": len(s.task.classes), "train_images": len(s.task.train_x),
            "test_accuracy": round(acc, 4),
            "tta_accuracy": "" if tta is None else round(tta, 4), "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1), "config": config_path,
            "eval_seconds": round(time.perf_counter() - t1, 1),
            "train_flops": f"{training_flops(s.cfg, len(s.task.train_x)):.4g}",
            "config_digest": config_digest(s.cfg), "device": str(s.device), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"), "code": _revision(), "note": ""}


def _revision() -> str:
    """The code a row was measured with: the git commit (short), `+` where the tree had changes."""
    from .provenance import code_revision
    rev = code_revision()
    return f"{(rev['git_commit'] or 'unknown')[:7]}{'+' if rev['git_dirty'] else ''}"


def run(rows: list[Row], csv_path: str = DEFAULT_CSV, again: bool = False, log=print) -> list[dict]:
    """Every row measured (or kept from the table), the table rewritten after each."""
    from .config import load_trial_config
    path = Path(csv_path)
    resolved = [(r, load_trial_config(r.config, list(r.sets))) for r in rows]  # all checked before any work
    table = read_rows(path)
    by_digest = {t["config_digest"]: t for t in table}
    for r, cfg in resolved:   # a row is its resolved config: a config renamed or rewritten to the same keeps it
        if config_digest(cfg) in by_digest:
            by_digest[config_digest(cfg)]["config"] = r.label
    todo = [(r, cfg) for r, cfg in resolved if again or config_digest(cfg) not in by_digest]
    if not todo:
        write_rows(path, table)
        log(f"recipe: all {len(rows)} rows already in {path}")
        return table
    base = baseline_img_s()
    log(f"recipe: DataLoader baseline {base:.0f} img/s; {len(todo)} of {len(rows)} rows to train")
    for r, cfg in todo:
        log(f"recipe: {r.label}")
        row = {**measure(cfg, r.label, log), "baseline_img_s": round(base, 1)}
        table = [t for t in table if t["config_digest"] != row["config_digest"]] + [row]
        write_rows(path, table)
        log(f"recipe: {r.label}: {row['test_accuracy']:.4f} (tta {row['tta_accuracy']}) in {row['seconds']:.0f} s")
    return table


def plot(csv_path: str = DEFAULT_CSV, png: str | None = None) -> str:
    """Accuracy against minutes of one training, a line per (model, width) through its epochs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_rows(Path(csv_path))
    png = png or str(Path(csv_path).with_suffix(".png"))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    series: dict[tuple, list] = {}
    for r in rows:
        series.setdefault((r["model"], float(r["width"]), int(r["classes"]), int(r["train_images"])), []).append(r)
    for (model, width, k, n), rs in sorted(series.items()):
        rs.sort(key=lambda r: float(r["seconds"]))
        # each row on the reference machine's scale by its own run's baseline (a slower machine counts less)
        minutes = [float(r["seconds"]) / 60 * float(r["baseline_img_s"]) / REFERENCE_BASELINE_IMG_S for r in rs]
        acc = [float(r["test_accuracy"]) for r in rs]
        label = (f"{model} x{width:g}" + (f", {k} classes" if k != 10 else "")
                 + ("" if n >= 5000 * k else f", {n} images"))
        ax.plot(minutes, acc, "o-" if k == 10 else "s--", label=label)
        for m, a, r in zip(minutes, acc, rs):
            ax.annotate(r["epochs"], (m, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for goal, minutes in ((0.88, 6), (0.90, 10), (0.92, 20)):
        ax.plot([minutes], [goal], "k*", markersize=10)
    ax.plot([4], [0.88], "ks", markerfacecolor="none", markersize=9)   # the cat/dog goal
    ax.set_xscale("log")
    from matplotlib import ticker
    ax.xaxis.set_major_locator(ticker.FixedLocator([1, 2, 3, 5, 10, 20, 30, 60, 120]))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("minutes of one training on 2 CPU cores (normalised to a 478 img/s DataLoader baseline)")
    ax.set_ylabel("test accuracy (single view)")
    ax.set_title("Recipe Pareto (numbers: epochs; stars: goals; square: cat/dog goal)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


# Keys that change what a trial probes or how it is tested, not the network it trains: a sweep's
# point and a Pareto row that agree on every other key train the same network.
NOT_TRAINING = ("noise", "n_noise", "noise_seed", "n_trajectory", "eval_batch_size", "sample_per_class",
                "n_frequency", "frequency_cutoffs", "amplitudes", "n_amplitude", "n_bn", "tta", "test_subset",
                "seed", "arm")


def _training(cfg: dict) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in NOT_TRAINING and k not in RUN_ONLY_KEYS},
                      sort_keys=True)


def weak_recipe_warnings(points: list[dict], csv_path: str = DEFAULT_CSV, margin: float | None = None) -> list[str]:
    """A warning for each distinct training of `points` that the recipe Pareto measured below chance
    + margin (analysis/guard.py's rule, on the Pareto row's one network): its conditions would be
    marked too weak to interpret. Silent where the Pareto is not here (an installed package)."""
    from analysis.guard import WEAK_MARGIN

    from .config import load_trial_config, trained_classes
    margin = WEAK_MARGIN if margin is None else margin
    rows = read_rows(Path(csv_path))
    if not rows:
        return []
    measured = {}
    for r in rows:
        config, *sets = r["config"].split(" --set ")
        try:
            measured[_training(load_trial_config(config, sets))] = r
        except (InputError, OSError):
            continue   # a row of a config no longer here: it cannot be matched
    out = []
    for key in dict.fromkeys(_training(p) for p in points):
        r = measured.get(key)
        p = next(p for p in points if _training(p) == key)
        chance = 1 / len(trained_classes(p))
        if r is not None and float(r["test_accuracy"]) < chance + margin:
            out.append(f"{r['config']} trains this network (model {p['model']}, classes {p['classes']}) to "
                       f"{float(r['test_accuracy']):.3f} test accuracy in {csv_path}, within {margin:g} of chance "
                       f"({chance:.3f}; the aggregation's default margin): its conditions will be marked too weak "
                       "to interpret")
    return out
