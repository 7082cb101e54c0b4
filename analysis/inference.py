"""The study's tests, run per condition and noise family, collected as tests.csv rows.

Every row carries a stable `test` id (each topic declares its own: Topic.test_ids; tools and the
report find rows by it, never by the hypothesis text), its family and correction, its smallest
attainable p and whether that can clear the level the correction asks of it. The confirmatory
family is small and fixed in advance (CONFIRMATORY, on the question's noise only) and corrected
by Holm; the factor tests (analysis/factors.py) are their own Holm family; everything else is
exploratory, Benjamini-Hochberg. MST edges are in edge_frequency.csv, Benjamini-Yekutieli.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pandas as pd

from . import guard, stats, trees
from .contract import NETWORK_KEYS
from .tables import completed

PRIMARY_NOISE = "gaussian"                # the question's noise: the confirmatory family covers only it
PRIMARY_CLUTTER = "png_bits_per_pixel"    # the one clutter measure in the confirmatory family
CONFIRMATORY = ("absorber_consistency", "absorber_vs_condition", "clutter_absorption", "causal_effect")
FACTORS = ("factor_absorber", "factor_top_share", "factor_epoch0_bias")   # their own pre-registered family
CORRECTION = {"confirmatory": "holm", "factors": "holm", "exploratory": "fdr_bh"}
TEST_COLUMNS = ["test", "family", "hypothesis", "condition", "noise", "variable", "statistic", "p_value",
                "p_adjusted", "p_min", "p_needed", "can_reject", "n_needed", "effect", "effect_name",
                "ci_low", "ci_high", "n_runs", "method", "too_weak"]
N_SEARCH = 100_000   # n_needed is searched up to this many runs
PAIRING_TESTS = ("noise_neighbour", "epoch0_favourite_is_absorber")   # the pairing permutation


def family_of(test: str, noise: str, variable: str = "") -> str:
    """The pre-registered confirmatory family, the factors family, else exploratory."""
    if test in FACTORS:
        return "factors"
    primary = test in CONFIRMATORY and noise == PRIMARY_NOISE
    return ("confirmatory" if primary and (test != "clutter_absorption" or variable == PRIMARY_CLUTTER)
            else "exploratory")


def by_condition(data) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for r in completed(data):
        groups[r["condition"]].append(r)
    return dict(sorted(groups.items()))


def families_of(runs: list[dict]) -> list[str]:
    """Noise families probed by every run of the group, in the first run's order."""
    common = set.intersection(*(set(r["families"]) for r in runs))
    return [f for f in runs[0]["families"] if f in common]


PAIRED_MEAN = "mean paired difference"   # the effect of a row that carries a t interval: the interval's own estimate


def result_row(test, hypothesis, condition, noise, res, method, *, variable="", effect=None, effect_name=None,
               p_min_of_n=None):
    """One tests.csv row. p_min_of_n: n -> the smallest attainable p with n runs (seeds, pairs),
    used to say how many a test that cannot reach its level would need."""
    return {"test": test, "family": family_of(test, noise, variable), "hypothesis": hypothesis,
            "condition": condition, "noise": noise, "variable": variable,
            "statistic": res.get("statistic"), "p_value": res.get("p_value"), "p_min": res.get("p_min"),
            "effect": res.get("effect") if effect is None else effect,
            "effect_name": res.get("effect_name", effect_name) if effect_name is None else effect_name,
            "ci_low": res.get("ci_low", np.nan), "ci_high": res.get("ci_high", np.nan),
            "n_runs": res.get("n_runs"), "method": method, "_p_min_of_n": p_min_of_n}


# ---------------------------------------------------------------- 2. consistency across seeds

def consistency(groups: dict[str, list[dict]], kappa_counts: dict) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """consistency.csv (one row per condition and noise family), absorber_distribution.csv (the
    share of runs each class absorbs, with simultaneous intervals) and the consistency tests."""
    rows, dist, tests = [], [], []
    for condition, runs in groups.items():
        classes = runs[0]["classes"]
        k = len(classes)
        for f in families_of(runs):
            i = [r["families"].index(f) for r in runs]
            absorbers = [r["absorber"][j] for r, j in zip(runs, i)]
            top = np.array([r["top_share"][j] for r, j in zip(runs, i)])
            mass = np.array([r["absorber_softmax"][j] for r, j in zip(runs, i)])
            res = stats.absorber_consistency(absorbers, classes)
            row = {"condition": condition, "noise": f, "n_classes": k, **res,
                   "mean_top_share": float(top.mean()),
                   "sd_top_share": float(top.std(ddof=1)) if len(top) > 1 else np.nan,
                   # the softmax mass on each run's absorber beside its argmax share (NaN: not recorded)
                   "mean_absorber_softmax": float(np.nanmean(mass)) if np.isfinite(mass).any() else np.nan,
                   "fleiss_kappa": np.nan, "randolph_kappa": np.nan}
            counts = kappa_counts.get((condition, f))
            if counts is not None and counts.sum(1).min() >= 2:
                row.update(stats.image_agreement(counts))
            rows.append(row)
            n_c = np.bincount([classes.index(a) for a in absorbers], minlength=k)
            bounds = stats.simultaneous_intervals(n_c)
            dist += [{"condition": condition, "noise": f, "class": c, "count": int(n_c[j]), "n_runs": len(runs),
                      "share": n_c[j] / len(runs), "ci_low": bounds[j, 0], "ci_high": bounds[j, 1]}
                     for j, c in enumerate(classes)]
            tests.append(result_row("absorber_consistency", "the absorbers are not uniform over the classes",
                                    condition, f,
                                    {"statistic": res["modal_count"], "p_value": res["p_value"], "p_min": res["p_min"],
                                     "effect": res["agreement"], "ci_low": res["agreement_ci_low"],
                                     "ci_high": res["agreement_ci_high"], "n_runs": res["n_runs"]},
                                    f"Monte Carlo test ({stats.CONSISTENCY_DRAWS:,} simulated studies) of the modal "
                                    f"absorber count (ties by agreement) vs {k} uniform classes; effect: pair "
                                    "agreement (the unbiased A truncated to [1/K, 1], so biased upward: exactly 1/K in "
                                    f"about half of chance studies; 1/K = {1 / k:.2f}) with its score interval",
                                    effect_name="pair agreement",
                                    p_min_of_n=lambda n, k=k: stats.modal_count_p_min(n, k)))
    return pd.DataFrame(rows), pd.DataFrame(dist, columns=["condition", "noise", "class", "count", "n_runs", "share",
                                                           "ci_low", "ci_high"]), tests


# ---------------------------------------------------------------- 3. absorber vs condition

def different_networks(groups: dict[str, list[dict]], conditions: list[str]) -> bool:
    """Whether the conditions build different networks (contract.NETWORK_KEYS differ)."""
    return len({json.dumps([groups[c][0]["config"].get(k) for k in NETWORK_KEYS]) for c in conditions}) > 1


def accuracy_trends(groups: dict[str, list[dict]]) -> list[dict]:
    """Within each set of >= 2 conditions that train the same classes: does a family's top share, or
    its mean max-softmax, go with the test accuracy over the runs (stats.rank_trend)? Pre-registered
    (confirmatory, Gaussian noise) where the conditions are arms (an `arm` axis) that build different
    networks, the design of an accuracy ladder; exploratory elsewhere."""
    by_classes = defaultdict(list)
    for condition, runs in groups.items():
        by_classes[tuple(runs[0]["classes"])].append(condition)
    rows = []
    for conditions in by_classes.values():
        runs = [r for c in conditions for r in groups[c] if r.get("test_accuracy") is not None]
        if len(conditions) < 2 or len(runs) < 3:
            continue
        # pre-registered by the design: arms (an `arm` axis) that are different networks, as a ladder's rungs
        ladder = different_networks(groups, conditions) and all(groups[c][0]["config"].get("arm") for c in conditions)
        acc = [r["test_accuracy"] for r in runs]
        for f in families_of(runs):
            for variable in ("top_share", "mean_max_softmax"):
                values = [r[variable][r["families"].index(f)] for r in runs]
                res = stats.rank_trend(acc, values)
                row = result_row("accuracy_trend", f"the {variable} of {f} noise goes with test accuracy",
                                 " vs ".join(conditions), f, res, "Spearman rho over runs, runs permuted "
                                 f"({stats.PERMUTATIONS} permutations); percentile bootstrap interval over runs",
                                 variable=variable, p_min_of_n=lambda n: stats.mc_floor(stats.PERMUTATIONS))
                if ladder and f == PRIMARY_NOISE:
                    row["family"] = "confirmatory"
                rows.append(row)
    return rows


def paired_seeds(seed_sets: list[set]) -> list:
    """The seeds every condition has (the complete pairs), when the conditions were run on the
    same seeds: at least 2 in common and at least half of each condition's runs. One diverged or
    missing run drops its seed's pair, not the design."""
    common = sorted(set.intersection(*seed_sets))
    return common if len(common) >= 2 and all(2 * len(common) >= len(s) for s in seed_sets) else []


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
        common = paired_seeds(seed_sets)
        if common and different_networks(groups, conditions):   # e.g. a ladder's rungs: small_cnn, airbench
            notes.append(f"{label}: the conditions build different networks ({', '.join(NETWORK_KEYS)} differ), so a "
                         "seed does not pair their runs: the absorber is compared across them unpaired (the condition "
                         "labels permuted over runs).")
            common = []
        unpaired_runs = sum(len(s) for s in seed_sets) - len(common) * len(conditions)
        if common and unpaired_runs:
            notes.append(f"{label}: {unpaired_runs} run(s) without a partner in every condition (diverged, failed "
                         f"or not run) are left out of the paired tests; {len(common)} complete pairs remain.")
        for f in families_of([r for c in conditions for r in groups[c]]):
            absorbers = [(c, r["seed"], r["absorber"][r["families"].index(f)],
                          r["absorption"][r["families"].index(f)]) for c in conditions for r in groups[c]]
            sizes = [len(groups[c]) for c in conditions]
            res = stats.permutation_chi2([a for _, _, a, _ in absorbers], [c for c, _, _, _ in absorbers])
            g = len(conditions)
            tests.append(result_row("absorber_vs_condition_chi2" if common else "absorber_vs_condition",
                                    "the absorber depends on the condition", label, f, res,
                                    f"permutation chi-square ({res['permutations']} relabellings of conditions "
                                    "over runs)",
                                    p_min_of_n=lambda n, g=g, b=res["permutations"]:
                                        stats.relabelling_p_min([n] * g, b)))
            if not common:
                continue
            table = {(c, s): (a, sh) for c, s, a, sh in absorbers}
            pooled = pd.Series([table[(c, s)][0] for c in conditions for s in common]).mode().sort_values().iloc[0]
            k = list(classes).index(pooled)
            pair_note = (f"{len(common)} complete pairs"
                         + (f" of {max(sizes)} seeds" if len(common) < max(sizes) else ""))
            for a, b in [(conditions[0], c) for c in conditions[1:]]:   # each against the first (reference)
                eq = stats.discordance([table[(a, s)][0] for s in common], [table[(b, s)][0] for s in common])
                tests.append(result_row("absorber_equivalence", f"{a} and {b} change the absorber in fewer than "
                                        f"{eq['margin']:.0%} of the seeds", f"{a} vs {b}", f, eq,
                                        f"discordant seeds {eq['statistic']}/{eq['n_runs']} with a Clopper-Pearson "
                                        f"{stats.LEVEL} interval; exact binomial equivalence test, H0 rate >= "
                                        f"{eq['margin']:.2f} ({pair_note})",
                                        p_min_of_n=lambda n, m=eq["margin"]: (1 - m) ** n))
            if len(conditions) == 2:
                a, b = conditions
                mh = stats.marginal_homogeneity([table[(a, s)][0] for s in common],
                                                [table[(b, s)][0] for s in common])
                tests.append(result_row("absorber_vs_condition", "the absorber depends on the condition (paired seeds)",
                                        label, f, {**mh, "n_runs": len(common)},
                                        f"marginal homogeneity, paired permutation (each seed's two absorbers "
                                        f"swapped; {mh['discordant']} of {len(common)} seeds discordant; {pair_note}); "
                                        f"statistic |d|^2; Stuart-Maxwell {mh['stuart_maxwell']:.2f} on {mh['df']} df "
                                        f"for reference", effect=mh["discordant"] / len(common),
                                        effect_name="discordance rate", p_min_of_n=stats.sign_flip_p_min))
                diffs = np.array([table[(b, s)][1][k] - table[(a, s)][1][k] for s in common])
                sf = stats.sign_flip(diffs)
                tests.append(result_row("share_vs_condition", f"the share of {pooled} differs ({b} - {a})", label, f,
                                        {**sf, "n_runs": len(common)},
                                        f"sign-flip test on paired share differences ({pair_note})", variable=pooled,
                                        effect=float(diffs.mean()), effect_name=PAIRED_MEAN,
                                        p_min_of_n=stats.sign_flip_p_min))
            else:
                indicator = np.array([[table[(c, s)][0] == pooled for c in conditions] for s in common], dtype=int)
                q = stats.cochran_q(indicator)
                tests.append(result_row("absorber_vs_condition", f"P(absorber = {pooled}) differs between conditions "
                                        "(paired seeds)", label, f, {**q, "n_runs": len(common)},
                                        f"Cochran's Q, seeds paired ({pair_note}); p by permuting each seed's row "
                                        f"across conditions ({q['permutations']} permutations)", variable=pooled,
                                        effect=float(indicator.mean()),
                                        effect_name=f"share of runs absorbing to {pooled}",
                                        p_min_of_n=lambda n, g=g: float(g) ** (1 - n)))
    if len(by_classes) > 1:
        notes.append("Conditions that train different class sets are not compared by absorber "
                     "identity (their absorbers are drawn from different sets).")
    return tests, notes


# ---------------------------------------------------------------- 4.-5. MST and distances

PERMUTATION_FAMILY = PRIMARY_NOISE  # the noise row's permutation test covers the question's noise


def tree_tests(groups: dict[str, list[dict]]) -> tuple[pd.DataFrame, list[dict]]:
    """The class tree's edges and overlap and the class-class distance agreement, once per
    condition (class means come from the test set, so the class block is the same for every noise
    family); where the noise node hangs and whether its nearest class is the absorber, per noise
    family; the noise row's distance agreement for the gaussian family (which keeps a
    10,000-trial study's aggregation to about a minute)."""
    class_trees, attachments, tests = {}, {}, []
    for condition, runs in groups.items():
        classes = runs[0]["classes"]
        k = len(classes)
        block = np.array([r["distance"][0][:k, :k] for r in runs])
        tree_list = [trees.class_tree(d) for d in block]
        class_trees[condition] = (classes, tree_list)
        s = len(runs)
        if s >= 3 and k >= 3:  # pairwise statistics need 3 runs; a tree over 2 classes is one edge
            ov = trees.overlap(k, tree_list)
            tests.append(result_row("mst_overlap", "the class trees share edges beyond chance", condition,
                                    trees.ALL_FAMILIES, ov,
                                    f"class-relabelling permutation test of mean pairwise shared class-tree edges "
                                    f"(null mean 2(K-1)/K = {ov['null_mean']:.2f}, {ov['permutations']} perms)",
                                    p_min_of_n=lambda n, k=k, b=ov["permutations"]: stats.tree_overlap_p_min(k, n, b)))
            iu = np.triu_indices(k, 1)
            mantel = stats.mantel_test(block[:, iu[0], iu[1]], n_nodes=k)
            tests.append(result_row("distance_agreement", "class-class distances agree across runs", condition,
                                    trees.ALL_FAMILIES, mantel, "Mantel: mean pairwise Spearman, class-label "
                                    f"permutation ({mantel['permutations']})",
                                    p_min_of_n=lambda n, k=k, b=mantel["permutations"]: stats.mantel_p_min(k, n, b)))
        for f in families_of(runs):
            i = [r["families"].index(f) for r in runs]
            mats = np.array([r["distance"][j] for r, j in zip(runs, i)])
            nearest = [trees.nearest_class(m) for m in mats]
            attachments[(condition, f)] = (classes, nearest)
            if s < 3:
                continue
            att = stats.modal_count_test(np.array(nearest), k)
            modal = classes[att["modal"]]
            tests.append(result_row("noise_attachment", "the noise node hangs on the same class across runs",
                                    condition, f, {**att, "statistic": int(att["counts"].max()), "n_runs": s},
                                    f"Monte Carlo test ({stats.CONSISTENCY_DRAWS:,}) of the modal count of the noise "
                                    f"node's nearest class vs {k} uniform classes "
                                    "(classes relabelled, noise node fixed)",
                                    variable=modal, effect=att["counts"].max() / s,
                                    effect_name=f"share of runs on {modal}",
                                    p_min_of_n=lambda n, k=k: stats.modal_count_p_min(n, k)))
            absorber_idx = [classes.index(r["absorber"][j]) for r, j in zip(runs, i)]
            pair = stats.pairing_test(np.array(nearest), np.array(absorber_idx))
            tests.append(result_row("noise_neighbour", "the class nearest to the noise mean is the run's absorber",
                                    condition, f, pair,
                                    f"pairing permutation across runs ({pair['permutations']}): hits vs the "
                                    f"{pair['expected_hits']:.1f} the two's distributions imply",
                                    p_min_of_n=lambda n, k=k, b=pair["permutations"]: _best_pairing_p_min(n, k, b)))
            if f == PERMUTATION_FAMILY:
                row = stats.mantel_test(mats[:, k, :k], n_nodes=None)
                tests.append(result_row("noise_distance_agreement", "noise-class distances agree across runs",
                                        condition, f, row,
                                        f"Spearman of noise rows, class-label permutation ({row['permutations']})",
                                        p_min_of_n=lambda n, k=k, b=row["permutations"]: stats.mantel_p_min(k, n, b)))
    return trees.edge_frequency(class_trees, attachments), tests


def _best_pairing_p_min(n: int, k: int, perms: int) -> float:
    """The pairing test's smallest p with n runs at the most favourable marginals (labels as
    spread as K allows, every run a hit): prod n_c! / n!."""
    sizes = [n // k + (c < n % k) for c in range(k)]
    return max(math.exp(sum(math.lgamma(x + 1) for x in sizes) - math.lgamma(n + 1)), stats.mc_floor(perms))


# ---------------------------------------------------------------- corrections

def _needed_n(p_min_of_n, level: float) -> float:
    """The smallest n whose smallest attainable p reaches `level` (NaN if more runs cannot)."""
    if p_min_of_n is None or not np.isfinite(level) or p_min_of_n(N_SEARCH) > level:
        return np.nan
    lo, hi = 1, N_SEARCH   # p_min_of_n(hi) <= level; p_min falls with n
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if p_min_of_n(mid) <= level else (mid + 1, hi)
    return float(lo)


def finalize(rows: list[dict], weak: set[str] = frozenset(), conditions: set[str] = frozenset()) -> pd.DataFrame:
    """tests.csv: each family's correction, and for every row the p it needs (stats.needed_p),
    whether its smallest attainable p can reach it, and how many runs would let it. A row about a
    condition too weak to interpret (`weak`, analysis/guard.py) is marked `too_weak` and leaves the
    confirmatory and factors families for the exploratory one."""
    df = pd.DataFrame(rows, columns=[*TEST_COLUMNS, "_p_min_of_n"])
    df["too_weak"] = [guard.involves(c, weak, conditions) for c in df["condition"]]
    moved = df["too_weak"] & (df["family"] != "exploratory")
    df.loc[moved, "method"] = df.loc[moved, "method"] + "; out of the " + df.loc[moved, "family"] + \
        " family: a condition too weak to interpret"
    df.loc[moved, "family"] = "exploratory"
    df["p_value"] = df["p_value"].astype(float)
    df["p_min"] = df["p_min"].astype(float)
    for family, method in CORRECTION.items():
        mask = df["family"] == family
        if mask.any():
            df.loc[mask, "p_adjusted"] = stats.adjust(df.loc[mask, "p_value"].to_numpy(), method)
            df.loc[mask, "p_needed"] = stats.needed_p(df.loc[mask, "p_value"].to_numpy(), method)
            df.loc[mask, "method"] = df.loc[mask, "method"] + f"; {method} within the {family} family"
    df["can_reject"] = df["p_min"] <= df["p_needed"].astype(float)
    df["n_needed"] = [_needed_n(f, lvl) for f, lvl in zip(df["_p_min_of_n"], df["p_needed"].astype(float))]
    # a pairing test (its p_min_of_n assumes the most favourable marginals) that cannot reject with more
    # runs than n_needed is held back by its labels' distributions (both on one class), not by n: no n is
    # promised. Other tests' p_min falls with the runs that carry information (discordant seeds, non-zero
    # differences), which more runs bring, so their n_needed stands.
    held_by_design = (df["test"].isin(PAIRING_TESTS) & ~df["can_reject"]
                      & (df["n_needed"] <= df["n_runs"].astype(float)))
    df.loc[held_by_design, "n_needed"] = np.nan
    return df.drop(columns="_p_min_of_n")
