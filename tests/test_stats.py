"""The statistics against known answers, and their calibration under planted nulls."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from analysis import stats

# ---------------------------------------------------------------- libraries vs known answers

def test_fleiss_kappa_matches_fleiss_1971_worked_example():
    """The textbook table (10 subjects, 14 raters, 5 categories): kappa = 0.210."""
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
                      [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
                      [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert stats.image_agreement(table)["fleiss_kappa"] == pytest.approx(0.2099, abs=1e-4)
    # Randolph's free-marginal kappa: (P_bar - 1/k) / (1 - 1/k) with P_bar = 0.378
    assert stats.image_agreement(table)["randolph_kappa"] == pytest.approx((0.378 - 0.2) / 0.8, abs=1e-3)


def test_corrections_match_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.20])
    # Holm: sorted 0.01*4, 0.03*3, 0.04*2, 0.20*1, then cumulative max
    np.testing.assert_allclose(stats.adjust(p, "holm"), [0.04, 0.09, 0.09, 0.20])
    # BH: sorted p_(i) * m / i = 0.04, 0.06, 0.0533, 0.20, then cumulative min from the top
    bh = np.array([0.04, 0.16 / 3, 0.16 / 3, 0.20])
    np.testing.assert_allclose(stats.adjust(p, "fdr_bh"), bh)
    # BY: BH times sum_{i<=m} 1/i = 25/12
    np.testing.assert_allclose(stats.adjust(p, "fdr_by"), np.minimum(1, bh * 25 / 12))
    assert np.isnan(stats.adjust([0.1, np.nan], "holm")[1])


def test_stuart_maxwell_on_two_classes_is_mcnemar():
    first = ["a"] * 10 + ["a"] * 8 + ["b"] * 2 + ["b"] * 5
    second = ["a"] * 10 + ["b"] * 8 + ["a"] * 2 + ["b"] * 5
    res = stats.marginal_homogeneity(first, second)
    assert res["stuart_maxwell"] == pytest.approx((8 - 2) ** 2 / (8 + 2)) and res["df"] == 1
    # and the permutation p is the exact McNemar (two-sided binomial on the 10 discordant seeds)
    assert res["p_value"] == pytest.approx(sps.binomtest(8, 10, 0.5).pvalue)


def test_stuart_maxwell_equals_statsmodels_where_its_inverse_exists():
    from statsmodels.stats.contingency_tables import SquareTable
    rng = np.random.default_rng(3)
    classes = ["a", "b", "c", "d"]
    for _ in range(20):
        first, second = list(rng.choice(classes, 40)), list(rng.choice(classes, 40))
        cats = sorted(set(first) | set(second))
        table = np.zeros((len(cats), len(cats)))
        for x, y in zip(first, second):
            table[cats.index(x), cats.index(y)] += 1
        ref = SquareTable(table, shift_zeros=False).homogeneity(method="stuart_maxwell")
        ours = stats.marginal_homogeneity(first, second)
        assert ours["stuart_maxwell"] == pytest.approx(ref.statistic) and ours["df"] == ref.df
        assert ours["p_asymptotic"] == pytest.approx(ref.pvalue)


def test_stuart_maxwell_stays_defined_where_the_textbook_inverse_fails():
    # "c" occurs only in agreeing pairs: statsmodels' V is singular (NaN); the pair adds nothing
    first = ["a"] * 6 + ["b"] * 1 + ["c"] * 3
    second = ["b"] * 6 + ["a"] * 1 + ["c"] * 3
    res = stats.marginal_homogeneity(first, second)
    assert res["stuart_maxwell"] == pytest.approx((6 - 1) ** 2 / 7) and res["df"] == 1
    # two unlinked groups of discordances (a<->b, c<->d): the sum of two McNemars
    first = ["a"] * 5 + ["b"] * 1 + ["c"] * 4 + ["d"] * 2
    second = ["b"] * 5 + ["a"] * 1 + ["d"] * 4 + ["c"] * 2
    res = stats.marginal_homogeneity(first, second)
    assert res["stuart_maxwell"] == pytest.approx(16 / 6 + 4 / 6) and res["df"] == 2


def test_paired_homogeneity_sees_one_class_losing_every_seed():
    # "a" absorbs in all 8 seeds of the first condition, 8 different classes in the second: the
    # discordances form a tree, where Stuart-Maxwell is m whatever the directions; |d|^2 is not
    first = ["a"] * 8
    second = ["b", "c", "d", "e", "f", "g", "h", "i"]
    res = stats.marginal_homogeneity(first, second)
    assert res["stuart_maxwell"] == pytest.approx(8)
    assert res["p_value"] == pytest.approx(2 / 2**8)
    # 20 discordant seeds: Monte Carlo, close to the exact two-sided binomial tail
    res = stats.marginal_homogeneity(["a"] * 15 + ["b"] * 5, ["b"] * 15 + ["a"] * 5)
    assert res["p_value"] == pytest.approx(sps.binomtest(15, 20, 0.5).pvalue, abs=0.01)
    assert stats.marginal_homogeneity(["a", "b"], ["a", "b"])["p_value"] == 1.0


def test_wilson_interval_known_answer_and_bounds():
    # Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662; 15/148 -> 0.0624 to 0.1605
    assert stats.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert stats.wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    for n in range(1, 60):                     # the bounds hold p itself, inside [0, 1]
        for k in range(n + 1):
            low, high = stats.wilson_interval(k, n)
            assert 0 <= low <= k / n <= high <= 1, (k, n)


def test_cochran_q_on_two_conditions_is_mcnemar():
    x = np.array([[1, 1]] * 10 + [[1, 0]] * 8 + [[0, 1]] * 2 + [[0, 0]] * 5)
    res = stats.cochran_q(x)
    assert res["statistic"] == pytest.approx((8 - 2) ** 2 / (8 + 2))
    # the within-seed permutation p of 2 conditions is the exact McNemar, up to Monte Carlo error
    assert res["p_value"] == pytest.approx(sps.binomtest(8, 10, 0.5).pvalue, abs=0.01)


def test_cochran_q_permutation_p_sees_a_condition_that_never_absorbs():
    # 3 conditions, 5 seeds: the first always absorbs to the pooled class, the others never
    x = np.array([[1, 0, 0]] * 5)
    res = stats.cochran_q(x, perms=9_999)
    assert res["p_value"] == pytest.approx(3 / 3**5, abs=0.004)       # exact: 3 of the 3^5 layouts
    assert stats.cochran_q(np.ones((5, 3), dtype=int))["p_value"] == 1.0


def test_consistency_p_value_matches_enumeration():
    """Small S, K: the Monte Carlo p against the exact tail probability of the statistic."""
    s, k = 5, 3
    outcomes = np.array(list(itertools.product(range(k), repeat=s)))
    counts = np.stack([np.bincount(o, minlength=k) for o in outcomes])
    exact = stats.consistency_statistic(counts, s)
    classes = ["a", "b", "c"]
    for absorbers in (["a"] * 5, ["a", "a", "a", "b", "b"], ["a", "a", "b", "b", "c"]):
        observed = stats.consistency_statistic(np.bincount([classes.index(x) for x in absorbers], minlength=k), s)
        p = stats.absorber_consistency(absorbers, classes)["p_value"]
        assert p == pytest.approx(np.mean(exact >= observed - 1e-12), abs=0.004)


def test_sign_flip_exact_enumeration():
    # all 8 differences positive: only the all-plus and all-minus patterns are as extreme
    assert stats.sign_flip(np.ones(8))["p_value"] == pytest.approx(2 / 2**8)
    assert stats.sign_flip(np.zeros(5))["p_value"] == 1.0


def test_permutation_chi2_cramers_v_perfect_association():
    labels = ["bird"] * 10 + ["cat"] * 10
    groups = ["a"] * 10 + ["b"] * 10
    res = stats.permutation_chi2(labels, groups, perms=2000)
    assert res["effect"] == pytest.approx(1.0) and res["p_value"] < 0.005  # exact p: 2 / C(20, 10)


def test_edge_null_rate_is_two_over_n():
    """Random (exchangeable) distances: every edge is in the MST with probability 2/n."""
    from analysis.measures import minimum_spanning_tree
    rng = np.random.default_rng(0)
    n, runs = 5, 4000
    counts = np.zeros((n, n))
    nodes = [str(i) for i in range(n)]
    for _ in range(runs):
        d = np.triu(rng.random((n, n)), 1)
        for u, v, _ in minimum_spanning_tree(d + d.T, nodes):
            counts[int(u), int(v)] += 1
    freq = counts[np.triu_indices(n, 1)] / runs
    assert np.allclose(freq, 2 / n, atol=0.03)


def test_tree_overlap_null_mean_and_planted_signal():
    rng = np.random.default_rng(1)
    n = 6
    star = np.array([[0, j] for j in range(1, n)])
    same = np.stack([star] * 10)
    res = stats.tree_overlap_test(same, n, perms=999)
    assert res["statistic"] == n - 1 and res["p_value"] < 0.01
    assert res["null_mean"] == pytest.approx(2 * (n - 1) / n)
    random_trees = np.stack([np.array([[p[i], p[i + 1]] for i in range(n - 1)])
                             for p in (rng.permutation(n) for _ in range(200))])
    assert stats.tree_overlap_test(random_trees, n, perms=999)["statistic"] == pytest.approx(2 * (n - 1) / n, abs=0.1)


def test_mantel_detects_shared_structure():
    rng = np.random.default_rng(2)
    base = rng.random(45)
    shared = base + rng.normal(0, 0.05, (8, 45))
    assert stats.mantel_test(shared, n_nodes=10, perms=999)["p_value"] < 0.01
    assert stats.mantel_test(rng.random((8, 45)), n_nodes=10, perms=999)["p_value"] > 0.01


# ---------------------------------------------------------------- calibration under planted nulls
# Thousands of simulated studies (fixed seeds): with 4000 the standard error of a rate near 0.05
# is 0.0035, so the 0.03..0.07 band is over +-5 standard errors around the nominal size. (The
# exact sizes, from 20,000 simulations: test 2 0.041 at K=2, S=20 and 0.045-0.052 at K=10.)

ALPHA = 0.05
SIMULATIONS = 4000


@pytest.mark.slow  # thousands of simulated studies
@pytest.mark.parametrize("k, s", [(2, 20), (10, 20), (10, 40)])
def test_absorber_consistency_is_calibrated(k, s):
    rng = np.random.default_rng(10 + k)
    classes = [f"c{i}" for i in range(k)]
    rejections = 0
    for _ in range(SIMULATIONS):
        absorbers = [classes[i] for i in rng.integers(0, k, s)]
        rejections += stats.absorber_consistency(absorbers, classes)["p_value"] <= ALPHA
    rate = rejections / SIMULATIONS
    assert 0.03 <= rate <= 0.07, f"false-positive rate {rate}"


@pytest.mark.slow  # thousands of simulated studies
def test_condition_dependence_is_calibrated():
    rng = np.random.default_rng(20)
    rejections = 0
    for _ in range(SIMULATIONS):
        absorbers = rng.integers(0, 10, 40)        # 2 conditions x 20 runs, absorbers uniform
        groups = np.repeat([0, 1], 20)
        rejections += stats.permutation_chi2(absorbers, groups, perms=499,
                                             seed=int(rng.integers(1 << 30)))["p_value"] <= ALPHA
    assert 0.03 <= rejections / SIMULATIONS <= 0.07, rejections / SIMULATIONS


@pytest.mark.slow  # thousands of simulated studies
def test_paired_condition_dependence_is_calibrated():
    """Two conditions on the same 24 seeds, absorbers uniform over 10 classes, a seed effect (40% of
    seeds agree by construction): H0 holds, and the paired permutation test keeps its size. (It is
    conservative with few discordant seeds, where its p takes few values: 2000 studies gave 0.007 at
    12 seeds over 3 classes and 0.009 at 16 seeds over 4.)"""
    rng = np.random.default_rng(50)
    rejections = 0
    for _ in range(SIMULATIONS):
        first = rng.integers(0, 10, 24)
        second = np.where(rng.random(24) < 0.4, first, rng.integers(0, 10, 24))
        swap = rng.random(24) < 0.5
        a, b = np.where(swap, second, first), np.where(swap, first, second)
        rejections += stats.marginal_homogeneity(list(a.astype(str)), list(b.astype(str)), perms=999,
                                                 seed=int(rng.integers(1 << 30)))["p_value"] <= ALPHA
    assert 0.03 <= rejections / SIMULATIONS <= 0.07, rejections / SIMULATIONS


@pytest.mark.slow  # thousands of simulated studies
def test_paired_cochran_q_is_calibrated():
    """Four conditions on the same 20 seeds, P(absorber = pooled class) 0.5 in all, a seed effect.
    (Measured: 0.045 here; 0.034 with 3 conditions, where Q takes fewer values.)"""
    rng = np.random.default_rng(60)
    rejections = 0
    for _ in range(SIMULATIONS):
        seed_effect = rng.random((20, 1)) < 0.5
        x = np.where(rng.random((20, 4)) < 0.5, seed_effect, rng.random((20, 4)) < 0.5).astype(int)
        rejections += stats.cochran_q(x, perms=499, seed=int(rng.integers(1 << 30)))["p_value"] <= ALPHA
    assert 0.03 <= rejections / SIMULATIONS <= 0.07, rejections / SIMULATIONS


@pytest.mark.slow  # thousands of simulated studies
def test_mst_tests_are_calibrated():
    """Random distances over exchangeable nodes (trees random): the per-edge binomial test and the
    overlap test. (The realistic null, the noise node a far leaf, is in test_calibration.py.)"""
    from analysis.measures import minimum_spanning_tree
    rng = np.random.default_rng(30)
    n, s = 6, 40
    nodes = [str(i) for i in range(n)]
    edge_rejections, overlap_rejections, edges_tested = 0, 0, 0
    for sim in range(SIMULATIONS // 2):
        trees = []
        for _ in range(s):
            d = np.triu(rng.random((n, n)), 1)
            trees.append([(int(u), int(v)) for u, v, _ in minimum_spanning_tree(d + d.T, nodes)])
        counts = np.zeros((n, n), dtype=int)
        for t in trees:
            for u, v in t:
                counts[u, v] += 1
        for i, j in zip(*np.triu_indices(n, 1)):
            edge_rejections += stats.edge_pvalue(int(counts[i, j]), s, stats.relabel_chance(n - 1, n)) <= ALPHA
            edges_tested += 1
        res = stats.tree_overlap_test(np.array(trees), n, perms=499, seed=sim)
        overlap_rejections += res["p_value"] <= ALPHA
    edge_size = stats.edge_pvalue(12, s, stats.relabel_chance(n - 1, n))
    assert 0.03 <= edge_rejections / edges_tested <= 0.07, (edge_rejections / edges_tested, edge_size)
    assert 0.03 <= overlap_rejections / (SIMULATIONS // 2) <= 0.07, overlap_rejections / (SIMULATIONS // 2)


def test_uniform_rank_test_matches_enumeration_and_keeps_its_size():
    """The exact p against brute force over all (deals+1)^n rank patterns, the floor 2/(deals+1)^n,
    and the size under H0 (independent uniform ranks) at 0.05."""
    deals, ranks = 4, np.array([4, 3, 4])
    patterns = np.array(list(itertools.product(range(deals + 1), repeat=3)))
    centre = 3 * deals / 2
    brute = np.mean(np.abs(patterns.sum(1) - centre) >= abs(ranks.sum() - centre))
    res = stats.uniform_rank_test(ranks, deals)
    assert res["p_value"] == pytest.approx(brute) and res["statistic"] == pytest.approx(11 / 12 - 0.5)
    top = stats.uniform_rank_test([99, 99], 99)
    assert top["p_value"] == pytest.approx(2 / 100**2) == top["p_min"]
    assert stats.uniform_rank_test([0], 99)["p_value"] == pytest.approx(0.02)
    # the FFT path (a long sum) agrees with the direct one where both apply
    assert stats._uniform_sum_pmf(60, 99)[2970] == pytest.approx(
        np.convolve(stats._uniform_sum_pmf(30, 99), stats._uniform_sum_pmf(30, 99))[2970], rel=1e-9)
    rng = np.random.default_rng(4)
    p = np.array([stats.uniform_rank_test(rng.integers(0, 100, 8), 99)["p_value"] for _ in range(4000)])
    assert abs(np.mean(p <= 0.05) - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 4000)
    with pytest.raises(ValueError, match="ranks must lie in 0..99"):
        stats.uniform_rank_test([100], 99)


def test_rank_trend_is_spearman_with_a_permutation_p_and_holds_its_size():
    """Known answer: scipy's Spearman rho and (asymptotic) p at n = 30; under independence its
    rejection rate at 0.05 stays within the calibration band."""
    from scipy.stats import spearmanr
    rng = np.random.default_rng(3)
    x = rng.random(30)
    y = x + rng.normal(0, 0.6, 30)
    res = stats.rank_trend(x, y, perms=4999)
    ref = spearmanr(x, y)
    assert res["statistic"] == pytest.approx(ref.statistic, abs=1e-12)
    assert res["p_value"] == pytest.approx(ref.pvalue, abs=0.02)
    assert res["ci_low"] < res["statistic"] < res["ci_high"]
    rejections = sum(stats.rank_trend(rng.random(20), rng.random(20), perms=499, boot=1, seed=i)["p_value"] <= 0.05
                     for i in range(300))
    assert 0.02 <= rejections / 300 <= 0.09
    assert stats.rank_trend([1, 1, 1], [0, 1, 2])["p_value"] == 1.0   # no spread in x: nothing to test
