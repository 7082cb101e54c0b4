"""The core topic: what every trial records and every study is asked. Which class absorbs each noise
family and how consistently (inference.consistency), whether the condition changes it, where the
noise node hangs in the minimum spanning tree and whether the distances agree (inference.tree_tests),
what the networks do over training and with the classes they never saw, and the runs themselves
(accuracy, diverged and unreadable trials). Its tables are written even when empty: every study has
them. The report's sections are in analysis/report.py, beside the answer they lead to.
"""
from __future__ import annotations

from pathlib import Path

from . import guard, inference, plots, report, stats, tables, trees
from .topic import Findings, Frames, Inputs, Topic


def study_tables(inputs: Inputs, frames: Frames) -> dict:
    """A table per thing every trial records, and the problems reading the trial folders."""
    data = inputs.data
    return {"runs": tables.runs_table(data), "absorption": tables.absorption_table(data),
            "absorbers": tables.absorbers_table(data), "heldout": tables.heldout_table(data),
            "mst_edges": tables.mst_edges_table(data), "trajectory": tables.trajectory_table(data),
            "problems": tables.problems_table(data)}


def study_tests(inputs: Inputs, frames: Frames) -> Findings:
    """Consistency across seeds, the condition's effect, the accuracy trends and the tree tests, with
    the tables they make on the way and the notes on which conditions could not be compared."""
    groups = inputs.groups
    consistency, distribution, rows = inference.consistency(groups, inputs.label_counts)
    dependence, notes = inference.condition_dependence(groups)
    edge_freq, tree_rows = inference.tree_tests(groups)
    return Findings(rows + dependence + inference.accuracy_trends(groups) + tree_rows,
                    {"consistency": consistency, "absorber_distribution": distribution, "edge_frequency": edge_freq},
                    notes)


def weak_marked(inputs: Inputs, frames: Frames) -> dict:
    """consistency.csv with each condition marked `too_weak` by the weak-network guard."""
    weak = guard.weak_conditions(frames["accuracy_guard"])
    consistency = frames["consistency"]
    return {"consistency": consistency.assign(
        too_weak=[c in weak for c in consistency["condition"]] if len(consistency) else [])}


def figures(inputs: Inputs, frames: Frames, folder: Path) -> list[str]:
    """The absorbers and the trees (where runs completed), training, accuracy, the mean-image galleries."""
    groups, drawn = inputs.groups, []
    if len(frames["absorption"]):
        class_sets = {c: r[0]["classes"] for c, r in groups.items()}
        drawn += [plots.absorption_heatmap(frames["absorption"], folder),
                  plots.absorber_frequency(frames["absorbers"], class_sets, folder),
                  plots.consensus_mst(trees.consensus_trees(frames["edge_frequency"]), folder)]
        shown = [c for c, runs in groups.items() if "gaussian" in inference.families_of(runs)]
        distances = {c: tables.mean_distance(groups[c], "gaussian") for c in shown[:plots.MAX_PANELS]}
        drawn.append(plots.distance_heatmap(distances, folder))
    drawn += [plots.trajectory(frames["trajectory"], folder), plots.absorber_strips(frames["trajectory"], folder),
              plots.accuracy_strip(frames["runs"], folder)]
    families = dict.fromkeys(f for g in inputs.mean_images.values() for f in g.noise)
    drawn += [plots.mean_image_gallery(inputs.mean_images, f, folder) for f in families]
    return [f for f in drawn if f]


def methods_text() -> str:
    """This topic's bullets of the Methods (authored markdown; report.methods_text joins them)."""
    S = stats
    return f"""- **Absorber consistency**: H0 each run's absorber is an independent uniform draw from the K
  trained classes. Statistic: the modal absorber's count over the S runs, ties ordered by the
  agreement sum n_c^2; p by Monte Carlo over {S.CONSISTENCY_DRAWS:,} simulated studies; smallest
  attainable p K^(1-S). Rejecting it says the absorbers are not uniform; what they are is the
  modal share with its simultaneous {1 - S.ALPHA:.0%} interval (Clopper-Pearson at level
  1 - {S.ALPHA}/K per class, absorber_distribution.csv) and the pair agreement
  A = (sum n_c^2 - S)/(S(S-1)) (unbiased, exactly 1/K by chance), shown truncated to [1/K, 1], the
  values sum p_c^2 can take, so that it lies inside its score-type {1 - S.ALPHA:.0%} interval; the
  truncated value is biased upward (exactly 1/K in about half of studies with uniform absorbers). Per-image
  Fleiss' and Randolph's kappa are descriptive (images are not replicates).
- **Per-run top share** (absorbers.csv, descriptive): Monte Carlo p under a uniform multinomial
  ({S.TOP_SHARE_DRAWS:,} draws); with thousands of images it is always tiny and is not used for inference.
- **Absorber vs condition**, among conditions that train the same classes: with the same seeds
  (at least 2 and half of each condition's runs; runs without a partner are left out, not the
  design), for 2 conditions marginal homogeneity by swapping each seed's two absorbers (exact over
  the 2^m patterns of the m discordant seeds up to m = {S.EXACT_SIGN_FLIPS}; statistic the squared
  differences of the marginal counts; Stuart-Maxwell's statistic for reference), for more Cochran's
  Q with each seed's row permuted across conditions; otherwise the permutation chi-square of the
  absorber x condition table ({S.PERMUTATIONS:,} relabellings; fewer,
  never under {S.CONDITION_LEAST_PERMUTATIONS:,}, for very large studies). Estimate: the
  discordance rate of paired seeds with its Clopper-Pearson interval, and
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
  (once per condition) and of the noise row ({inference.PERMUTATION_FAMILY} noise), classes relabelled."""


# this topic's test ids -> (table, what a small p says); README's table of test ids is checked
# against every topic's (pipeline.catalog_of_test_ids)
TESTS = {
    "absorber_consistency": ("tests", "a condition's absorbers are not uniform over its K classes (modal-count test); "
                             "how concentrated they are is the modal share and its interval"),
    "absorber_vs_condition": ("tests", "the absorber's distribution differs between conditions that train the same "
                              "classes: paired seeds, the swap test (2 conditions) or Cochran's Q; else the "
                              "permutation chi-square"),
    "absorber_vs_condition_chi2": ("tests", "the same by permutation chi-square over runs, in a paired design "
                                            "(secondary)"),
    "share_vs_condition": ("tests", "two paired conditions differ in the share of noise the pooled modal class "
                                    "absorbs"),
    "absorber_equivalence": ("tests", "a condition changes the absorber against the first condition (paired seeds) in "
                             "fewer than a stated share of the seeds (discordance rate, exact equivalence test)"),
    "mst_edge": ("edge_frequency", "a pair of classes is joined in the class tree more often than relabelled "
                 "trees join it (2/K)"),
    "noise_edge": ("edge_frequency", "the noise node hangs on this class more often than 1/K"),
    "mst_overlap": ("tests", "the runs' class trees share more edges than relabelled class trees"),
    "noise_attachment": ("tests", "the class the noise node hangs on is not uniform over the runs (modal-count test)"),
    "noise_neighbour": ("tests", "within a run, the class nearest to the noise mean is the absorber more often "
                        "than the two's distributions over runs imply"),
    "distance_agreement": ("tests", "the runs' class-class distances agree beyond relabelled classes (Mantel)"),
    "noise_distance_agreement": ("tests", "the runs' noise-to-class distances agree beyond relabelled classes"),
    "accuracy_trend": ("tests", "across conditions that train the same classes, a noise family's top share or mean "
                       "max-softmax goes with the networks' test accuracy (Spearman over runs, runs permuted); "
                       "confirmatory for Gaussian noise where the conditions are arms of different networks "
                       "(a ladder)"),
}

TOPIC = Topic("core", tables=study_tables, tests=study_tests, summaries=weak_marked, figures=figures,
              sections=(report.absorber_section, report.condition_section, report.mst_section, report.distance_section,
                        report.heldout_section, report.trajectory_section, report.learned_images_section),
              closing=(report.problems_section,), methods=methods_text,
              test_ids=TESTS)
