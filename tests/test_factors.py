"""Which factor moves the absorber: the clustered paired test, the per-factor tables and tests on
planted factorial studies, and class frequency (majority) through the causal aggregation."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from analysis import factors, stats
from analysis.causal import causal_tests, dose_table, pairs_table
from analysis.contract import trial_dirname
from analysis.load import load
from analysis.pipeline import aggregate
from analysis.synthetic import CIFAR10, Condition, _run, write_trial

# ---------------------------------------------------------------- the clustered paired test

def test_one_pair_per_cluster_is_the_paired_swap_test():
    rng = np.random.default_rng(0)
    a = list(rng.choice(["cat", "dog", "frog"], 12))
    b = list(rng.choice(["cat", "dog", "frog"], 12))
    mine = stats.marginal_homogeneity_clustered(a, b, list(range(12)))
    theirs = stats.marginal_homogeneity(a, b)
    assert mine["statistic"] == theirs["statistic"] and mine["p_value"] == pytest.approx(theirs["p_value"])


def test_a_unanimous_shift_reaches_the_smallest_attainable_p():
    seeds = [s for s in range(8) for _ in range(3)]            # 8 seeds x 3 strata
    res = stats.marginal_homogeneity_clustered(["frog"] * 24, ["cat"] * 24, seeds)
    assert res["contributing_clusters"] == 8 and res["p_value"] == pytest.approx(2 / 2 ** 8)


def test_the_clustered_test_holds_its_size_when_strata_share_a_seed():
    """H0 with strong within-seed dependence (each seed's absorber repeats over its 4 strata and is
    exchangeable between the two arms): the test must not over-reject; treating the 40 pairs as
    independent would (checked too, so the simulation has the power to tell)."""
    rng = np.random.default_rng(1)
    clustered = naive = 0
    studies = 300
    for _ in range(studies):
        first, second, cluster = [], [], []
        for s in range(10):
            x, y = rng.choice(CIFAR10[:4], 2)
            if rng.random() < 0.5:
                x, y = y, x            # H0: the arms are exchangeable within a seed
            first += [x] * 4
            second += [y] * 4
            cluster += [s] * 4
        clustered += stats.marginal_homogeneity_clustered(first, second, cluster)["p_value"] < 0.05
        naive += stats.marginal_homogeneity(first, second)["p_value"] < 0.05
    assert clustered / studies <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / studies)
    assert naive / studies > 0.10


# ---------------------------------------------------------------- planted factorial studies

def factorial_study(root, grid: dict, absorber_of, seeds=range(10), epoch0_of=None, seed=0):
    """A study folder as a sweep writes it: one run per grid point x seed; `absorber_of(axes)` plants
    the gaussian absorber (chosen with probability 0.95), `epoch0_of(axes)` the epoch-0 top share."""
    rng = np.random.default_rng(seed)
    study = root / "factorial"
    axes_names = [*grid, "seed"]
    points = []
    for values in itertools.product(*grid.values(), seeds):
        axes = dict(zip(axes_names, values))
        trial, arrays = _run(Condition("x", absorber=absorber_of(axes), p_absorber=0.95), axes["seed"],
                             ["gaussian"], 200, 3, rng)
        top0 = epoch0_of(axes) if epoch0_of else 0.1
        shares0 = {c: (1 - top0) / 9 for c in CIFAR10}
        shares0[CIFAR10[axes["seed"] % 10]] = top0
        trial["trajectory"][0]["shares"] = shares0
        trial["config"] = {**axes, "classes": CIFAR10, "n_noise": 200, "noise_seed": 0}
        d = trial_dirname(axes)
        write_trial(study / d, trial, arrays)
        points.append({"dir": d, "axes": axes})
    (study / "study.json").write_text(json.dumps({"name": "factorial", "axes": axes_names, "grid": grid,
                                                  "points": points}))
    return study


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """activation moves the absorber (relu: frog, tanh: cat) and the epoch-0 bias; pool moves nothing."""
    grid = {"activation": ["relu", "tanh"], "pool": ["max", "avg"]}
    return factorial_study(tmp_path_factory.mktemp("planted"), grid,
                           absorber_of=lambda a: "frog" if a["activation"] == "relu" else "cat",
                           epoch0_of=lambda a: 0.9 if a["activation"] == "relu" else 0.2)


def test_factor_pairs_pair_each_level_with_the_reference_of_the_same_seed_and_stratum(planted):
    pairs = factors.pairs_table(load(str(planted)))
    assert set(pairs["factor"]) == {"activation", "pool"}
    act = pairs[pairs["factor"] == "activation"]
    assert len(act) == 2 * 10 and set(act["reference"]) == {"relu"} and set(act["level"]) == {"tanh"}
    assert set(act["stratum"]) == {"pool=max", "pool=avg"}
    for r in act.itertuples():  # the reference run is the same seed, same pool, relu
        assert r.reference_id == trial_dirname({"activation": "relu", "pool": r.stratum.split("=")[1], "seed": r.seed})


def test_the_planted_factor_is_found_and_the_other_is_not(planted):
    data = load(str(planted))
    pairs = factors.pairs_table(data)
    from analysis.inference import finalize
    tests = finalize(factors.factor_tests(pairs))
    table = factors.factor_table(pairs, tests).set_index("factor")
    act, pool = table.loc["activation"], table.loc["pool"]
    assert act["absorber_p_holm"] < 0.05 and (act["reference_modal_absorber"], act["modal_absorber"]) == ("frog", "cat")
    assert act["epoch0_p_holm"] < 0.05 and act["epoch0_diff"] == pytest.approx(-0.7)
    assert act["min_attainable_p"] == 2 ** -9 and act["n_seeds"] == 10 and act["n_pairs"] == 20
    assert pool["absorber_p"] > 0.05 and pool["epoch0_p"] == 1.0   # planted: no effect


def test_the_report_answers_per_factor(tmp_path):
    study = factorial_study(tmp_path, {"activation": ["relu", "tanh"]}, seeds=range(8),
                            absorber_of=lambda a: "frog" if a["activation"] == "relu" else "cat")
    aggregate(str(study))
    report = (study / "report" / "report.md").read_text()
    assert "## Which factor moves the absorber?" in report
    assert "**activation = tanh** (vs relu; n = 8 seeds, 8 pairs; smallest attainable p 0.0078" in report
    assert "absorber **yes** (frog -> cat" in report
    table = pd.read_csv(study / "report" / "factors.csv")
    assert list(table["factor"]) == ["activation"] and table["absorber_p_holm"].iloc[0] < 0.05
    tests = pd.read_csv(study / "report" / "tests.csv")
    assert set(tests.loc[tests["family"] == "factors", "test"]) == {"factor_absorber", "factor_top_share",
                                                                    "factor_epoch0_bias"}
    # every row with an interval reports the estimate the interval is about, inside it
    framed = tests.dropna(subset=["ci_low", "ci_high", "effect"])
    assert len(framed) and ((framed["ci_low"] <= framed["effect"] + 1e-12)
                            & (framed["effect"] <= framed["ci_high"] + 1e-12)).all(), \
        framed[["test", "effect", "ci_low", "ci_high"]]


# ---------------------------------------------------------------- class frequency

def test_majority_goes_through_the_causal_tests_with_its_dose(tmp_path):
    """majority at two strengths against none, 8 seeds, the target planted to absorb more as the
    other classes thin out: the causal pairs, dose table and dose-response test see it."""
    levels = ["none", {"target": "ship", "kind": "majority", "strength": 0.5},
              {"target": "ship", "kind": "majority", "strength": 0.25}]
    study = factorial_study(tmp_path, {"class_intervention": levels},
                            absorber_of=lambda a: "ship" if a["class_intervention"] != "none" else "frog",
                            seeds=range(8))
    data = load(str(study))
    pairs = pairs_table(data)
    assert set(pairs["kind"]) == {"majority"} and sorted(set(pairs["dose"])) == [0.5, 0.75]
    doses = dose_table(pairs)
    assert sorted(doses["dose"]) == [0.0, 0.5, 0.75] and (doses["n_seeds"] == 8).all()
    tests = pd.DataFrame(causal_tests(pairs))
    hit = tests[tests["test"] == "causal_absorber"]
    assert len(hit) == 2 and (hit["p_value"] < 0.05).all()
    fpairs = factors.pairs_table(data)  # class frequency is a factor too
    assert set(fpairs["factor"]) == {"class_intervention"} and len(fpairs) == 2 * 8
    ids = [t["test"] for t in factors.factor_tests(fpairs)]  # a data factor leaves epoch 0 as it is: no test
    assert sorted(ids) == ["factor_absorber"] * 2 + ["factor_top_share"] * 2
