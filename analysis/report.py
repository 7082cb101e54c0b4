"""report.md: the study's answers in plain words, each with its number, n and test."""
from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd

from . import inference, stats
from .contract import COMPLETED, DIVERGED
from .stats import ALPHA, DISCORDANCE_MARGIN


def md(text) -> str:
    """Escape text from the data (class names, folder names) so it renders as plain text."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~$])", r"\\\1", str(text))


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and not np.isfinite(p)):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_"
    head = "| " + " | ".join(md(c) for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(md(v) if not isinstance(v, float) else f"{v:.3g}" for v in row) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


CORRECTION_NAME = {"holm": "Holm", "fdr_bh": "BH", "fdr_by": "BY"}


def tests_of(tests: pd.DataFrame, test: str, **where) -> pd.DataFrame:
    """The tests.csv rows of one test id (inference.TESTS), optionally where column == value."""
    hit = tests[tests["test"] == test]
    for column, value in where.items():
        hit = hit[hit[column] == value]
    return hit


def _one(tests: pd.DataFrame, test: str, **where):
    hit = tests_of(tests, test, **where)
    return hit.iloc[0] if len(hit) else None


def verdict(row) -> str:
    """The row's p with its correction, or, where its smallest attainable p cannot reach the level
    its family's correction asks, that it cannot be tested here (a p that reads like evidence)."""
    if not np.isfinite(row["p_value"]):
        return "not testable"
    if not row["can_reject"]:
        why = f"smallest attainable p {fmt_p(row['p_min'])} > {fmt_p(row['p_needed'])} needed"
        if np.isfinite(row["n_needed"]) and row["n_needed"] > row["n_runs"]:
            return f"too few runs to test: needs >= {int(row['n_needed'])} seeds ({why})"
        return f"cannot reach significance in this design ({why})"
    method = CORRECTION_NAME[inference.CORRECTION[row["family"]]]
    return f"p = {fmt_p(row['p_value'])}, {method}-adjusted {fmt_p(row['p_adjusted'])}"


def significant(row) -> bool:
    return row is not None and bool(row["can_reject"]) and np.isfinite(row["p_adjusted"]) and row["p_adjusted"] < ALPHA


def absorber_section(cons: pd.DataFrame, tests: pd.DataFrame) -> list[str]:
    lines = ["## Which class absorbs each noise type, and how consistently across seeds", ""]
    for condition, sub in cons.groupby("condition", sort=False):
        g = sub[sub["noise"] == inference.PRIMARY_NOISE]
        if len(g):
            r = g.iloc[0]
            t = _one(tests, "absorber_consistency", condition=condition, noise=inference.PRIMARY_NOISE)
            shown = ("the absorbers are not uniform over the classes" if significant(t)
                     else "not shown to differ from uniform absorbers")
            lines.append(f"- **{md(condition)}**: Gaussian noise goes to **{md(r['modal_absorber'])}** in "
                         f"{r['modal_count']}/{r['n_runs']} runs: modal share {r['modal_share']:.2f} "
                         f"[simultaneous 95% CI {r['modal_share_ci_low']:.2f}, {r['modal_share_ci_high']:.2f}] "
                         f"(mean top share {r['mean_top_share']:.2f}"
                         + (f" +- {r['sd_top_share']:.2f}" if np.isfinite(r["sd_top_share"]) else "")
                         + f"); {shown} ({r['n_classes']} classes; modal-count test, "
                         + (verdict(t) if t is not None else "n/a") + "); "
                         f"pair agreement {r['agreement']:.2f} [95% CI {r['agreement_ci_low']:.2f}, "
                         f"{r['agreement_ci_high']:.2f}] (1/K = {1 / r['n_classes']:.2f} by chance)"
                         + (f"; per-image Fleiss kappa {r['fleiss_kappa']:.2f}" if np.isfinite(r["fleiss_kappa"]) else "")
                         + ".")
    lines += ["", "Every noise family, per condition (modal share with its simultaneous 95% interval over the "
              "classes; p: Monte Carlo test of the modal absorber count against uniform absorbers, adjusted within "
              "its family; agreement: unbiased pair agreement with its 95% interval):", ""]
    t = tests_of(tests, "absorber_consistency")[["condition", "noise", "p_adjusted", "can_reject"]]
    show = cons.merge(t, on=["condition", "noise"], how="left")
    show = show.assign(runs=show["modal_count"].astype(str) + "/" + show["n_runs"].astype(str),
                       modal_share=[f"{a:.2f} [{b:.2f}, {c:.2f}]" for a, b, c in
                                    zip(show["modal_share"], show["modal_share_ci_low"], show["modal_share_ci_high"])],
                       p=[fmt_p(p) if ok else "too few runs" for p, ok in zip(show["p_value"], show["can_reject"])],
                       p_adjusted=show["p_adjusted"].map(fmt_p),
                       agreement=[f"{a:.2f} [{b:.2f}, {c:.2f}]" for a, b, c in
                                  zip(show["agreement"], show["agreement_ci_low"], show["agreement_ci_high"])],
                       fleiss=show["fleiss_kappa"].map(lambda v: f"{v:.2f}" if np.isfinite(v) else "n/a"),
                       randolph=show["randolph_kappa"].map(lambda v: f"{v:.2f}" if np.isfinite(v) else "n/a"))
    lines.append(_table(show[["condition", "noise", "modal_absorber", "runs", "modal_share", "p", "p_adjusted",
                              "agreement", "fleiss", "randolph"]]))
    lines += ["", "The distribution of absorbers over all classes, with simultaneous intervals: "
              "[absorber_distribution.csv](absorber_distribution.csv). Kappas are per-image agreement of labels "
              "across runs. Fleiss' kappa falls towards 0 when nearly every image goes to one class (the "
              "prevalence paradox); Randolph's free-marginal kappa does not, so read the two together."]
    return lines + [""]


def condition_section(tests: pd.DataFrame, notes: list[str]) -> list[str]:
    lines = ["## Does the condition (augmentation, class subset, ...) change the absorber?", ""]
    dep = tests[tests["test"].isin(["absorber_vs_condition", "absorber_vs_condition_chi2", "share_vs_condition"])]
    eq = tests_of(tests, "absorber_equivalence")
    if dep.empty:
        lines.append("No two conditions train the same classes, so no test of absorber identity across "
                     "conditions applies here.")
    for _, row in dep.iterrows():
        said = ("**depends**" if significant(row) else "no evidence of dependence") if row["can_reject"] else "untested"
        lines.append(f"- {md(row['condition'])}, {md(row['noise'])}: {said} ({md(row['hypothesis'])}; {md(row['method'])}; "
                     f"statistic {row['statistic']:.3g}, {verdict(row)}, n = {row['n_runs']})")
    for _, row in eq.iterrows():
        shown = ("**shown**" if significant(row) else "not shown") if row["can_reject"] else "untested"
        lines.append(f"- {md(row['condition'])}, {md(row['noise'])}: the absorber differs in {int(row['statistic'])}"
                     f"/{row['n_runs']} paired seeds (discordance {row['effect']:.2f}, 95% CI [{row['ci_low']:.2f}, "
                     f"{row['ci_high']:.2f}]); that it changes in fewer than {DISCORDANCE_MARGIN:.0%} of seeds is "
                     f"{shown} ({verdict(row)})")
    return lines + [""] + [f"_{md(n)}_" for n in notes] + [""]


def mst_section(edge_freq: pd.DataFrame, consensus: dict, tests: pd.DataFrame) -> list[str]:
    lines = ["## How stable is the minimum spanning tree, and where does the noise node hang?", "",
             "The tree over the K class means is tested with the classes relabelled (each pair's chance is "
             "2/K); the noise node, far from every class in real features, is not relabelled with them: "
             "where it hangs (its nearest class) is tested on its own.", ""]
    noise = inference.PRIMARY_NOISE
    for (condition, family), tree in consensus.items():
        if family != noise:
            continue
        cls = edge_freq[(edge_freq["condition"] == condition) & (edge_freq["test"] == "mst_edge")]
        reliable = cls[cls["q_value"] < ALPHA].sort_values("frequency", ascending=False)
        att = edge_freq[(edge_freq["condition"] == condition) & (edge_freq["noise"] == noise)
                        & (edge_freq["test"] == "noise_edge")].sort_values("frequency", ascending=False)
        n = int(cls["n_runs"].iloc[0]) if len(cls) else 0
        k = len(att)
        text = f"- **{md(condition)}** (n = {n} runs): "
        if len(att):
            top = att.iloc[0]
            text += (f"the noise node hangs on **{md(top['u'])}** in {int(top['count'])}/{n} runs "
                     f"(support {top['frequency']:.0%} in the consensus tree)")
            t = _one(tests, "noise_attachment", condition=condition, noise=noise)
            if t is not None:
                text += f"; not uniform over the classes: {verdict(t)}"
            text += ". "
        text += (f"{len(reliable)} of {len(cls)} class pairs are joined more often than relabelled trees join "
                 f"them ({2 / k if k else float('nan'):.2f}; binomial, BY q < {ALPHA})"
                 + (": " + ", ".join(f"{md(r.u)}-{md(r.v)} ({r.frequency:.0%})" for r in reliable.head(8).itertuples())
                    if len(reliable) else "") + ". ")
        ov = _one(tests, "mst_overlap", condition=condition)
        if ov is not None:
            text += (f"Mean pairwise shared class edges {ov['statistic']:.2f} vs {ov['statistic'] / ov['effect']:.2f} "
                     f"by chance ({verdict(ov)}). ")
        near = _one(tests, "noise_neighbour", condition=condition, noise=noise)
        if near is not None:
            text += (f"The class nearest to the noise mean is the absorber in {int(near['statistic'])}/{n} runs; "
                     f"given how often each class is nearest and absorbs, a within-run link: {verdict(near)}.")
        lines.append(text)
    return lines + [""]


def distance_section(tests: pd.DataFrame) -> list[str]:
    lines = ["## Do the distance matrices agree across runs?", ""]
    for test, what in (("distance_agreement", "class-class"), ("noise_distance_agreement", "noise-class")):
        for _, row in tests_of(tests, test).iterrows():
            lines.append(f"- {md(row['condition'])}, {what} distances: mean pairwise Spearman {row['statistic']:.2f} "
                         f"({verdict(row)}, n = {row['n_runs']})")
    if len(lines) == 2:
        lines.append("Needs at least 3 runs per condition.")
    return lines + [""]


def heldout_section(heldout: pd.DataFrame) -> list[str]:
    if heldout.empty:
        return []
    lines = ["## What the models do with the classes they never saw", "",
             "Mean share of each held-out class's test images given to each trained class (over runs):", ""]
    mean = heldout.groupby(["condition", "heldout_class", "class"])["share"].mean().reset_index()
    for condition, sub in mean.groupby("condition", sort=False):
        pivot = sub.pivot(index="heldout_class", columns="class", values="share").reset_index()
        lines += [f"**{md(condition)}**", "", _table(pivot.round(3)), ""]
    return lines


def trajectory_section(traj: pd.DataFrame, per_seed_up_to: int = 12) -> list[str]:
    """Per condition and seed: the class the untrained net (epoch 0) favoured and its share, and
    the class the trained net favours; a count per class when there are many seeds."""
    if traj.empty:
        return []
    lines = ["## When does the absorber appear during training?", ""]
    for condition, sub in traj.groupby("condition", sort=False, observed=True):
        wide = sub.pivot_table(index=["seed", "epoch"], columns="class", values="share", observed=True)
        seeds = list(dict.fromkeys(wide.index.get_level_values(0)))
        first = {seed: wide.loc[seed].iloc[0] for seed in seeds}
        last = {seed: wide.loc[seed].dropna(how="all").iloc[-1] for seed in seeds}
        final = int(wide.index.get_level_values(1).max())
        if len(seeds) <= per_seed_up_to:
            untrained = "; ".join(f"seed {seed} {_leader(first[seed])}" for seed in seeds)
            trained = "; ".join(f"seed {seed} {_leader(last[seed])}" for seed in seeds)
        else:
            untrained, trained = _tally(first), _tally(last)
        lines.append(f"- **{md(condition)}** (n = {len(seeds)} runs): untrained (epoch 0), the nets favour "
                     f"{untrained}; after training (epoch {final}): {trained}.")
    return lines + ["", "Every run, epoch by epoch: absorber_over_training.png and trajectory.csv.", ""]


def _leader(shares: pd.Series) -> str:
    """`cat (100.0%)`, or a tie: `a tie of cat and dog (50.0% each)`."""
    top = shares.max()
    leaders = [md(c) for c, v in shares.items() if v == top]
    if len(leaders) > 1:
        return f"a tie of {' and '.join(leaders)} ({top:.1%} each)"
    return f"{leaders[0]} ({top:.1%})"


def _tally(leaders: dict) -> str:
    """`cat in 40 run(s) (median share 87%), dog in 35 run(s) (...)`, most frequent first."""
    rows = [(str(shares.idxmax()), shares.max()) for shares in leaders.values()]
    by = pd.DataFrame(rows, columns=["c", "share"]).groupby("c")["share"].agg(["size", "median"])
    return ", ".join(f"{md(c)} in {int(r['size'])} run(s) (median share {r['median']:.0%})"
                     for c, r in by.sort_values("size", ascending=False).iterrows())


def problems_section(runs: pd.DataFrame, problems: pd.DataFrame) -> list[str]:
    lines = ["## Failed, diverged and unreadable trials", ""]
    diverged = runs[runs["status"] == DIVERGED]
    lines.append(f"{len(diverged)} diverged (excluded from all statistics)"
                 + (": " + ", ".join(f"{md(t)} (epoch {int(e)})" for t, e in zip(diverged["trial_id"], diverged["diverged_at_epoch"]))
                    if len(diverged) else "") + ".")
    lines.append("")
    lines.append(f"{len(problems)} problem(s) reading trial folders (see problems.csv):")
    lines += [f"- {md(p.trial_id)}: {md(p.reason)} [{md(p.action)}]" for p in problems.itertuples()]
    return lines + [""]


def methods() -> str:
    """The Methods section; every count and level in it is the code's own setting."""
    S, I = stats, inference
    confirmatory = ", ".join(I.CONFIRMATORY)
    return f"""## Methods

The unit of replication is the trained network (a run); noise images are never counted as
replicates, and where a covariate belongs to a class (clutter, measured on the same images in
every run) the class is the unit. Every trial of a study probes the same noise banks (fixed
`noise_seed`). Every test in tests.csv has a stable id (`test`), its smallest attainable p at its
n (`p_min`), the raw p it would need after its family's correction (`p_needed`), whether it can
reach it (`can_reject`) and, where more runs would help, how many (`n_needed`); a test that cannot
reach its level is reported as "too few runs to test", never with a p that reads like evidence.

- **Families**: confirmatory, pre-registered, on {I.PRIMARY_NOISE} noise only: {confirmatory}
  (the clutter measure {I.PRIMARY_CLUTTER} only); Holm. The factor tests ({", ".join(I.FACTORS)}):
  their own family, Holm. Everything else exploratory, Benjamini-Hochberg. MST edges:
  Benjamini-Yekutieli over all edges (edge_frequency.csv).
- **Absorber consistency**: H0 each run's absorber is an independent uniform draw from the K
  trained classes. Statistic: the modal absorber's count over the S runs, ties ordered by the
  agreement sum n_c^2; p by Monte Carlo over {S.CONSISTENCY_DRAWS:,} simulated studies; smallest
  attainable p K^(1-S). Rejecting it says the absorbers are not uniform; what they are is the
  modal share with its simultaneous {1 - S.ALPHA:.0%} interval (Clopper-Pearson at level
  1 - {S.ALPHA}/K per class, absorber_distribution.csv) and the unbiased pair agreement
  (sum n_c^2 - S)/(S(S-1)) (exactly 1/K by chance) with a score-type {1 - S.ALPHA:.0%} interval. Per-image
  Fleiss' and Randolph's kappa are descriptive (images are not replicates).
- **Per-run top share** (absorbers.csv, descriptive): Monte Carlo p under a uniform multinomial
  ({S.TOP_SHARE_DRAWS:,} draws); with thousands of images it is always tiny and is not used for inference.
- **Absorber vs condition**, among conditions that train the same classes: with the same seeds
  (at least 2 and half of each condition's runs; runs without a partner are left out, not the
  design), for 2 conditions marginal homogeneity by swapping each seed's two absorbers (exact over
  the 2^m patterns of the m discordant seeds up to m = {S.EXACT_SIGN_FLIPS}; statistic the squared
  differences of the marginal counts; Stuart-Maxwell's statistic for reference), for more Cochran's
  Q with each seed's row permuted across conditions; otherwise the permutation chi-square of the
  absorber x condition table ({S.PERMUTATIONS:,} relabellings; fewer, never under 999, for very large
  studies). Estimate: the discordance rate of paired seeds with its Clopper-Pearson interval, and
  an exact equivalence test (H0 rate >= {S.DISCORDANCE_MARGIN}).
- **MST**: the tree over the K class means, classes relabelled: each class pair against its chance
  2/K (one-sided binomial), the mean pairwise shared class edges against independent relabelling
  of each run's tree (null mean 2(K-1)/K). The noise node is kept out of the relabelling (its mean
  is far from every class, so it is a leaf): where it hangs, its nearest class, is tested with the
  modal-count test and per class against 1/K. Consensus tree: maximum spanning tree of class-edge
  frequencies, the noise node on its most frequent class.
- **Noise neighbour**: the runs whose noise-nearest class is their absorber, against the pairing
  of runs permuted ({S.PERMUTATIONS:,} permutations): a within-run link beyond what the two
  distributions over runs imply.
- **Distances**: Mantel-style mean pairwise Spearman correlation of the runs' class-class block
  (once per condition) and of the noise row ({I.PERMUTATION_FAMILY} noise), classes relabelled.
- **Clutter vs absorption**: per measure, the mean over runs of the Spearman correlation across
  classes between the measure and the share of Gaussian noise a class absorbs; p with the K classes
  of the measure relabelled, one relabelling for all runs (exact over all K! up to
  {S.EXACT_CLASS_PERMUTATIONS:,} relabellings, else {S.PERMUTATIONS:,} at random): the smallest attainable p is 2/K!,
  so with 3 classes nothing can be shown. Head bias and weight norm the same way (confounds).
  Whether noise looks like its absorber: the class nearest to the noise bank in pixel clutter,
  classes relabelled.
- **Interventions**: each training intervention against `none`, seeds paired and every other axis
  equal; sign-flip on the paired change of the top real-class share, per noise family.
- **Is clutter causal?**: per kind and strength, the per-seed mean over targets of the paired
  change in the target's share (confirmatory) and absorber status; a dose-response trend (per-seed
  Spearman of dose vs target share); manipulation checks of the target's clutter. Sign-flip tests
  are exact over all 2^n patterns up to n = {S.EXACT_SIGN_FLIPS} (smallest attainable p 2^(1-n)), else
  {S.PERMUTATIONS:,} at random.
- **Which factor moves the absorber?** (own family, Holm): each level of an architecture factor
  (activation, pool, norm, model) or of class frequency (class_intervention majority, subsample)
  against the axis's first value, seeds paired and every other axis equal. Absorber: marginal
  homogeneity of the paired absorbers, each seed's pairs (one per stratum of the other axes) swapped
  as a whole, exact; top share and epoch-0 top share: sign-flip over seeds of the per-seed mean
  paired difference, with a 95% t interval. Smallest attainable p 2^(1-S) with S seeds. Whether the
  untrained network's favourite class is the absorber within runs, beyond how often each is which
  class: pairing permutation across runs per condition (exploratory).
- **OOD detectors**: in-distribution is the positive class (AUROC = P(ID score > OOD score);
  AUPR-In with ID positive, AUPR-Out with OOD positive; FPR95 = share of OOD accepted at the
  threshold that accepts 95% of ID); reported as mean +- sd over runs.
- Permutation counts shrink from {S.PERMUTATIONS:,} to no fewer than {S.LEAST_PERMUTATIONS} as studies grow
  (stated per row in tests.csv); p-values stay valid at any count. Diverged and unreadable runs
  are excluded, and counted above.
"""


def write_report(ctx: dict) -> str:
    """ctx: name, root, runs, problems, consistency, tests, notes, edge_freq, consensus, heldout,
    trajectory, figures (list of file names), tables (list of file names), extra_sections."""
    runs = ctx["runs"]
    done = runs[runs["status"] == COMPLETED] if len(runs) else runs
    lines = [f"# noisesink report: {md(ctx['name'])}", "",
             f"Aggregated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC from `{ctx['root']}`: "
             f"{len(runs)} runs ({len(done)} completed, {int((runs['status'] == DIVERGED).sum()) if len(runs) else 0} "
             f"diverged), {len(ctx['problems'])} problem(s) reading trial folders.", ""]
    if len(done):
        acc = done.groupby("condition")["test_accuracy"].agg(["mean", "std", "count"])
        lines += ["Test accuracy (trained classes): " + "; ".join(
            f"{md(c)} {r['mean']:.3f} +- {0 if not np.isfinite(r['std']) else r['std']:.3f} (n = {int(r['count'])})"
            for c, r in acc.iterrows()) + ".", ""]
    if not ctx["consistency"].empty:
        lines += absorber_section(ctx["consistency"], ctx["tests"])
        lines += condition_section(ctx["tests"], ctx["notes"])
        lines += mst_section(ctx["edge_freq"], ctx["consensus"], ctx["tests"])
        lines += distance_section(ctx["tests"])
    lines += heldout_section(ctx["heldout"])
    lines += trajectory_section(ctx["trajectory"])
    for section in ctx.get("extra_sections", []):
        lines += section + [""]
    lines += problems_section(runs, ctx["problems"])
    lines += [methods(), "## Files", "", "Tables: " + ", ".join(f"[{t}]({t})" for t in ctx["tables"]),
              "(each also as `.parquet` beside it, with its dtypes kept)", "",
              "Figures:", ""] + [f"![{f}]({f})" for f in ctx["figures"]]
    return "\n".join(lines) + "\n"
