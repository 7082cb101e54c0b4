"""report.md: the study's answers in plain words, each with its number, n and test."""
from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd

ALPHA = 0.05


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


def _test_lookup(tests: pd.DataFrame, hypothesis: str, condition: str, noise: str):
    hit = tests[(tests["hypothesis"] == hypothesis) & (tests["condition"] == condition) & (tests["noise"] == noise)]
    return hit.iloc[0] if len(hit) else None


def absorber_section(cons: pd.DataFrame, tests: pd.DataFrame) -> list[str]:
    lines = ["## Which class absorbs each noise type, and how consistently across seeds", ""]
    for condition, sub in cons.groupby("condition", sort=False):
        g = sub[sub["noise"] == "gaussian"]
        if len(g):
            r = g.iloc[0]
            t = _test_lookup(tests, "the absorber is the same across seeds", condition, "gaussian")
            verdict = ("consistent beyond chance" if t is not None and t["p_adjusted"] < ALPHA
                       else "not shown to be consistent")
            lines.append(f"- **{md(condition)}**: Gaussian noise goes to **{md(r['modal_absorber'])}** in "
                         f"{r['modal_count']}/{r['n_runs']} runs (mean top share {r['mean_top_share']:.2f}"
                         + (f" +- {r['sd_top_share']:.2f}" if np.isfinite(r["sd_top_share"]) else "")
                         + f"); {verdict}: test of the modal count vs {r['n_classes']} uniform classes, "
                         f"p = {fmt_p(r['p_value'])}, Holm-adjusted {fmt_p(t['p_adjusted'] if t is not None else None)}; "
                         f"agreement sum p_c^2 = {r['agreement']:.2f} [95% CI {r['agreement_ci_low']:.2f}, "
                         f"{r['agreement_ci_high']:.2f}] (1/K = {1 / r['n_classes']:.2f} by chance)"
                         + (f"; per-image Fleiss kappa {r['fleiss_kappa']:.2f}" if np.isfinite(r["fleiss_kappa"]) else "")
                         + ".")
    lines += ["", "Every noise family, per condition (p: Monte Carlo test of the modal absorber count; "
              "p_holm: Holm over the confirmatory family):", ""]
    show = cons.merge(tests[tests["hypothesis"] == "the absorber is the same across seeds"]
                      [["condition", "noise", "p_adjusted"]], on=["condition", "noise"], how="left")
    show = show.assign(runs=show["modal_count"].astype(str) + "/" + show["n_runs"].astype(str),
                       share=show["mean_top_share"].map("{:.2f}".format),
                       p=show["p_value"].map(fmt_p), p_holm=show["p_adjusted"].map(fmt_p),
                       agreement=show["agreement"].map("{:.2f}".format),
                       fleiss=show["fleiss_kappa"].map(lambda v: f"{v:.2f}" if np.isfinite(v) else "n/a"),
                       randolph=show["randolph_kappa"].map(lambda v: f"{v:.2f}" if np.isfinite(v) else "n/a"))
    lines.append(_table(show[["condition", "noise", "modal_absorber", "runs", "share", "p", "p_holm",
                              "agreement", "fleiss", "randolph"]]))
    lines += ["", "Kappas are per-image agreement of labels across runs. Fleiss' kappa falls towards 0 "
              "when nearly every image goes to one class (the prevalence paradox); Randolph's "
              "free-marginal kappa does not, so read the two together."]
    return lines + [""]


def condition_section(tests: pd.DataFrame, notes: list[str]) -> list[str]:
    lines = ["## Does the condition (augmentation, class subset, ...) change the absorber?", ""]
    dep = tests[tests["hypothesis"].str.startswith("the absorber depends on the condition")
                | tests["hypothesis"].str.startswith("P(absorber")]
    if dep.empty:
        lines.append("No two conditions train the same classes, so no test of absorber identity across "
                     "conditions applies here.")
    for row in dep.itertuples():
        sig = row.p_adjusted < ALPHA if np.isfinite(row.p_adjusted) else False
        lines.append(f"- {md(row.condition)}, {md(row.noise)}: {'**depends**' if sig else 'no evidence of dependence'} "
                     f"({md(row.method)}; statistic {row.statistic:.3g}, p = {fmt_p(row.p_value)}, "
                     f"adjusted {fmt_p(row.p_adjusted)}, n = {row.n_runs} runs)")
    return lines + [""] + [f"_{md(n)}_" for n in notes] + [""]


def mst_section(edge_freq: pd.DataFrame, consensus: dict, tests: pd.DataFrame) -> list[str]:
    lines = ["## How stable is the minimum spanning tree, and where does the noise node hang?", ""]
    for (condition, noise), tree in consensus.items():
        if noise != "gaussian":
            continue
        cell = edge_freq[(edge_freq["condition"] == condition) & (edge_freq["noise"] == noise)]
        reliable = cell[cell["q_value"] < ALPHA].sort_values("frequency", ascending=False)
        noise_edges = [(u if v == "noise" else v, s) for u, v, s in tree if "noise" in (u, v)]
        ov = _test_lookup(tests, "MST edges agree across runs beyond chance", condition, noise)
        near = _test_lookup(tests, "the class nearest to the noise mean is the absorber", condition, noise)
        n = int(cell["n_runs"].iloc[0]) if len(cell) else 0
        lines.append(f"- **{md(condition)}** (n = {n} runs): in the consensus tree the noise node hangs on "
                     + ", ".join(f"**{md(c)}** (support {s:.0%})" for c, s in noise_edges) + ". "
                     + (f"{len(reliable)} of {len(cell)} possible edges occur more often than the chance "
                        f"rate {2 / (len(tree) + 1):.2f} (binomial, BY q < {ALPHA}): "
                        + ", ".join(f"{md(r.u)}-{md(r.v)} ({r.frequency:.0%})" for r in reliable.head(8).itertuples())
                        if len(reliable) else "No edge is reliable at BY q < 0.05")
                     + ". "
                     + (f"Mean pairwise edge overlap {ov['statistic']:.2f} vs {2 * len(tree) / (len(tree) + 1):.2f} "
                        f"by chance (p = {fmt_p(ov['p_value'])}, BH {fmt_p(ov['p_adjusted'])}). " if ov is not None else "")
                     + (f"The class nearest to the noise mean is the absorber in {int(near['statistic'])}/{n} runs "
                        f"(binomial vs 1/K, p = {fmt_p(near['p_value'])})." if near is not None else ""))
    return lines + [""]


def distance_section(tests: pd.DataFrame) -> list[str]:
    lines = ["## Do the distance matrices agree across runs?", ""]
    for hyp in ("class-class distances agree across runs", "noise-class distances agree across runs"):
        sub = tests[(tests["hypothesis"] == hyp) & tests["noise"].isin(["gaussian", "(all)"])]
        for row in sub.itertuples():
            lines.append(f"- {md(row.condition)}, {hyp.split(' distances')[0]} distances: mean pairwise "
                         f"Spearman {row.statistic:.2f} (p = {fmt_p(row.p_value)}, BH {fmt_p(row.p_adjusted)}, "
                         f"n = {row.n_runs})")
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
    diverged = runs[runs["status"] == "diverged"]
    lines.append(f"{len(diverged)} diverged (excluded from all statistics)"
                 + (": " + ", ".join(f"{md(t)} (epoch {int(e)})" for t, e in zip(diverged["trial_id"], diverged["diverged_at_epoch"]))
                    if len(diverged) else "") + ".")
    lines.append("")
    lines.append(f"{len(problems)} problem(s) reading trial folders (see problems.csv):")
    lines += [f"- {md(p.trial_id)}: {md(p.reason)} [{md(p.action)}]" for p in problems.itertuples()]
    return lines + [""]


METHODS = """## Methods

The unit of replication is the trained network (a run); noise images are never counted as
replicates. Every trial of a study probes the same noise banks (fixed `noise_seed`).

- **Absorber consistency** (confirmatory): H0 each run's absorber is an independent uniform draw
  from the K trained classes. Statistic: the modal absorber's count over the S runs of a
  condition, ties in the count ordered by the agreement sum n_c^2 (the count alone takes so few
  values that the test would be far below its nominal size); p by Monte Carlo over 10^5 simulated
  sets of S uniform draws. Effect: agreement sum p_c^2 (1/K by chance) with a percentile bootstrap
  CI over runs (2,000 resamples); per-image Fleiss' and Randolph's kappa across runs (descriptive,
  no p-value: images are not replicates).
- **Per-run top share** (absorbers.csv, descriptive): Monte Carlo p under a uniform multinomial
  (10^4 draws); with thousands of images it is always tiny and is not used for inference.
- **Absorber vs condition** (confirmatory), among conditions that train the same classes:
  permutation chi-square of the absorber x condition table (10^4 relabellings; fewer, never under
  999, for very large studies), Cramer's V. With paired seeds the confirmatory test is, for 2
  conditions, marginal homogeneity of the paired absorbers by swapping each seed's two absorbers
  (exact over the 2^m patterns of the m discordant seeds; statistic the squared differences of the
  marginal counts, since Stuart-Maxwell's covariance-weighted statistic is constant when the few
  discordances form a tree; it is given for reference), for more conditions Cochran's Q with p
  by permuting each seed's row across conditions; the permutation test and a sign-flip test on
  shares are exploratory.
- **MST edges**: for each condition and noise family, each of the C(K+1, 2) edges against the exact
  chance rate 2/(K+1) under exchangeable node labels (one-sided binomial); Benjamini-Yekutieli
  over all edges. Consensus tree: maximum spanning tree of edge frequencies. Tree overlap
  (exploratory): mean pairwise shared edges against independent random relabelling of each run's
  tree (null mean 2K/(K+1)).
- **Distances** (exploratory): Mantel-style mean pairwise Spearman correlation of the runs'
  class-class block (once per condition: it does not depend on the noise family) and, separately,
  of the noise row, against label permutation. The tree-overlap and noise-row permutation tests
  run on the gaussian family (the question's noise); edge frequencies cover every family.
  Permutation counts shrink from 9,999 to no fewer than 199 as studies grow (stated per row in
  tests.csv); the p-values stay valid at any count.
- **Noise neighbour** (exploratory): runs in which the class nearest to the noise mean is the
  absorber, binomial against 1/K.
- **Clutter** (confirmatory, when measured): per-run Spearman across classes between a clutter
  measure and the absorption share, sign-flip test over runs; head bias and weight norm go through
  the same test as confounds (exploratory).
- **Interventions** (own family, Holm): each training intervention against `none`, seeds paired
  and every other axis equal; sign-flip on the paired change of the top real-class share, per
  noise family (Gaussian was seen in training, the others were not).
- **Is clutter causal?** (own family, Holm): per kind and strength, the per-seed mean over targets
  of the paired change in the target's share and absorber status (sign-flip over seeds; with S
  seeds the smallest attainable two-sided p is 2^(1-S)); a dose-response trend (per-seed Spearman
  of dose vs target share, sign-flip over seeds); manipulation checks of the target's clutter
  (exploratory).
- **Which factor moves the absorber?** (own family, Holm): each level of an architecture factor
  (activation, pool, norm, model) or of class frequency (class_intervention majority, subsample)
  against the axis's first value, seeds paired and every other axis equal. Absorber: marginal
  homogeneity of the paired absorbers, each seed's pairs (one per stratum of the other axes) swapped
  as a whole, exact; top share and epoch-0 top share: sign-flip over seeds of the per-seed mean
  paired difference, with a 95% t interval. Smallest attainable p 2^(1-S) with S seeds. Whether the
  untrained network's favourite class is the absorber: binomial against 1/K per condition
  (exploratory).
- **OOD detectors**: in-distribution is the positive class (AUROC = P(ID score > OOD score);
  AUPR-In with ID positive, AUPR-Out with OOD positive; FPR95 = share of OOD accepted at the
  threshold that accepts 95% of ID); reported as mean +- sd over runs.
- Corrections: Holm within the confirmatory family, Benjamini-Hochberg within the exploratory
  family, Benjamini-Yekutieli for MST edges; Holm within the interventions and causal families.
  Diverged and unreadable runs are excluded, and counted above.
"""


def write_report(ctx: dict) -> str:
    """ctx: name, root, runs, problems, consistency, tests, notes, edge_freq, consensus, heldout,
    trajectory, figures (list of file names), tables (list of file names), extra_sections."""
    runs = ctx["runs"]
    done = runs[runs["status"] == "completed"] if len(runs) else runs
    lines = [f"# noisesink report: {md(ctx['name'])}", "",
             f"Aggregated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC from `{ctx['root']}`: "
             f"{len(runs)} runs ({len(done)} completed, {int((runs['status'] == 'diverged').sum()) if len(runs) else 0} "
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
    lines += [METHODS, "## Files", "", "Tables: " + ", ".join(f"[{t}]({t})" for t in ctx["tables"]),
              "(each also as `.parquet` beside it, with its dtypes kept)", "",
              "Figures:", ""] + [f"![{f}]({f})" for f in ctx["figures"]]
    return "\n".join(lines) + "\n"
