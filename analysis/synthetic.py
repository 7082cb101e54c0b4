"""Synthetic trial artifacts with planted structure, in the exact layout a sweep writes.

Used by the tests (does the aggregation recover what was planted? is it calibrated when nothing
was?) and by the benchmark (10,000 trials). A planted condition has a known absorber, chosen by
each run with a given probability, and a known tree whose edges are short in a given share of
runs; everything else is drawn at random.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import measures
from .contract import (
    ARRAYS_NPZ,
    CIFAR10_CLASSES,
    COMPLETED,
    NOISE_NODE,
    SCHEMA_VERSION,
    STUDY_JSON,
    TRIAL_JSON,
    show_value,
)

CIFAR10 = list(CIFAR10_CLASSES)


@dataclass
class Condition:
    value: object                               # the value of the study's one non-seed axis
    classes: list[str] = field(default_factory=lambda: list(CIFAR10))
    absorber: str | None = None                 # planted absorber (None: uniform at random)
    p_absorber: float = 0.9                     # chance a run picks the planted absorber
    tree: list[tuple[str, str]] | None = None   # planted MST edges over classes + noise
    p_tree: float = 0.9                         # chance a run's distances follow the planted tree
    accuracy: tuple[float, float] = (0.7, 0.95)  # each run's test accuracy is uniform in this range


def _tree_distances(nodes: list[str], tree: list[tuple[str, str]] | None, rng) -> np.ndarray:
    n = len(nodes)
    d = rng.uniform(0.2, 0.6, (n, n))
    if tree is not None:
        for u, v in tree:
            i, j = sorted((nodes.index(u), nodes.index(v)))
            d[i, j] = rng.uniform(0.01, 0.1)
    d = np.triu(d, 1)
    return d + d.T


def softmax_rows(pred: np.ndarray, k: int, confidence: float) -> np.ndarray:
    """Softmax rows for synthetic predictions: `confidence` on the predicted class, the rest spread
    evenly (a simulated network that is as sure of every image)."""
    probs = np.full((len(pred), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(pred)), pred] = confidence
    return probs


def _run(cond: Condition, seed: int, families: list[str], n_noise: int, epochs: int, rng) -> tuple[dict, dict]:
    classes, k = cond.classes, len(cond.classes)
    nodes = classes + [NOISE_NODE]
    image_rng = np.random.default_rng(12345)  # the same "noise bank" in every run
    image_pref = image_rng.integers(0, k, size=n_noise)
    absorption, summary, mst, distance, arrays = {}, {}, {}, {}, {}
    for f in families:
        planted = cond.absorber is not None and rng.random() < cond.p_absorber
        a = classes.index(cond.absorber) if planted else int(rng.integers(k))
        top = rng.uniform(0.5, 0.95)
        # each image goes to the run's absorber, or (sometimes) to its own preferred class
        pred = np.where(rng.random(n_noise) < top, a, np.where(rng.random(n_noise) < 0.5, image_pref,
                                                               rng.integers(0, k, n_noise)))
        absorption[f] = measures.shares(pred, classes)
        summary[f] = measures.absorption_summary(pred, softmax_rows(pred, k, 0.8), classes)
        use_tree = cond.tree is not None and rng.random() < cond.p_tree
        d = _tree_distances(nodes, cond.tree if use_tree else None, rng)
        mst[f] = measures.minimum_spanning_tree(d, nodes)
        distance[f] = {"nodes": nodes, "matrix": d.tolist()}
        arrays[f"pred_{f}"] = pred.astype(np.uint8)
        arrays[f"distance_{f}"] = d
    gauss = absorption[families[0]]
    trajectory = [{"epoch": e, "shares": {c: (1 - e / epochs) / k + (e / epochs) * gauss[c] for c in classes}}
                  for e in range(epochs + 1)]
    heldout = {h: dict(zip(classes, rng.dirichlet(np.ones(k)).tolist())) for h in CIFAR10 if h not in classes}
    trial = {"schema": SCHEMA_VERSION, "status": COMPLETED, "seed": seed, "noise_seed": 0, "classes": classes,
             "heldout_classes": [h for h in CIFAR10 if h not in classes],
             "test_accuracy": float(rng.uniform(*cond.accuracy)), "n_test": 1000 * len(cond.classes),
             "noise_families": families,
             "absorption": absorption, "absorber": summary, "mst": mst, "distance": distance,
             "trajectory": trajectory, "heldout": heldout, "timing": {"train_seconds": 1.0},
             "warnings": []}
    return trial, arrays


# the "why" measurements a real trial stores (study/clutter.py, study/ood.py, study/explain.py)
CLUTTER_MEASURES = {"png_bits_per_pixel": (16, 20), "spectral_slope": (-3.0, -2.4), "gradient_energy": (0.01, 0.03),
                    "colorfulness": (0.1, 0.15), "intensity_std": (0.16, 0.25), "feature_trace": (0.13, 0.35),
                    "participation_ratio": (2, 14), "twonn_dimension": (6, 18), "centroid_distance": (0.35, 0.57)}
DETECTORS = ("msp", "max_logit", "energy", "mahalanobis", "knn")
CUTOFFS = (0.125, 0.25, 0.5)


def _why(trial: dict, arrays: dict, rng) -> None:
    """Plant the "why" measurements beside a synthetic run's absorption: random clutter (the noise
    bank's own values sometimes far outside the classes' range, as with real noise), a logit
    decomposition, OOD rows, frequency probes, and mean images (each class a colour; the noise
    sent to a class tinted toward it)."""
    classes, families = trial["classes"], trial["noise_families"]
    k = len(classes)
    trial["clutter"] = {"sample_per_class": 50,
                        "classes": {m: dict(zip(classes, rng.uniform(lo, hi, k).tolist()))
                                    for m, (lo, hi) in CLUTTER_MEASURES.items()},
                        "noise": {f: {m: float(rng.uniform(lo, hi + 3 * (hi - lo)))
                                      for m, (lo, hi) in CLUTTER_MEASURES.items()} for f in families}}
    trial["logit_decomposition"] = {f: {
        "absorber": trial["absorber"][f]["absorber"], "n_images": int(trial["config"]["n_noise"]),
        "absorber_share": trial["absorber"][f]["top_share"], "absorber_share_without_bias": float(rng.uniform(0, 0.6)),
        "top_share_dealt_mean": float(rng.uniform(0.2, 0.6)), "bias_deal_rank": int(rng.integers(0, 100)),
        "bias_deals": 99,
        "mean_margin": float(rng.uniform(1, 4)), "mean_bias_part": float(rng.uniform(0, 1)),
        "mean_weight_part": float(rng.uniform(0, 3)), "bias_share_of_margin": float(rng.uniform(0, 0.6)),
        "decided_by_bias": float(rng.uniform(0, 0.3)), "noise_feature_norm": float(rng.uniform(2, 5)),
        "test_feature_norm": float(rng.uniform(5, 8)), "bias": dict(zip(classes, rng.normal(0, 0.1, k).tolist())),
        "weight_norm": dict(zip(classes, rng.uniform(0.8, 1.2, k).tolist())),
        "cos_weight_noise_mean": dict(zip(classes, rng.uniform(-0.2, 0.4, k).tolist()))} for f in families}
    sets = list(families) + [f"heldout:{h}" for h in trial["heldout_classes"]]
    trial["ood"] = {"rows": [{"detector": d, "ood_set": o, "auroc": float(a), "aupr_in": float(a),
                              "aupr_out": float(1 - a), "fpr95": float(rng.uniform(0, 1))}
                             for d in DETECTORS for o in sets for a in [rng.beta(4, 2)]]}
    trial["frequency"] = []
    for kind in ("lowpass", "highpass"):
        for c in CUTOFFS:
            shares = rng.dirichlet(np.ones(k))
            trial["frequency"].append({"kind": kind, "cutoff": c, "absorber": classes[int(shares.argmax())],
                                       "top_share": float(shares.max()), "shares": dict(zip(classes, shares.tolist()))})
    _probes(trial, rng)
    colours = np.random.default_rng(7).uniform(0.15, 0.85, (len(CIFAR10), 3))  # a colour per class, every run
    colour = np.array([colours[CIFAR10.index(c)] if c in CIFAR10 else np.full(3, 0.5) for c in classes])
    ramp = np.broadcast_to(np.linspace(-0.1, 0.1, 32)[None, :, None, None], (1, 32, 32, 1))  # top to bottom
    arrays["class_mean_images"] = (np.clip(colour[:, None, None] + ramp, 0, 1) * 255).astype(np.uint8)
    arrays["class_mean_counts"] = np.full(k, 50)
    for f in families:
        counts = np.bincount(arrays[f"pred_{f}"], minlength=k)
        tint = 0.5 + 0.1 * (colour - 0.5)[:, None, None] + rng.normal(0, 0.02, (k, 32, 32, 3))
        arrays[f"noise_mean_images_{f}"] = ((np.clip(tint, 0, 1) * 255).astype(np.uint8)
                                            * (counts > 0)[:, None, None, None])
        arrays[f"noise_mean_counts_{f}"] = counts


AMPLITUDES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
BN_MODES = ("eval", "batch_stats", "noise_stats")


def _where(shares: np.ndarray, classes: list[str], msp: float) -> dict:
    top = int(shares.argmax())
    nz = shares[shares > 0]
    return {"absorber": classes[top], "top_share": float(shares[top]), "mean_max_softmax": float(msp),
            "absorber_softmax": float(msp * shares[top]),
            "entropy_norm": float(-(nz * np.log(nz)).sum() / np.log(len(classes))),
            "shares": dict(zip(classes, shares.tolist()))}


def _probes(trial: dict, rng) -> None:
    """The probe-time experiments (study/explanation_probes.py), drawn at random: an amplitude
    curve whose max-softmax rises or falls with the amplitude, and the three BatchNorm modes."""
    classes = trial["classes"]
    k = len(classes)
    slope = rng.normal(0, 0.05)
    rows = []
    for a in AMPLITUDES:
        shares = rng.dirichlet(np.ones(k))
        msp = float(np.clip(0.7 + slope * np.log2(a) + rng.normal(0, 0.02), 1 / k, 1))
        mean_prediction = rng.dirichlet(np.ones(k) * 5)
        kl = float((mean_prediction * np.log(mean_prediction * k)).sum())
        rows.append({"amplitude": a, **_where(shares, classes, msp),
                     "mean_prediction": dict(zip(classes, mean_prediction.tolist())), "kl_uniform": kl,
                     "kl_label_frequencies": kl, "noise_feature_norm": float(a * rng.uniform(1, 3)),
                     "feature_norm_ratio": float(a * rng.uniform(0.2, 0.6))})
    trial["amplitude"] = {"n_images": 100, "label_frequencies": dict(zip(classes, [1 / k] * k)),
                          "test_feature_norm": 5.0, "rows": rows}
    trial["batchnorm"] = {"applicable": True, "n_images": 100, "batch_size": 100, "n_reestimate": 100,
                          "batchnorm_layers": 6, "modes": {m: _where(rng.dirichlet(np.ones(k)), classes, 0.6)
                                                           for m in BN_MODES}}


def write_study(root: Path, conditions: list[Condition], seeds: int, *, axis: str = "augmentation",
                families: tuple[str, ...] = ("gaussian", "uniform"), n_noise: int = 200, epochs: int = 3,
                name: str = "synthetic", seed: int = 0, why: bool = False) -> Path:
    """Write <root>/<name>/ with study.json and one folder per (condition, seed); `why` adds the
    "why" measurements (clutter, logit decomposition, OOD, frequency probes, mean images)."""
    rng = np.random.default_rng(seed)
    study = Path(root) / name
    study.mkdir(parents=True, exist_ok=True)
    points = []
    for cond in conditions:
        for s in range(seeds):
            trial_dir = f"{axis}={show_value(cond.value)}_seed={s}"
            axes = {axis: cond.value, "seed": s}
            trial, arrays = _run(cond, s, list(families), n_noise, epochs, rng)
            trial["config"] = {**axes, "classes": cond.classes, "n_noise": n_noise, "noise_seed": 0}
            if why:
                _why(trial, arrays, rng)
            write_trial(study / trial_dir, trial, arrays)
            points.append({"dir": trial_dir, "axes": axes})
    (study / STUDY_JSON).write_text(json.dumps({"name": name, "axes": [axis, "seed"], "points": points}))
    return study


def write_trial(folder: Path, trial: dict, arrays: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (folder / ARRAYS_NPZ).write_bytes(buf.getvalue())
    trial["arrays"] = {"file": ARRAYS_NPZ, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    (folder / TRIAL_JSON).write_text(json.dumps(trial))
