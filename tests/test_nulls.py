"""The realistic null studies (analysis/nulls.py) have the structure they claim, in the contract the
aggregation reads; the calibration harness counts false positives only under nulls."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from analysis import calibration
from analysis.load import load
from analysis.nulls import (
    CONCENTRATED,
    FEATURE_MEASURES,
    INTERIOR,
    PIXEL_MEASURES,
    Design,
    Effects,
    coupling_at,
    null_holds,
    write_null_study,
)
from analysis.pipeline import aggregate


def _runs(tmp_path, design, effects, studies=1):
    runs = []
    for i in range(studies):
        data = load(str(write_null_study(tmp_path, design, effects, seed=i, name=f"s{i}")))
        runs.append(data)
    return runs


def test_measure_names_are_the_trials_own():
    """The clutter measures a null study plants are those a trial measures (the geometry needs no
    such check: both build it with analysis/measures.py)."""
    from study.clutter import FEATURE_MEASURES as F, PIXEL_MEASURES as P
    assert set(PIXEL_MEASURES) == set(P) and set(FEATURE_MEASURES) == set(F)


@pytest.mark.parametrize("k", [10, 5])
def test_noise_is_a_far_leaf_on_a_concentrated_class_independent_of_the_absorber(tmp_path, k):
    loaded = _runs(tmp_path, Design(k=k, seeds=20, arms=2, diverged=0, missing=0), CONCENTRATED, studies=4)
    leaf, far, nearest_is_modal, absorber_is_modal, hits, expected = [], [], [], [], [], []
    for data in loaded:
        runs = [r for r in data.runs if r["status"] == "completed"]
        for f in range(2):
            absorbers = [r["absorber"][f] for r in runs]
            nearest = []
            for r in runs:
                d = r["distance"][f]
                tree = r["mst"][f]
                leaf.append(sum("noise" in (u, v) for u, v, _ in tree) == 1)
                # far: every noise distance exceeds every class-class tree edge
                far.append(d[-1, :-1].min() > max(w for u, v, w in tree if "noise" not in (u, v)))
                nearest.append(r["nodes"][int(np.argmin(d[-1, :-1]))])
            modal = pd.Series(absorbers).mode()[0]
            absorber_is_modal += [a == modal for a in absorbers]
            nearest_is_modal += [n == modal for n in nearest]
            hits += [a == n for a, n in zip(absorbers, nearest)]
            pa = pd.Series(absorbers).value_counts(normalize=True)
            pn = pd.Series(nearest).value_counts(normalize=True)
            expected.append(float((pa * pn.reindex(pa.index, fill_value=0)).sum()))
    assert np.mean(leaf) > 0.98 and np.mean(far) > 0.75     # far: ~93% of runs at K = 10, ~83% at K = 5
    assert 0.6 < np.mean(absorber_is_modal) < 0.9 and 0.6 < np.mean(nearest_is_modal) < 0.9
    # independent within runs: nearest == absorber as often as the marginals alone make it
    assert abs(np.mean(hits) - np.mean(expected)) < 0.08


def test_pixel_clutter_is_fixed_per_class_and_blur_moves_only_its_target(tmp_path):
    design = Design(k=10, seeds=4, axis="class_intervention", arms=1, diverged=0, missing=0)
    data = _runs(tmp_path, design, Effects())[0]
    by_arm = {}
    for r in data.runs:
        pixel = {m: r["extra"]["clutter"]["classes"][m] for m in PIXEL_MEASURES}
        by_arm.setdefault(r["condition"], []).append(pixel)
        feature = r["extra"]["clutter"]["classes"]["feature_trace"]
        assert len(set(feature.values())) == 10
    for arm, values in by_arm.items():
        assert all(v == values[0] for v in values), arm          # the same numbers in every run
    none = by_arm["class_intervention=none"][0]
    blurred = next(v[0] for c, v in by_arm.items() if c.endswith("blur.2.0"))
    moved = {c for c in none["png_bits_per_pixel"] if none["png_bits_per_pixel"][c] != blurred["png_bits_per_pixel"][c]}
    assert len(moved) == 1 and blurred["png_bits_per_pixel"][moved.pop()] < max(none["png_bits_per_pixel"].values())


@pytest.mark.slow
def test_one_run_diverged_one_missing_and_the_report_is_written(tmp_path):
    study = write_null_study(tmp_path, Design(k=10, seeds=4, axis="class_intervention", arms=1), CONCENTRATED)
    summary = aggregate(str(study), log=None)
    assert "aggregated 11 runs (10 completed)" in summary          # 3 arms x 4 seeds, one lost of each kind
    problems = pd.read_csv(study / "report" / "problems.csv")
    assert len(problems) == 1 and "no trial.json" in problems["reason"][0]
    tests = pd.read_csv(study / "report" / "tests.csv")
    assert {"absorber_consistency", "absorber_vs_condition", "noise_neighbour", "clutter_absorption", "causal_effect",
            "causal_dose", "manipulation_check"} <= set(tests["test"])


def test_null_holds_says_which_effects_break_which_nulls():
    d = Design()
    null = null_holds(Effects(), d)
    assert not null["manipulation_check"]                          # blur does move clutter
    # the head's biases drawn given the planned absorbers favour them: no null of a head-bias test
    assert all(v for t, v in null.items() if t not in ("manipulation_check", "bias_deal"))
    assert not null["bias_deal"] and null_holds(Effects(), Design(overturn=True))["bias_deal"]
    assert not any(null_holds(Effects(probes=1.0), Design(overturn=True))[t] for t in
                   ("amplitude_msp_trend", "amplitude_kl_trend", "bn_mode_effect", "literature_order", "bias_deal"))
    assert null["absorber_equivalence"] == INTERIOR                 # discordance ~0.68, far above the margin
    assert null_holds(Effects(), Design(coupling=coupling_at(10, Effects())))["absorber_equivalence"] is True
    assert null_holds(Effects(), Design(coupling=coupling_at(10, Effects(), 0.05)))["absorber_equivalence"] is False
    concentrated = null_holds(CONCENTRATED, d)
    assert not concentrated["absorber_consistency"] and not concentrated["noise_attachment"]
    assert concentrated["noise_neighbour"] and concentrated["mst_overlap"] and concentrated["clutter_absorption"]
    assert not null_holds(Effects(link=0.5), d)["noise_neighbour"]
    assert not null_holds(Effects(clutter=True), d)["clutter_absorption"]


def test_the_calibration_table_counts_false_positives_only_under_nulls():
    rows = pd.DataFrame({"test": ["a"] * 5 + ["b"] * 2, "p_value": [0.01, 0.5, 0.04, 0.9, 0.5, 0.01, 0.01],
                         "p_min": [0.001] * 4 + [0.1, 0.001, 0.001],
                         "null": [True, True, True, True, True, False, None], "study": [0, 0, 1, 1, 1, 0, 1],
                         "scenario": "x"})
    fpr = calibration.fpr_table(rows).set_index("test")
    assert list(fpr.index) == ["a"] and fpr.loc["a", "fpr"] == 0.5 and fpr.loc["a", "studies"] == 2
    assert fpr.loc["a", "rows_below_reach"] == 1        # p_min 0.1: cannot reject, counted apart
    assert calibration.unknown_tests(rows) == ["b"]
    assert calibration.power_table(rows)["power"].tolist() == [1.0]


def test_band_errors_excuse_only_what_conservative_lists(monkeypatch):
    monkeypatch.setattr(calibration, "CONSERVATIVE", {"low": "why"})
    fpr = pd.DataFrame({"test": ["ok", "high", "low", "low2", "sparse", "sparse_high", "none_of_80", "none_of_2000"],
                        "fpr": [0.05, 0.08, 0.01, 0.01, 0.10, 0.20, 0.0, 0.0], "se": [0.005] * 4 + [0.02, 0.05, 0, 0],
                        "rejections": 0, "rows": [10000] * 4 + [100, 100, 80, 2000]})
    fpr["conservative"] = fpr["test"] == "low"
    errors = calibration.band_errors(fpr)
    # 0.10 is within 2.5 SE of 0.07; 0 of 80 within 2.5 binomial SEs (0.016) of 0.02, 0 of 2000 not
    assert [e.split(":")[0] for e in errors] == ["high", "low2", "sparse_high", "none_of_2000"]


@pytest.mark.slow
def test_every_test_keeps_its_size_under_realistic_nulls():
    """100 realistic null studies (nulls.py, K = 10 and 5, S = 8, 13, 20 seeds per arm, five
    layouts) through load -> pipeline.statistics, the path to tests.csv: each test id's rate of
    p <= 0.05 lies in [0.02, 0.07] (within 2.5 standard errors where few rows measure it), or
    below it where calibration.CONSERVATIVE says why; none above, except the tests named in
    calibration.KNOWN_INVALID, whose rate must still be above the band (else the exclusion is
    stale). Every test id the studies emit has a stated truth, and every test id the generator
    knows is exercised. The first 100 of the 400 studies docs/statistics.md measures with
    `python -m analysis.calibration --studies 400` (CI's time budget holds 100: about 3 CPU-minutes;
    every check holds at 100, 120, 150 and 200, measured 2026-12-08)."""
    # one process per core that pytest-xdist leaves free: two pool workers beside the other xdist
    # worker oversubscribed 2 cores and starved its cluster tests past their timeouts in CI
    rows = calibration.run(calibration.null_jobs(100), workers=max(1, (os.cpu_count() or 2) // 2))
    fpr = calibration.fpr_table(rows)
    print("\n" + calibration.markdown(fpr))
    assert calibration.unknown_tests(rows) == []
    assert set(fpr["test"]) == set(null_holds(Effects(), Design())) - {"manipulation_check"}   # blur moves clutter
    assert calibration.band_errors(fpr) == []
    invalid = fpr[fpr["test"].isin(list(calibration.KNOWN_INVALID))]
    assert len(invalid) == len(calibration.KNOWN_INVALID) and (invalid["ci_low"] > calibration.BAND[1]).all()


# ---------------------------------------------------------------- the explanation probes

def test_probe_records_have_the_trials_own_shapes(tmp_path):
    """The null trial's amplitude rows, BatchNorm record and modes, OOD rows and logit
    decomposition carry the keys study/explanation_probes.py, study/ood.py and study/explain.py write;
    the decomposition comes from the same code as the trial's (analysis/decomposition.py); the binormal OOD metrics
    match study/ood.py's on a large sample drawn from the binormal model (a known answer)."""
    import json

    import torch

    from analysis.nulls import binormal_metrics
    from study import explain, explanation_probes as H, ood
    from study.models import build_model
    from study.noise import NoiseContext
    from study.train import Normalizer, Precision, predict

    study = write_null_study(tmp_path, Design(k=4, seeds=2, arms=1, diverged=0, missing=0, lacking=0.0,
                                              families=calibration.NULL_FAMILIES), Effects())
    trial = json.loads(next(study.glob("*/trial.json")).read_text())
    classes, rng = trial["classes"], np.random.default_rng(0)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    ctx, cpu = NoiseContext(mean, std, torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), torch.device("cpu")
    rows = H.amplitude_probe(lambda x: (rng.normal(size=(len(x), 4)), rng.normal(size=(len(x), 6))),
                             H.white_noise(8, 0), ctx, [1.0, 2.0], classes, np.full(4, 0.25), 1.0)
    assert [set(r) for r in trial["amplitude"]["rows"]] == [set(rows[0])] * len(trial["amplitude"]["rows"])
    assert set(trial["amplitude"]) == {"n_images", "label_frequencies", "test_feature_norm", "not_piecewise_affine",
                                       "rows"}  # study/trial.py

    def predict_with(model, images, batch_size):
        return predict(model, images, Normalizer(mean, std, cpu), Precision(cpu, "fp32", False), batch_size, cpu)
    bn = H.batchnorm_probe(predict_with, build_model("small_cnn", 4, seed=0).eval(), torch.rand(8, 3, 32, 32),
                           torch.rand(8, 3, 32, 32), classes, 4)
    assert set(trial["batchnorm"]) == set(bn) and set(trial["batchnorm"]["modes"]) == set(bn["modes"])
    assert all(set(m) == set(bn["modes"]["eval"]) for m in trial["batchnorm"]["modes"].values())

    metrics = ood.id_positive_metrics(rng.normal(1.5, 1, 20000), rng.normal(0, 1, 10000))
    assert {r["detector"] for r in trial["ood"]["rows"]} == set(ood.DETECTORS)
    assert all(set(r) == {"detector", "ood_set", *metrics} for r in trial["ood"]["rows"])
    ours = binormal_metrics(np.array([1.5]), np.array([2 / 3]))
    for key, value in metrics.items():
        assert ours[key][0] == pytest.approx(value, abs=0.01), key

    # the numbers come from the same code (analysis/decomposition.py); the record has the trial's keys
    weight_term, bias = rng.gumbel(size=(500, 4)), rng.normal(0, 0.3, 4)
    theirs = explain.logit_decomposition(weight_term + bias, weight_term, np.eye(4), bias, classes, np.ones((3, 4)),
                                         np.random.default_rng(5))
    assert set(trial["logit_decomposition"]["gaussian"]) == set(theirs)


def test_probe_levels_are_alike_bounded_skewed_paired_by_run_and_sometimes_unpaired(tmp_path):
    """Under the null each pair of levels a probe test compares is alike in expectation (mean
    difference within 3 SE of 0), correlated through the run, bounded (shares and AUROCs up to 1
    with some runs at the ceiling, KL >= 0), and a run sometimes lacks one level; the head's
    biases are exchangeable (overturn: drawn free of the weights), yet zeroing them lowers the
    absorber's share (the selection that made the old bias_removal test invalid), while the rank of
    the biases as given among random deals of them (bias_deal) stays uniform."""
    from analysis import explanations as hyp, why
    design = Design(k=10, seeds=80, arms=1, diverged=0, missing=0, lacking=0.1, families=calibration.NULL_FAMILIES,
                    overturn=True)
    data = _runs(tmp_path, design, Effects())[0]
    amp, bn = hyp.amplitude_table(data), hyp.batchnorm_table(data)
    ood, dec = why.ood_table(data), why.decomposition_table(data)
    top = amp["amplitude"].max()
    pairs = {"msp": amp.pivot(index="trial_id", columns="amplitude", values="mean_max_softmax")[[1.0, top]],
             "kl": amp.pivot(index="trial_id", columns="amplitude", values="kl_label_frequencies")[[1.0, top]],
             "bn": bn.pivot(index="trial_id", columns="mode", values="top_share")[["eval", "batch_stats"]],
             "auroc": ood[ood["detector"] == "msp"].pivot(index="trial_id", columns="ood_set",
                                                          values="auroc")[["rademacher", "oe_gaussian"]]}
    for name, p in pairs.items():
        assert p.isna().any(axis=1).sum() >= 1, name                 # a missing pair
        p = p.dropna()
        d = p.iloc[:, 1] - p.iloc[:, 0]
        assert abs(d.mean()) < 3 * d.std() / np.sqrt(len(d)), name
        assert p.iloc[:, 0].corr(p.iloc[:, 1]) > 0.2, name            # the run effect
    assert amp["mean_max_softmax"].between(0.1, 1).all() and (amp["kl_label_frequencies"] >= 0).all()
    assert (bn["top_share"] == 1).mean() > 0.05 and bn["top_share"].le(1).all()
    assert ood["auroc"].between(0, 1).all()
    g = dec[dec["noise"] == "gaussian"]
    drop = g["absorber_share_without_bias"] - g["absorber_share"]
    assert drop.mean() < -3 * drop.std() / np.sqrt(len(drop))
    # the biases' size against the margins they compete with, as in the CPU study's 16 networks
    # (sd(bias) / mean margin 0.04-2, median 0.15; nulls.BIAS_SD)
    ratio = [np.std(list(r["extra"]["logit_decomposition"]["gaussian"]["bias"].values())) /
             r["extra"]["logit_decomposition"]["gaussian"]["mean_margin"] for r in data.runs]
    assert 0.08 < np.median(ratio) < 0.4 and np.quantile(ratio, 0.9) > 0.5
    ranks = g["bias_deal_rank"].to_numpy() / (g["bias_deals"].to_numpy() + 1)
    assert abs(ranks.mean() - 0.5) < 3 * np.sqrt(1 / 12 / len(ranks))


def test_known_invalid_tests_are_named_with_a_reason_and_no_verdict_rests_on_them(monkeypatch):
    """A test the calibration finds invalid is excused from the band only by name, with its
    reason, and the scoreboard takes no verdict from it. None is listed today: the one found,
    head_absorption's head-bias row, was taken out of that test (checked below)."""
    from analysis import explanations as hyp
    for test, why in calibration.KNOWN_INVALID.items():
        assert len(why) > 80 and test in null_holds(Effects(), Design())
        name, _, variable = test.partition(":")
        assert not [h.key for h in hyp.HYPOTHESES if h.test == name and h.variable(variable)], test
    monkeypatch.setitem(calibration.KNOWN_INVALID, "head_absorption:x", "named, with its reason")
    fpr = pd.DataFrame({"test": ["head_absorption:x"], "fpr": [0.3], "se": [0.01], "rejections": 30,
                        "rows": 100, "conservative": False})
    assert calibration.band_errors(fpr) == []
    assert calibration.band_errors(fpr.assign(test="head_absorption")) != []


def test_the_kang_effect_breaks_only_the_restricted_kang_tests_null(tmp_path):
    """Effects(kang=...) plants Kang et al.'s reversion (the smallest amplitude's logit scale down,
    so its mean prediction nears the label frequencies): it is the power scenario of
    amplitude_kl_trend alone, and a null study drawn with it differs from the plain null in the
    smallest amplitude's rows only, where the KL to the label frequencies falls."""
    import json
    design = Design(k=4, seeds=2, arms=1, diverged=0, missing=0, lacking=0.0, families=calibration.NULL_FAMILIES)
    plain, kang = null_holds(Effects(), design), null_holds(Effects(kang=2.0), design)
    assert {t for t in plain if plain[t] != kang[t]} == {"amplitude_kl_trend"} and kang["amplitude_kl_trend"] is False
    assert any(e.kang for _, _, e in calibration.POWER_SCENARIOS)

    def amplitudes(root, effects):
        study = write_null_study(root, design, effects)
        return [json.loads(p.read_text())["amplitude"]["rows"] for p in sorted(study.glob("*/trial.json"))]
    for a, b in zip(amplitudes(tmp_path / "a", Effects()), amplitudes(tmp_path / "b", Effects(kang=2.0))):
        smallest = min(range(len(a)), key=lambda i: a[i]["amplitude"])
        assert [r for i, r in enumerate(a) if i != smallest] == [r for i, r in enumerate(b) if i != smallest]
        assert b[smallest]["kl_label_frequencies"] < a[smallest]["kl_label_frequencies"]
