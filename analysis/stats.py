"""The study's statistical tests: pure functions of arrays, each with its null stated.

The unit of replication is the trained network (a run): every test here takes one value per run,
never one per noise image. Permutation and Monte Carlo p-values are (1 + #{null >= observed}) /
(1 + B), which is valid (never below the true p) for any B.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import stats as sps


def mc_pvalue(null: np.ndarray, observed: float) -> float:
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + len(null)))


# ---------------------------------------------------------------- 1. per run

@lru_cache(maxsize=64)
def _top_share_null(n: int, k: int, draws: int, seed: int) -> np.ndarray:
    counts = np.random.default_rng(seed).multinomial(n, np.full(k, 1 / k), size=draws)
    return counts.max(axis=1) / n


def p_top_share_uniform(top_share: float, n: int, k: int, draws: int = 10_000, seed: int = 0) -> float:
    """H0: the n images fall uniformly on the K classes. Statistic: the largest share.
    Monte Carlo null of a uniform multinomial (descriptive: with 5000 images it always rejects)."""
    return mc_pvalue(_top_share_null(n, k, draws, seed), top_share)


# ---------------------------------------------------------------- 2. absorber consistency

def consistency_statistic(counts: np.ndarray, s: int) -> np.ndarray:
    """The modal absorber count, ties among equal counts broken by the agreement sum n_c^2
    (lexicographic: the second term is < 1). counts: (..., K)."""
    return counts.max(axis=-1) + (counts.astype(float) ** 2).sum(axis=-1) / (s * s + 1)


@lru_cache(maxsize=256)
def _consistency_null(s: int, k: int, draws: int, seed: int) -> np.ndarray:
    counts = np.random.default_rng(seed).multinomial(s, np.full(k, 1 / k), size=draws)
    return np.sort(consistency_statistic(counts, s))


def absorber_consistency(absorbers: list[str], classes: list[str], boot: int = 2_000,
                         draws: int = 100_000, seed: int = 0) -> dict:
    """H0: each run's absorber is an independent uniform draw from the K trained classes.
    Statistic: the modal absorber's count M over the S runs, ties in M ordered by the agreement
    sum n_c^2 (the refinement keeps the test near its nominal size; M alone takes few values).
    p: Monte Carlo over `draws` studies of S uniform draws. Effect: agreement index sum_c p_c^2
    (1 = all runs agree, 1/K expected under H0), with a percentile bootstrap CI over runs."""
    s, k = len(absorbers), len(classes)
    idx = np.array([classes.index(a) for a in absorbers])
    counts = np.bincount(idx, minlength=k)
    modal = int(np.argmax(counts))
    null = _consistency_null(s, k, draws, seed)
    observed = consistency_statistic(counts, s)
    p = (1 + len(null) - np.searchsorted(null, observed - 1e-12, side="left")) / (1 + len(null))
    agreement = float(((counts / s) ** 2).sum())
    rng = np.random.default_rng(seed)
    resampled = idx[rng.integers(0, s, size=(boot, s))]
    boot_counts = np.bincount((resampled + k * np.arange(boot)[:, None]).ravel(),
                              minlength=boot * k).reshape(boot, k)
    boot_agree = ((boot_counts / s) ** 2).sum(axis=1)
    lo, hi = np.percentile(boot_agree, [2.5, 97.5])
    return {"modal_absorber": classes[modal], "modal_count": int(counts[modal]), "n_runs": s,
            "p_value": float(p), "agreement": agreement,
            "agreement_ci_low": float(lo), "agreement_ci_high": float(hi),
            "agreement_null": 1 / k}


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


def permutation_chi2(labels: np.ndarray, groups: np.ndarray, perms: int | None = None,
                     seed: int = 0) -> dict:
    """H0: the absorber does not depend on the condition (runs exchangeable across conditions).
    Statistic: Pearson chi-square of the absorber x condition table; null by permuting the
    condition labels over runs. Effect: Cramer's V."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    _, a = np.unique(labels, return_inverse=True)
    _, g = np.unique(groups, return_inverse=True)
    r, c, n = a.max() + 1, g.max() + 1, len(a)
    perms = perms or permutation_budget(n, 1, cap=1e7, least=999)  # 10^4 unless the study is huge
    observed = _chi2_stat(np.bincount(a * c + g, minlength=r * c).reshape(r, c))
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.broadcast_to(g, (perms, n)), axis=1)
    flat = (a[None, :] * c + shuffled) + (np.arange(perms)[:, None] * r * c)
    tables = np.bincount(flat.ravel(), minlength=perms * r * c).reshape(perms, r, c)
    null = _chi2_stat(tables)
    v = float(np.sqrt(observed / (n * (min(r, c) - 1)))) if min(r, c) > 1 else 0.0
    return {"statistic": float(observed), "p_value": mc_pvalue(null, observed) if min(r, c) > 1 else 1.0,
            "effect": v, "effect_name": "cramers_v", "n_runs": int(n), "permutations": perms}


EXACT_SIGN_FLIPS = 16  # up to 2^16 sign patterns are enumerated; beyond, Monte Carlo


def sign_flip_pvalue(null_of, n: int, observed: float, perms: int, seed: int) -> float:
    """p of `observed` when each of n paired units may flip its sign (swap its pair) under H0.
    null_of(signs) -> the statistic for each row of +-1 signs. Exact over all 2^n patterns for
    n <= EXACT_SIGN_FLIPS, else Monte Carlo over `perms` random patterns."""
    if n <= EXACT_SIGN_FLIPS:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(null_of(signs) >= observed - 1e-12))
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(perms, n))
    return mc_pvalue(null_of(signs), observed)


def marginal_homogeneity(first: list[str], second: list[str], perms: int = 10_000, seed: int = 0) -> dict:
    """Paired (same seeds), two conditions. H0: the absorber's distribution is the same in both
    (marginal homogeneity of the K x K table of paired absorbers).

    p: the paired permutation test, each seed's two absorbers swapped (H0 makes them
    exchangeable), exact over the 2^m patterns of the m discordant seeds for m <= 16, Monte Carlo
    beyond. Statistic: |d|^2, d the K differences of the marginal counts. Stuart-Maxwell's
    d' V^-1 d is also returned (generalised inverse, df = rank V, so that it stays defined when a
    class occurs only in agreeing pairs; equal to the textbook value wherever that exists), but it
    is not the test: V is estimated from the same few discordant seeds, and when they form a tree
    (each pair of classes seen once, usual with a handful of seeds) d' V^-1 d = m whatever their
    directions, so it cannot see one class losing every seed. On 2 classes |d|^2 is 2x McNemar's
    numerator and the test is the exact McNemar test."""
    cats = sorted(set(first) | set(second))
    discordant = [(cats.index(x), cats.index(y)) for x, y in zip(first, second) if x != y]
    m = len(discordant)
    if m == 0:
        return {"statistic": 0.0, "p_value": 1.0, "discordant": 0, "stuart_maxwell": 0.0, "df": 0,
                "p_asymptotic": 1.0}
    step = np.zeros((m, len(cats)))                 # each discordant seed's contribution to d
    step[np.arange(m), [i for i, _ in discordant]] += 1
    step[np.arange(m), [j for _, j in discordant]] -= 1
    d = step.sum(0)
    observed = float(d @ d)
    p = sign_flip_pvalue(lambda signs: ((signs @ step) ** 2).sum(1), m, observed, perms, seed)
    v = step.T @ step                               # Stuart-Maxwell's covariance of d
    sm = float(d @ np.linalg.pinv(v) @ d)
    df = int(np.linalg.matrix_rank(v))
    return {"statistic": observed, "p_value": p, "discordant": m, "stuart_maxwell": sm, "df": df,
            "p_asymptotic": float(sps.chi2.sf(sm, df))}


def marginal_homogeneity_clustered(first: list[str], second: list[str], cluster: list, perms: int = 10_000,
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
        return {"statistic": 0.0, "p_value": 1.0, "contributing_clusters": 0}
    d = step.sum(0)
    observed = float(d @ d)
    p = sign_flip_pvalue(lambda signs: ((signs @ step) ** 2).sum(1), m, observed, perms, seed)
    return {"statistic": observed, "p_value": p, "contributing_clusters": m}


def cochran_q(indicator: np.ndarray, perms: int | None = None, seed: int = 0) -> dict:
    """Paired, >= 2 conditions. H0: P(absorber is the pooled modal class) is the same in every
    condition. `indicator`: (runs/seeds, conditions) of 0/1. Statistic: Cochran's Q (statsmodels).
    p: each seed's row permuted across conditions (H0 makes them exchangeable), Monte Carlo; the
    chi-square approximation needs more discordant seeds than a study usually has, so it is kept
    only for reference. Q only grows with the sum of squared column totals once the row totals
    are fixed, so the null compares that sum."""
    from statsmodels.stats.contingency_tables import cochrans_q
    x = np.asarray(indicator)
    mixed = x[~np.all(x == x[:, :1], axis=1)]       # seeds where the conditions disagree
    if len(mixed) == 0:
        return {"statistic": 0.0, "p_value": 1.0, "p_asymptotic": 1.0, "permutations": 0}
    res = cochrans_q(x)
    perms = perms or permutation_budget(*mixed.shape, cap=1e7, least=999)
    shuffled = np.random.default_rng(seed).permuted(np.broadcast_to(mixed, (perms, *mixed.shape)), axis=2)
    null = (shuffled.sum(1).astype(float) ** 2).sum(1)
    observed = float((mixed.sum(0).astype(float) ** 2).sum())
    return {"statistic": float(res.statistic), "p_value": mc_pvalue(null, observed),
            "p_asymptotic": float(res.pvalue), "permutations": perms}


def sign_flip(diffs: np.ndarray, perms: int = 10_000, seed: int = 0) -> dict:
    """H0: paired differences are symmetric about 0. Statistic |mean|; exact over all 2^n sign
    patterns for n <= 16, else Monte Carlo."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    observed = abs(d.mean()) if n else 0.0
    if n == 0 or np.all(d == 0):
        return {"statistic": observed, "p_value": 1.0, "effect": 0.0}
    p = sign_flip_pvalue(lambda signs: np.abs(signs @ d / n), n, observed, perms, seed)
    sd = d.std(ddof=1) if n > 1 else 0.0
    return {"statistic": float(d.mean()), "p_value": p, "effect": float(d.mean() / sd) if sd > 0 else 0.0}


def poisson_binomial_sf(hits: int, chances: list[float]) -> float:
    """P(X >= hits) for X a sum of independent Bernoulli(chances[i]): an exact one-sided test of
    how many runs hit when each run has its own chance (runs with different K). Equal chances
    give the binomial tail."""
    pmf = np.array([1.0])
    for q in chances:
        pmf = np.convolve(pmf, [1 - q, q])
    return float(min(1.0, pmf[hits:].sum()))


# ---------------------------------------------------------------- 4. MST stability

def edge_pvalue(count: int, n_runs: int, n_nodes: int) -> float:
    """H0: the edge is in a run's tree with the probability every edge has when node labels are
    exchangeable, (n-1)/C(n,2) = 2/n (n = K+1 nodes). One-sided exact binomial test."""
    return float(sps.binomtest(count, n_runs, 2 / n_nodes, alternative="greater").pvalue)


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


def permutation_budget(s: int, m: int, cap: float = 2e6, most: int = 9_999, least: int = 199) -> int:
    """How many permutations an exploratory test gets: 9,999 where cheap, fewer as the cost of
    one replicate (about s * m element operations) grows, never fewer than 199 (p resolution
    0.005). Keeps a 10,000-trial aggregation to about a minute; p stays valid at any B."""
    return int(min(most, max(least, cap // max(1, s * m))))


def tree_overlap_test(edges: np.ndarray, n_nodes: int, perms: int | None = None, seed: int = 0) -> dict:
    """H0: node labels carry no information about tree structure (each run's tree relabelled at
    random, independently). Statistic: mean number of shared edges over pairs of runs, which
    is (sum_e c_e^2 - S(n-1)) / (S(S-1)) for edge counts c_e; E[H0] = 2K/(K+1).
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
    k = n_nodes - 1
    return {"statistic": observed, "p_value": mc_pvalue(np.concatenate(null), observed),
            "effect": observed / (2 * k / (k + 1)), "effect_name": "overlap / null mean",
            "null_mean": 2 * k / (k + 1), "n_runs": int(s), "permutations": perms}


# ---------------------------------------------------------------- 5. distance agreement (Mantel)

def _standardized_ranks(x: np.ndarray) -> np.ndarray:
    r = np.apply_along_axis(sps.rankdata, -1, x)
    r = r - r.mean(axis=-1, keepdims=True)
    sd = np.sqrt((r**2).mean(axis=-1, keepdims=True))
    return r / np.where(sd > 0, sd, 1) / np.sqrt(x.shape[-1])


def mantel_test(vectors: np.ndarray, n_nodes: int | None, perms: int | None = None, seed: int = 0) -> dict:
    """Agreement of distance matrices across runs: mean pairwise Spearman correlation of the runs'
    distances; H0: node labels are exchangeable (Mantel-style permutation of each run's labels).

    vectors: (S, m) per run, either the upper triangle of a node x node matrix (n_nodes given;
    nodes relabelled jointly) or one value per class (n_nodes None; classes permuted)."""
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
    return {"statistic": observed, "p_value": mc_pvalue(null, observed), "effect": observed,
            "effect_name": "mean pairwise spearman", "n_runs": int(len(z)), "permutations": perms}


# ---------------------------------------------------------------- 6. clutter vs absorption

def clutter_correlation(measure: np.ndarray, share: np.ndarray, perms: int = 10_000, seed: int = 0) -> dict:
    """Per run, Spearman correlation across classes between a clutter measure and the share of
    noise absorbed; H0: the per-run correlations are symmetric about 0 (sign-flip test over runs).
    measure, share: (S, K)."""
    rho = np.array([sps.spearmanr(m, s).statistic if np.ptp(m) > 0 and np.ptp(s) > 0 else 0.0
                    for m, s in zip(measure, share)])
    res = sign_flip(np.nan_to_num(rho), perms, seed)
    return {"statistic": float(np.mean(rho)), "p_value": res["p_value"], "effect": float(np.mean(rho)),
            "effect_name": "mean spearman rho", "n_runs": int(len(rho))}


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


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a fraction of runs (statsmodels' formula), set exactly to 0 at
    k = 0 and 1 at k = n: rounding leaves those bounds a hair past p itself (statsmodels gives
    2.8e-17 for 0 of 7), which a plot's error bar then refuses as negative."""
    from statsmodels.stats.proportion import proportion_confint
    if n == 0:
        return (np.nan, np.nan)
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return (0.0 if successes == 0 else float(low), 1.0 if successes == n else float(high))
