"""The study's tests, run per condition and noise family, collected as tests.csv rows.

Families and corrections: `confirmatory` (absorber consistency, absorber vs condition, clutter vs
absorption) Holm; `exploratory` (tree overlap, Mantel, noise neighbour, secondary paired tests)
Benjamini-Hochberg; `interventions` (training against noise, analysis/why.py), `causal`
(per-class interventions, analysis/causal.py) and `factors` (architecture and class frequency,
analysis/factors.py) Holm each; MST edges Benjamini-Yekutieli in edge_frequency.csv.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats, trees
from .tables import completed

CORRECTION = {"confirmatory": "holm", "exploratory": "fdr_bh", "interventions": "holm", "causal": "holm",
              "factors": "holm"}
TEST_COLUMNS = ["test", "family", "hypothesis", "condition", "noise", "statistic", "p_value", "p_adjusted",
                "effect", "effect_name", "n_runs", "method"]


def by_condition(data) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for r in completed(data):
        groups[r["condition"]].append(r)
    return dict(sorted(groups.items()))


def families_of(runs: list[dict]) -> list[str]:
    """Noise families probed by every run of the group, in the first run's order."""
    common = set.intersection(*(set(r["families"]) for r in runs))
    return [f for f in runs[0]["families"] if f in common]


def _row(family, hypothesis, condition, noise, res, method, effect=None, effect_name=None):
    return {"family": family, "hypothesis": hypothesis, "condition": condition, "noise": noise,
            "statistic": res.get("statistic"), "p_value": res.get("p_value"),
            "effect": res.get("effect", effect) if effect is None else effect,
            "effect_name": res.get("effect_name", effect_name) if effect_name is None else effect_name,
            "n_runs": res.get("n_runs"), "method": method}


# ---------------------------------------------------------------- 2. consistency across seeds

def consistency(groups: dict[str, list[dict]], kappa_counts: dict) -> tuple[pd.DataFrame, list[dict]]:
    rows, tests = [], []
    for condition, runs in groups.items():
        classes = runs[0]["classes"]
        for f in families_of(runs):
            i = [r["families"].index(f) for r in runs]
            absorbers = [r["absorber"][j] for r, j in zip(runs, i)]
            top = np.array([r["top_share"][j] for r, j in zip(runs, i)])
            res = stats.absorber_consistency(absorbers, classes)
            row = {"condition": condition, "noise": f, "n_classes": len(classes), **res,
                   "mean_top_share": float(top.mean()), "sd_top_share": float(top.std(ddof=1)) if len(top) > 1 else np.nan,
                   "fleiss_kappa": np.nan, "randolph_kappa": np.nan}
            counts = kappa_counts.get((condition, f))
            if counts is not None and counts.sum(1).min() >= 2:
                row.update(stats.image_agreement(counts))
            rows.append(row)
            tests.append(_row("confirmatory", "the absorber is the same across seeds", condition, f,
                              {"statistic": res["modal_count"], "p_value": res["p_value"],
                               "effect": res["agreement"], "n_runs": res["n_runs"]},
                              f"Monte Carlo test (10^5) of the modal absorber count (ties by agreement) "
                              f"vs {len(classes)} uniform classes",
                              effect_name="agreement sum p_c^2"))
    return pd.DataFrame(rows), tests


# ---------------------------------------------------------------- 3. absorber vs condition

def condition_dependence(groups: dict[str, list[dict]]) -> tuple[list[dict], list[str]]:
    """Within each set of conditions that train the same classes. Returns tests and notes."""
    by_classes = defaultdict(list)
    for condition, runs in groups.items():
        by_classes[tuple(runs[0]["classes"])].append(condition)
    tests, notes = [], []
    for classes, conditions in by_classes.items():
        if len(conditions) < 2:
            continue
        label = " vs ".join(conditions)
        seed_sets = [{r["seed"] for r in groups[c]} for c in conditions]
        common = sorted(set.intersection(*seed_sets))
        paired = len(common) >= 2 and all(s == set(common) for s in seed_sets)
        for f in families_of([r for c in conditions for r in groups[c]]):
            absorbers = [(c, r["seed"], r["absorber"][r["families"].index(f)],
                          r["absorption"][r["families"].index(f)]) for c in conditions for r in groups[c]]
            res = stats.permutation_chi2([a for _, _, a, _ in absorbers], [c for c, _, _, _ in absorbers])
            tests.append(_row("exploratory" if paired else "confirmatory",
                              "the absorber depends on the condition", label, f, res,
                              f"permutation chi-square ({res['permutations']} relabellings of conditions over runs)"))
            if not paired:
                continue
            table = {(c, s): (a, sh) for c, s, a, sh in absorbers}
            pooled = pd.Series([a for _, _, a, _ in absorbers]).mode().sort_values().iloc[0]
            k = list(classes).index(pooled)
            if len(conditions) == 2:
                a, b = conditions
                mh = stats.marginal_homogeneity([table[(a, s)][0] for s in common],
                                                [table[(b, s)][0] for s in common])
                tests.append(_row("confirmatory", "the absorber depends on the condition (paired seeds)",
                                  label, f, {**mh, "n_runs": len(common)},
                                  f"marginal homogeneity, paired permutation (each seed's two absorbers "
                                  f"swapped; {mh['discordant']} of {len(common)} seeds discordant); statistic |d|^2; "
                                  f"Stuart-Maxwell {mh['stuart_maxwell']:.2f} on {mh['df']} df for reference",
                                  effect=np.nan, effect_name=""))
                diffs = np.array([table[(b, s)][1][k] - table[(a, s)][1][k] for s in common])
                sf = stats.sign_flip(diffs)
                tests.append(_row("exploratory", f"the share of {pooled} differs ({b} - {a})", label, f,
                                  {**sf, "n_runs": len(common)}, "sign-flip test on paired share differences",
                                  effect_name="mean diff / sd"))
            else:
                indicator = np.array([[table[(c, s)][0] == pooled for c in conditions] for s in common], dtype=int)
                q = stats.cochran_q(indicator)
                tests.append(_row("confirmatory", f"P(absorber = {pooled}) differs between conditions "
                                  "(paired seeds)", label, f, {**q, "n_runs": len(common)},
                                  f"Cochran's Q, seeds paired; p by permuting each seed's row across conditions "
                                  f"({q['permutations']} permutations)", effect=float(indicator.mean()),
                                  effect_name=f"share of runs absorbing to {pooled}"))
    if len(by_classes) > 1:
        notes.append("Conditions that train different class sets are not compared by absorber "
                     "identity (their absorbers are drawn from different sets).")
    return tests, notes


# ---------------------------------------------------------------- 4.-5. MST and distances

PERMUTATION_FAMILY = "gaussian"  # the question's noise: the family the permutation tests cover


def geometry(groups: dict[str, list[dict]]) -> tuple[pd.DataFrame, dict, list[dict]]:
    """MST edge frequencies (every family), the noise-neighbour test (every family), and the
    permutation tests of tree overlap and distance agreement. The class-class block does not
    depend on the noise family (class means come from the test set), so it is tested once per
    condition; tree overlap and the noise row are tested for the gaussian family, which keeps a
    10,000-trial study's aggregation to about a minute."""
    cells, tests = {}, []
    for condition, runs in groups.items():
        nodes = runs[0]["nodes"]
        k = len(nodes) - 1
        for f in families_of(runs):
            i = [r["families"].index(f) for r in runs]
            tree_list = [r["mst"][j] for r, j in zip(runs, i)]
            cells[(condition, f)] = (nodes, tree_list)
            if len(runs) < 3:
                continue  # pairwise statistics need at least 3 runs to mean anything
            mats = np.array([r["distance"][j] for r, j in zip(runs, i)])
            if f == families_of(runs)[0]:
                iu = np.triu_indices(k, 1)
                block = stats.mantel_test(mats[:, :k, :k][:, iu[0], iu[1]], n_nodes=k)
                tests.append(_row("exploratory", "class-class distances agree across runs", condition, "(all)",
                                  block, f"Mantel: mean pairwise Spearman, node-label permutation "
                                  f"({block['permutations']})"))
            if f == PERMUTATION_FAMILY:
                ov = trees.overlap(nodes, tree_list)
                tests.append(_row("exploratory", "MST edges agree across runs beyond chance", condition, f, ov,
                                  f"node-relabelling permutation test of mean pairwise edge overlap "
                                  f"(null mean 2K/(K+1) = {ov['null_mean']:.2f}, {ov['permutations']} perms)"))
                row = stats.mantel_test(mats[:, k, :k], n_nodes=None)
                tests.append(_row("exploratory", "noise-class distances agree across runs", condition, f, row,
                                  f"Spearman of noise rows, class-label permutation ({row['permutations']})"))
            nearest = [nodes[int(np.argmin(m[k, :k]))] for m in mats]
            hits = sum(a == b for a, b in zip(nearest, [r["absorber"][j] for r, j in zip(runs, i)]))
            p = float(sps.binomtest(hits, len(runs), 1 / k, alternative="greater").pvalue)
            tests.append(_row("exploratory", "the class nearest to the noise mean is the absorber", condition, f,
                              {"statistic": hits, "p_value": p, "effect": hits / len(runs), "n_runs": len(runs)},
                              f"binomial test vs 1/K = {1 / k:.2f} (nearest class uniform, independent of absorber)",
                              effect_name="share of runs"))
    return trees.edge_frequency(cells), cells, tests


def consensus_trees(edge_freq: pd.DataFrame) -> dict[tuple[str, str], list]:
    return {key: trees.consensus_tree(df) for key, df in edge_freq.groupby(["condition", "noise"], sort=False)}


def finalize(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=TEST_COLUMNS)
    for family, method in CORRECTION.items():
        mask = df["family"] == family
        if mask.any():
            df.loc[mask, "p_adjusted"] = stats.adjust(df.loc[mask, "p_value"].to_numpy(), method)
            df.loc[mask, "method"] = df.loc[mask, "method"] + f"; {method} within the {family} family"
    return df
