"""Tidy (long) tables from the run records: one row per run x thing measured."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .contract import COMPLETED, show_value
from .load import Loaded
from .stats import p_top_share_uniform


def run_ids(run: dict) -> dict:
    return {"trial_id": run["trial_id"], "condition": run["condition"], "seed": run["seed"]}


def runs_table(data: Loaded) -> pd.DataFrame:
    rows = []
    for r in data.runs:
        row = {"trial_id": r["trial_id"], "status": r["status"], "condition": r["condition"], "seed": r["seed"]}
        row.update({a: show_value(v) for a, v in r["axes"].items() if a != "seed"})
        row.update({"classes": show_value(r["classes"]), "test_accuracy": r["test_accuracy"],
                    "tta_accuracy": r.get("tta_accuracy"),   # test-time augmented, where the trial measured it
                    "train_seconds": r["train_seconds"], "diverged_at_epoch": r["diverged_at_epoch"],
                    "warnings": " | ".join(r["warnings"])})
        if "source" in r:  # a study merged from several folders: where this run came from
            row["source"] = r["source"]
        if r.get("checkpoint"):  # a checkpoint probed by `noisesink probe`: its weights file
            row["checkpoint"] = r["checkpoint"]
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["trial_id", "status", "condition", "seed",
                                                         "test_accuracy", "train_seconds"])


def completed(data: Loaded) -> list[dict]:
    return [r for r in data.runs if r["status"] == COMPLETED]


def paired_with_none(runs: list[dict], axes: list[str], axis: str) -> list[tuple[dict, dict, tuple]]:
    """(baseline, run, others) for each run whose `axis` is not `none` and that has a baseline:
    the run of the same seed, every other axis equal (`others`: their values), `axis` = none."""
    others = [a for a in axes if a not in (axis, "seed")]
    key = lambda r: (tuple(str(r["axes"][a]) for a in others), r["seed"])  # noqa: E731
    baseline = {key(r): r for r in runs if r["axes"][axis] == "none"}
    return [(baseline[key(r)], r, key(r)[0]) for r in runs if r["axes"][axis] != "none" and key(r) in baseline]


def _long(runs: list[dict], per_run) -> pd.DataFrame:
    """Build a long table column by column: per_run(run) -> dict of equal-length arrays; the run's
    ids are repeated alongside. Text columns become categoricals (a 10,000-trial study has
    millions of rows but few distinct names)."""
    parts = [per_run(r) for r in runs]
    lengths = np.array([len(next(iter(p.values()))) if p else 0 for p in parts], dtype=int)
    cols = {"trial_id": np.repeat([r["trial_id"] for r in runs], lengths),
            "condition": np.repeat([r["condition"] for r in runs], lengths),
            "seed": np.repeat([r["seed"] for r in runs], lengths)}
    keys = next((list(p) for p in parts if p), [])
    for key in keys:
        cols[key] = np.concatenate([np.asarray(p[key]) for p in parts if p])
    df = pd.DataFrame(cols) if len(runs) else pd.DataFrame(columns=[*cols, *keys])
    for key, col in df.items():
        if col.dtype == object or pd.api.types.is_string_dtype(col):
            df[key] = col.astype("category")
    return df


def absorption_table(data: Loaded) -> pd.DataFrame:
    def rows(r):
        f, k = len(r["families"]), len(r["classes"])
        return {"noise": np.repeat(r["families"], k), "class": np.tile(r["classes"], f),
                "share": r["absorption"].ravel()}
    return _long(completed(data), rows)


def absorbers_table(data: Loaded, mc_draws: int = 10_000) -> pd.DataFrame:
    """Per run and noise family: the absorber, its share, the normalised entropy, the softmax
    mass (mean max-softmax, the absorber's mean probability), and the
    (descriptive) Monte Carlo p of the top share under a uniform multinomial."""
    rows = []
    for r in completed(data):
        k = len(r["classes"])
        for i, f in enumerate(r["families"]):
            rows.append({**run_ids(r), "noise": f, "absorber": r["absorber"][i],
                         "top_share": r["top_share"][i], "entropy_norm": r["entropy_norm"][i],
                         "mean_max_softmax": r["mean_max_softmax"][i],
                         "absorber_softmax": r["absorber_softmax"][i], "n_classes": k,
                         "p_uniform": p_top_share_uniform(r["top_share"][i], r["n_noise"], k, mc_draws)})
    return pd.DataFrame(rows, columns=["trial_id", "condition", "seed", "noise", "absorber", "top_share",
                                       "entropy_norm", "mean_max_softmax", "absorber_softmax", "n_classes",
                                       "p_uniform"])


def heldout_table(data: Loaded) -> pd.DataFrame:
    rows = [{**run_ids(r), "heldout_class": h, "class": c, "share": s}
            for r in completed(data) for h, shares in r["heldout"].items() for c, s in shares.items()]
    return pd.DataFrame(rows, columns=["trial_id", "condition", "seed", "heldout_class", "class", "share"])


def mst_edges_table(data: Loaded) -> pd.DataFrame:
    def rows(r):
        edges = [(f, *sorted((u, v)), w) for f, tree in zip(r["families"], r["mst"]) for u, v, w in tree]
        f, u, v, w = zip(*edges) if edges else ((), (), (), ())
        return {"noise": list(f), "u": list(u), "v": list(v), "weight": np.array(w, dtype=float)}
    return _long(completed(data), rows)


def trajectory_table(data: Loaded) -> pd.DataFrame:
    def rows(r):
        e, k = len(r["trajectory_epochs"]), len(r["classes"])
        return {"epoch": np.repeat(r["trajectory_epochs"], k), "class": np.tile(r["classes"], e),
                "share": r["trajectory"].ravel()}
    return _long(data.runs, rows)


def problems_table(data: Loaded) -> pd.DataFrame:
    return pd.DataFrame(data.problems, columns=["trial_id", "reason", "action"])


def mean_distance(runs: list[dict], family: str) -> tuple[list[str], np.ndarray]:
    """Nodes and the mean distance matrix over runs (all with the same class set)."""
    mats = [r["distance"][r["families"].index(family)] for r in runs if family in r["families"]]
    return runs[0]["nodes"], np.mean(mats, axis=0)


@dataclass
class MeanImages:
    """One condition's mean images over its runs: per noise family, the mean noise image each
    class received over all runs' images (K, 32, 32, 3 in [0, 1]), how many images that is, and
    in how many runs the class got any; per trained class, its mean training image (the mean of
    the runs' means; empty when the trials did not store them)."""
    classes: list[str]
    runs: int = 0
    noise: dict = field(default_factory=dict)
    class_images: dict = field(default_factory=dict)


def mean_images(runs: list[dict], arrays: list[dict | None]) -> MeanImages:
    """Pool `noise_mean_images_<family>` (weighted by `noise_mean_counts_<family>`) and
    `class_mean_images` over the runs of one condition (the same classes in every run)."""
    classes = runs[0]["classes"]
    out = MeanImages(classes)
    sums: dict[str, list] = {}
    training: dict[str, list] = {}
    for run, a in zip(runs, arrays):
        if a is None:
            continue
        out.runs += 1
        for f in run["families"]:
            if f"noise_mean_images_{f}" not in a:
                continue
            counts = a[f"noise_mean_counts_{f}"].astype(np.int64)
            images = a[f"noise_mean_images_{f}"].astype(np.float64) / 255
            total, n, with_any = sums.setdefault(f, [np.zeros(images.shape), np.zeros(len(counts), np.int64),
                                                     np.zeros(len(counts), np.int64)])
            total += images * counts[:, None, None, None]
            n += counts
            with_any += counts > 0
        if "class_mean_images" in a:  # the trained classes, in order (no noise_class)
            for c, image in zip(classes, a["class_mean_images"]):
                training.setdefault(c, []).append(image.astype(np.float64) / 255)
    for f, (total, n, with_any) in sums.items():
        out.noise[f] = (total / np.maximum(n, 1)[:, None, None, None], n, with_any)
    out.class_images = {c: np.mean(v, axis=0) for c, v in training.items()}
    return out


def epoch0_favourite(r) -> str | None:
    """The class an untrained network (epoch 0 of the trajectory) sent most Gaussian noise to; None
    where the run recorded no epoch 0."""
    if not len(r["trajectory"]) or r["trajectory_epochs"][0] != 0:
        return None
    return r["classes"][int(np.argmax(r["trajectory"][0]))]
