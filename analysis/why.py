"""Why this class? Tables, tests, figures and the report section for the per-trial "why"
measurements: clutter, the logit decomposition, OOD detectors, frequency probes, interventions;
with its paragraph of the Methods, one topic of the analysis (`TOPIC`, analysis/topic.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import stats
from .contract import NOISE_CLASS
from .document import Bullets, Code, Link, Paragraph, Section, Strong, text
from .inference import PAIRED_MEAN, PRIMARY_CLUTTER, PRIMARY_NOISE, families_of, result_row
from .report import ReportContext, verdict
from .tables import completed, paired_with_none, run_ids
from .topic import Findings, Topic, measured


def has(r: dict, key: str) -> bool:
    return key in r.get("extra", {})


# ---------------------------------------------------------------- tables

def clutter_table(data) -> pd.DataFrame:
    rows = []
    for r in completed(data):
        if not has(r, "clutter"):
            continue
        c = r["extra"]["clutter"]
        for measure, per_class in c["classes"].items():
            rows += [{**run_ids(r), "set": "class", "name": k, "measure": measure, "value": v}
                     for k, v in per_class.items()]
        for family, measures in c["noise"].items():
            rows += [{**run_ids(r), "set": "noise", "name": family, "measure": m, "value": v}
                     for m, v in measures.items()]
    return pd.DataFrame(rows, columns=["trial_id", "condition", "seed", "set", "name", "measure", "value"])


DECOMPOSITION_COLUMNS = ["absorber", "n_images", "absorber_share", "absorber_share_without_bias",
                         "top_share_dealt_mean", "bias_deal_rank", "bias_deals", "absorber_kept_by_deals",
                         "mean_margin", "mean_bias_part", "mean_weight_part", "bias_share_of_margin", "decided_by_bias",
                         "noise_feature_norm", "test_feature_norm"]


def _weight_norm_ratio(d: dict) -> float | None:
    """The absorber's head weight norm over the mean of the classes' (descriptive: a factor of the
    absorber's own logit, so not a class covariate to test)."""
    norms = d.get("weight_norm") or {}
    return float(norms[d["absorber"]] / np.mean(list(norms.values()))) if d.get("absorber") in norms else None


def decomposition_table(data) -> pd.DataFrame:
    rows = [{**run_ids(r), "noise": f, **{k: d.get(k) for k in DECOMPOSITION_COLUMNS},
             "absorber_weight_norm_ratio": _weight_norm_ratio(d)}
            for r in completed(data) if has(r, "logit_decomposition")
            for f, d in r["extra"]["logit_decomposition"].items()]
    return pd.DataFrame(rows, columns=["trial_id", "condition", "seed", "noise", *DECOMPOSITION_COLUMNS,
                                       "absorber_weight_norm_ratio"])


def ood_table(data) -> pd.DataFrame:
    rows = [{**run_ids(r), **row} for r in completed(data) if has(r, "ood") for row in r["extra"]["ood"]["rows"]]
    return pd.DataFrame(rows, columns=["trial_id", "condition", "seed", "detector", "ood_set", "auroc", "aupr_in",
                                       "aupr_out", "fpr95"])


def ood_summary(ood: pd.DataFrame) -> pd.DataFrame:
    """Mean +- sd over runs per condition, detector and OOD set."""
    if ood.empty:
        return pd.DataFrame(columns=["condition", "detector", "ood_set", "n_runs"])
    g = ood.groupby(["condition", "detector", "ood_set"], observed=True)
    out = g[["auroc", "aupr_in", "aupr_out", "fpr95"]].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    return out.assign(n_runs=g.size()).reset_index()


def frequency_table(data) -> pd.DataFrame:
    """Per run and band: the absorber, its share, and the share going to the run's own gaussian
    absorber (does the same class keep absorbing as the spectrum changes?)."""
    rows = []
    for r in completed(data):
        if not has(r, "frequency") or "gaussian" not in r["families"]:
            continue
        g_abs = r["absorber"][r["families"].index("gaussian")]
        rows += [{**run_ids(r), "kind": x["kind"], "cutoff": x["cutoff"], "absorber": x["absorber"],
                  "top_share": x["top_share"], "gaussian_absorber": g_abs,
                  "gaussian_absorber_share": x["shares"].get(g_abs, 0.0)} for x in r["extra"]["frequency"]]
    return pd.DataFrame(rows, columns=["trial_id", "condition", "seed", "kind", "cutoff", "absorber", "top_share",
                                       "gaussian_absorber", "gaussian_absorber_share"])


def real_top_share(r: dict, family: str) -> float:
    """The largest share going to a real (trained) class: a noise_class model's extra class is a
    reject option, not an absorbing class."""
    shares = r["absorption"][r["families"].index(family)]
    return float(max(s for c, s in zip(r["classes"], shares) if c != NOISE_CLASS))


# ---------------------------------------------------------------- tests

def clutter_tests(groups: dict[str, list[dict]], family: str = PRIMARY_NOISE) -> list[dict]:
    """Per condition: does a class's clutter (each measure; PNG bits per pixel is the confirmatory
    one) go with the share of `family` noise it absorbs? The class is the unit (clutter is
    measured on the same images in every run): the classes of the measure are relabelled, one
    relabelling for all runs (stats.class_permutation_correlation). The head's terms do not go
    through it: a class's bias, and its weight row's norm, are factors of its own logit, so within a
    run each goes with the class's share even where it carries no class effect (the calibration
    rejected 0.688 of null rows for the bias; with norms that enter the logits, 18-32% for the norm
    at 8-20 seeds). The weight norms stay descriptive in logit_decomposition.csv; bias_deal tests
    the biases (analysis/explanations.py)."""
    tests = []
    for condition, runs in groups.items():
        runs = [r for r in runs if has(r, "clutter") and has(r, "logit_decomposition") and family in r["families"]]
        if len(runs) < 2:
            continue
        classes = [c for c in runs[0]["classes"] if c != NOISE_CLASS]
        if len(classes) < 3:
            continue  # a rank correlation over two classes says nothing
        shares = np.array([[r["absorption"][r["families"].index(family)][r["classes"].index(c)] for c in classes]
                           for r in runs])
        measures = {m: np.array([[r["extra"]["clutter"]["classes"][m][c] for c in classes] for r in runs])
                    for m in runs[0]["extra"]["clutter"]["classes"]}
        for m, values in measures.items():
            res = stats.class_permutation_correlation(values, shares)
            how = (f"exact over all {res['permutations']:,} relabellings" if res["exact"]
                   else f"Monte Carlo over {res['permutations']:,} relabellings")
            k = len(classes)
            tests.append(result_row("clutter_absorption",
                                    f"{m} goes with the share of {family} noise a class absorbs",
                                    condition, family, res,
                                    f"mean over runs of the Spearman correlation across {k} classes; the classes of "
                                    f"the measure relabelled (one relabelling for all runs), {how}",
                                    variable=m, p_min_of_n=lambda n, k=k: stats.class_permutation_p_min(k)))
    return tests


PIXEL_MEASURES = ["png_bits_per_pixel", "spectral_slope", "gradient_energy", "colorfulness", "intensity_std"]


def lookalike_tests(frames, family: str = PRIMARY_NOISE) -> list[dict]:
    """Does noise look like the absorbing class? Per run, the trained class whose pixel-clutter
    profile (z-scored across classes) is nearest to the `family` bank's; per condition, is that
    class the absorber more often than another class would be? Clutter is a class property
    (usually the same class is nearest in every run), so the classes are relabelled
    (stats.class_relabel_hits); counting runs against 1/K each would treat one class S times."""
    if "clutter" not in frames:
        return []
    c, absorbers = frames["clutter"], frames["absorbers"]
    per_run = []
    for trial_id, sub in c[c["measure"].isin(PIXEL_MEASURES)].groupby("trial_id", observed=True):
        cls = sub[sub["set"] == "class"].pivot(index="name", columns="measure", values="value")
        noise = sub[(sub["set"] == "noise") & (sub["name"] == family)].set_index("measure")["value"]
        a = absorbers[(absorbers["trial_id"] == trial_id) & (absorbers["noise"] == family)]
        if cls.empty or noise.empty or len(cls) < 2 or a.empty:
            continue
        mu, sd = cls.mean(), cls.std().replace(0, 1)
        nearest = (((cls - mu) / sd - (noise[cls.columns] - mu) / sd) ** 2).sum(axis=1).idxmin()
        per_run.append((str(a["condition"].iloc[0]), list(cls.index), nearest, a["absorber"].iloc[0]))
    tests = []
    for condition in sorted({r[0] for r in per_run}):
        rows = [r for r in per_run if r[0] == condition]
        classes = rows[0][1]
        if any(r[1] != classes for r in rows):
            continue
        k = len(classes)   # an absorber outside the measured classes (noise_class's extra class) never hits
        res = stats.class_relabel_hits(np.array([classes.index(r[2]) for r in rows]),
                                       np.array([classes.index(r[3]) if r[3] in classes else -1 for r in rows]), k)
        top = pd.Series([r[2] for r in rows]).value_counts()
        tests.append(result_row("noise_lookalike",
                                f"the class nearest to the {family} bank in pixel clutter is the absorber",
                                condition, family, res,
                                f"the nearest class is {top.index[0]} in {top.iloc[0]}/{len(rows)} runs; classes "
                                f"relabelled ({'exact over' if res['exact'] else 'Monte Carlo,'} {res['maps']:,} "
                                "relabellings)", variable=str(top.index[0]),
                                p_min_of_n=lambda n, k=k: 1 / k))
    return tests


def intervention_tests(data) -> list[dict]:
    """Each training intervention against `none`, seeds paired (and every other axis equal): does
    it lower the share of the top real class, per noise family (seen: gaussian; unseen: others)?"""
    if "intervention" not in data.axes:
        return []
    all_pairs = paired_with_none(completed(data), data.axes, "intervention")
    tests = []
    for iv in sorted({r["axes"]["intervention"] for _, r, _ in all_pairs}):
        pairs = [(b, r) for b, r, _ in all_pairs if r["axes"]["intervention"] == iv]
        if len(pairs) < 2:
            continue
        for f in families_of([x for p in pairs for x in p]):
            diffs = np.array([real_top_share(b, f) - real_top_share(a, f) for a, b in pairs])
            single = [(real_top_share(a, f) > 0.5, real_top_share(b, f) > 0.5) for a, b in pairs]
            res = stats.sign_flip(diffs)
            seen = "seen in training" if f == "gaussian" else "unseen in training"
            tests.append(result_row("intervention_effect",
                                    f"{iv} changes the top real-class share of {f} noise ({seen})",
                                    iv, f, {**res, "n_runs": len(pairs), "statistic": float(diffs.mean())},
                                    f"sign-flip on paired differences (seeds paired with none); single-class "
                                    f"absorption (> 50%) in {sum(a for a, _ in single)}/{len(single)} runs without, "
                                    f"{sum(b for _, b in single)}/{len(single)} with", effect=float(diffs.mean()),
                                    effect_name=PAIRED_MEAN,
                                    p_min_of_n=stats.sign_flip_p_min))
    return tests


# ---------------------------------------------------------------- figures

def plots(frames: dict, out, groups: dict) -> list:
    from . import plots as P
    figures = []
    if "clutter" in frames:
        figures.append(P.clutter_scatter(frames["clutter"], frames["absorption"],
                                         {c: r[0]["classes"] for c, r in groups.items()}, out))
    if "ood" in frames:
        figures.append(P.ood_bars(frames["ood"], out))
    if "frequency" in frames:
        figures.append(P.frequency_curves(frames["frequency"], out))
    if "intervention" in frames["runs"].columns:
        figures.append(P.intervention_bars(frames["absorbers"], frames["runs"], out))
    return [f for f in figures if f]


# ---------------------------------------------------------------- report

TABLES = ("clutter", "logit_decomposition", "ood", "ood_summary", "frequency")


def report_section(ctx: ReportContext) -> Section:
    s = Section("Why this class?", key="why")
    if all(ctx.table(t).empty for t in ("clutter", "logit_decomposition", "ood")):
        return s
    for part in (_clutter_answer, _lookalike_answer, _learned_answer, _ood_answer, _frequency_answer,
                 _intervention_answer):
        s.blocks += part(ctx)
    links = [text(", " if i else "", Link(f"{t}.csv", f"{t}.csv"))
             for i, t in enumerate(t for t in TABLES if not ctx.table(t).empty)]
    s.blocks.append(Paragraph(text("Tables: ") + sum(links, ()) + text(".")))
    return s


def _clutter_answer(ctx: ReportContext) -> list:
    tests = ctx.tests
    t = tests[(tests["test"] == "clutter_absorption") & (tests["noise"] == PRIMARY_NOISE)]
    blocks = [Paragraph(text(Strong("1. Is the absorbing class the most cluttered one?"), " Per measure, the mean "
                             "over runs of the Spearman correlation across classes between the measure and the share "
                             "of Gaussian noise a class absorbs, the classes relabelled (the class is the unit: "
                             "clutter is measured on the same images in every run). ", Code(PRIMARY_CLUTTER),
                             " is the confirmatory measure (Holm); the others are exploratory (BH). The head's "
                             "weight norms and biases are not tested this way: each is a factor of its class's own "
                             "logit, so it goes with the class's share whatever the class (bias_deal tests the "
                             "biases)."))]
    if t.empty:
        blocks.append(Paragraph(text("Not testable here (needs >= 2 runs and >= 3 classes per condition).")))
    else:
        primary = t["variable"] == PRIMARY_CLUTTER
        blocks.append(Bullets([text(f"{row['condition']}: {row['variable']}: mean rho {row['statistic']:+.2f} "
                                    f"(n = {row['n_runs']} runs; {verdict(row)}; {row['family']})")
                               for _, row in pd.concat([t[primary],
                                                        t[~primary].sort_values("p_value")]).head(12).iterrows()]))
    return blocks + ctx.figure("clutter_vs_absorption.png", "Clutter of each class against the share of Gaussian "
                               "noise it absorbs, per class set")


def _lookalike_answer(ctx: ReportContext) -> list:
    tests = ctx.tests
    t = tests[(tests["test"] == "noise_lookalike") & (tests["noise"] == PRIMARY_NOISE)]
    if t.empty:
        return []
    return [Paragraph(text(Strong("2. Does noise look like the absorbing class?"), " For each run, the trained class "
                           "whose pixel-space clutter profile (z-scored across classes) is nearest to the Gaussian "
                           "bank's, against the run's absorber; the classes relabelled (the nearest class is a class "
                           "property, usually the same class in every run, so one class is one observation, not S):")),
            Bullets([text(f"{row['condition']}: the nearest class is the absorber in {int(row['statistic'])}/"
                          f"{row['n_runs']} runs ({row['method'].split('; classes relabelled')[0]}); {verdict(row)}")
                     for _, row in t.iterrows()]),
            Paragraph(text("The mean noise image sent to each class is in the galleries above."))]


def _learned_answer(ctx: ReportContext) -> list:
    d = ctx.table("logit_decomposition")
    d = d[d["noise"] == PRIMARY_NOISE] if len(d) else d
    if d.empty:
        return []
    return [Paragraph(text(Strong("3. What did the network learn?"), " At the Gaussian-noise features, logit_c = "
                           "w_c . f + b_c: the share of the absorber's margin over the runner-up that the head's bias "
                           "supplies, the share of its images it wins only through its bias (the weight term favours "
                           "the runner-up), and the mean feature norm of noise against test images (a ratio below 1: "
                           "noise features shrink toward a constant, as Kang et al. 2024 describe). Mean over runs:")),
            Bullets([text(f"{condition}: bias share {sub['bias_share_of_margin'].mean():.0%}, decided by the bias "
                          f"{sub['decided_by_bias'].mean():.0%}, feature norm {sub['noise_feature_norm'].mean():.2f} "
                          f"vs {sub['test_feature_norm'].mean():.2f} (ratio "
                          f"{(sub['noise_feature_norm'] / sub['test_feature_norm']).mean():.2f}; n = {len(sub)} runs)")
                     for condition, sub in d.groupby("condition", observed=True, sort=True)])]


def _ood_answer(ctx: ReportContext) -> list:
    s = ctx.table("ood_summary")
    if s.empty:
        return []
    g = s[s["ood_set"] == PRIMARY_NOISE].sort_values("auroc_mean", ascending=False)
    blocks = [Paragraph(text(Strong("4. Is this out-of-distribution detection?"), " With in-distribution as the "
                             "positive class (AUROC: P(ID score > OOD score); FPR95: share of OOD accepted when 95% of "
                             "ID is), per detector on Gaussian noise (mean +- sd over runs):")),
              Bullets([text(f"{row.condition}, {row.detector}: AUROC {row.auroc_mean:.3f} +- "
                            f"{0 if pd.isna(row.auroc_std) else row.auroc_std:.3f}, FPR95 {row.fpr95_mean:.3f} "
                            f"(n = {row.n_runs})") for row in g.itertuples()])]
    held = s[s["ood_set"].str.startswith("heldout:")]
    if not held.empty:
        best = held.groupby("detector")["auroc_mean"].mean().sort_values(ascending=False)
        blocks.append(Paragraph(text("Held-out classes (natural OOD), mean AUROC over classes: "
                                     + ", ".join(f"{d} {v:.3f}" for d, v in best.items()) + ".")))
    return blocks + ctx.figure("ood_auroc.png", "OOD detectors: AUROC against each noise family and held-out class")


def _frequency_answer(ctx: ReportContext) -> list:
    f = ctx.table("frequency")
    if f.empty:
        return []
    m = f.groupby(["kind", "cutoff"])["gaussian_absorber_share"].mean().reset_index()
    parts = [f"{r.kind} {r.cutoff:g}: {r.gaussian_absorber_share:.0%}" for r in m.itertuples()]
    return [Paragraph(text(Strong("5. Which frequencies carry the pull?"), " Share of band-limited Gaussian noise "
                           "going to the run's own Gaussian absorber (mean over runs): " + "; ".join(parts) + "."))] \
        + ctx.figure("frequency_probes.png",
                     "Band-limited Gaussian noise: the share going to the run's Gaussian absorber")


def _intervention_answer(ctx: ReportContext) -> list:
    tests = ctx.tests
    t = tests[tests["test"] == "intervention_effect"]
    if t.empty:
        return []
    return [Paragraph(text(Strong("6. Do interventions remove single-class absorption, also for noise they never "
                                  "saw?"), " Paired over seeds against ", Code("none"), " (exploratory, BH):")),
            Bullets([text(f"{row['condition']}, {row['noise']}{' (seen)' if row['noise'] == 'gaussian' else ''}: "
                          f"top real-class share {row['statistic']:+.2f} ({verdict(row)}, n = {row['n_runs']} pairs; "
                          f"{row['method']})") for _, row in t.iterrows()])] \
        + ctx.figure("interventions.png", "Training interventions: the top class's share per noise family")


# ---------------------------------------------------------------- the topic

def study_tables(data) -> dict[str, pd.DataFrame]:
    """The why tables, each only where the trials measured it."""
    ood = ood_table(data)
    return measured({"clutter": clutter_table(data), "logit_decomposition": decomposition_table(data), "ood": ood,
                     "frequency": frequency_table(data), "ood_summary": ood_summary(ood)})


def methods_text() -> str:
    """This topic's bullets of the Methods (authored markdown; report.methods_text joins them)."""
    S = stats
    return f"""- **Clutter vs absorption**: per measure, the mean over runs of the Spearman correlation across
  classes between the measure and the share of Gaussian noise a class absorbs; p with the K classes
  of the measure relabelled, one relabelling for all runs (exact over all K! up to
  {S.EXACT_CLASS_PERMUTATIONS:,} relabellings, else {S.PERMUTATIONS:,} at random): the smallest attainable p is 2/K!,
  so with 3 classes nothing can be shown. Head bias and weight norm the same way (confounds).
  Whether noise looks like its absorber: the class nearest to the noise bank in pixel clutter,
  classes relabelled.
- **Interventions**: each training intervention against `none`, seeds paired and every other axis
  equal; sign-flip on the paired change of the top real-class share, per noise family.
- **OOD detectors**: in-distribution is the positive class (AUROC = P(ID score > OOD score);
  AUPR-In with ID positive, AUPR-Out with OOD positive; FPR95 = share of OOD accepted at the
  threshold that accepts 95% of ID); reported as mean +- sd over runs."""


# this topic's test ids -> (table, what a small p says); README's table of test ids is checked
# against every topic's (pipeline.catalog_of_test_ids)
TESTS = {
    "clutter_absorption": ("tests", "a class's clutter goes with the share of noise it absorbs (classes relabelled)"),
    "noise_lookalike": ("tests", "the class nearest to the noise bank in pixel-clutter space absorbs more often "
                        "than another class would (classes relabelled)"),
    "intervention_effect": ("tests", "a training intervention changes the top real-class share (seeds paired)"),
}

TOPIC = Topic("why", tables=lambda inputs, frames: study_tables(inputs.data),
              tests=lambda inputs, frames: Findings(clutter_tests(inputs.groups) + lookalike_tests(frames)
                                                    + intervention_tests(inputs.data)),
              figures=lambda inputs, frames, folder: plots(frames, folder, inputs.groups),
              sections=(report_section,), methods=methods_text,
              test_ids=TESTS)
