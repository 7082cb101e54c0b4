"""The "why" and "causal" measurements from real (tiny) trials through the aggregation: tables,
tests, figures and the report sections exist and hold what the trials measured."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.contract import trial_dirname
from analysis.pipeline import aggregate
from study.trial import run_trial

pytestmark = pytest.mark.slow  # 24 (tiny) trainings and two aggregations


def tiny_study(root, name, tiny_config, axis, values, seeds=(0, 1, 2), **fixed):
    study = root / name
    points = []
    for v in values:
        for s in seeds:
            axes = {axis: v, "seed": s}
            d = trial_dirname(axes)
            # 5 epochs: the tiny networks learn (test accuracy ~1), so the weak-network guard keeps them
            run_trial(tiny_config(classes=["cat", "dog", "ship"], epochs=5, noise=["gaussian", "uniform"],
                                  seed=s, **{axis: v}, **fixed), str(study / d), log=lambda m: None)
            points.append({"dir": d, "axes": axes})
    (study / "study.json").write_text(json.dumps({"name": name, "axes": [axis, "seed"], "points": points}))
    aggregate(str(study))
    assert not pd.read_csv(study / "report" / "accuracy_guard.csv")["too_weak"].any()
    return study / "report"


@pytest.fixture(scope="module")
def interventions_report(tmp_path_factory, tiny_data):
    cfg = lambda **k: {"model": "small_cnn", "batch_size": 50, "lr": 0.05, "n_noise": 60, "n_trajectory": 20,  # noqa: E731
                       "data_root": str(tiny_data), "data_verify": "shapes", "device": "cpu", "threads": 1,
                       "sample_per_class": 20, "n_frequency": 40, **k}
    return tiny_study(tmp_path_factory.mktemp("why"), "why", cfg, "intervention",
                      ["none", "outlier_exposure", "noise_class"])


@pytest.fixture(scope="module")
def causal_report(tmp_path_factory, tiny_data):
    cfg = lambda **k: {"model": "small_cnn", "batch_size": 50, "lr": 0.05, "n_noise": 60, "n_trajectory": 20,  # noqa: E731
                       "data_root": str(tiny_data), "data_verify": "shapes", "device": "cpu", "threads": 1,
                       "sample_per_class": 20, "n_frequency": 40, **k}
    values = ["none", {"target": "cat", "kind": "blur", "strength": 1.0},
              {"target": "cat", "kind": "blur", "strength": 2.0},
              {"target": "ship", "kind": "blur", "strength": 1.0}, {"target": "ship", "kind": "blur", "strength": 2.0}]
    return tiny_study(tmp_path_factory.mktemp("causal"), "causal", cfg, "class_intervention", values)


def test_why_tables_hold_every_measurement(interventions_report):
    r = interventions_report
    clutter = pd.read_csv(r / "clutter.csv")
    assert {"png_bits_per_pixel", "spectral_slope", "gradient_energy", "colorfulness", "intensity_std",
            "feature_trace", "participation_ratio", "twonn_dimension", "centroid_distance"} <= set(clutter["measure"])
    assert set(clutter["set"]) == {"class", "noise"}
    dec = pd.read_csv(r / "logit_decomposition.csv")
    assert len(dec) == 9 * 2 and dec["bias_share_of_margin"].notna().all()
    assert dec["absorber_weight_norm_ratio"].between(0.1, 10).all()   # the norms, descriptive
    ood = pd.read_csv(r / "ood.csv")
    assert set(ood["detector"]) == {"msp", "max_logit", "energy", "mahalanobis", "knn"}
    assert {"gaussian", "uniform", "heldout:airplane"} <= set(ood["ood_set"])
    assert ood[["auroc", "aupr_in", "aupr_out", "fpr95"]].apply(lambda c: c.between(0, 1)).all().all()
    freq = pd.read_csv(r / "frequency.csv")
    assert set(freq["kind"]) == {"lowpass", "highpass"} and len(freq) == 9 * 6
    assert (r / "ood_summary.csv").exists()


def test_why_tests_figures_and_report(interventions_report):
    r = interventions_report
    tests = pd.read_csv(r / "tests.csv")
    clutter = tests[tests["test"] == "clutter_absorption"]
    primary = clutter["variable"] == "png_bits_per_pixel"
    assert (clutter.loc[primary, "family"] == "confirmatory").all() and primary.sum() == 3   # one per condition
    assert (clutter.loc[~primary, "family"] == "exploratory").all()
    # 3 classes: the class-relabelling test has 6 relabellings, smallest p 1/3: it cannot show anything
    assert (clutter["p_min"] == 1 / 3).all() and not clutter["can_reject"].any()
    # the head's bias and weight norm are not class covariates (each is a factor of its own logit)
    assert (not (tests["test"] == "head_absorption").any()
            and not tests["variable"].astype(str).str.startswith("head_").any())
    assert (tests["test"] == "noise_lookalike").sum() == 3
    # the head biases: the rank test, and beside it the identity question's estimate
    deal = tests[tests["test"] == "bias_deal"]
    assert len(deal) == 3 and deal["method"].str.contains("the absorber stays the trained placement's in").all()
    iv = tests[tests["test"] == "intervention_effect"]
    assert set(iv["condition"]) == {"outlier_exposure", "noise_class"} and (iv["n_runs"] == 3).all()
    assert iv["p_adjusted"].notna().all() and (iv["p_min"] >= 0.25).all() and not iv["can_reject"].any()  # 3 seeds
    for png in ("clutter_vs_absorption.png", "ood_auroc.png", "frequency_probes.png", "interventions.png"):
        assert (r / png).exists(), png
    text = (r / "report.md").read_text()
    assert "## Why this class?" in text
    for q in ("1. Is the absorbing class the most cluttered", "2. Does noise look like",
              "3. What did the network learn", "4. Is this out-of-distribution detection", "6. Do interventions remove",
              "too few runs to test"):
        assert q in text
    runs = pd.read_csv(r / "runs.csv")
    assert set(runs["intervention"]) == {"none", "outlier_exposure", "noise_class"}


def test_causal_tables_tests_figure_and_report(causal_report):
    r = causal_report
    pairs = pd.read_csv(r / "causal_pairs.csv")
    assert len(pairs) == 4 * 3 and set(pairs["target"]) == {"cat", "ship"} and set(pairs["kind"]) == {"blur"}
    # the manipulation itself: blur lowers the target's gradient energy against the same seed
    assert (pairs["clutter_gradient_energy"] < pairs["baseline_clutter_gradient_energy"]).all()
    doses = pd.read_csv(r / "causal_dose.csv")
    assert sorted(doses["dose"]) == [0.0, 1.0, 2.0] and (doses["n_seeds"] == 3).all()
    assert ((0 <= doses["ci_low"]) & (doses["ci_low"] <= doses["mean_target_share"])
            & (doses["mean_target_share"] <= doses["ci_high"]) & (doses["ci_high"] <= 1)).all()
    tests = pd.read_csv(r / "tests.csv")
    effect = tests[tests["test"] == "causal_effect"]
    assert len(effect) == 2 and (effect["family"] == "confirmatory").all() and effect["p_adjusted"].notna().all()
    assert (tests["test"] == "causal_absorber").sum() == 2 and (tests["test"] == "causal_dose").sum() == 1
    checks = tests[tests["test"] == "manipulation_check"]
    assert len(checks) == 2 * 3 and set(checks["variable"]) == {"png_bits_per_pixel", "gradient_energy",
                                                                "spectral_slope"}
    assert (r / "causal_dose_response.png").exists()
    text = (r / "report.md").read_text()
    assert "## Is clutter causal?" in text and "What this cannot conclude" in text
