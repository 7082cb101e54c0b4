"""Probing a trained model: test accuracy, where each noise family goes, what held-out classes
become, and the class/noise geometry of the penultimate features (distances and the MST)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from analysis.measures import absorption_summary, confusion_matrix, feature_geometry, noise_neighbour, shares

Predict = Callable[..., tuple[np.ndarray, np.ndarray]]  # images -> (logits, features)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_metrics(logits: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class accuracy and confusion on the trained classes' test images."""
    k = len(classes)
    pred = logits.argmax(1)
    conf = confusion_matrix(y, pred, k)
    present = conf.sum(1) > 0  # a noise_class model has no test images of its extra class
    per_class = conf.diagonal() / np.maximum(conf.sum(1), 1)
    return {"test_accuracy": float((pred == y).mean()),
            "per_class_accuracy": {c: float(per_class[i]) if present[i] else None for i, c in enumerate(classes)},
            "confusion": conf.tolist(), "n_test": int(len(y))}


def probe_family(predict: Predict, bank, classes: list[str], class_means: np.ndarray) -> dict:
    """Everything one noise bank tells about the model; arrays under the `arrays` key."""
    logits, feats = predict(bank)
    pred = logits.argmax(1)
    probs = softmax(logits)
    noise_mean = feats.mean(0)
    nodes, dist, tree = feature_geometry(class_means, noise_mean, classes)
    return {
        "absorption": shares(pred, classes),
        "summary": absorption_summary(pred, probs, classes),
        "distance": {"nodes": nodes, "matrix": dist.tolist()},
        "mst": tree,
        "noise_neighbour": noise_neighbour(tree),
        "arrays": {"pred": pred.astype(np.uint8), "noise_mean": noise_mean, "distance": dist,
                   "logits": logits, "features": feats},
    }


def heldout_table(predict: Predict, heldout_x: dict, classes: list[str], to_tensor) -> tuple[dict, dict]:
    """For each held-out class: the share of its test images given to each trained class; and
    its (logits, features) for the OOD detectors."""
    out, outputs = {}, {}
    for name, images in heldout_x.items():
        logits, feats = predict(to_tensor(images))
        out[name] = shares(logits.argmax(1), classes)
        outputs[name] = (logits, feats)
    return out, outputs


def trajectory_point(predict: Predict, bank, classes: list[str], epoch: int) -> dict:
    logits, _ = predict(bank)
    return {"epoch": epoch, "shares": shares(logits.argmax(1), classes)}
