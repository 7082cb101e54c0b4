"""Which factor moves the absorber? For every factor that is a grid axis (activation, pool, norm,
model, and class frequency through class_intervention's majority and subsample kinds), each level
against the axis's first value (the reference; list the default first), seeds paired and every
other axis equal: does it change the absorber, the top share, and the untrained network's bias?

The unit of replication is the seed: in a factorial grid a seed's networks in different strata
share its initial weights, so each test first reduces a seed's pairs to one number (or one vector),
and its p comes from flipping whole seeds. One topic of the analysis (`TOPIC`, analysis/topic.py).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import stats
from .contract import show_value
from .document import Bullets, Link, Paragraph, Section, Strong, text
from .inference import PAIRED_MEAN, result_row
from .report import ReportContext, verdict
from .tables import completed, epoch0_favourite
from .topic import Findings, Topic, measured

NOISE = "gaussian"
ARCHITECTURE_AXES = ("activation", "pool", "norm", "model")
FREQUENCY_KINDS = ("majority", "subsample")   # class_intervention kinds that change a class's frequency
FAMILY = "factors"


def factor_axes(data) -> list[str]:
    axes = [a for a in ARCHITECTURE_AXES if a in data.axes]
    if "class_intervention" in data.axes and any(
            isinstance(v, dict) and v.get("kind") in FREQUENCY_KINDS for v in _levels(data, "class_intervention")):
        axes.append("class_intervention")
    return axes


def _levels(data, axis: str) -> list:
    """The axis's values in the order the sweep lists them (the first is the reference); without
    the sweep's grid (an older study.json), in the order of the trial folders, `none` first."""
    grid = (data.study or {}).get("grid") or {}
    if axis in grid:
        return list(grid[axis])
    found = list({show_value(r["axes"][axis]): r["axes"][axis] for r in completed(data)}.values())
    return sorted(found, key=lambda v: v != "none") if axis == "class_intervention" else found


def _epoch0_top_share(r) -> float:
    return float(r["trajectory"][0].max()) if len(r["trajectory"]) and r["trajectory_epochs"][0] == 0 else np.nan


def pairs_table(data) -> pd.DataFrame:
    """One row per (factor, level, stratum, seed): the reference run and the level's run."""
    runs = [r for r in completed(data) if NOISE in r["families"]]
    rows = []
    for axis in factor_axes(data):
        levels = _levels(data, axis)
        ref = levels[0]
        others = [a for a in data.axes if a not in (axis, "seed")]
        key = lambda r: (tuple(show_value(r["axes"][a]) for a in others), r["seed"])  # noqa: E731, B023  (used in this iteration)
        base = {key(r): r for r in runs if show_value(r["axes"][axis]) == show_value(ref)}
        for level in levels[1:]:
            if axis == "class_intervention" and not (isinstance(level, dict) and level.get("kind") in FREQUENCY_KINDS):
                continue
            for r in runs:
                if show_value(r["axes"][axis]) != show_value(level) or key(r) not in base:
                    continue
                b = base[key(r)]
                i, j = b["families"].index(NOISE), r["families"].index(NOISE)
                rows.append({"factor": axis, "level": show_value(level), "reference": show_value(ref),
                             "stratum": ", ".join(f"{a}={v}" for a, v in zip(others, key(r)[0])) or "all",
                             "seed": r["seed"], "trial_id": r["trial_id"], "reference_id": b["trial_id"],
                             "absorber": r["absorber"][j], "reference_absorber": b["absorber"][i],
                             "top_share": float(r["top_share"][j]), "reference_top_share": float(b["top_share"][i]),
                             "epoch0_top_share": _epoch0_top_share(r),
                             "reference_epoch0_top_share": _epoch0_top_share(b),
                             "test_accuracy": r["test_accuracy"], "reference_test_accuracy": b["test_accuracy"]})
    return pd.DataFrame(rows)


def _per_seed_diff(sub: pd.DataFrame, value: str) -> np.ndarray:
    d = (sub[value] - sub[f"reference_{value}"]).groupby(sub["seed"]).mean()
    return d.dropna().to_numpy()


def factor_tests(pairs: pd.DataFrame) -> list[dict]:
    """Per factor and level, three tests in the `factors` family (Holm):
    - absorber: H0 the absorber's distribution is the same at the level and the reference, each
      seed's labels exchangeable (marginal homogeneity, whole seeds swapped);
    - top share: H0 the per-seed mean paired difference in the Gaussian top share is symmetric
      about 0 (sign-flip over seeds);
    - epoch-0 bias: the same for the untrained network's top share of Gaussian noise (epoch 0 of
      the trajectory), for architecture factors only: a data factor (class frequency) leaves seed
      s's untrained network as it is, so there is nothing to test (and no test to correct for).
    With S seeds the smallest attainable p is 2^(1-S) for each."""
    tests = []
    if pairs.empty:
        return tests
    for (factor, level), sub in pairs.groupby(["factor", "level"], sort=False):
        seeds = sub["seed"].nunique()
        if seeds < 2:
            continue
        label = f"{factor}={level} vs {sub['reference'].iloc[0]}"
        mh = stats.marginal_homogeneity_clustered(sub["reference_absorber"].tolist(), sub["absorber"].tolist(),
                                                  sub["seed"].tolist())
        changed = float((sub["absorber"] != sub["reference_absorber"]).mean())
        modal = f"{sub['reference_absorber'].mode().iloc[0]} -> {sub['absorber'].mode().iloc[0]}"
        tests.append(result_row("factor_absorber", f"{label}: changes the absorber", label, NOISE,
                                {"statistic": mh["statistic"], "p_value": mh["p_value"], "p_min": mh["p_min"],
                                 "effect": changed, "n_runs": seeds},
                                f"marginal homogeneity of paired absorbers, whole seeds swapped (exact; "
                                f"{mh['contributing_clusters']} of {seeds} seeds contribute); modal absorber {modal}; "
                                f"{len(sub)} pairs in {sub['stratum'].nunique()} strata",
                                effect_name="share of pairs with another absorber", p_min_of_n=stats.sign_flip_p_min))
        for value, test_id, what in (("top_share", "factor_top_share", f"the top share of {NOISE} noise"),
                                     ("epoch0_top_share", "factor_epoch0_bias",
                                      f"the untrained network's top share of {NOISE} noise (epoch 0)")):
            if test_id == "factor_epoch0_bias" and factor not in ARCHITECTURE_AXES:
                continue
            d = _per_seed_diff(sub, value)
            if len(d) < 2:
                continue
            res = stats.sign_flip(d)
            lo, hi = stats.t_interval(d)
            tests.append(result_row(test_id, f"{label}: changes {what}", label, NOISE,
                                    {**res, "statistic": float(d.mean()), "n_runs": len(d),
                                     "ci_low": lo, "ci_high": hi},
                                    f"sign-flip over seeds of the per-seed mean paired difference; {stats.LEVEL} t "
                                    f"interval [{lo:+.3f}, {hi:+.3f}]; standardised mean difference "
                                    f"{res['effect']:+.2f}",
                                    effect=float(d.mean()), effect_name=PAIRED_MEAN,
                                    p_min_of_n=stats.sign_flip_p_min))
    return tests


def favourite_tests(groups: dict[str, list[dict]]) -> list[dict]:
    """Exploratory, per condition: is the untrained network's favourite class (epoch 0, Gaussian
    noise) the class that absorbs after training, within a run? Both are usually concentrated on
    one class, so counting hits against 1/K would reject for two independent but concentrated
    labels; H0 is independence within runs given how often each label is which class
    (stats.pairing_test: the pairing of runs permuted)."""
    tests = []
    for condition, runs in groups.items():
        runs = [r for r in runs if NOISE in r["families"] and epoch0_favourite(r) is not None]
        if len(runs) < 3:
            continue  # a pairing permutation of 2 runs has nothing to permute
        classes = runs[0]["classes"]
        res = stats.pairing_test(np.array([classes.index(epoch0_favourite(r)) for r in runs]),
                                 np.array([classes.index(r["absorber"][r["families"].index(NOISE)]) for r in runs]))
        tests.append(result_row("epoch0_favourite_is_absorber", "the untrained network's favourite class is the "
                                "trained absorber", condition, NOISE, res,
                                f"pairing permutation across runs ({res['permutations']}): hits vs the "
                                f"{res['expected_hits']:.1f} the two's distributions imply"))
    return tests


def factor_table(pairs: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """Per factor and level: the three answers with their estimates, n, p and Holm p."""
    rows = []
    if pairs.empty:
        return pd.DataFrame()
    t = tests[tests["family"] == FAMILY]
    for (factor, level), sub in pairs.groupby(["factor", "level"], sort=False):
        label = f"{factor}={level} vs {sub['reference'].iloc[0]}"
        row = {"factor": factor, "level": level, "reference": sub["reference"].iloc[0],
               "n_seeds": sub["seed"].nunique(), "n_pairs": len(sub),
               "reference_modal_absorber": sub["reference_absorber"].mode().iloc[0],
               "modal_absorber": sub["absorber"].mode().iloc[0],
               "pairs_with_other_absorber": float((sub["absorber"] != sub["reference_absorber"]).mean()),
               "reference_top_share": float(sub["reference_top_share"].mean()),
               "top_share": float(sub["top_share"].mean()),
               "reference_epoch0_top_share": float(sub["reference_epoch0_top_share"].mean()),
               "epoch0_top_share": float(sub["epoch0_top_share"].mean()),
               "reference_test_accuracy": float(sub["reference_test_accuracy"].mean()),
               "test_accuracy": float(sub["test_accuracy"].mean()),
               "min_attainable_p": 2.0 ** (1 - sub["seed"].nunique())}
        for test_id, short in (("factor_absorber", "absorber"), ("factor_top_share", "top_share"),
                               ("factor_epoch0_bias", "epoch0")):
            hit = t[(t["condition"] == label) & (t["test"] == test_id)]
            row[f"{short}_p"] = float(hit["p_value"].iloc[0]) if len(hit) else np.nan
            row[f"{short}_p_holm"] = float(hit["p_adjusted"].iloc[0]) if len(hit) else np.nan
            row[f"{short}_can_reject"] = bool(hit["can_reject"].iloc[0]) if len(hit) else False
            row[f"{short}_verdict"] = verdict(hit.iloc[0]) if len(hit) else "not tested"
            if short != "absorber" and len(hit):
                row[f"{short}_diff"] = float(hit["statistic"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def report_section(ctx: ReportContext) -> Section:
    table, tests = ctx.table("factors"), ctx.tests
    s = Section("Which factor moves the absorber?", key="factors")
    if table.empty:
        return s
    s.blocks.append(Paragraph(text(
        "Each level against the axis's reference (its first value), seeds paired and every other axis equal; per "
        "seed the pairs are averaged over the other axes first. Three questions per level: does it change which "
        "class absorbs Gaussian noise (marginal homogeneity of the paired absorbers, whole seeds swapped), its top "
        "share (sign-flip over seeds), and the untrained network's bias (the top share at epoch 0, sign-flip over "
        "seeds)? Holm over the factors family.")))
    items = []
    for r in table.itertuples():
        def said(short, r=r):
            if short == "epoch0" and r.factor not in ARCHITECTURE_AXES:
                return "unchanged by design (a data factor: seed s starts from the same network)"
            if not getattr(r, f"{short}_can_reject"):
                return "untested"
            p = getattr(r, f"{short}_p_holm")
            return Strong("yes") if np.isfinite(p) and p < stats.ALPHA else "no evidence"
        items.append(text(
            Strong(f"{r.factor} = {r.level}"), f" (vs {r.reference}; n = {r.n_seeds} seeds, {r.n_pairs} pairs; "
            f"smallest attainable p {r.min_attainable_p:.2g}; test accuracy {r.reference_test_accuracy:.2f} -> "
            f"{r.test_accuracy:.2f}): absorber ", said("absorber"), f" ({r.reference_modal_absorber} -> "
            f"{r.modal_absorber}, {r.pairs_with_other_absorber:.0%} of pairs differ; {r.absorber_verdict}); top share ",
            said("top_share"), f" ({r.reference_top_share:.2f} -> {r.top_share:.2f}; {r.top_share_verdict}); epoch-0 "
            "bias ", said("epoch0"),
            f" ({r.reference_epoch0_top_share:.2f} -> {r.epoch0_top_share:.2f}; {r.epoch0_verdict})."
            if r.factor in ARCHITECTURE_AXES else "."))
    s.blocks.append(Bullets(items))
    fav = tests[tests["test"] == "epoch0_favourite_is_absorber"]
    if not fav.empty:
        s.blocks += [Paragraph(text("Does the untrained network's favourite class (epoch 0) become the absorber, "
                                    "within runs, beyond how often each is which class? (pairing permutation per "
                                    "condition, exploratory):")),
                     Bullets([text(f"{r['condition']}: {int(r['statistic'])}/{r['n_runs']} runs ({verdict(r)})")
                              for _, r in fav.iterrows()])]
    s.blocks.append(Paragraph(text("Tables: ", Link("factors.csv", "factors.csv"), ", pairs: ",
                                   Link("factor_pairs.csv", "factor_pairs.csv"), ".")))
    return s


def methods_text() -> str:
    """This topic's bullets of the Methods (authored markdown; report.methods_text joins them)."""
    S = stats
    return f"""- **Which factor moves the absorber?** (own family, Holm): each level of an architecture factor
  (activation, pool, norm, model) or of class frequency (class_intervention majority, subsample)
  against the axis's first value, seeds paired and every other axis equal. Absorber: marginal
  homogeneity of the paired absorbers, each seed's pairs (one per stratum of the other axes) swapped
  as a whole, exact; top share and epoch-0 top share: sign-flip over seeds of the per-seed mean
  paired difference, with a {S.LEVEL} t interval. Smallest attainable p 2^(1-S) with S seeds. Whether the
  untrained network's favourite class is the absorber within runs, beyond how often each is which
  class: pairing permutation across runs per condition (exploratory)."""


# this topic's test ids -> (table, what a small p says); README's table of test ids is checked
# against every topic's (pipeline.catalog_of_test_ids)
TESTS = {
    "factor_absorber": ("tests", "a factor level changes the absorber against the axis's reference (seeds paired)"),
    "factor_top_share": ("tests", "a factor level changes the top share of noise (seeds paired)"),
    "factor_epoch0_bias": ("tests", "a factor level changes the untrained network's top share (seeds paired)"),
    "epoch0_favourite_is_absorber": ("tests", "within a run, the untrained network's favourite class is the trained "
                                     "absorber more often than the two's distributions over runs imply"),
}

TOPIC = Topic("factors", tables=lambda inputs, frames: measured({"factor_pairs": pairs_table(inputs.data)}),
              tests=lambda inputs, frames: Findings(factor_tests(frames.get("factor_pairs", pd.DataFrame()))
                                                    + favourite_tests(inputs.groups)),
              summaries=lambda inputs, frames: measured({"factors": factor_table(
                  frames.get("factor_pairs", pd.DataFrame()), frames["tests"])}),
              sections=(report_section,), methods=methods_text,
              test_ids=TESTS)
