"""Is clutter the cause? Per-class interventions (grid axis `class_intervention`) against the same
seeds without one: does the target start absorbing noise, with a dose-response, and did its
clutter move as intended?

The unit of replication is the seed: for each seed, the intervened networks of one kind and
strength are compared with that seed's network without intervention, and the comparison is
averaged over targets before any test, so networks sharing a baseline never count as independent.
One topic of the analysis (`TOPIC`, analysis/topic.py).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats
from .document import Bullets, Emph, Link, Paragraph, Section, text
from .inference import PAIRED_MEAN, result_row
from .report import ReportContext, verdict
from .tables import completed, paired_with_none
from .topic import Findings, Topic, measured

AXIS = "class_intervention"
NOISE = "gaussian"
# the direction each kind should move each pixel clutter measure of its target class
INTENDED = {"gaussian_noise": {"png_bits_per_pixel": +1, "gradient_energy": +1, "spectral_slope": +1},
            "blur": {"png_bits_per_pixel": -1, "gradient_energy": -1, "spectral_slope": -1}}


KEPT_FRACTION = ("subsample", "majority")  # kinds whose strength is a fraction of images kept


def dose(kind: str, strength: float) -> float:
    """0 = no intervention; for subsample (the target's images) and majority (every other class's)
    the strength is the fraction kept, so the dose is 1 - kept."""
    return 1 - strength if kind in KEPT_FRACTION else strength


def pairs_table(data) -> pd.DataFrame:
    """One row per intervened run, with the same seed's baseline run (every other axis equal)."""
    if AXIS not in data.axes:
        return pd.DataFrame()
    runs = [r for r in completed(data) if NOISE in r["families"]]
    rows = []
    for b, r, others in paired_with_none(runs, data.axes, AXIS):
        spec = r["axes"][AXIS]
        t = spec["target"]
        row = {"trial_id": r["trial_id"], "baseline_id": b["trial_id"], "group": ", ".join(others) or "all",
               "seed": r["seed"], "target": t, "kind": spec["kind"], "strength": spec["strength"],
               "dose": dose(spec["kind"], spec["strength"]),
               "share": _share(r, t), "baseline_share": _share(b, t),
               "is_absorber": _absorber(r) == t, "baseline_is_absorber": _absorber(b) == t}
        for m in ("png_bits_per_pixel", "gradient_energy", "spectral_slope", "feature_trace", "twonn_dimension"):
            row[f"clutter_{m}"] = _clutter(r, m, t)
            row[f"baseline_clutter_{m}"] = _clutter(b, m, t)
        rows.append(row)
    return pd.DataFrame(rows)


def _share(r, target) -> float:
    return float(r["absorption"][r["families"].index(NOISE)][r["classes"].index(target)])


def _absorber(r) -> str:
    return r["absorber"][r["families"].index(NOISE)]


def _clutter(r, measure, target):
    try:
        return float(r["extra"]["clutter"]["classes"][measure][target])
    except KeyError:
        return np.nan


def causal_tests(pairs: pd.DataFrame) -> list[dict]:
    tests = []
    if pairs.empty:
        return tests
    for (group, kind, strength), sub in pairs.groupby(["group", "kind", "strength"]):
        per_seed = sub.groupby("seed").agg(share=("share", "mean"), base=("baseline_share", "mean"),
                                           hit=("is_absorber", "mean"), base_hit=("baseline_is_absorber", "mean"))
        label = f"{group}: {kind} {strength:g}"
        if len(per_seed) < 2:
            continue
        d_share = (per_seed["share"] - per_seed["base"]).to_numpy()
        res = stats.sign_flip(d_share)
        tests.append(result_row("causal_effect",
                                f"{kind} at {strength:g} changes the share of {NOISE} noise its target absorbs",
                                label, NOISE, {**res, "statistic": float(d_share.mean()), "n_runs": len(per_seed)},
                                f"sign-flip over seeds of the per-seed mean (over targets) paired difference; "
                                f"{int(sub['is_absorber'].sum())}/{len(sub)} intervened runs have the target as "
                                f"absorber, {int(sub['baseline_is_absorber'].sum())}/{len(sub)} of their baselines",
                                variable=kind, effect=float(d_share.mean()), effect_name=PAIRED_MEAN,
                                p_min_of_n=stats.sign_flip_p_min))
        d_hit = (per_seed["hit"] - per_seed["base_hit"]).to_numpy()
        res = stats.sign_flip(d_hit)
        tests.append(result_row("causal_absorber",
                                f"{kind} at {strength:g} changes how often the target is the absorber",
                                label, NOISE, {**res, "statistic": float(d_hit.mean()), "n_runs": len(per_seed)},
                                "sign-flip over seeds of the per-seed change in the share of targets that absorb "
                                "(paired with the same seed's network without intervention)", variable=kind,
                                effect=float(d_hit.mean()), effect_name=PAIRED_MEAN, p_min_of_n=stats.sign_flip_p_min))
        for m, direction in INTENDED.get(kind, {}).items():
            per_seed_clutter = sub.groupby("seed")[[f"clutter_{m}", f"baseline_clutter_{m}"]].mean()
            diffs = (per_seed_clutter.iloc[:, 0] - per_seed_clutter.iloc[:, 1]).dropna().to_numpy()
            if len(diffs) >= 2:
                res = stats.sign_flip(diffs)
                tests.append(result_row("manipulation_check", f"{kind} at {strength:g} moves the target's {m} "
                                        f"{'up' if direction > 0 else 'down'}", label, NOISE,
                                        {**res, "statistic": float(diffs.mean()), "n_runs": len(diffs)},
                                        "sign-flip over seeds of paired differences", variable=m,
                                        effect=float(diffs.mean()), effect_name=PAIRED_MEAN,
                                        p_min_of_n=stats.sign_flip_p_min))
    for (group, kind), sub in pairs.groupby(["group", "kind"]):
        if sub["dose"].nunique() < 2:
            continue
        rhos = []
        for _, s in sub.groupby("seed"):
            by_dose = s.groupby("dose")["share"].mean()
            doses = np.concatenate([[0.0], by_dose.index.to_numpy()])
            shares = np.concatenate([[s["baseline_share"].mean()], by_dose.to_numpy()])
            if np.ptp(shares) > 0:
                rhos.append(sps.spearmanr(doses, shares).statistic)
            else:
                rhos.append(0.0)
        if len(rhos) >= 2:
            res = stats.sign_flip(np.array(rhos))
            tests.append(result_row("causal_dose", f"the target's share of {NOISE} noise changes with the {kind} dose",
                                    f"{group}: {kind}", NOISE,
                                    {**res, "statistic": float(np.mean(rhos)), "n_runs": len(rhos)},
                                    "per seed, Spearman of dose (0 = none) vs the mean target share; "
                                    "sign-flip over seeds",
                                    effect=float(np.mean(rhos)), effect_name="mean spearman rho",
                                    p_min_of_n=stats.sign_flip_p_min))
    return tests


def dose_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% CI over seeds of the target's share at each dose (0 = the baselines): the t
    interval over seeds, cut to [0, 1] where a share can lie (a percentile bootstrap would stay in
    range too, but covers too little with a handful of seeds)."""
    if pairs.empty:
        return pd.DataFrame()
    rows = []
    for (group, kind), sub in pairs.groupby(["group", "kind"]):
        base = sub.groupby("seed")["baseline_share"].mean()
        levels = [(0.0, base)] + [(d, s.groupby("seed")["share"].mean()) for d, s in sub.groupby("dose")]
        for d, per_seed in levels:
            n, m = len(per_seed), per_seed.mean()
            half = stats.t_half_width(per_seed)
            rows.append({"group": group, "kind": kind, "dose": d, "n_seeds": n, "mean_target_share": m,
                         "ci_low": max(0.0, m - half), "ci_high": min(1.0, m + half)})
    return pd.DataFrame(rows)


def plot(doses: pd.DataFrame, out) -> str | None:
    if doses.empty:
        return None
    from . import plots as P
    plt = P.plt
    with plt.rc_context(P.STYLE):
        groups = list(dict.fromkeys(doses["group"]))
        fig, axes = P._grid(len(groups), 4.6, 3.4)
        legend = {}
        for ax, g in zip(axes, groups):
            for kind, s in doses[doses["group"] == g].groupby("kind"):
                s = s.sort_values("dose")
                legend[kind], = ax.plot(s["dose"], s["mean_target_share"], marker="o", label=kind)
                ax.fill_between(s["dose"], s["ci_low"], s["ci_high"], alpha=0.2)
            ax.set_xlabel("dose: the strength, or 1 - fraction kept\n(subsample, majority); 0 = none")
            ax.set_ylabel(f"share of {NOISE} noise to the target")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(g)
        P._legend_outside(fig, list(legend.values()), list(legend), title="intervention")
        return P._save(fig, out, "causal_dose_response.png", "Per-class interventions: the share of Gaussian "
                       f"noise the target class absorbs, by dose (mean and {stats.LEVEL} CI over seeds)")


def report_section(ctx: ReportContext) -> Section:
    pairs, doses, tests = ctx.table("causal_pairs"), ctx.table("causal_dose"), ctx.tests
    s = Section("Is clutter causal?", key="causal")
    if pairs.empty:
        return s
    t = tests[tests["test"].isin(["causal_effect", "causal_absorber", "causal_dose"])]
    s.blocks += [
        Paragraph(text(f"{len(pairs)} networks trained with one class's training images changed, each paired with "
                       "the network of the same seed trained without the change (same initial weights, same data "
                       "order). Per kind and strength, the per-seed mean over targets of the paired difference is "
                       "tested by sign-flip over seeds; the share effect is in the confirmatory family (Holm), the "
                       "absorber status, the dose-response and the manipulation checks are exploratory (BH).")),
        Bullets([text(f"{row['condition']}: {row['hypothesis']}: {row['statistic']:+.3f} "
                      f"(n = {row['n_runs']} seeds, {verdict(row)}; {row['method']})") for _, row in t.iterrows()])]
    checks = tests[tests["test"] == "manipulation_check"]
    if not checks.empty:
        s.blocks += [Paragraph(text("Did the target's clutter move as intended (manipulation checks)?")),
                     Bullets([text(f"{r['condition']}: {r['hypothesis']}: {r['statistic']:+.3g} ({verdict(r)})")
                              for _, r in checks.iterrows()])]
    s.blocks += [Paragraph(text("Mean share of Gaussian noise absorbed by the target, by dose:")),
                 Bullets([text(f"{r.group}, {r.kind}, dose {r.dose:g}: {r.mean_target_share:.3f} "
                               f"[{r.ci_low:.3f}, {r.ci_high:.3f}] (n = {r.n_seeds} seeds)")
                          for r in doses.itertuples()]),
                 *ctx.figure("causal_dose_response.png", "Per-class interventions: the target's share of Gaussian "
                             f"noise by dose (mean and {stats.LEVEL} CI over seeds)"),
                 Paragraph(text("What this cannot conclude: each intervention changes more than \"clutter\" (added "
                                "noise also shifts the class's colour statistics; blur removes detail that may carry "
                                "the class's identity; label noise, subsampling and majority change the class prior "
                                "and its margin, and the last two the number of training steps too), so a positive "
                                "result says that ", Emph("this"), " change to a class's data moves noise toward it, "
                                "not which property does. A null result with few seeds bounds only large effects; the "
                                "CPU smoke version trains small networks on a subset and shows that the pipeline "
                                "works, not the size of the effect in the original ResNet-18 setting.")),
                 Paragraph(text("Tables: ", Link("causal_pairs.csv", "causal_pairs.csv"), ", ",
                                Link("causal_dose.csv", "causal_dose.csv"), "."))]
    return s


def study_tables(data) -> dict[str, pd.DataFrame]:
    """The pairs and the dose table, where the study has a class_intervention axis."""
    pairs = pairs_table(data)
    return measured({"causal_pairs": pairs, "causal_dose": dose_table(pairs)})


def methods_text() -> str:
    """This topic's bullets of the Methods (authored markdown; report.methods_text joins them)."""
    S = stats
    return f"""- **Is clutter causal?**: per kind and strength, the per-seed mean over targets of the paired
  change in the target's share (confirmatory) and absorber status; a dose-response trend (per-seed
  Spearman of dose vs target share); manipulation checks of the target's clutter. Sign-flip tests
  are exact over all 2^n patterns up to n = {S.EXACT_SIGN_FLIPS} (smallest attainable p 2^(1-n)), else
  {S.PERMUTATIONS:,} at random."""


# this topic's test ids -> (table, what a small p says); README's table of test ids is checked
# against every topic's (pipeline.catalog_of_test_ids)
TESTS = {
    "causal_effect": ("tests", "a per-class intervention changes the share of noise its target absorbs (seeds paired)"),
    "causal_absorber": ("tests", "a per-class intervention makes its target the absorber more often (seeds paired)"),
    "causal_dose": ("tests", "the target's share changes with the intervention's dose (per-seed trend)"),
    "manipulation_check": ("tests", "a per-class intervention moved the target's clutter the intended way"),
}

TOPIC = Topic("causal", tables=lambda inputs, frames: study_tables(inputs.data),
              tests=lambda inputs, frames: Findings(causal_tests(frames.get("causal_pairs", pd.DataFrame()))),
              figures=lambda inputs, frames, folder: ([plot(frames["causal_dose"], folder)]
                                                      if "causal_dose" in frames else []),
              sections=(report_section,), methods=methods_text,
              test_ids=TESTS)
