"""Whole-pipeline calibration: hundreds of realistic null studies (analysis/nulls.py) through the
aggregation's statistics (pipeline.statistics, the code that writes tests.csv), the false-positive
rate of every test id at 0.05, and the power of each test under a planted effect.

    python -m analysis.calibration --studies 400 --power-studies 40 --workers 2

A study is written to a temporary folder in the trial.json contract, read back by analysis.load
and tested by pipeline.statistics, exactly as `python -m analysis` does (only the plots, the
report and the table files are left out). Rows whose test cannot reach p <= 0.05 at their n (the
`p_min` column of tests.csv) are counted apart, never as passes.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .nulls import CONCENTRATED, INTERIOR, Design, Effects, coupling_at, null_holds, write_null_study
from .stats import ALPHA, wilson_interval

BAND = (0.02, 0.07)   # the false-positive rate at ALPHA within which a test counts as calibrated
# Tests whose false-positive rate under these nulls is below the band by design, and why (measured:
# docs/statistics.md). Only the lower bound is excused: above the band nothing is.
CONSERVATIVE = {
    "absorber_vs_condition": "the exact swap test over the m discordant seeds: its statistic (squared "
    "differences of the two arms' class counts) takes few values over the 2^m swaps, so the attainable "
    "size at m <= 10 is well below 0.05",
    "absorber_vs_condition_chi2": "the permutation chi-square relabels conditions over runs and ignores "
    "the pairing: a seed's runs are alike across arms, so the arms differ less than independent runs "
    "would (the paired absorber_vs_condition is the test of record; this one is secondary)",
    "factor_absorber": "the same exact swap as absorber_vs_condition (whole seeds swapped, marginal "
    "homogeneity of the paired absorbers): discrete at few discordant seeds, its attainable size is "
    "well below 0.05 (0/30 null rows rejected at 10 seeds)",
    "epoch0_favourite_is_absorber": "the pairing permutation with both labels ~75% one class: the hits "
    "take few values (as for noise_neighbour), so its attainable size is below 0.05",
    "mst_edge": "an exact one-sided binomial test against 2/K: discrete, its attainable size at S runs is "
    "below 0.05 (0.032 at K = 10, S = 20), and Benjamini-Yekutieli's rows are tested raw here",
    "noise_edge": "an exact binomial test against 1/K: discrete, its attainable size at S runs is below 0.05",
    "absorber_consistency": "the modal-count test is discrete: its size at K = 10 is 0.013 / 0.030 / 0.051 "
    "at S = 5 / 8 / 12 (README's power table, q = 1/K)",
    "noise_attachment": "the same modal-count test as absorber_consistency, on the class the noise hangs on",
    "noise_neighbour": "the pairing permutation with both labels ~75% one class: the hits take few values, "
    "so its attainable size is below 0.05",
    "noise_lookalike": "cannot reject here: with pixel clutter fixed per class and one noise bank, the "
    "class nearest the bank is the same in every run, and relabelling the classes gives p >= 1/K "
    "(p_min 0.1 at K = 10): every row is below reach, as the report says",
}
# Tests whose null these studies hold but which reject too often, by a known flaw of the test (not of
# the generator), and why; the scoreboard takes no verdict from them (checked in tests/test_nulls.py).
# band_errors skips them; fpr_table shows their rate, which the slow test requires above the band
# (an exclusion that no longer excuses anything must go).
# None today: head_absorption's head-bias row (a class's bias against its share, 0.688 of null rows
# rejected: a bias is a term of every logit) was taken out of the test; bias_deal tests the biases.
KNOWN_INVALID: dict[str, str] = {}
# A test id with few null rows (its rate's standard error over studies above SE_FLOOR) is checked
# against the band widened by SE_SPAN of its standard errors (stated in the table; the figure is
# a measurement, the band its target)
SE_FLOOR, SE_SPAN = 0.01, 2.5

# the null studies cycle through every combination of these (60 kinds; 400 studies ~ 7 rounds)
NULL_LAYOUTS = [dict(axis="augmentation", arms=2), dict(axis="augmentation", arms=3),
                dict(axis="class_intervention", arms=2), dict(axis="intervention", arms=2),
                dict(axis="activation", arms=2)]
NULL_EFFECTS = {"uniform": Effects(), "concentrated": CONCENTRATED}
# gaussian (the question's noise) and uniform, and at K = 10 (CIFAR-10 as the papers had it) the
# literature families a published ordering compares (explanations.published_orderings: oe_gaussian and
# oe_blobs above rademacher); every family adds its per-family tests, so K = 5 studies keep two
NULL_FAMILIES = ("gaussian", "uniform", "oe_gaussian", "oe_blobs", "rademacher")
NULL_SEEDS = (8, 13, 20)   # 13: with two runs lost, 11 complete pairs, the fewest the equivalence test can use
NULL_K = (10, 5)

# planted effects, one per kind of test: (label, layout, effects)
POWER_SCENARIOS = [
    ("modal absorber q = 0.5", dict(axis="augmentation", arms=2), Effects(absorber_q=0.5)),
    ("last arm: absorber another class in 50% of runs", dict(axis="augmentation", arms=2),
     Effects(absorber_q=0.75, nearest_q=0.75, condition=0.5)),
    ("nearest class := absorber in 50% of runs", dict(axis="augmentation", arms=2),
     Effects(absorber_q=0.75, nearest_q=0.75, link=0.5)),
    ("absorber := untrained favourite in 50% of runs", dict(axis="augmentation", arms=2),
     Effects(absorber_q=0.75, nearest_q=0.75, favourite_q=0.75, favourite_link=0.5)),
    ("activation gelu: absorber another class in 50% of runs", dict(axis="activation", arms=2),
     Effects(absorber_q=0.75, condition=0.5)),
    ("modal absorber (q = 0.75) is the most cluttered class", dict(axis="augmentation", arms=2), Effects(clutter=True)),
    ("class means follow one tree in 50% of runs", dict(axis="augmentation", arms=2), Effects(tree=0.5)),
    ("nearest class concentrated (q = 0.75)", dict(axis="augmentation", arms=2), Effects(nearest_q=0.75)),
    ("blur target absorbs in 50% of runs at strength 2", dict(axis="class_intervention", arms=2), Effects(causal=0.5)),
    ("intervention shrinks the top share by 60%", dict(axis="intervention", arms=2), Effects(intervention=0.6)),
    ("probes: second levels moved by 1 level sd, the absorber's head bias by 1 sd",
     dict(axis="augmentation", arms=2, families=NULL_FAMILIES),
     Effects(probes=1.0)),
    ("arms alike: discordance 0.05, below the 0.25 margin",
     dict(axis="augmentation", arms=2, coupling=coupling_at(10, Effects(), rate=0.05)), Effects()),
    # last, so the scenarios above keep their seeds: the restricted Kang test (amplitude_kl_trend)
    *((f"Kang: the smallest amplitude's logit scale down by {k:g} level sds", dict(axis="augmentation", arms=2,
       families=NULL_FAMILIES), Effects(kang=k)) for k in (1.0, 2.0)),
]


def null_study(i: int) -> tuple[str, Design, Effects]:
    """The i-th null study of the calibration: layouts, nulls, seeds and K in rotation. The
    two-arm augmentation layout couples a seed's runs so that the discordance rate is exactly the
    equivalence margin (where that test's size is attained), its head biases drawn given that the
    planned absorbers lead; the others at the default coupling, their biases free to overturn the
    weights' leader (nulls.head_biases)."""
    combos = list(itertools.product(NULL_K, NULL_SEEDS, NULL_EFFECTS, range(len(NULL_LAYOUTS))))
    k, s, name, layout = combos[i % len(combos)]
    effects = NULL_EFFECTS[name]
    design = Design(k=k, seeds=s, families=NULL_FAMILIES if k == 10 else NULL_FAMILIES[:2], **NULL_LAYOUTS[layout])
    if layout == 0:
        design = replace(design, coupling=coupling_at(k, effects))
    else:   # the head's biases may overturn the weights' leader (the absorber then not the one planned)
        design = replace(design, overturn=True)
    return name, design, effects


# a study lives for a second: in memory where the machine has a RAM disk
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def test_rows(design: Design, effects: Effects, seed: int) -> pd.DataFrame:
    """One study through load -> pipeline.statistics: a row per test (tests.csv) and per MST edge
    (edge_frequency.csv), with its test id, p and whether the study's truth is its null."""
    from . import inference, pipeline
    from .load import load
    from .topic import Inputs
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        data = load(str(write_null_study(Path(tmp), design, effects, seed=seed)))
        out, _ = pipeline.statistics(Inputs(data, inference.by_condition(data)))
    tests, edges = out["tests"], out["edge_frequency"]
    keep = ["test", "p_value", "p_min", "n_runs", "condition", "noise", "variable"]
    rows = pd.concat([tests[keep], edges[[c for c in keep if c in edges]]], ignore_index=True)
    truth = null_holds(effects, design)
    # rows of a test id whose truth depends on the variable are keyed `test:variable` (nulls.null_holds)
    key = rows["test"] + ":" + rows["variable"].fillna("").astype(str)
    rows["test"] = rows["test"].where(~key.isin(list(truth)), key)
    rows["null"] = rows["test"].map(lambda t: truth.get(t))
    return rows


def _one(job) -> pd.DataFrame:
    index, label, design, effects, seed = job
    rows = test_rows(design, effects, seed)
    return rows.assign(study=index, scenario=label, k=design.k, seeds=design.seeds, axis=design.axis,
                       overturn=design.overturn)


def _worker_start() -> None:
    """statsmodels' Holm correction calls gc.collect() on every call, which walks every object
    alive (0.1 s in a process holding pandas, scipy and statsmodels): freeze what the imports
    made so the collector skips it. Changes no result."""
    from . import pipeline  # noqa: F401
    gc.freeze()


def run(jobs: list, workers: int) -> pd.DataFrame:
    if workers <= 1:  # in this process (a test's): as a pool worker starts, its freeze undone after
        _worker_start()
        try:
            return pd.concat([_one(j) for j in jobs], ignore_index=True)
        finally:
            gc.unfreeze()
    with ProcessPoolExecutor(workers, initializer=_worker_start) as pool:
        return pd.concat(list(pool.map(_one, jobs, chunksize=4)), ignore_index=True)


def null_jobs(n: int, seed: int = 0) -> list:
    return [(i, *null_study(i), seed * 1_000_003 + i) for i in range(n)]


def power_jobs(per_scenario: int, seed: int = 0, k: int = 10, seeds: int = 12) -> list:
    jobs = []
    for j, (label, layout, effects) in enumerate(POWER_SCENARIOS):
        design = Design(k=k, seeds=seeds, **layout)
        jobs += [(j * per_scenario + i, label, design, effects, (seed + 1) * 7_000_003 + j * 10_007 + i)
                 for i in range(per_scenario)]
    return jobs


def _reachable(rows: pd.DataFrame) -> pd.Series:
    """Rows whose test can return p <= 0.05 at their n (the p_min column of tests.csv)."""
    return rows["p_min"] <= ALPHA


def fpr_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per test id, over the rows whose study holds its null: the rate of p <= 0.05, its 95%
    binomial (Wilson) interval over rows, its standard error over studies (rows of one study are
    not independent: where they are correlated, the SE, not the binomial interval, is the honest
    spread), and the rows that could not reach 0.05 at their n (left out of the rate, counted here)."""
    null = rows[rows["null"].map(lambda v: v is True)]   # None: a test id the generator does not know
    out = []
    for test, sub in null.groupby("test", sort=True):
        ok = sub[_reachable(sub)]
        per_study = (ok["p_value"] <= ALPHA).groupby(ok["study"]).agg(["sum", "count"])
        rate = per_study["sum"].sum() / max(per_study["count"].sum(), 1)
        # ratio estimator's standard error over clusters (studies)
        n = len(per_study)
        resid = per_study["sum"] - rate * per_study["count"]
        se = float(np.sqrt((resid**2).sum() / max(n - 1, 1) * n) / per_study["count"].sum()) if n > 1 else np.nan
        lo, hi = wilson_interval(int(per_study["sum"].sum()), int(per_study["count"].sum()))
        out.append({"test": test, "studies": n, "rows": int(per_study["count"].sum()),
                    "rejections": int(per_study["sum"].sum()), "fpr": rate, "ci_low": lo, "ci_high": hi, "se": se,
                    "rows_below_reach": int(len(sub) - len(ok)),
                    "in_band": BAND[0] <= rate <= BAND[1], "conservative": test in CONSERVATIVE,
                    "known_invalid": test in KNOWN_INVALID})
    return pd.DataFrame(out)


def band_errors(fpr: pd.DataFrame) -> list[str]:
    """What breaks the calibration: a rate above the band, or below it where CONSERVATIVE does not
    say why. A rate measured on few rows may miss the band by SE_SPAN standard errors where the SE
    is above SE_FLOOR; the SE is at least the binomial one at the band's edge over the rows (a
    test id with no rejection in its few rows has a cluster SE of 0, which says nothing about a
    rate of 0.02). Tests in KNOWN_INVALID are not judged (their rate is shown; no verdict is
    taken from them)."""
    errors = []
    for r in fpr.itertuples():
        if r.test in KNOWN_INVALID:
            continue

        def slack(edge: float) -> float:
            se = max(r.se if np.isfinite(r.se) else 0.0, float(np.sqrt(edge * (1 - edge) / max(r.rows, 1))))  # noqa: B023  (called in this iteration)
            return SE_SPAN * se if se > SE_FLOOR else 0.0
        if r.fpr > BAND[1] + slack(BAND[1]):
            errors.append(f"{r.test}: {r.fpr:.3f} > {BAND[1]} ({r.rejections}/{r.rows}, SE {r.se:.3f})")
        elif r.fpr < BAND[0] - slack(BAND[0]) and not r.conservative:
            errors.append(f"{r.test}: {r.fpr:.3f} < {BAND[0]} and not in calibration.CONSERVATIVE")
    return errors


def interior_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows deep inside a composite null (nulls.INTERIOR): the rate of p <= 0.05 there, which a
    valid test keeps below its size."""
    sub = rows[(rows["null"] == INTERIOR) & _reachable(rows)]
    return sub.groupby("test").agg(studies=("study", "nunique"), rows=("p_value", "size"),
                                   rate=("p_value", lambda p: float((p <= ALPHA).mean()))).reset_index()


def unknown_tests(rows: pd.DataFrame) -> list[str]:
    """Test ids the generator does not say the truth of (so nothing calibrates them)."""
    return sorted(rows.loc[rows["null"].isna(), "test"].unique())


def power_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per planted effect and test id whose null it breaks: the rate of p <= 0.05."""
    hit = rows[rows["null"].map(lambda v: v is False)]
    g = hit[_reachable(hit)].groupby(["scenario", "test"], sort=False)
    out = g.agg(studies=("study", "nunique"), rows=("p_value", "size"),
                power=("p_value", lambda p: float((p <= ALPHA).mean()))).reset_index()
    return out


def markdown(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(floats.format(v) if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=400, help="null studies (default 400; 0: none)")
    p.add_argument("--power-studies", type=int, default=40, help="studies per planted effect (default 40; 0: none)")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", help="write every test row to this CSV")
    args = p.parse_args(argv)
    errors, parts = [], []
    if args.studies:
        start = time.perf_counter()
        rows = run(null_jobs(args.studies, args.seed), args.workers)
        parts.append(rows)
        fpr = fpr_table(rows)
        print(f"## False-positive rate at {ALPHA} ({args.studies} null studies, {time.perf_counter() - start:.0f} s, "
              f"{args.workers} workers)\n")
        print(markdown(fpr))
        for test, why in CONSERVATIVE.items():
            print(f"\n- {test} (below the band by design): {why}")
        for test, why in KNOWN_INVALID.items():
            print(f"\n- {test} (KNOWN INVALID: rejects too often under its null; no verdict rests on it): {why}")
        interior = interior_table(rows)
        if len(interior):
            print("\nInside a composite null (not its size):\n\n" + markdown(interior))
        errors = band_errors(fpr) + [f"{t}: no stated truth in analysis/nulls.py" for t in unknown_tests(rows)]
        if errors:
            print("\nNot calibrated:\n" + "\n".join(f"- {e}" for e in errors))
    if args.power_studies:
        t = time.perf_counter()
        power = run(power_jobs(args.power_studies, args.seed), args.workers)
        parts.append(power)
        print(f"\n## Power at {ALPHA} under planted effects (K = 10, 12 seeds per arm, {args.power_studies} "
              f"studies each, {time.perf_counter() - t:.0f} s)\n")
        print(markdown(power_table(power)))
    if args.rows and parts:
        pd.concat(parts, ignore_index=True).to_csv(args.rows, index=False)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
