"""The report: the study's answers in plain words, each with its number, n and test.

Built once as typed content (analysis/document.py) from a `ReportContext`, then rendered as
report.md and as one self-contained report.html, so the two never disagree. A section is a
function `ReportContext -> Section` (an empty Section when it has nothing to say), written beside
the numbers it reports and listed by its topic (analysis/topic.py); `pipeline.TOPICS` orders the
topics, and with them the sections and the paragraphs of the Methods.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import inference, stats
from .contract import COMPLETED, DIVERGED
from .document import (
    Bullets,
    Code,
    Emph,
    Figure,
    Link,
    Paragraph,
    Report,
    Section,
    Strong,
    Table,
    authored,
    fmt_p,
    md,
    text,
)
from .stats import ALPHA, DISCORDANCE_MARGIN
from .trees import consensus_trees

__all__ = ["ALPHA", "ReportContext", "build", "fmt_p", "md", "significant", "tests_of", "verdict"]

ANSWER_CONDITIONS = 12   # conditions spelled out in the answer block (all are in the sections below)
EMPTY = pd.DataFrame()   # what ctx.table gives for a table the study did not produce


@dataclass(frozen=True)
class ReportContext:
    """Everything a report section may read, built once by the aggregation."""
    name: str                                   # the study's name
    root: str                                   # where its trials were read from
    frames: Mapping[str, pd.DataFrame]          # every table written beside the report, by name
    figures: Sequence[str] = ()                 # PNG files beside the report
    notes: Sequence[str] = ()                   # caveats from the tests (e.g. conditions not compared)
    generated: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def table(self, name: str) -> pd.DataFrame:
        """A table by name (its file stem); empty when the study did not produce it."""
        return self.frames.get(name, EMPTY)

    @property
    def runs(self) -> pd.DataFrame:
        return self.table("runs")

    @property
    def tests(self) -> pd.DataFrame:
        return self.table("tests")

    def figure(self, name: str, caption: str) -> list[Figure]:
        """[the figure] when it was drawn, else [] (a study without that measurement)."""
        return [Figure(name, caption)] if name in self.figures else []

    def tables(self) -> list[str]:
        return [f"{name}.csv" for name in self.frames]


SectionFn = Callable[[ReportContext], Section]
# inference.CORRECTION's method ids as the report names them
CORRECTION_NAME = {"holm": "Holm", "fdr_bh": "BH", "fdr_by": "BY"}


def tests_of(tests: pd.DataFrame, test: str, **where) -> pd.DataFrame:
    """The tests.csv rows of one test id (Topic.test_ids), optionally where column == value."""
    if tests.empty:
        return tests
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
        if np.isfinite(row["n_needed"]):   # enough runs, too few of them informative (ties, agreeing seeds)
            return f"too few informative runs to test (ties or agreeing seeds); more seeds may help ({why})"
        return f"cannot reach significance in this design ({why})"
    method = CORRECTION_NAME[inference.CORRECTION[row["family"]]]
    return f"p = {fmt_p(row['p_value'])}, {method}-adjusted {fmt_p(row['p_adjusted'])}"


def significant(row) -> bool:
    # a row that cannot reach its level never counts, whatever its adjusted p
    return row is not None and bool(row["can_reject"]) and np.isfinite(row["p_adjusted"]) and row["p_adjusted"] < ALPHA


def _num(v, spec: str = ".2f") -> str:
    return format(v, spec) if v is not None and np.isfinite(v) else "n/a"


def _show(df: pd.DataFrame) -> pd.DataFrame:
    """Floats as 3 significant digits for a table in the report (the CSVs keep every digit)."""
    return df.apply(lambda col: col.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)) if len(df) else df


def _joined(parts: list, sep: str = "; ") -> tuple:
    """Text runs joined with a separator into one run."""
    out: tuple = ()
    for i, p in enumerate(parts):
        out += (text(sep) if i else ()) + p
    return out


def _hangs(ctx: ReportContext, condition: str):
    """(class the noise node hangs on most often, count, n runs) for the primary noise, or None."""
    ef = ctx.table("edge_frequency")
    if ef.empty:
        return None
    att = ef[(ef["condition"] == condition) & (ef["noise"] == inference.PRIMARY_NOISE) & (ef["test"] == "noise_edge")]
    if att.empty:
        return None
    # most frequent first; a tie goes to the alphabetically first class, as in trees.consensus_trees
    top = att.sort_values(["frequency", "u"], ascending=[False, True]).iloc[0]
    return top["u"], int(top["count"]), int(top["n_runs"])


# ---------------------------------------------------------------- intro and the answer first

def intro(ctx: ReportContext) -> list:
    runs = ctx.runs
    done = runs[runs["status"] == COMPLETED] if len(runs) else runs
    diverged = int((runs["status"] == DIVERGED).sum()) if len(runs) else 0
    blocks = [Paragraph(text(f"Aggregated {ctx.generated:%Y-%m-%d %H:%M} UTC from ", Code(ctx.root),
                             f": {len(runs)} runs ({len(done)} completed, {diverged} diverged), "
                             f"{len(ctx.table('problems'))} problem(s) reading trial folders."))]
    if "source" in runs:  # a study merged from parts run on several machines
        pieces = ["Runs by the folder they came from (runs.csv: ", Code("source"), "):"]
        for src, n in runs["source"].value_counts(sort=False).items():
            pieces += [" ", Code(src), f": {n}."]
        blocks.append(Paragraph(text(*pieces)))
    if len(done):
        # a condition of one run has no sd (NaN): shown as 0
        acc = done.groupby("condition")["test_accuracy"].agg(["mean", "std", "count"])
        blocks.append(Paragraph(text("Test accuracy (trained classes): " + "; ".join(
            f"{c} {r['mean']:.3f} +- {0 if not np.isfinite(r['std']) else r['std']:.3f} (n = {int(r['count'])})"
            for c, r in acc.iterrows()) + ".")))
    return blocks


def answer_first(ctx: ReportContext) -> list:
    """The short answer: which class absorbs each noise family, how sure, how stable the tree
    is, and what this study could not conclude. Every number is repeated, with its test, in the
    sections below."""
    cons, tests = ctx.table("consistency"), ctx.tests
    if cons.empty:
        return [Paragraph(text("No completed runs: nothing to conclude."))]
    items, open_questions = [], []
    guard_table = ctx.table("accuracy_guard")
    too_weak = guard_table[guard_table["too_weak"]] if len(guard_table) else guard_table
    weak_names = set(too_weak["condition"]) if len(too_weak) else set()
    for r in too_weak.itertuples():
        open_questions.append(text(Strong(f"{r.condition}: too weak to interpret"), " (test accuracy "
                                   f"{r.accuracy_mean:.3f}, pooled {stats.LEVEL} interval [{r.ci_low:.3f}, "
                                   f"{r.ci_high:.3f}] against chance {r.chance:.3f}; {r.rule}): its networks barely "
                                   "learned, so where they send noise says little about trained classifiers; its tests "
                                   "are exploratory."))
    for i, (condition, sub) in enumerate(cons.groupby("condition", sort=False)):
        parts, weak = [], []
        for r in sub.itertuples():
            t = _one(tests, "absorber_consistency", condition=condition, noise=r.noise)
            sure = significant(t)
            # the verdict only for the primary noise, the confirmatory one; the others are exploratory
            parts.append(text(f"{r.noise} → ", Strong(r.modal_absorber) if sure else r.modal_absorber,
                              f" ({r.modal_count}/{r.n_runs}"
                              + (f", {verdict(t)}" if t is not None and r.noise == inference.PRIMARY_NOISE else "")
                              + ")"))
            if not sure:
                weak.append(r.noise)
        n = int(sub["n_runs"].max())
        # every condition's open questions are kept; only the first ANSWER_CONDITIONS get a bullet
        if i < ANSWER_CONDITIONS:
            flag = " (too weak to interpret)" if condition in weak_names else ""
            items.append(text(Strong(condition), f" (n = {n} runs){flag}: ") + _joined(parts))
        if weak:
            t = _one(tests, "absorber_consistency", condition=condition, noise=inference.PRIMARY_NOISE)
            why = (f"; {inference.PRIMARY_NOISE}: {verdict(t)}" if t is not None and inference.PRIMARY_NOISE in weak
                   else "")
            open_questions.append(text(f"{condition} (n = {n} runs): the absorbers of {', '.join(weak)} are not shown "
                                       f"to differ from uniform{why}."))
    n_conditions = cons["condition"].nunique()
    if n_conditions > ANSWER_CONDITIONS:
        items.append(text(f"... and {n_conditions - ANSWER_CONDITIONS} more conditions: see the table in the next "
                          "section."))
        if len(open_questions) > ANSWER_CONDITIONS:  # capped too: the sections below have them all
            more = len(open_questions) - ANSWER_CONDITIONS
            open_questions = open_questions[:ANSWER_CONDITIONS] + [text(f"... and {more} more conditions like these.")]
    blocks = [Paragraph(text("Which class absorbs each noise family (modal absorber and the runs in which it absorbs; ",
                             Strong("bold"), ": the absorbers are not uniform over the classes, confirmatory for "
                             f"{inference.PRIMARY_NOISE} noise, exploratory for the others):")), Bullets(items)]
    trees = []
    for condition in list(dict.fromkeys(cons["condition"]))[:ANSWER_CONDITIONS]:  # each once, in table order
        hang = _hangs(ctx, condition)
        if hang is None:
            continue
        att = _one(tests, "noise_attachment", condition=condition, noise=inference.PRIMARY_NOISE)
        ov = _one(tests, "mst_overlap", condition=condition)
        trees.append(text(f"{condition}: the {inference.PRIMARY_NOISE}-noise node hangs on ", Strong(hang[0]),
                          f" in {hang[1]}/{hang[2]} runs"
                          + (f" ({verdict(att)})" if att is not None else "")
                          + ("; the class trees agree beyond chance" if significant(ov) else
                             "; agreement of the class trees not shown" if ov is not None else
                             "; agreement of the class trees untested (needs 3 runs and 3 classes)")
                          + (f" ({verdict(ov)})" if ov is not None else "")
                          + "."))
    if trees:
        blocks += [Paragraph(text("How stable the minimum spanning tree is:")), Bullets(trees)]
    open_questions += [text(n) for n in ctx.notes]
    problems = len(ctx.table("problems"))
    diverged = int((ctx.runs["status"] == DIVERGED).sum()) if len(ctx.runs) else 0
    if problems or diverged:
        open_questions.append(text(f"{diverged} diverged run(s) and {problems} unreadable trial folder(s) are "
                                   "left out of every statistic (see the last section)."))
    blocks += [Paragraph(text("What this study could not conclude:")),
               Bullets(open_questions or [text(f"Nothing left open at the {ALPHA:.0%} level.")])]
    return blocks


# ---------------------------------------------------------------- the sections

def absorber_section(ctx: ReportContext) -> Section:
    cons, tests = ctx.table("consistency"), ctx.tests
    s = Section("Which class absorbs each noise type, and how consistently across seeds", key="absorbers")
    if cons.empty:
        return s
    items = []
    for condition, sub in cons.groupby("condition", sort=False):
        g = sub[sub["noise"] == inference.PRIMARY_NOISE]
        if not len(g):
            continue
        r = g.iloc[0]
        t = _one(tests, "absorber_consistency", condition=condition, noise=inference.PRIMARY_NOISE)
        shown = ("the absorbers are not uniform over the classes" if significant(t)
                 else "not shown to differ from uniform absorbers")
        items.append(text(
            Strong(condition), ": Gaussian noise goes to ", Strong(r["modal_absorber"]),
            f" in {r['modal_count']}/{r['n_runs']} runs: modal share {r['modal_share']:.2f} "
            f"[simultaneous {stats.LEVEL} CI {r['modal_share_ci_low']:.2f}, {r['modal_share_ci_high']:.2f}] "
            f"(mean top share {r['mean_top_share']:.2f}"
            + (f" +- {r['sd_top_share']:.2f}" if np.isfinite(r["sd_top_share"]) else "")
            + (f", at a mean softmax mass of {r['mean_absorber_softmax']:.2f} on the absorber"
               if np.isfinite(r.get("mean_absorber_softmax", np.nan)) else "")
            + f"); {shown} ({r['n_classes']} classes; modal-count test, "
            + (verdict(t) if t is not None else "n/a") + "); "
            f"pair agreement {r['agreement']:.2f} [{stats.LEVEL} CI {r['agreement_ci_low']:.2f}, "
            f"{r['agreement_ci_high']:.2f}] (1/K = {1 / r['n_classes']:.2f} by chance)"
            + (f"; per-image Fleiss kappa {r['fleiss_kappa']:.2f}" if np.isfinite(r["fleiss_kappa"]) else "") + "."))
    s.blocks.append(Bullets(items))
    t = tests_of(tests, "absorber_consistency")
    # no such rows: an empty frame with the columns, so the merge below still adds them
    t = t[["condition", "noise", "p_adjusted", "can_reject"]] if len(t) else \
        pd.DataFrame(columns=["condition", "noise", "p_adjusted", "can_reject"])
    show = cons.merge(t, on=["condition", "noise"], how="left")
    show = show.assign(runs=show["modal_count"].astype(str) + "/" + show["n_runs"].astype(str),
                       modal_share=[f"{a:.2f} [{b:.2f}, {c:.2f}]" for a, b, c in
                                    zip(show["modal_share"], show["modal_share_ci_low"], show["modal_share_ci_high"])],
                       # after the left merge can_reject may be a bool, a numpy bool or a float (NaN: no test)
                       p=[fmt_p(p) if ok is True or ok == 1 else "too few runs"
                          for p, ok in zip(show["p_value"], show["can_reject"])],
                       p_adjusted=show["p_adjusted"].map(fmt_p),
                       agreement=[f"{a:.2f} [{b:.2f}, {c:.2f}]" for a, b, c in
                                  zip(show["agreement"], show["agreement_ci_low"], show["agreement_ci_high"])],
                       fleiss=show["fleiss_kappa"].map(_num), randolph=show["randolph_kappa"].map(_num))
    s.blocks += [
        Table(show[["condition", "noise", "modal_absorber", "runs", "modal_share", "p", "p_adjusted", "agreement",
                    "fleiss", "randolph"]],
              caption=text(f"Every noise family, per condition (modal share with its simultaneous {stats.LEVEL} "
                           "interval over the classes; p: Monte Carlo test of the modal absorber count against uniform "
                           "absorbers, adjusted within its family; agreement: pair agreement (the unbiased A truncated "
                           f"to [1/K, 1]: biased upward, 1/K in about half of chance studies) with its {stats.LEVEL} "
                           "interval):"),
              numeric=("runs", "modal_share", "p", "p_adjusted", "agreement", "fleiss", "randolph")),
        Paragraph(text("The distribution of absorbers over all classes, with simultaneous intervals: ",
                       Link("absorber_distribution.csv", "absorber_distribution.csv"), ". Kappas are per-image "
                       "agreement of labels across runs. Fleiss' kappa falls towards 0 when nearly every image goes "
                       "to one class (the prevalence paradox); Randolph's free-marginal kappa does not, so read the "
                       "two together.")),
        *ctx.figure("absorber_frequency.png", "Which class absorbs each noise family: fraction of runs per "
                    f"condition with {stats.LEVEL} Wilson intervals"),
        *ctx.figure("absorption_heatmap.png", "Share of each noise family predicted as each class, one row per run")]
    return s


def condition_section(ctx: ReportContext) -> Section:
    tests = ctx.tests
    s = Section("Does the condition (augmentation, class subset, ...) change the absorber?", key="conditions")
    if ctx.table("consistency").empty:
        return s
    dep = tests[tests["test"].isin(["absorber_vs_condition", "absorber_vs_condition_chi2", "share_vs_condition"])]
    eq = tests_of(tests, "absorber_equivalence")
    if dep.empty:
        s.blocks.append(Paragraph(text("No two conditions train the same classes, so no test of absorber identity "
                                       "across conditions applies here.")))
    items = []
    for _, row in dep.iterrows():
        said = (Strong("depends") if significant(row) else "no evidence of dependence") if row["can_reject"] \
            else "untested"
        items.append(text(f"{row['condition']}, {row['noise']}: ", said, f" ({row['hypothesis']}; {row['method']}; "
                          f"statistic {row['statistic']:.3g}, {verdict(row)}, n = {row['n_runs']})"))
    for _, row in eq.iterrows():
        shown = (Strong("shown") if significant(row) else "not shown") if row["can_reject"] else "untested"
        items.append(text(f"{row['condition']}, {row['noise']}: the absorber differs in {int(row['statistic'])}"
                          f"/{row['n_runs']} paired seeds (discordance {row['effect']:.2f}, {stats.LEVEL} CI "
                          f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]); that it changes in fewer than "
                          f"{DISCORDANCE_MARGIN:.0%} of seeds is ",
                          shown, f" ({verdict(row)})"))
    if items:
        s.blocks.append(Bullets(items))
    s.blocks += [Paragraph(text(Emph(n))) for n in ctx.notes]
    return s


def mst_section(ctx: ReportContext) -> Section:
    edge_freq, tests = ctx.table("edge_frequency"), ctx.tests
    s = Section("How stable is the minimum spanning tree, and where does the noise node hang?", key="mst")
    noise = inference.PRIMARY_NOISE
    items = []
    for condition, family in (consensus_trees(edge_freq) if len(edge_freq) else {}):
        if family != noise:  # the trees are reported for the primary noise only
            continue
        cls = edge_freq[(edge_freq["condition"] == condition) & (edge_freq["test"] == "mst_edge")]
        # q_value: Benjamini-Yekutieli over all edges (edge_frequency.csv)
        reliable = cls[cls["q_value"] < ALPHA].sort_values("frequency", ascending=False)
        att = edge_freq[(edge_freq["condition"] == condition) & (edge_freq["noise"] == noise)
                        & (edge_freq["test"] == "noise_edge")].sort_values("frequency", ascending=False)
        n = int(cls["n_runs"].iloc[0]) if len(cls) else 0
        k = len(att)  # K: one noise_edge row per class; a relabelled tree joins a pair with chance 2/K
        line = text(Strong(condition), f" (n = {n} runs): ")
        if len(att):
            top = att.iloc[0]
            line += text("the noise node hangs on ", Strong(top["u"]), f" in {int(top['count'])}/{n} runs "
                         f"(support {top['frequency']:.0%} in the consensus tree)")
            t = _one(tests, "noise_attachment", condition=condition, noise=noise)
            if t is not None:
                line += text(f"; not uniform over the classes: {verdict(t)}")
            line += text(". ")
        line += text(f"{len(reliable)} of {len(cls)} class pairs are joined more often than relabelled trees join "
                     f"them ({2 / k if k else float('nan'):.2f}; binomial, BY q < {ALPHA})"
                     + (": " + ", ".join(f"{r.u}-{r.v} ({r.frequency:.0%})" for r in reliable.head(8).itertuples())
                        if len(reliable) else "") + ". ")
        ov = _one(tests, "mst_overlap", condition=condition)
        if ov is not None:
            # effect = statistic / null mean (stats.tree_overlap_test): the quotient is the null mean 2(K-1)/K
            line += text(f"Mean pairwise shared class edges {ov['statistic']:.2f} vs "
                         f"{ov['statistic'] / ov['effect']:.2f} by chance ({verdict(ov)}). ")
        near = _one(tests, "noise_neighbour", condition=condition, noise=noise)
        if near is not None:
            line += text(f"The class nearest to the noise mean is the absorber in {int(near['statistic'])}/{n} runs; "
                         f"given how often each class is nearest and absorbs, a within-run link: {verdict(near)}.")
        items.append(line)
    if items:
        s.blocks += [Paragraph(text("The tree over the K class means is tested with the classes relabelled (each "
                                    "pair's chance is 2/K); the noise node, far from every class in real features, is "
                                    "not relabelled with them: where it hangs (its nearest class) is tested on its "
                                    "own.")),
                     Bullets(items),
                     *ctx.figure(f"consensus_mst_{noise}.png", f"Consensus minimum spanning tree ({noise} noise), "
                                 "edge width = share of runs with the edge")]
    return s


def distance_section(ctx: ReportContext) -> Section:
    tests = ctx.tests
    s = Section("Do the distance matrices agree across runs?", key="distances")
    if ctx.table("consistency").empty:
        return s
    items = [text(f"{row['condition']}, {what} distances: mean pairwise Spearman {row['statistic']:.2f} "
                  f"({verdict(row)}, n = {row['n_runs']})")
             for test, what in (("distance_agreement", "class-class"), ("noise_distance_agreement", "noise-class"))
             for _, row in tests_of(tests, test).iterrows()]
    s.blocks.append(Bullets(items) if items else Paragraph(text("Needs at least 3 runs per condition.")))
    s.blocks += ctx.figure(f"distance_heatmap_{inference.PRIMARY_NOISE}.png", "Mean cosine distance between the "
                           "class means and the Gaussian-noise mean")
    return s


def heldout_section(ctx: ReportContext) -> Section:
    heldout = ctx.table("heldout")
    s = Section("What the models do with the classes they never saw", key="heldout")
    if heldout.empty:
        return s
    s.blocks.append(Paragraph(text("Mean share of each held-out class's test images given to each trained class "
                                   "(over runs):")))
    mean = heldout.groupby(["condition", "heldout_class", "class"], observed=True)["share"].mean().reset_index()
    for condition, sub in mean.groupby("condition", sort=False, observed=True):
        pivot = sub.pivot(index="heldout_class", columns="class", values="share").reset_index()
        pivot.columns = [str(c) for c in pivot.columns]
        s.blocks.append(Table(_show(pivot.round(3)), caption=text(Strong(condition)),
                              numeric=tuple(pivot.columns[1:])))
    return s


def trajectory_section(ctx: ReportContext, per_seed_up_to: int = 12) -> Section:
    """Per condition and seed: the class the untrained net (epoch 0) favoured and its share, and
    the class the trained net favours; a count per class when there are many seeds."""
    traj = ctx.table("trajectory")
    s = Section("When does the absorber appear during training?", key="trajectory")
    if traj.empty:
        return s
    items = []
    for condition, sub in traj.groupby("condition", sort=False, observed=True):
        wide = sub.pivot_table(index=["seed", "epoch"], columns="class", values="share", observed=True)
        seeds = list(dict.fromkeys(wide.index.get_level_values(0)))  # each once, in table order
        first = {seed: wide.loc[seed].iloc[0] for seed in seeds}
        last = {seed: wide.loc[seed].dropna(how="all").iloc[-1] for seed in seeds}
        final = int(wide.index.get_level_values(1).max())
        if len(seeds) <= per_seed_up_to:
            untrained = "; ".join(f"seed {seed} {_leader(first[seed])}" for seed in seeds)
            trained = "; ".join(f"seed {seed} {_leader(last[seed])}" for seed in seeds)
        else:
            untrained, trained = _tally(first), _tally(last)
        items.append(text(Strong(condition), f" (n = {len(seeds)} runs): untrained (epoch 0), the nets favour "
                          f"{untrained}; after training (epoch {final}): {trained}."))
    s.blocks += [Bullets(items),
                 *ctx.figure("absorber_over_training.png", "The absorbing class of each run after every epoch "
                             "(epoch 0 = untrained) and its share"),
                 *ctx.figure("trajectory.png", "Share of the trajectory's Gaussian images per class and epoch: a "
                             "thin line per run, a thick line for the mean")]
    return s


def _leader(shares: pd.Series) -> str:
    """`cat (100.0%)`, or a tie: `a tie of cat and dog (50.0% each)`."""
    top = shares.max()
    leaders = [str(c) for c, v in shares.items() if v == top]
    if len(leaders) > 1:
        return f"a tie of {' and '.join(leaders)} ({top:.1%} each)"
    return f"{leaders[0]} ({top:.1%})"


def _tally(leaders: dict) -> str:
    """`cat in 40 run(s) (median share 87%), dog in 35 run(s) (...)`, most frequent first."""
    rows = [(str(shares.idxmax()), shares.max()) for shares in leaders.values()]
    by = pd.DataFrame(rows, columns=["c", "share"]).groupby("c")["share"].agg(["size", "median"])
    return ", ".join(f"{c} in {int(r['size'])} run(s) (median share {r['median']:.0%})"
                     for c, r in by.sort_values("size", ascending=False).iterrows())


def learned_images_section(ctx: ReportContext) -> Section:
    s = Section("What did the networks learn? The mean noise image each class receives", key="mean-images")
    galleries = [f for f in ctx.figures if f.startswith("mean_images_")]
    if not galleries:
        return s
    s.blocks.append(Paragraph(text(
        "For each noise family and condition: the mean of the noise images each class received over every run "
        "(how many images, in how many runs, under it), above the class's mean training image as trained on. "
        "Each image is contrast-stretched on its own (its 1st-99th percentile to black-white), so compare "
        "patterns, not brightness. The pixel mean of many unrelated noise images is close to flat: a visible "
        "structure is what the images a class receives have in common.")))
    # the noise family: the file name less `mean_images_` and `.png`
    s.blocks += [Figure(f, f"Mean {f[len('mean_images_'):-4]} noise image per class beside the class's mean "
                        "training image") for f in galleries]
    return s


def problems_section(ctx: ReportContext) -> Section:
    runs, problems = ctx.runs, ctx.table("problems")
    s = Section("Runs: accuracy, failed, diverged and unreadable trials", key="problems")
    # runs.csv has the column only where some run was probed from a checkpoint
    probed = int(runs["checkpoint"].notna().sum()) if "checkpoint" in runs else 0
    if probed:
        s.blocks.append(Paragraph(text(
            f"{probed} of the {len(runs)} runs are checkpoints trained elsewhere and probed by ",
            Code("noisesink probe"), " (no training here, no trajectory; their seed numbers the checkpoints of a "
            "condition; each file in the ", Code("checkpoint"), " column of ", Link("runs.csv", "runs.csv"),
            ", its sha256 in its trial.json).")))
    diverged = runs[runs["status"] == DIVERGED] if len(runs) else runs
    s.blocks.append(Paragraph(text(
        f"{len(diverged)} diverged (excluded from all statistics)"
        + (": " + ", ".join(f"{t} (epoch {int(e)})"
                            for t, e in zip(diverged["trial_id"], diverged["diverged_at_epoch"]))
           if len(diverged) else "") + ".")))
    s.blocks.append(Paragraph(text(f"{len(problems)} problem(s) reading trial folders (see ",
                                   Link("problems.csv", "problems.csv"), "):")))
    if len(problems):
        s.blocks.append(Bullets([text(f"{p.trial_id}: {p.reason} [{p.action}]") for p in problems.itertuples()]))
    s.blocks += ctx.figure("accuracy.png", "Test accuracy per condition")
    return s


def files_section(ctx: ReportContext, shown: set[str]) -> Section:
    """Every table, and any figure no section showed."""
    tables = ctx.tables()
    links = _joined([text(Link(t, t)) for t in tables], ", ")
    s = Section("Files", key="files", blocks=[Paragraph(
        text("Tables: ") + links + text(" (each also as ", Code(".parquet"), " beside it, with its dtypes kept).")
        if tables else text("No tables."))])
    s.blocks += [Figure(f, f) for f in ctx.figures if f not in shown]
    return s


def methods_text(paragraphs: Sequence[str]) -> str:
    """The Methods, as authored markdown: what every test shares, each topic's paragraph (its
    bullets) in turn, and the permutation counts; every count and level in it is the code's own setting."""
    S, I = stats, inference  # noqa: E741  (S and I: the modules, short in the text below)
    confirmatory = ", ".join(I.CONFIRMATORY)
    shared = f"""The unit of replication is the trained network (a run); noise images are never counted as
replicates, and where a covariate belongs to a class (clutter, measured on the same images in
every run) the class is the unit. Every trial of a study probes the same noise banks (fixed
`noise_seed`). Every test in tests.csv has a stable id (`test`), its smallest attainable p at its
n (`p_min`), the raw p it would need after its family's correction (`p_needed`), whether it can
reach it (`can_reject`) and, where more runs would help, how many (`n_needed`); a test that cannot
reach its level is reported as "too few runs to test", never with a p that reads like evidence.

- **Families**: confirmatory, pre-registered, on {I.PRIMARY_NOISE} noise only: {confirmatory}
  (the clutter measure {I.PRIMARY_CLUTTER} only); Holm. The factor tests ({", ".join(I.FACTORS)}):
  their own family, Holm. Everything else exploratory, Benjamini-Hochberg. MST edges:
  Benjamini-Yekutieli over all edges (edge_frequency.csv)."""
    counts = f"""- Permutation counts shrink from {S.PERMUTATIONS:,} to no fewer than {S.LEAST_PERMUTATIONS} as studies
  grow (stated per row in tests.csv); p-values stay valid at any count. Diverged and unreadable runs
  are excluded, and counted above."""
    # one markdown list: a blank line between the topics' bullets would start a new one
    return "\n".join([shared, *(p.strip() for p in paragraphs if p.strip()), counts]) + "\n"


def methods_section(paragraphs: Sequence[str]) -> Section:
    return Section("Methods", key="methods", blocks=authored(methods_text(paragraphs)))


def build(ctx: ReportContext, sections: Sequence[SectionFn], methods: Sequence[str]) -> Report:
    """The report: the intro, the answer first, `sections` in order (empty ones left out), the
    files, and at the end the methods, with the topics' paragraphs `methods` in order."""
    body = [s for s in (fn(ctx) for fn in sections) if s]
    shown = {b.file for s in body for b in s.blocks if isinstance(b, Figure)}
    return Report(title=f"noisesink report: {ctx.name}", intro=intro(ctx), answer=answer_first(ctx), sections=body,
                  files=files_section(ctx, shown), methods=methods_section(methods))
