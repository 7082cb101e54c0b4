"""Networks too weak to interpret: a condition's test accuracy against chance.

What a network "learned" is no finding when it learned next to nothing (cat/dog at 0.525 is a coin
with a preference). Per condition, the runs' test images are pooled: k correct of n, an exact
(Clopper-Pearson) interval for the accuracy, and an exact one-sided binomial test of H0: accuracy
<= chance (1/K) (the smallest attainable p is chance^n, below any level at these n). The rule: a
condition is **too weak to interpret** when the lower bound of its interval is below chance +
`margin` (default WEAK_MARGIN, `noisesink analyze --weak-margin`). Its rows stay in every table,
marked, and leave the confirmatory (and factors) family for the exploratory one; the report says so
where it answers. The pooled interval counts test images, not networks: it says whether the
condition's networks learned, not how much they differ; the spread over runs stands beside it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from .stats import ALPHA, LEVEL

WEAK_MARGIN = 0.10   # too weak: accuracy's lower bound below chance + this (10 points above guessing)
COLUMNS = ["condition", "classes", "chance", "n_runs", "n_test_images", "accuracy_mean", "accuracy_sd",
           "accuracy_min", "ci_low", "ci_high", "p_vs_chance", "margin", "too_weak", "rule"]


def accuracy_guard(groups: dict[str, list[dict]], margin: float = WEAK_MARGIN) -> pd.DataFrame:
    """One row per condition (see the module's docstring for the rule)."""
    rows = []
    for condition, runs in groups.items():
        k = len(runs[0]["classes"])
        chance = 1 / k
        acc = np.array([r["test_accuracy"] for r in runs if r.get("test_accuracy") is not None], dtype=float)
        n_img = np.array([r.get("n_test") or 0 for r in runs if r.get("test_accuracy") is not None], dtype=float)
        if not len(acc) or not n_img.all():
            continue   # no accuracy, or not over how many images: nothing to judge (older trials)
        correct, n = int(round(float((acc * n_img).sum()))), int(n_img.sum())
        ci = sps.binomtest(correct, n).proportion_ci(1 - ALPHA, method="exact")
        p = sps.binomtest(correct, n, chance, alternative="greater").pvalue
        rows.append({"condition": condition, "classes": k, "chance": chance, "n_runs": len(acc),
                     "n_test_images": n, "accuracy_mean": float(acc.mean()),
                     "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else np.nan,
                     "accuracy_min": float(acc.min()), "ci_low": float(ci.low), "ci_high": float(ci.high),
                     "p_vs_chance": float(p), "margin": margin, "too_weak": bool(ci.low < chance + margin),
                     "rule": f"too weak when the {LEVEL} Clopper-Pearson lower bound of the pooled test accuracy "
                             f"is below 1/K + {margin:g}"})
    return pd.DataFrame(rows, columns=COLUMNS)


def weak_conditions(guard: pd.DataFrame) -> set[str]:
    return set(guard.loc[guard["too_weak"], "condition"]) if len(guard) else set()


def involves(label: str, weak: set[str], conditions: set[str]) -> bool:
    """Whether a table row's condition holds a weak one: a condition, or "a vs b" of several, by
    name; a label of another kind (a causal or factor comparison, made over conditions of one class
    set) counts as holding one whenever the study has a weak condition: conservative, it leaves the
    confirmatory and factors families rather than stay in them on a weak arm."""
    if not weak:
        return False
    parts = str(label).split(" vs ")
    return any(p in weak for p in parts) if all(p in conditions for p in parts) else True
