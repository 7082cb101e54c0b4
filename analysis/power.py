"""Power and seeds for the absorber tests, by simulating the tests themselves (analysis/stats.py).

How many seeds does a study need? The answer depends on the test and the effect, so it is
simulated: draw many studies of the design under a stated effect, run the very test function the
aggregation runs on each, and count p <= alpha. Pure numpy, no torch: `study check` prints it for
a sweep's design, and

    python -m analysis.power --k 10 --seeds 5 8 12 20 --q 0.5

prints the README's power table. Each figure carries its Monte Carlo standard error
sqrt(p(1 - p) / sims).

Effects, stated as what a reader of the report would see:

- **absorber consistency** (stats.absorber_consistency): each run's absorber is the modal class
  with probability q, else uniform over the other K - 1 classes (q = 1/K is the test's null);
- **paired absorber test** (two conditions on the same seeds: stats.marginal_homogeneity; three
  or more: stats.cochran_q): the modal class absorbs in a share q_a of seeds under the first
  condition and q_b under the others; a seed's runs are coupled as tightly as those shares allow
  (a seed absorbing to the modal class under the rarer condition does so under all), and a seed
  that absorbs elsewhere under both keeps its class with probability `agree`. The discordance
  rate this implies is returned beside the power.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import stats
from .inference import paired_seeds
from .stats import ALPHA

TARGET = 0.8          # the power "seeds needed" aims at
MAX_SEEDS = 200       # the search for seeds needed stops here
# Monte Carlo permutations of the paired tests in each simulated study, where they are not exact
# (> 16 discordant seeds; Cochran's Q): p stays valid, and its resolution (1/1000) is far below
# the Monte Carlo error of the power itself
PERMS = 999


@dataclass(frozen=True)
class Power:
    power: float
    se: float          # Monte Carlo standard error of `power`
    sims: int

    def __str__(self) -> str:
        return f"{self.power:.2f}"


def _estimate(rejections: int, sims: int) -> Power:
    p = rejections / sims
    return Power(p, float(np.sqrt(max(p * (1 - p), 1 / sims) / sims)), sims)


# ---------------------------------------------------------------- absorber consistency

@lru_cache(maxsize=100_000)
def _consistency_p(counts: tuple[int, ...]) -> float:
    """p of the consistency test (stats.modal_count_test, which stats.absorber_consistency runs)
    for runs with these absorber counts (sorted: the test is symmetric in the class labels)."""
    return stats.modal_count_test(np.repeat(np.arange(len(counts)), counts), len(counts))["p_value"]


@lru_cache(maxsize=4096)
def consistency_power(k: int, s: int, q: float, sims: int = 2000, alpha: float = ALPHA, seed: int = 0) -> Power:
    """Power of the absorber consistency test over S runs of K classes when each run's absorber
    is the modal class with probability q (else uniform over the rest)."""
    if not (k >= 2 and s >= 1 and 0 <= q <= 1):
        raise ValueError(f"need K >= 2, S >= 1, 0 <= q <= 1 (got K={k}, S={s}, q={q})")
    probs = np.full(k, (1 - q) / (k - 1))
    probs[0] = q
    counts = np.random.default_rng(seed).multinomial(s, probs, size=sims)
    counts = -np.sort(-counts, axis=1)
    rejections = sum(_consistency_p(tuple(int(x) for x in row)) <= alpha for row in counts)
    return _estimate(int(rejections), sims)


# ---------------------------------------------------------------- paired absorber test

def paired_absorbers(k: int, s: int, q_a: float, q_b: float, agree: float, conditions: int, rng) -> np.ndarray:
    """One simulated study: (S, conditions) absorber indices, class 0 the modal one;
    the first condition at q_a, the others at q_b (see the module docstring)."""
    u = rng.random(s)                                   # one uniform per seed couples its runs
    q = np.array([q_a] + [q_b] * (conditions - 1))
    modal = u[:, None] < q[None, :]
    base = rng.integers(1, k, size=s)                   # the seed's non-modal class
    fresh = rng.integers(1, k, size=(s, conditions))
    keep = rng.random((s, conditions)) < agree
    keep[:, 0] = True
    other = np.where(keep, base[:, None], fresh)
    return np.where(modal, 0, other)


def discordance(k: int, q_a: float, q_b: float, agree: float) -> float:
    """P(a seed's absorber differs between the first and a second condition) under the model."""
    both_other = 1 - max(q_a, q_b)
    return abs(q_a - q_b) + both_other * (1 - agree) * (k - 2) / (k - 1)


@lru_cache(maxsize=4096)
def paired_power(k: int, s: int, q_a: float, q_b: float, agree: float = 0.5, conditions: int = 2,
                 sims: int = 1000, alpha: float = ALPHA, seed: int = 0) -> Power:
    """Power of the paired absorber test the aggregation runs for `conditions` arms on the same S
    seeds: marginal homogeneity (2 arms) or Cochran's Q on the pooled modal class (3 or more)."""
    if not (k >= 2 and s >= 2 and conditions >= 2 and all(0 <= x <= 1 for x in (q_a, q_b, agree))):
        raise ValueError(f"need K >= 2, S >= 2, >= 2 conditions, shares in [0, 1] "
                         f"(got K={k}, S={s}, conditions={conditions}, q_a={q_a}, q_b={q_b}, agree={agree})")
    rng = np.random.default_rng(seed)
    rejections = 0
    for _ in range(sims):
        x = paired_absorbers(k, s, q_a, q_b, agree, conditions, rng)
        if conditions == 2:
            p = _homogeneity_p(_canonical_pairs(x))
        else:   # the aggregation tests the pooled modal class's indicator
            pooled = np.bincount(x.ravel(), minlength=k).argmax()
            p = _cochran_p(tuple(sorted(tuple(row) for row in (x == pooled).astype(int).tolist())))
        rejections += p <= alpha
    return _estimate(int(rejections), sims)


def _canonical_pairs(x: np.ndarray) -> tuple:
    """The discordant seeds' (first, second) absorbers, classes renamed in order of appearance:
    the paired test's p is the same under any renaming of the classes and order of the seeds, so
    simulated studies that differ only so share one call."""
    pairs = sorted((int(a), int(b)) for a, b in x[:, :2] if a != b)
    names: dict[int, int] = {}
    for pair in pairs:
        for c in pair:
            names.setdefault(c, len(names))
    return tuple(sorted((names[a], names[b]) for a, b in pairs))


@lru_cache(maxsize=100_000)
def _homogeneity_p(pairs: tuple) -> float:
    first, second = zip(*pairs) if pairs else ((), ())
    return stats.marginal_homogeneity([f"c{a}" for a in first], [f"c{b}" for b in second], perms=PERMS)["p_value"]


@lru_cache(maxsize=100_000)
def _cochran_p(rows: tuple) -> float:
    """Cochran's Q p of the seeds' indicator rows (sorted: the p does not depend on their order)."""
    return stats.cochran_q(np.array(rows), perms=PERMS)["p_value"]


# ---------------------------------------------------------------- seeds needed

def seeds_needed(power_at, target: float = TARGET, start: int = 2, most: int = MAX_SEEDS) -> int | None:
    """The smallest S with power_at(S) >= target: from `start` (the design's S) down while the
    power holds, or up by doubling then bisection. Power grows with S up to the saw-tooth of
    discrete tests, so where the curve crosses the target in steps the answer can be a seed or
    two off the first crossing. None if even `most` seeds fall short."""
    if power_at(start).power >= target:
        lo, hi = 1, start
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if power_at(mid).power >= target else (mid, hi)
        return hi
    lo, hi = start, start
    while power_at(hi).power < target:
        if hi >= most:
            return None
        lo, hi = hi, min(most, hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power_at(mid).power >= target else (mid, hi)
    return hi


# ---------------------------------------------------------------- a sweep's design

Q_SHOWN = (0.3, 0.5, 0.7)          # modal shares shown by `study check` (those above 1/K)


def q_ref(k: int) -> float:
    """The modal share at which `study check` gives the seeds needed: 0.5 (with K = 2, where 0.5
    is chance, 0.75)."""
    return 0.5 if k > 2 else 0.75

CHECK_CONDITIONS = 10              # larger paired groups: Cochran's Q is too slow to simulate in a check
PAIRED_EFFECT = (0.75, 0.25, 0.5)  # q_a, q_b, agree: the modal class absorbs in 75% of seeds under one arm, 25%
                                   # under another
UNPAIRED_Q = 0.7                   # different networks' conditions: each absorbs to its own class in 70% of runs
                                   # (the ladder's)


def design(points: list[tuple[dict, list[str]]]) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """A sweep's design as the aggregation will test it, from its grid points (axis values,
    trained classes): (K, seeds) of each condition (the axis values but the seed), and
    (K, common seeds, conditions) of each group of >= 2 conditions that train the same classes on
    seeds the aggregation pairs (inference.paired_seeds)."""
    cells, groups, seeds, different = _conditions(points)
    common = {cls: paired_seeds([seeds[c] for c in g]) for cls, g in groups.items()
              if len(g) >= 2 and not different[cls]}
    paired = sorted({(len(cls), len(common[cls]), len(groups[cls])) for cls in common if common[cls]})
    return cells, paired


def _conditions(points):
    """(K, seeds) cells, class set -> its conditions, condition -> its seeds, class set -> whether its
    conditions build different networks (a point's optional third element names its network)."""
    seeds: dict[str, set] = {}
    classes: dict[str, tuple] = {}
    networks: dict[str, str | None] = {}
    for point in points:
        axes, trained = point[0], point[1]
        key = repr(sorted((k, repr(v)) for k, v in axes.items() if k != "seed"))
        seeds.setdefault(key, set()).add(repr(axes.get("seed")))
        classes[key] = tuple(trained)
        networks[key] = point[2] if len(point) > 2 else None
    cells = sorted({(len(classes[c]), len(s)) for c, s in seeds.items()})
    groups: dict[tuple, list[str]] = {}
    for c in seeds:
        groups.setdefault(classes[c], []).append(c)
    different = {cls: len({networks[c] for c in g}) > 1 for cls, g in groups.items()}
    # conditions of different networks are compared unpaired (inference.condition_dependence)
    return cells, groups, seeds, different


def unpaired_design(points) -> list[tuple[int, int, int]]:
    """(K, fewest seeds of a condition, conditions) of each group of >= 2 conditions that train the
    same classes and build different networks: the aggregation compares them unpaired."""
    _, groups, seeds, different = _conditions(points)
    return sorted({(len(cls), min(len(seeds[c]) for c in g), len(g)) for cls, g in groups.items()
                   if len(g) >= 2 and different[cls]})


def design_block(points: list[tuple[dict, list[str]]], sims: int = 400) -> str:
    """Text for `study check`: the power of the consistency test for each (K, seeds per
    condition) of the design, and of the paired test for each group of conditions on the same
    seeds, with the seeds each needs for 80% power."""
    cells, paired = design(points)
    unpaired = unpaired_design(points)
    lines = [f"power at alpha = {ALPHA} (analysis/power.py; {sims} simulated studies per figure, "
             f"Monte Carlo SE <= {0.5 / np.sqrt(sims):.3f}):"]
    for k, s in cells:
        if k < 2:
            continue
        shown = [q for q in Q_SHOWN if q > 1 / k] or [q_ref(k)]
        figures = "/".join(str(consistency_power(k, s, q, sims)) for q in shown)
        need = seeds_needed(lambda n: consistency_power(k, n, q_ref(k), sims), start=s)  # noqa: B023
        lines.append(f"  absorber consistency, K = {k}, {s} seeds per condition: "
                     f"{figures} at q = {'/'.join(f'{q:g}' for q in shown)} (q: the modal class's share "
                     f"of runs, rest uniform); 80% power at q = {q_ref(k):g} needs {need or f'> {MAX_SEEDS}'} seeds")
    q_a, q_b, agree = PAIRED_EFFECT
    for k, s, c in paired:
        if c > CHECK_CONDITIONS:
            lines.append(f"  paired absorber test (Cochran's Q), K = {k}, {c} conditions on {s} seeds: not simulated "
                         f"here (too slow for a check); `python -m analysis.power --k {k} --seeds {s} --conditions "
                         f"{c}` prints it")
            continue
        pw = paired_power(k, s, q_a, q_b, agree, c, sims)
        need = seeds_needed(lambda n: paired_power(k, n, q_a, q_b, agree, c, sims), start=s)  # noqa: B023
        test = "marginal homogeneity" if c == 2 else "Cochran's Q"
        lines.append(f"  paired absorber test ({test}), K = {k}, {c} conditions on {s} seeds: {pw} when the "
                     f"modal class absorbs in {q_a:.0%} of seeds under one condition and {q_b:.0%} under "
                     f"{'the other' if c == 2 else 'the others'} (discordance {discordance(k, q_a, q_b, agree):.2f}); "
                     f"80% power needs {need or f'> {MAX_SEEDS}'} seeds")
    for k, s, c in unpaired:
        if c > k:
            continue
        pw = unpaired_power(k, s, UNPAIRED_Q, c, sims // 2)
        need = seeds_needed(lambda n: unpaired_power(k, n, UNPAIRED_Q, c, sims // 2), start=s)  # noqa: B023
        lines.append(f"  unpaired absorber test (permutation chi-square; the conditions are different networks), "
                     f"K = {k}, {c} conditions of {s} seeds: {pw} when each condition's runs absorb to a class of "
                     f"its own with probability {UNPAIRED_Q:g}; 80% power needs {need or f'> {MAX_SEEDS}'} seeds")
    if len(lines) == 1:
        lines.append("  no condition with >= 2 classes")
    return "\n".join(lines)


def unpaired_power(k: int, s: int, q: float, conditions: int = 2, sims: int = 400, alpha: float = ALPHA,
                   seed: int = 0, perms: int = PERMS) -> Power:
    """Power of the unpaired test that the absorber depends on the condition (stats.permutation_chi2:
    condition labels permuted over runs), for `conditions` arms of S runs each whose modal classes
    differ: arm i's runs absorb to class i with probability q, else uniformly to another class (the
    ladder's design: rungs of different networks, so their seeds are not paired)."""
    if not (k >= conditions >= 2 and s >= 1 and 0 <= q <= 1):
        raise ValueError(f"need K >= conditions >= 2, S >= 1, q in [0, 1] (got K={k}, conditions={conditions}, "
                         f"S={s}, q={q})")
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(conditions), s)
    rejections = 0
    for _ in range(sims):
        modal = rng.random(len(groups)) < q
        other = (groups + 1 + rng.integers(0, k - 1, len(groups))) % k   # uniform over the K - 1 others
        absorbers = np.where(modal, groups, other)
        rejections += stats.permutation_chi2(absorbers, groups, perms=perms,
                                             seed=int(rng.integers(2**31)))["p_value"] <= alpha
    return _estimate(int(rejections), sims)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.power",
                                description="Power of the absorber tests by simulation.")
    p.add_argument("--k", type=int, nargs="+", default=[10])
    p.add_argument("--seeds", type=int, nargs="+", default=[5, 8, 12, 20])
    p.add_argument("--q", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--paired", type=float, nargs=3, default=list(PAIRED_EFFECT), metavar=("Q_A", "Q_B", "AGREE"))
    p.add_argument("--conditions", type=int, nargs="+", default=[2, 3], help="paired conditions")
    p.add_argument("--unpaired", type=float, metavar="Q", help="also the unpaired test that the absorber depends on "
                   "the condition (permutation chi-square), for arms whose modal classes differ, each with share Q")
    p.add_argument("--sims", type=int, default=4000)
    args = p.parse_args(argv)
    print(f"Absorber consistency: power at alpha = {ALPHA} ({args.sims} simulated studies each; +- 1 Monte Carlo SE)\n")
    print("| K | q | " + " | ".join(f"S = {s}" for s in args.seeds) + " | seeds for 80% |")
    print("|---|---|" + "---|" * (len(args.seeds) + 1))
    for k in args.k:
        for q in [1 / k] + [q for q in args.q if q > 1 / k]:
            cells = [consistency_power(k, s, q, args.sims) for s in args.seeds]
            need = seeds_needed(lambda n: consistency_power(k, n, q, args.sims), start=args.seeds[0]) \
                if q > 1 / k else "-"  # noqa: B023
            print(f"| {k} | {q:.3g} | " + " | ".join(f"{c.power:.3f} +- {c.se:.3f}" for c in cells) + f" | {need} |")
    q_a, q_b, agree = args.paired
    sims = max(200, args.sims // 4)
    print(f"\nPaired absorber test: modal class in {q_a:.0%} of seeds under condition A, {q_b:.0%} under the "
          f"others (seeds absorbing elsewhere under both keep their class with probability {agree}); "
          f"{sims} simulated studies each\n")
    print("| K | conditions | discordance | " + " | ".join(f"S = {s}" for s in args.seeds) + " | seeds for 80% |")
    print("|---|---|---|" + "---|" * (len(args.seeds) + 1))
    for k in args.k:
        for c in args.conditions:
            cells = [paired_power(k, s, q_a, q_b, agree, c, sims) for s in args.seeds]
            need = seeds_needed(lambda n: paired_power(k, n, q_a, q_b, agree, c, sims), start=args.seeds[0])  # noqa: B023
            print(f"| {k} | {c} | {discordance(k, q_a, q_b, agree):.2f} | "
                  + " | ".join(f"{x.power:.3f} +- {x.se:.3f}" for x in cells) + f" | {need} |")
    if args.unpaired is not None:
        q, sims = args.unpaired, max(200, args.sims // 10)
        print(f"\nUnpaired absorber test (permutation chi-square): each arm's runs absorb to its own modal class "
              f"with probability {q}, else uniformly elsewhere; {sims} simulated studies each\n")
        print("| K | conditions | " + " | ".join(f"S = {s}" for s in args.seeds) + " | seeds for 80% |")
        print("|---|---|" + "---|" * (len(args.seeds) + 1))
        for k in args.k:
            for c in args.conditions:
                cells = [unpaired_power(k, s, q, c, sims) for s in args.seeds]
                need = seeds_needed(lambda n: unpaired_power(k, n, q, c, sims), start=args.seeds[0])  # noqa: B023
                print(f"| {k} | {c} | " + " | ".join(f"{x.power:.3f} +- {x.se:.3f}" for x in cells) + f" | {need} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
