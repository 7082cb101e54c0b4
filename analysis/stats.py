"""The study's statistical tests: pure functions of arrays, each with its null stated.

The unit of replication is the trained network (a run): every test here takes one value per run,
never one per noise image; where a covariate is a property of a class (measured on the same images
in every run), the class is the unit. Each test states H0, its statistic, how p is computed, its n
and the smallest p it can return at that n (`p_min`: a test whose p_min is above the level it must
clear cannot show anything, however strong the effect). Permutation and Monte Carlo p-values are
(1 + #{null >= observed}) / (1 + B), which is valid (never below the true p) for any B.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
from scipy import signal as sps_signal, stats as sps

# ---------------------------------------------------------------- settings (Methods quotes these)
ALPHA = 0.05                      # the level every test and interval is stated at
LEVEL = f"{1 - ALPHA:.0%}"        # the intervals' confidence level, as the report writes it
CONSISTENCY_DRAWS = 100_000       # simulated studies of S uniform absorbers (p resolution 1e-5)
TOP_SHARE_DRAWS = 10_000          # simulated uniform noise banks for the descriptive per-run p
PERMUTATIONS = 9_999              # permutations where cheap (p resolution 1e-4)
LEAST_PERMUTATIONS = 199          # the floor as studies grow (p resolution 0.005)
# the absorber-vs-condition tests (permutation chi-square, Cochran's Q) answer a headline question:
# a finer floor (p resolution 0.001), and a larger cost budget per test than permutation_budget's
CONDITION_LEAST_PERMUTATIONS = 999
CONDITION_PERMUTATION_CAP = 1e7
EXACT_SIGN_FLIPS = 16             # up to 2^16 sign patterns are enumerated; beyond, Monte Carlo
EXACT_CLASS_PERMUTATIONS = 40_320  # 8!: class relabellings enumerated up to K = 8; beyond, Monte Carlo
# equivalence margin of the discordance rate: a condition "does not change the absorber" when it
# changes it in fewer than a quarter of the seeds (pre-registered; stated in every row that uses it)
DISCORDANCE_MARGIN = 0.25
RTOL = 1e-9                       # ties: values within RTOL of the statistic's scale count as equal


def _tolerance(null: np.ndarray, observed: float) -> float:
    """Relative tie tolerance: the same statistic summed in another order differs by rounding
    (about 1e-16 of its scale); an absolute tolerance is too wide for statistics near 1e-12 and
    too narrow for statistics near 1e6."""
    scale = max(abs(float(observed)), float(np.max(np.abs(null))) if np.size(null) else 0.0)
    return RTOL * scale


def at_least(null: np.ndarray, observed: float) -> np.ndarray:
    """null >= observed, with ties (within the relative tolerance) counted as reaching it."""
    null = np.asarray(null, dtype=float)
    return null >= observed - _tolerance(null, observed)


def mc_pvalue(null: np.ndarray, observed: float) -> float:
    """(1 + #{null >= observed}) / (1 + B); NaN for a NaN statistic (never a small p by default)."""
    if not np.isfinite(observed):
        return np.nan
    return float((1 + np.count_nonzero(at_least(null, observed))) / (1 + len(null)))


def mc_floor(draws: int) -> float:
    """The smallest p a Monte Carlo test with `draws` replicates can return."""
    return 1 / (1 + draws)


def permutation_budget(s: int, m: int, cap: float = 2e6, most: int = PERMUTATIONS,
                       least: int = LEAST_PERMUTATIONS) -> int:
    """How many permutations an exploratory test gets: PERMUTATIONS where cheap, fewer as the cost
    of one replicate (about s * m element operations) grows, never fewer than LEAST_PERMUTATIONS.
    Keeps a 10,000-trial aggregation to about a minute; p stays valid at any B."""
    return int(min(most, max(least, cap // max(1, s * m))))


# ---------------------------------------------------------------- 1. per run

@lru_cache(maxsize=64)
def _top_share_null(n: int, k: int, draws: int, seed: int) -> np.ndarray:
    counts = np.random.default_rng(seed).multinomial(n, np.full(k, 1 / k), size=draws)
    return counts.max(axis=1) / n


def p_top_share_uniform(top_share: float, n: int, k: int, draws: int = TOP_SHARE_DRAWS, seed: int = 0) -> float:
    """H0: the n images fall uniformly on the K classes. Statistic: the largest share.
    Monte Carlo null of a uniform multinomial (descriptive: with 5000 images it always rejects)."""
    return mc_pvalue(_top_share_null(n, k, draws, seed), top_share)


# ---------------------------------------------------------------- 2. absorber consistency

def consistency_statistic(counts: np.ndarray, s: int) -> np.ndarray:
    """The modal count, ties among equal counts broken by the agreement sum n_c^2
    (lexicographic: the second term is < 1). counts: (..., K)."""
    return counts.max(axis=-1) + (counts.astype(float) ** 2).sum(axis=-1) / (s * s + 1)


@lru_cache(maxsize=256)
def _consistency_null(s: int, k: int, draws: int, seed: int) -> np.ndarray:
    counts = np.random.default_rng(seed).multinomial(s, np.full(k, 1 / k), size=draws)
    return np.sort(consistency_statistic(counts, s))


def modal_count_p_min(s: int, k: int, draws: int = CONSISTENCY_DRAWS) -> float:
    """All S runs in one class is the most extreme outcome: P = K * K^-S under H0 (1 for K = 1),
    never below the Monte Carlo floor."""
    return max(float(k) ** (1 - s) if k > 1 else 1.0, mc_floor(draws))


def modal_count_test(idx: np.ndarray, k: int, draws: int = CONSISTENCY_DRAWS, seed: int = 0) -> dict:
    """H0: each run's label (absorber, or the class the noise node hangs on) is an independent
    uniform draw from the K classes. Statistic: the modal class's count M over the S runs, ties in
    M ordered by the agreement sum n_c^2 (M alone takes so few values that the test would sit far
    below its nominal size). p: Monte Carlo over `draws` simulated studies of S uniform draws.
    n: S runs. Smallest attainable p: K^(1-S) (all runs in one class), at least 1/(draws + 1).
    Rejecting H0 says the labels are not uniform; how concentrated they are is the modal share
    and its interval (simultaneous_intervals), not this p."""
    idx = np.asarray(idx, dtype=int)
    s = len(idx)
    counts = np.bincount(idx, minlength=k)
    null = _consistency_null(s, k, draws, seed)
    observed = float(consistency_statistic(counts, s))
    reach = observed - _tolerance(null[-1:], observed)
    p = (1 + len(null) - np.searchsorted(null, reach, side="left")) / (1 + len(null))
    return {"counts": counts, "modal": int(np.argmax(counts)), "p_value": float(p),
            "p_min": modal_count_p_min(s, k, draws), "draws": draws}


def absorber_consistency(absorbers: list[str], classes: list[str], draws: int = CONSISTENCY_DRAWS,
                         seed: int = 0, alpha: float = ALPHA) -> dict:
    """The modal-count test of modal_count_test on the runs' absorbers, with the estimates that
    say what it showed: the modal class's share with its simultaneous (1 - alpha) interval (valid
    although the modal class is picked from the data, since all K intervals hold together), and
    the pair agreement with its interval (pair_agreement: the unbiased A truncated to [1/K, 1];
    A itself is agreement_unbiased)."""
    s, k = len(absorbers), len(classes)
    idx = np.array([classes.index(a) for a in absorbers], dtype=int)
    res = modal_count_test(idx, k, draws, seed)
    counts, modal = res["counts"], res["modal"]
    bounds = simultaneous_intervals(counts, alpha)
    agreement, low, high = pair_agreement(counts, alpha)
    return {"modal_absorber": classes[modal], "modal_count": int(counts[modal]), "n_runs": s,
            "modal_share": counts[modal] / s, "modal_share_ci_low": float(bounds[modal, 0]),
            "modal_share_ci_high": float(bounds[modal, 1]),
            "p_value": res["p_value"], "p_min": res["p_min"],
            "agreement": agreement, "agreement_ci_low": low, "agreement_ci_high": high,
            "agreement_unbiased": float((counts @ counts - s) / (s * (s - 1))) if s > 1 else np.nan,
            "agreement_null": 1 / k}


def simultaneous_intervals(counts: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """(K, 2) intervals for the K class shares of a multinomial count vector that hold all
    together with probability >= 1 - alpha whatever the shares: each class's count is binomial,
    so a Clopper-Pearson interval at level 1 - alpha/K per class (Bonferroni) does it exactly.
    Goodman's intervals (statsmodels' multinomial_proportions_confint) are the chi-square version
    of the same construction and under-cover at the run counts of real studies (measured: 42%
    simultaneous coverage at K = 10, S = 8 with one class at 0.9: a class seen once gets a lower
    bound above its true 1%); statsmodels' Sison-Glaz returns [0, 1] below ~20 runs."""
    from statsmodels.stats.proportion import proportion_confint
    counts = np.asarray(counts)
    n, k = int(counts.sum()), len(counts)
    if n == 0:
        return np.full((k, 2), np.nan)
    low, high = proportion_confint(counts, n, alpha=alpha / k, method="beta")
    low = np.where(counts == 0, 0.0, np.nan_to_num(low))
    high = np.where(counts == n, 1.0, np.nan_to_num(high, nan=1.0))
    return np.stack([low, high], axis=1)


def pair_agreement(counts: np.ndarray, alpha: float = ALPHA) -> tuple[float, float, float]:
    """Unbiased pair agreement A = (sum n_c^2 - S) / (S(S-1)): the share of pairs of distinct runs
    with the same absorber, unbiased for theta = sum p_c^2 (exactly 1/K under uniform absorbers;
    the plug-in sum (n_c/S)^2 has mean 1/K + (1 - 1/K)/S and is >= 1/K in every resample, so its
    bootstrap interval never holds chance).

    Interval: the score-type set {theta in [1/K, 1]: (A - theta)^2 <= t^2 V(theta)}, t the
    1 - alpha/2 quantile of Student's t on S - 1 df and V the U-statistic variance
    (4(S-2) zeta1 + 2 zeta2) / (S(S-1)) with zeta2 = theta(1 - theta) and zeta1 = sum p^3 - theta^2
    bounded by theta^1.5 - theta^2 (sum p^3 <= max p * theta <= theta^1.5). Unlike A +- t*SE
    (jackknife) it does not collapse to a point when all runs agree, and at theta = 1/K, where A
    is a degenerate U-statistic, it stays conservative. Measured coverage of 95% intervals over
    2,000 studies each (K = 2, 3, 10; S = 5, 8, 20, 100; shares from uniform to 0.98 on one
    class): >= 99% under uniform absorbers, >= 95% at S >= 8 except one class at 0.98 (93-99%),
    90% at S = 5 with one class at 0.98; the jackknife t interval covered 54-72% in some of these
    cells, the percentile bootstrap 54-60%.

    Returned estimate: A truncated to the parameter space, max(A, 1/K). A itself falls below 1/K
    when the runs agree less than chance would (all absorbers distinct: A = 0), where no theta
    lies; the interval is confined to [1/K, 1], so the raw A could sit outside its own interval
    (a table reading `0.00 [0.10, 0.99]`). The truncated estimate is never further from theta
    than A, and always inside the interval (agreement_unbiased in absorber_consistency keeps A).
    It is biased upward: with uniform absorbers it is exactly 1/K in about half of studies (K = 10,
    S = 8: 50%, mean 0.122 against 0.100; K = 2, S = 12: 61%, mean 0.522)."""
    counts = np.asarray(counts, dtype=float)
    s, k = counts.sum(), len(counts)
    if s < 2:
        return np.nan, np.nan, np.nan
    a = float((counts @ counts - s) / (s * (s - 1)))
    estimate = max(a, 1 / k)
    q = sps.t.ppf(1 - alpha / 2, s - 1)

    def excess(theta):  # <= 0 inside the interval
        theta = np.asarray(theta, dtype=float)
        zeta1 = np.maximum(theta**1.5 - theta**2, 0)
        v = (4 * (s - 2) * zeta1 + 2 * theta * (1 - theta)) / (s * (s - 1))
        return (a - theta) ** 2 - q * q * v

    grid = np.linspace(1 / k, 1, 4001)
    inside = np.flatnonzero(excess(grid) <= 0)
    if len(inside) == 0:  # A far below 1/K (cannot happen at any S >= 2 we tried): the boundary
        return estimate, 1 / k, 1 / k
    lo_i, hi_i = inside[0], inside[-1]
    from scipy.optimize import brentq
    low = grid[lo_i] if lo_i == 0 else brentq(excess, grid[lo_i - 1], grid[lo_i])
    high = grid[hi_i] if hi_i == len(grid) - 1 else brentq(excess, grid[hi_i], grid[hi_i + 1])
    return estimate, float(low), float(high)


def image_agreement(counts: np.ndarray) -> dict:
    """Fleiss' and Randolph's kappa of per-image labels across runs (runs are the raters, noise
    images the subjects; every run saw the same bank). `counts`: (n_images, K) label counts.
    Descriptive: images are not the unit of replication, so no p-value is attached."""
    from statsmodels.stats.inter_rater import fleiss_kappa
    with np.errstate(divide="ignore", invalid="ignore"):  # all images in one class: kappa undefined
        return {"fleiss_kappa": float(fleiss_kappa(counts, method="fleiss")),
                "randolph_kappa": float(fleiss_kappa(counts, method="randolph"))}


# ---------------------------------------------------------------- 3. absorber vs condition

def _chi2_stat(table: np.ndarray) -> np.ndarray:
    """Pearson chi-square of one (r, c) table or a stack (B, r, c)."""
    table = np.asarray(table, dtype=float)
    n = table.sum(axis=(-2, -1), keepdims=True)
    expected = table.sum(axis=-1, keepdims=True) * table.sum(axis=-2, keepdims=True) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0)
    return terms.sum(axis=(-2, -1))


def relabelling_p_min(sizes: list[int], perms: int) -> float:
    """Smallest p of a test that permutes group labels over runs: the most extreme layout (each
    group its own absorber) has probability (#relabellings of equal-sized groups) * prod n_g! / N!."""
    n = sum(sizes)
    log_p = sum(math.lgamma(g + 1) for g in sizes) - math.lgamma(n + 1)
    log_p += sum(math.lgamma(sizes.count(g) + 1) for g in set(sizes))
    return max(math.exp(log_p), mc_floor(perms))


def permutation_chi2(labels: np.ndarray, groups: np.ndarray, perms: int | None = None,
                     seed: int = 0) -> dict:
    """H0: the absorber does not depend on the condition (runs exchangeable across conditions).
    Statistic: Pearson chi-square of the absorber x condition table; p: the condition labels
    permuted over runs, Monte Carlo. n: the runs. Smallest attainable p: relabelling_p_min.
    Effect: Cramer's V."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    _, a = np.unique(labels, return_inverse=True)
    _, g = np.unique(groups, return_inverse=True)
    r, c, n = a.max() + 1, g.max() + 1, len(a)
    perms = perms or permutation_budget(n, 1, cap=CONDITION_PERMUTATION_CAP, least=CONDITION_LEAST_PERMUTATIONS)
    observed = _chi2_stat(np.bincount(a * c + g, minlength=r * c).reshape(r, c))
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.broadcast_to(g, (perms, n)), axis=1)
    flat = (a[None, :] * c + shuffled) + (np.arange(perms)[:, None] * r * c)
    tables = np.bincount(flat.ravel(), minlength=perms * r * c).reshape(perms, r, c)
    null = _chi2_stat(tables)
    v = float(np.sqrt(observed / (n * (min(r, c) - 1)))) if min(r, c) > 1 else 0.0
    return {"statistic": float(observed), "p_value": mc_pvalue(null, observed) if min(r, c) > 1 else 1.0,
            "p_min": relabelling_p_min(np.bincount(g).tolist(), perms),
            "effect": v, "effect_name": "cramers_v", "n_runs": int(n), "permutations": perms}


def sign_flip_p_min(n: int, perms: int = PERMUTATIONS) -> float:
    """Two-sided: only the all-plus and all-minus patterns reach the largest |statistic|."""
    if n <= 0:
        return 1.0
    exact = 2.0 ** (1 - n)
    return exact if n <= EXACT_SIGN_FLIPS else max(exact, mc_floor(perms))


def sign_flip_pvalue(null_of, n: int, observed: float, perms: int, seed: int) -> float:
    """p of `observed` when each of n paired units may flip its sign (swap its pair) under H0.
    null_of(signs) -> the statistic for each row of +-1 signs. Exact over all 2^n patterns for
    n <= EXACT_SIGN_FLIPS, else Monte Carlo over `perms` random patterns."""
    if n <= EXACT_SIGN_FLIPS:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(at_least(null_of(signs), observed)))
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(perms, n))
    return mc_pvalue(null_of(signs), observed)


def marginal_homogeneity(first: list[str], second: list[str], perms: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Paired (same seeds), two conditions. H0: the absorber's distribution is the same in both
    (marginal homogeneity of the K x K table of paired absorbers).

    p: the paired permutation test, each seed's two absorbers swapped (H0 makes them
    exchangeable), exact over the 2^m patterns of the m discordant seeds for m <= 16, Monte Carlo
    beyond. Statistic: |d|^2, d the K differences of the marginal counts. n: the seeds; only the m
    discordant ones carry information, so the smallest attainable p is 2^(1-m) (1 when m = 0).
    Stuart-Maxwell's d' V^-1 d is also returned (generalised inverse, df = rank V, so that it
    stays defined when a class occurs only in agreeing pairs; equal to the textbook value wherever
    that exists), but it is not the test: V is estimated from the same few discordant seeds, and
    when they form a tree (each pair of classes seen once, usual with a handful of seeds)
    d' V^-1 d = m whatever their directions, so it cannot see one class losing every seed. On 2
    classes |d|^2 is 2x McNemar's numerator and the test is the exact McNemar test."""
    cats = sorted(set(first) | set(second))
    discordant = [(cats.index(x), cats.index(y)) for x, y in zip(first, second) if x != y]
    m = len(discordant)
    if m == 0:
        return {"statistic": 0.0, "p_value": 1.0, "p_min": 1.0, "discordant": 0, "stuart_maxwell": 0.0,
                "df": 0, "p_asymptotic": 1.0}
    step = np.zeros((m, len(cats)))                 # each discordant seed's contribution to d
    step[np.arange(m), [i for i, _ in discordant]] += 1
    step[np.arange(m), [j for _, j in discordant]] -= 1
    d = step.sum(0)
    observed = float(d @ d)
    p = sign_flip_pvalue(lambda signs: ((signs @ step) ** 2).sum(1), m, observed, perms, seed)
    v = step.T @ step                               # Stuart-Maxwell's covariance of d
    sm = float(d @ np.linalg.pinv(v) @ d)
    df = int(np.linalg.matrix_rank(v))
    return {"statistic": observed, "p_value": p, "p_min": sign_flip_p_min(m, perms), "discordant": m,
            "stuart_maxwell": sm, "df": df, "p_asymptotic": float(sps.chi2.sf(sm, df))}


def marginal_homogeneity_clustered(first: list[str], second: list[str], cluster: list, perms: int = PERMUTATIONS,
                                   seed: int = 0) -> dict:
    """Paired absorbers of two conditions in clusters (a seed's pairs in several strata of a
    factorial design share its initial weights, so they are not independent). H0: within each
    cluster the two conditions' labels are exchangeable, jointly for all its pairs.

    Statistic: |d|^2, d the K differences of the marginal counts (second - first). p: each
    cluster's contribution to d flips sign as a whole, exact over the 2^m patterns of the m
    clusters that contribute (m <= 16), Monte Carlo beyond; smallest attainable p 2^(1-m). With one
    pair per cluster this is marginal_homogeneity's test."""
    cats = sorted(set(first) | set(second))
    keys = list(dict.fromkeys(cluster))
    step = np.zeros((len(keys), len(cats)))
    for a, b, c in zip(first, second, cluster):
        step[keys.index(c), cats.index(b)] += 1
        step[keys.index(c), cats.index(a)] -= 1
    step = step[np.any(step != 0, axis=1)]
    m = len(step)
    if m == 0:
        return {"statistic": 0.0, "p_value": 1.0, "p_min": 1.0, "contributing_clusters": 0}
    d = step.sum(0)
    observed = float(d @ d)
    p = sign_flip_pvalue(lambda signs: ((signs @ step) ** 2).sum(1), m, observed, perms, seed)
    return {"statistic": observed, "p_value": p, "p_min": sign_flip_p_min(m, perms), "contributing_clusters": m}


def cochran_q(indicator: np.ndarray, perms: int | None = None, seed: int = 0) -> dict:
    """Paired, >= 2 conditions. H0: P(absorber is the pooled modal class) is the same in every
    condition. `indicator`: (seeds, conditions) of 0/1. Statistic: Cochran's Q (statsmodels).
    p: each seed's row permuted across conditions (H0 makes them exchangeable), Monte Carlo; the
    chi-square approximation needs more discordant seeds than a study usually has, so it is kept
    only for reference. Q only grows with the sum of squared column totals once the row totals
    are fixed, so the null compares that sum. n: the seeds; only the mixed rows (conditions
    disagree) carry information. Smallest attainable p: at least prod over mixed rows of
    1/C(conditions, ones in the row) (the single most extreme layout), at least 1/(B + 1)."""
    from statsmodels.stats.contingency_tables import cochrans_q
    x = np.asarray(indicator)
    mixed = x[~np.all(x == x[:, :1], axis=1)]       # seeds where the conditions disagree
    if len(mixed) == 0:
        return {"statistic": 0.0, "p_value": 1.0, "p_min": 1.0, "p_asymptotic": 1.0, "permutations": 0}
    res = cochrans_q(x)
    perms = perms or permutation_budget(*mixed.shape, cap=CONDITION_PERMUTATION_CAP,
                                        least=CONDITION_LEAST_PERMUTATIONS)
    shuffled = np.random.default_rng(seed).permuted(np.broadcast_to(mixed, (perms, *mixed.shape)), axis=2)
    null = (shuffled.sum(1).astype(float) ** 2).sum(1)
    observed = float((mixed.sum(0).astype(float) ** 2).sum())
    c = mixed.shape[1]
    log_p = -sum(math.log(math.comb(c, int(t))) for t in mixed.sum(1))
    return {"statistic": float(res.statistic), "p_value": mc_pvalue(null, observed),
            "p_min": max(math.exp(log_p), mc_floor(perms)),
            "p_asymptotic": float(res.pvalue), "permutations": perms}


def sign_flip(diffs: np.ndarray, perms: int = PERMUTATIONS, seed: int = 0) -> dict:
    """H0: paired differences are symmetric about 0. Statistic |mean|; exact over all 2^n sign
    patterns for n <= 16, else Monte Carlo. n: the pairs. Smallest attainable p: 2^(1-n'), n' the
    non-zero differences (a zero cannot change sign)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    observed = abs(d.mean()) if n else 0.0
    p_min = sign_flip_p_min(int(np.count_nonzero(d)), perms)
    if n == 0 or np.all(d == 0):
        return {"statistic": observed, "p_value": 1.0, "p_min": p_min, "effect": 0.0}
    p = sign_flip_pvalue(lambda signs: np.abs(signs @ d / n), n, observed, perms, seed)
    sd = d.std(ddof=1) if n > 1 else 0.0
    return {"statistic": float(d.mean()), "p_value": p, "p_min": p_min,
            "effect": float(d.mean() / sd) if sd > 0 else 0.0}


def rank_trend(x, y, perms: int = PERMUTATIONS, boot: int = 2000, seed: int = 0) -> dict:
    """H0: y does not go with x over runs (y exchangeable across the runs: e.g. the top share of
    noise and the test accuracy of networks trained to different accuracies). Statistic: Spearman's
    rho; p: two-sided, y permuted over runs (Monte Carlo, `perms`). n: the runs. Smallest attainable
    p: 1/(1 + perms) (exact 2/n! below it, for n <= 6). Estimate: rho with a percentile bootstrap
    interval over runs (resampled with replacement; a resample without spread in x or y is skipped)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    p_min = max(mc_floor(perms), 2 / math.factorial(n) if n <= 6 else 0.0)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"statistic": np.nan, "p_value": 1.0, "p_min": p_min, "effect": np.nan, "effect_name": "spearman_rho",
                "ci_low": np.nan, "ci_high": np.nan, "n_runs": n}
    rx, ry = _standardized_ranks(x), _standardized_ranks(y)
    observed = float(rx @ ry)   # unit-length centred ranks: their dot product is Spearman's rho
    rng = np.random.default_rng(seed)
    null = np.abs(rng.permuted(np.broadcast_to(ry, (perms, n)), axis=1) @ rx)
    idx = rng.integers(0, n, (boot, n))
    keep = (np.ptp(x[idx], axis=1) > 0) & (np.ptp(y[idx], axis=1) > 0)
    rhos = (_standardized_ranks(x[idx[keep]]) * _standardized_ranks(y[idx[keep]])).sum(axis=1)
    low, high = np.quantile(rhos, [ALPHA / 2, 1 - ALPHA / 2]) if len(rhos) else (np.nan, np.nan)
    return {"statistic": observed, "p_value": mc_pvalue(null, abs(observed)), "p_min": p_min, "effect": observed,
            "effect_name": "spearman_rho", "ci_low": float(low), "ci_high": float(high), "n_runs": n}


def discordance(first: list, second: list, margin: float = DISCORDANCE_MARGIN, alpha: float = ALPHA) -> dict:
    """Paired (same seeds), two conditions: the share of seeds whose absorber differs between them,
    with its Clopper-Pearson (1 - alpha) interval, and an exact equivalence test. H0: the
    discordance rate is >= margin; H1: it is below (the condition changes the absorber in fewer
    than `margin` of the seeds). p: the binomial lower tail P(X <= m | n, margin). This is the
    TOST for a rate, whose other one-sided test (rate > -margin) always holds. n: the seeds.
    Smallest attainable p: (1 - margin)^n (no seed discordant)."""
    from statsmodels.stats.proportion import proportion_confint
    n = len(first)
    m = sum(a != b for a, b in zip(first, second))
    if n == 0:
        return {"statistic": 0, "p_value": np.nan, "p_min": 1.0, "effect": np.nan, "ci_low": np.nan,
                "ci_high": np.nan, "n_runs": 0}
    low, high = proportion_confint(m, n, alpha=alpha, method="beta")
    return {"statistic": m, "p_value": float(sps.binom.cdf(m, n, margin)), "p_min": (1 - margin) ** n,
            "effect": m / n, "effect_name": "discordance rate", "ci_low": 0.0 if m == 0 else float(low),
            "ci_high": 1.0 if m == n else float(high), "n_runs": n, "margin": margin}


# ---------------------------------------------------------------- 4. MST stability

def relabel_chance(n_edges: int, n_labels: int) -> float:
    """Chance that a given pair of classes is joined in a run when the run's class labels are
    relabelled uniformly at random (the noise node, if any, kept in place): each of the run's
    n_edges class-class edges lands on a uniformly random one of the C(n_labels, 2) pairs, so the
    rate is n_edges / C(n_labels, 2), whatever the tree's shape: 2/K for a tree over the K classes.
    (Treating the noise node as a relabelled node too gives 2/(K+1), which is wrong when, as in
    real features, the noise mean is far from every class and its node a leaf.)"""
    return n_edges / math.comb(n_labels, 2)


def edge_pvalue(count: int, n_runs: int, chance: float) -> float:
    """H0: the edge is in a run's tree with the chance every edge has under relabelling
    (relabel_chance), independently across runs. One-sided exact binomial test. n: the runs.
    Smallest attainable p: chance^n_runs."""
    return float(sps.binomtest(count, n_runs, chance, alternative="greater").pvalue)


def _pair_index(n: int) -> np.ndarray:
    idx = -np.ones((n, n), dtype=int)
    iu = np.triu_indices(n, 1)
    idx[iu] = np.arange(len(iu[0]))
    idx[iu[1], iu[0]] = idx[iu]
    return idx


def _permuted_vectors(vectors: np.ndarray, n: int, perms: int, rng) -> np.ndarray:
    """For each of `perms` replicates, relabel the nodes of every run independently.
    vectors: (S, m) values on node pairs (upper triangle order) -> (perms, S, m)."""
    s, m = vectors.shape
    iu = np.triu_indices(n, 1)
    pair = _pair_index(n)
    node_perm = np.argsort(rng.random((perms, s, n)), axis=2)
    where = pair[node_perm[..., iu[0]], node_perm[..., iu[1]]]   # (perms, S, m)
    return np.take_along_axis(np.broadcast_to(vectors, (perms, s, m)), where, axis=2)


def _mean_pairwise_dot(v: np.ndarray) -> np.ndarray:
    """Mean of v_i . v_j over pairs i < j, over the last two axes (S, m)."""
    s = v.shape[-2]
    total = v.sum(axis=-2)
    return ((total**2).sum(-1) - (v**2).sum(axis=(-2, -1))) / (s * (s - 1))


def tree_overlap_p_min(n_nodes: int, s: int, perms: int) -> float:
    """The largest overlap needs all S trees identical after relabelling; the fewest labelled
    versions of a tree shape on n >= 3 nodes is n (the star), so P >= n^(1-S); on 2 nodes there
    is one tree and nothing to test."""
    if n_nodes <= 2 or s < 2:
        return 1.0
    return max(float(n_nodes) ** (1 - s), mc_floor(perms))


def tree_overlap_test(edges: np.ndarray, n_nodes: int, perms: int | None = None, seed: int = 0) -> dict:
    """H0: node labels carry no information about tree structure (each run's tree relabelled at
    random, independently). Statistic: mean number of shared edges over pairs of runs, which
    is (sum_e c_e^2 - S(n-1)) / (S(S-1)) for edge counts c_e; E[H0] = 2(n-1)/n on n nodes.
    p: Monte Carlo over relabellings. n: the S runs. Smallest attainable p: tree_overlap_p_min.
    Pass only nodes whose labels are exchangeable under H0 (the classes, not the noise node).
    edges: (S, n-1, 2) node indices of each run's tree edges."""
    e = np.asarray(edges)
    s, m = len(e), n_nodes * (n_nodes - 1) // 2
    pair = _pair_index(n_nodes)

    def stat(pair_ids, reps):  # pair_ids (reps, S, n-1) -> statistic per replicate
        flat = (pair_ids + m * np.arange(reps)[:, None, None]).ravel()
        c = np.bincount(flat, minlength=reps * m).reshape(reps, m)
        return ((c**2).sum(1) - s * (n_nodes - 1)) / (s * (s - 1))

    observed = float(stat(pair[e[..., 0], e[..., 1]][None], 1)[0])
    perms = perms or permutation_budget(s, n_nodes)
    rng = np.random.default_rng(seed)
    null = []
    for done in range(0, perms, 1000):
        b = min(1000, perms - done)
        relabel = np.argsort(rng.random((b, s, n_nodes)), axis=2)
        ends = [np.take_along_axis(relabel, np.broadcast_to(e[None, :, :, j], (b, s, n_nodes - 1)), 2)
                for j in (0, 1)]
        null.append(stat(pair[ends[0], ends[1]], b))
    null_mean = 2 * (n_nodes - 1) / n_nodes
    return {"statistic": observed, "p_value": mc_pvalue(np.concatenate(null), observed),
            "p_min": tree_overlap_p_min(n_nodes, s, perms),
            "effect": observed / null_mean, "effect_name": "overlap / null mean",
            "null_mean": null_mean, "n_runs": int(s), "permutations": perms}


# ---------------------------------------------------------------- 5. distance agreement (Mantel)

def _standardized_ranks(x: np.ndarray) -> np.ndarray:
    r = sps.rankdata(x, axis=-1)   # each row ranked on its own (ties averaged)
    r = r - r.mean(axis=-1, keepdims=True)
    sd = np.sqrt((r**2).mean(axis=-1, keepdims=True))
    return r / np.where(sd > 0, sd, 1) / np.sqrt(x.shape[-1])


def mantel_p_min(n_labels: int, s: int, perms: int) -> float:
    """The largest mean pairwise Spearman needs every run's ranking identical after relabelling,
    probability (1/n!)^(S-1) for n relabelled labels; nothing to test with < 2 labels or runs."""
    if n_labels < 2 or s < 2:
        return 1.0
    return max(math.exp(-(s - 1) * math.lgamma(n_labels + 1)), mc_floor(perms))


def mantel_test(vectors: np.ndarray, n_nodes: int | None, perms: int | None = None, seed: int = 0) -> dict:
    """Agreement of distance matrices across runs: mean pairwise Spearman correlation of the runs'
    distances; H0: class labels are exchangeable (Mantel-style permutation of each run's labels,
    independently across runs). n: the runs. Smallest attainable p: mantel_p_min.

    vectors: (S, m) per run, either the upper triangle of a class x class matrix (n_nodes given;
    classes relabelled jointly) or one value per class (n_nodes None; classes permuted)."""
    z = _standardized_ranks(np.asarray(vectors, dtype=float))
    observed = float(_mean_pairwise_dot(z))
    perms = perms or permutation_budget(*z.shape)
    rng = np.random.default_rng(seed)
    chunks = []
    for i in range(0, perms, 1000):
        b = min(1000, perms - i)
        if n_nodes is None:
            order = np.argsort(rng.random((b,) + z.shape), axis=-1)
            chunks.append(_mean_pairwise_dot(np.take_along_axis(np.broadcast_to(z, (b,) + z.shape), order, -1)))
        else:
            chunks.append(_mean_pairwise_dot(_permuted_vectors(z, n_nodes, b, rng)))
    null = np.concatenate(chunks)
    labels = z.shape[-1] if n_nodes is None else n_nodes
    p_min = mantel_p_min(labels, len(z), perms) if (n_nodes is None or n_nodes >= 3) else 1.0
    return {"statistic": observed, "p_value": mc_pvalue(null, observed), "p_min": p_min, "effect": observed,
            "effect_name": "mean pairwise spearman", "n_runs": int(len(z)), "permutations": perms}


# ---------------------------------------------------------------- per-run ranks among within-run relabellings

def uniform_rank_p_min(n: int, deals: int) -> float:
    """Two-sided: only all n ranks at the top (or all at the bottom) reach the largest |statistic|."""
    return min(1.0, 2 * float(deals + 1) ** -n) if n else 1.0


def _uniform_sum_pmf(n: int, deals: int) -> np.ndarray:
    """P(sum of n independent uniform ranks on 0..deals = s), s = 0..n*deals: the uniform's pmf to
    the n-th convolution power by squaring (FFT convolutions past a few thousand terms; the
    rounding, ~1e-16 of the largest term, is clipped at 0)."""
    def conv(a, b):
        out = np.convolve(a, b) if min(len(a), len(b)) < 2000 else sps_signal.fftconvolve(a, b)
        return np.clip(out, 0, None)
    result, base = np.ones(1), np.full(deals + 1, 1 / (deals + 1))
    while n:
        if n & 1:
            result = conv(result, base)
        n >>= 1
        if n:
            base = conv(base, base)
    return result / result.sum()


def uniform_rank_test(ranks, deals: int) -> dict:
    """Each of n runs ranks its actual value among `deals` random relabellings made within the run
    (ties broken at random), so under H0 (in every run the actual labelling is exchangeable with the
    random ones) the ranks are independent and uniform on 0..deals. Statistic: the mean over runs of
    rank/deals - 1/2 (0 under H0, +1/2 when every run tops all its relabellings). p: two-sided,
    from the distribution of the sum of n independent uniform ranks (a convolution): exact in
    rational terms, in floats to about 1e-16 absolute (relative in the tails up to ~40 runs at 99
    deals, where the FFT takes over), so a p below ~1e-15 is not resolved; it is never reported
    below the smallest attainable p. n: the runs. Smallest attainable p: uniform_rank_p_min,
    2/(deals+1)^n."""
    r = np.asarray(ranks, dtype=np.int64)
    n = len(r)
    if n == 0:
        return {"statistic": np.nan, "p_value": np.nan, "p_min": 1.0, "effect": 0.0}
    if r.min() < 0 or r.max() > deals:
        raise ValueError(f"uniform_rank_test: ranks must lie in 0..{deals}, got {r.min()}..{r.max()}")
    pmf = _uniform_sum_pmf(n, deals)
    centre = n * deals / 2
    sums = np.arange(len(pmf))
    observed = abs(r.sum() - centre)
    p = float(pmf[np.abs(sums - centre) >= observed - 1e-9].sum())
    sd = (r / deals).std(ddof=1) if n > 1 else 0.0
    stat = float(r.mean() / deals - 0.5)
    p_min = uniform_rank_p_min(n, deals)
    return {"statistic": stat, "p_value": min(1.0, max(p, p_min)), "p_min": p_min,
            "effect": stat / sd if sd > 0 else 0.0}


# ---------------------------------------------------------------- 6. class-level covariates

def class_permutations(k: int, perms: int, rng) -> tuple[np.ndarray, bool]:
    """All K! orderings of the classes when K! <= EXACT_CLASS_PERMUTATIONS (exact), else `perms`
    uniform ones (Monte Carlo). Returns (orderings, exact)."""
    if math.factorial(k) <= EXACT_CLASS_PERMUTATIONS:
        return np.array(list(itertools.permutations(range(k))), dtype=int), True
    return np.argsort(rng.random((perms, k)), axis=1), False


def class_permutation_p_min(k: int, perms: int = PERMUTATIONS) -> float:
    """A class relabelling and its reversal give the same |mean Spearman|: 2/K! when enumerated
    (1 at K = 2, 1/3 at K = 3), at least 1/(perms + 1) by Monte Carlo."""
    exact = min(1.0, 2 / math.factorial(k))
    return exact if math.factorial(k) <= EXACT_CLASS_PERMUTATIONS else max(exact, mc_floor(perms))


def class_permutation_correlation(measure: np.ndarray, share: np.ndarray, perms: int = PERMUTATIONS,
                                  seed: int = 0) -> dict:
    """Does a per-class covariate (a clutter measure, the head's bias) go with the share of noise
    a class absorbs? The class is the unit: clutter is measured on the same images in every run, so
    the runs repeat one covariate vector and cannot replicate it (a sign-flip over runs of per-run
    correlations rejected 66-80% of studies whose clutter was independent of absorption).

    H0: the covariate's class labels are exchangeable with respect to absorption. Statistic:
    |mean over runs of the Spearman correlation across classes of measure_r and share_r|. p: the
    K class labels of the measure relabelled, one relabelling for all runs (the covariate belongs
    to the class), exact over all K! relabellings when K! <= 40,320, else Monte Carlo over `perms`.
    n: K classes (the runs only sharpen each class's share). Smallest attainable p:
    class_permutation_p_min (1/3 with 3 classes, 1 with 2: no test). measure, share: (S, K)."""
    measure, share = np.asarray(measure, dtype=float), np.asarray(share, dtype=float)
    s, k = measure.shape
    if not (np.isfinite(measure).all() and np.isfinite(share).all()):  # a measure undefined for a class
        return {"statistic": np.nan, "p_value": np.nan, "p_min": class_permutation_p_min(k, perms), "effect": np.nan,
                "effect_name": "mean spearman rho", "n_runs": int(s), "n_classes": int(k), "permutations": 0,
                "exact": False}
    zm, zs = _standardized_ranks(measure), _standardized_ranks(share)
    observed = float((zm * zs).sum(1).mean())
    orders, exact = class_permutations(k, perms, np.random.default_rng(seed))
    null = np.concatenate([np.einsum("sbk,sk->b", zm[:, o], zs) / s
                           for o in np.array_split(orders, max(1, len(orders) // 2000))])
    p = float(np.mean(at_least(np.abs(null), abs(observed)))) if exact else mc_pvalue(np.abs(null), abs(observed))
    return {"statistic": observed, "p_value": p, "p_min": class_permutation_p_min(k, perms),
            "effect": observed, "effect_name": "mean spearman rho", "n_runs": int(s), "n_classes": int(k),
            "permutations": len(orders), "exact": exact}


def class_relabel_hits(nearest: np.ndarray, absorber: np.ndarray, k: int, perms: int = PERMUTATIONS,
                       seed: int = 0) -> dict:
    """Is the class a per-class covariate points at (e.g. nearest to the noise in clutter space)
    the absorber more often than another class would be? The covariate belongs to the class
    (usually the same class in every run), so the class is the unit: counting runs against 1/K
    each treats one fixed class S times as S independent chances.

    H0: the covariate's class labels are exchangeable with respect to which class absorbs.
    Statistic: hits, the runs whose absorber is the covariate's class. p: the classes of `nearest`
    relabelled, one relabelling for all runs; exact over the injective maps of its d distinct
    classes when there are <= 40,320 of them, else Monte Carlo. n: the classes. Smallest
    attainable p (given these absorbers): the share of relabellings reaching the largest possible
    hits, 1/K at best when one class is always nearest. nearest, absorber: (S,) class indices."""
    nearest, absorber = np.asarray(nearest, dtype=int), np.asarray(absorber, dtype=int)
    distinct, inv = np.unique(nearest, return_inverse=True)
    d = len(distinct)
    observed = float(np.sum(nearest == absorber))
    n_maps = math.perm(k, d)
    if n_maps <= EXACT_CLASS_PERMUTATIONS:
        maps, exact = np.array(list(itertools.permutations(range(k), d)), dtype=int), True
    else:
        maps, exact = np.argsort(np.random.default_rng(seed).random((perms, k)), axis=1)[:, :d], False
    null = (maps[:, inv] == absorber[None, :]).sum(1).astype(float)
    if exact:
        p, p_min = float(np.mean(at_least(null, observed))), float(np.mean(at_least(null, null.max())))
    else:
        p, p_min = mc_pvalue(null, observed), mc_pvalue(null, null.max())
    return {"statistic": observed, "p_value": p, "p_min": p_min, "effect": observed / len(nearest),
            "effect_name": "share of runs", "n_runs": int(len(nearest)), "exact": exact, "maps": len(maps)}


# ---------------------------------------------------------------- 7. two labels per run

def pairing_test(first: np.ndarray, second: np.ndarray, perms: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Within a run, do two labels coincide more often than their distributions over runs imply
    (e.g. the class nearest to the noise mean and the absorber)? Tested against 1/K, two labels
    that are each 75% one class but independent coincide in ~56% of runs, and that test rejected
    96% of such studies.

    H0: within a run the two labels are independent, given how each is distributed over the runs
    (the pairing of runs is exchangeable). Statistic: hits, the runs where they coincide. p: the
    second label permuted across runs, Monte Carlo, one-sided. n: the runs. Smallest attainable p
    (given these marginals): the same permutations' p of the largest possible hits,
    sum_c min(count in first, count in second); when both labels are nearly constant nothing can
    be shown, however often they coincide."""
    first, second = np.asarray(first), np.asarray(second)
    s = len(first)
    observed = float(np.sum(first == second))
    rng = np.random.default_rng(seed)
    null = (first[None, :] == rng.permuted(np.broadcast_to(second, (perms, s)), axis=1)).sum(1).astype(float)
    labels = np.union1d(first, second)
    best = float(sum(min(np.sum(first == c), np.sum(second == c)) for c in labels))
    expected = sum(np.sum(first == c) * np.sum(second == c) for c in labels) / s
    return {"statistic": observed, "p_value": mc_pvalue(null, observed), "p_min": mc_pvalue(null, best),
            "effect": observed / s, "effect_name": "share of runs", "expected_hits": float(expected),
            "n_runs": int(s), "permutations": perms}


# ---------------------------------------------------------------- multiple testing

def adjust(pvalues, method: str) -> np.ndarray:
    """holm | fdr_bh | fdr_by (statsmodels); NaN p-values are left out and stay NaN."""
    from statsmodels.stats.multitest import multipletests
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


def needed_p(pvalues, method: str, alpha: float = ALPHA) -> np.ndarray:
    """For each test of a family, the largest raw p at which it would be rejected at `alpha` after
    the family's correction (holm or fdr_bh), the other tests' p-values as observed: the level
    that test's smallest attainable p must clear. With m tests it is alpha/m when no other test
    is rejected, and more lenient as others are. NaN p-values are left out and stay NaN.

    In O(m log m): a test at sorted position r sees the others as o_j = p_(j) before it and
    p_(j+1) after it, so every quantity below is a prefix or suffix scan of the sorted p."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    a = p[order]
    r = np.arange(m)                                # each test's sorted position
    j = np.arange(m - 1)                            # the others' 0-based ranks
    before, after = a[:-1], a[1:]                   # o_j when the test sits after / before other j
    big = m + 1
    if method == "holm":
        # rejected at rank t iff every other test ranked before it passes (m - j) o_j <= alpha and
        # (m - t + 1) x <= alpha: the largest x runs up to the first other test that fails
        fail_before = np.flatnonzero((m - j) * before > alpha)
        first_before = fail_before[0] if len(fail_before) else big
        fail_after = np.where((m - j) * after > alpha, j, big)
        next_after = np.append(np.minimum.accumulate(fail_after[::-1])[::-1], big)   # first j >= r
        first = np.where(first_before < r, first_before, next_after[r])
        o_first = np.where(first < r, a[np.minimum(first, m - 1)], a[np.minimum(first + 1, m - 1)])
        need = np.where(first >= big, alpha, np.minimum(alpha / (m - np.minimum(first, m - 1)), o_first))
    elif method == "fdr_bh":
        # (a) some other test at rank j+2 (this one before it) passes its step-up threshold:
        # rejected up to that test's p
        pass_after = np.flatnonzero(after <= (j + 2) * alpha / m)
        last_after = pass_after[-1] if len(pass_after) else -1
        pass_before = np.where(before <= (j + 2) * alpha / m, j, -1)
        last_before = np.concatenate([[-1], np.maximum.accumulate(pass_before)])        # last j < r
        via_other = np.where(last_after >= r, a[np.minimum(last_after + 1, m - 1)],
                             np.where(last_before[r] >= 0, a[np.maximum(last_before[r], 0)], 0.0))
        # (b) this test passes its own threshold at rank t: x <= min(o_t, t alpha/m), above o_{t-1}
        t = np.arange(1, m + 1)
        lower_b = np.concatenate([[0.0], a[:-1]])   # rank t <= r: o_{t-1} = p_(t-1)
        cand_b = np.minimum(a, t * alpha / m)
        cand_b = np.where(cand_b > lower_b, cand_b, -np.inf)
        prefix_b = np.concatenate([[-np.inf], np.maximum.accumulate(cand_b)])[r]      # t <= r
        upper_a = np.append(a[1:], np.inf)          # rank t >= r+2: o_t = p_(t+1), o_{t-1} = p_(t)
        cand_a = np.minimum(upper_a, t * alpha / m)
        cand_a = np.where(cand_a > a, cand_a, -np.inf)
        suffix_a = np.append(np.maximum.accumulate(cand_a[::-1])[::-1], -np.inf)
        suffix_a = suffix_a[np.minimum(r + 1, m)]   # index t-1 >= r+1
        upper_m = np.append(a[1:], np.inf)[r]       # rank r+1: o_{r+1} = p_(r+1), o_r = p_(r-1)
        lower_m = np.concatenate([[0.0], a[:-1]])[r]
        cand_m = np.minimum(upper_m, (r + 1) * alpha / m)
        cand_m = np.where(cand_m > lower_m, cand_m, -np.inf)
        need = np.maximum.reduce([via_other, prefix_b, suffix_a, cand_m, np.zeros(m)])
    else:
        raise ValueError(f"needed_p: method {method!r}; allowed: holm, fdr_bh")
    out[order] = need
    return out


def t_half_width(x, alpha: float = ALPHA) -> float:
    """Half the width of the (1 - alpha) Student t interval of the mean of x (values over runs or
    networks, the unit of replication): t_{1-alpha/2, n-1} * sd / sqrt(n); NaN below 2 values."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return np.nan
    return float(sps.t.ppf(1 - alpha / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def wilson_interval(successes: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson score interval for a fraction of runs (statsmodels' formula), set exactly to 0 at
    k = 0 and 1 at k = n: rounding leaves those bounds a hair past p itself (statsmodels gives
    2.8e-17 for 0 of 7), which a plot's error bar then refuses as negative."""
    from statsmodels.stats.proportion import proportion_confint
    if n == 0:
        return (np.nan, np.nan)
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return (0.0 if successes == 0 else float(low), 1.0 if successes == n else float(high))


def t_interval(d: np.ndarray) -> tuple[float, float]:
    """The mean of d with its LEVEL t interval (d's mean twice where d has no spread; NaN without data)."""
    if len(d) < 2 or d.std(ddof=1) == 0:
        return (float(d.mean()), float(d.mean())) if len(d) else (np.nan, np.nan)
    half = t_half_width(d)
    return float(d.mean()) - half, float(d.mean()) + half
