"""The README stays true: every trial key with its default, every sweep key, the two commands."""
from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT
from study.config import RESOURCE_KEYS, RUN_KEYS, TRIAL_KEYS

README = (ROOT / "README.md").read_text()


def test_every_trial_key_is_documented_with_its_default():
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", README, flags=re.M))
    for key in TRIAL_KEYS:
        assert key.name in rows, key.name
        assert rows[key.name] == json.dumps(key.default), key.name


def test_every_sweep_key_is_documented():
    for key in [*RESOURCE_KEYS, *RUN_KEYS]:
        assert f"`{key}`" in README, key


def test_the_two_setup_commands_are_there_and_ci_runs_the_test_command():
    assert ("bash .ci/install && NOISESINK_DATA=../shared/data/cifar10-jpg.tar .venv/bin/python -m study sweep "
            "sweeps/smoke.yaml") in README
    assert "bash .ci/install && .venv/bin/python -m pytest" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/install" in ci and ".venv/bin/python -m pytest" in ci


def test_every_test_id_is_documented_and_only_those():
    from analysis.pipeline import catalog_of_test_ids
    documented = re.findall(r"^\| `(\w+)` \| (tests|edge_frequency) \|", README, flags=re.M)
    assert dict(documented) == {k: table for k, (table, _) in catalog_of_test_ids().items()}


def test_the_clutter_verdict_counts_every_study_that_tested_it():
    """findings-cpu.md gives clutter one verdict across its five studies: Holm over every
    confirmatory clutter row of a condition without a class intervention in the committed
    tests.csv (not only within each study), and over all 18 rows."""
    import pandas as pd
    from statsmodels.stats.multitest import multipletests
    rows = []
    for f in sorted((ROOT / "docs" / "results").glob("cpu-*/tests.csv")):
        t = pd.read_csv(f)
        rows.append(t[(t["test"] == "clutter_absorption") & (t["variable"] == "png_bits_per_pixel")
                      & (t["noise"] == "gaussian")].assign(study=f.parent.name))
    rows = pd.concat(rows, ignore_index=True)
    rows["holm_all"] = multipletests(rows["p_value"], method="holm")[1]
    plain = rows[~rows["condition"].str.contains(r"class_intervention=(?!none)|noise_class", regex=True)].copy()
    plain["holm"] = multipletests(plain["p_value"], method="holm")[1]
    text = " ".join((ROOT / "docs" / "findings-cpu.md").read_text().split())
    section5 = plain[plain["study"] == "cpu-hypotheses_cpu"].iloc[0]
    assert len(rows) == 18 and len(plain) == 9 and "in 18 conditions" in text and "the 9 conditions without" in text
    assert f"Holm over the 9 gives {section5['holm']:.3f} for it and for the smallest of them" in text
    assert plain["holm"].min() == pytest.approx(section5["holm"]) and plain["holm"].min() >= 0.05
    assert f"over all 18 rows {rows.loc[rows['study'] == 'cpu-hypotheses_cpu', 'holm_all'].iloc[0]:.3f}" in text
    assert f"rho > 0 in {(plain['statistic'] > 0).sum()} of the 9" in text


def test_the_catdog_ladders_numbers_are_its_committed_tables():
    """Every descriptive number of findings-cpu.md's cat/dog ladder section, recomputed from
    docs/results/ladder_catdog/ (the bootstrap as stated: percentile, 20,000 resamples, seed 0)."""
    import numpy as np
    import pandas as pd
    from scipy import stats
    folder = ROOT / "docs" / "results" / "ladder_catdog"
    text = " ".join((ROOT / "docs" / "findings-cpu.md").read_text().split())
    runs = pd.read_csv(folder / "runs.csv")
    acc = runs["test_accuracy"]
    assert f"test accuracy {acc.mean():.3f} +- {acc.std(ddof=1):.3f} (mean +- sd over {len(runs)} networks, range " \
           f"{acc.min():.3f}-{acc.max():.3f}" in text
    guard = pd.read_csv(folder / "accuracy_guard.csv").iloc[0]
    assert f"pooled {guard['accuracy_mean']:.3f} [95% CI {guard['ci_low']:.3f}, {guard['ci_high']:.3f}]" in text
    assert not guard["too_weak"]
    dist = pd.read_csv(folder / "absorber_distribution.csv").query("noise == 'gaussian' and `class` == 'cat'").iloc[0]
    assert f"the modal share {dist['count']}/{dist['n_runs']} = {dist['share']:.2f} [simultaneous 95% CI " \
           f"{dist['ci_low']:.2f}, {dist['ci_high']:.2f}]" in text
    share = pd.read_csv(folder / "absorption.csv").query("noise == 'gaussian' and `class` == 'cat'")["share"].to_numpy()
    assert ((share == 1).sum() == 14 and np.sort(share)[1] == pytest.approx(0.9865)
            and np.sort(share)[0] == pytest.approx(0.1185))
    boot = stats.bootstrap((share,), np.mean, method="percentile", n_resamples=20000,
                           random_state=0).confidence_interval
    assert (f"Mean share to cat {share.mean():.3f} [95% percentile bootstrap over networks {boot.low:.3f}, "
            f"{boot.high:.2f}]") in text
    soft = pd.read_csv(folder / "absorbers.csv").query("noise == 'gaussian'")["absorber_softmax"].to_numpy()
    sboot = stats.bootstrap((soft,), np.mean, method="percentile", n_resamples=20000,
                            random_state=0).confidence_interval
    assert (f"mean softmax probability is {soft.mean():.3f} [{sboot.low:.3f}, {sboot.high:.3f}] "
            f"(median {np.median(soft):.4f}") in text
    held = pd.read_csv(folder / "heldout.csv").query("`class` == 'dog'").groupby("heldout_class")["share"]
    horse = held.get_group("horse").to_numpy()
    half = stats.t.ppf(0.975, len(horse) - 1) * horse.std(ddof=1) / np.sqrt(len(horse))
    assert f"0.648 of them on average, 95% t interval over the 16 networks [{horse.mean() - half:.3f}, " \
           f"{horse.mean() + half:.3f}], every network between {horse.min():.3f} and {horse.max():.3f}" in text
    assert f"{horse.mean():.3f} of them" in text and held.mean().idxmax() == "horse"
    means = held.mean()
    assert f"deer {means['deer']:.2f}, truck {means['truck']:.2f}, bird {means['bird']:.2f}; airplane and ship " \
           f"{means['airplane']:.2f})" in text and round(means["ship"], 2) == round(means["airplane"], 2)


def test_the_initial_guessing_bias_table_is_its_committed_summary():
    """findings-cpu.md's table of untrained networks: each setting's row, in both head-bias
    conventions, is docs/results/initbias/initbias_summary.csv's (test images)."""
    import pandas as pd
    summ = pd.read_csv(ROOT / "docs" / "results" / "initbias" / "initbias_summary.csv").query("images == 'test'")
    text = (ROOT / "docs" / "findings-cpu.md").read_text()
    cell = {(r.setting, r.head_bias): f"{r.mean_max_f:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}] | {r.share_strong:.0%}"
            for r in summ.itertuples()}
    settings = list(dict.fromkeys(summ["setting"]))
    assert len(settings) == 11
    for setting in settings:
        assert f"| `{setting}` | {cell[setting, 'zero']} | {cell[setting, 'initial']} |" in text, setting
    # the prose beside it: the two conventions in the default small_cnn, the favourite class, the pooling
    flat = " ".join(text.split())
    mean = summ.set_index(["setting", "head_bias"])["mean_max_f"]
    both = pd.read_csv(ROOT / "docs" / "results" / "initbias" / "initbias_summary.csv").set_index(
        ["setting", "images", "head_bias"])
    bn, tanh_avg = "relu-max-batch.eval-centered", "tanh-avg-none-centered"
    noise = both.xs("noise", level="images")["mean_max_f"]
    assert (f"raises max_f from {mean[bn, 'zero']:.2f} to {mean[bn, 'initial']:.2f} on test images and from "
            f"{noise[bn, 'zero']:.2f} to {noise[bn, 'initial']:.2f} on noise") in flat
    assert (f"tanh + avg goes from {noise[tanh_avg, 'zero']:.2f} to {noise[tanh_avg, 'initial']:.2f} "
            "with the bias") in flat
    zero = both.xs("zero", level="head_bias")
    same = zero.xs("test", level="images")["same_top_test_noise"]
    rest = same.drop(tanh_avg)
    assert (f"in {rest.min() * 100:.0f}-{rest.max():.0%} of the networks of every setting but "
            f"tanh + avg ({same[tanh_avg]:.0%})") in flat
    from statsmodels.stats.multitest import multipletests
    p = zero["top_class_uniform_p"]
    assert f"(smallest p {p.min():.3f}, Holm {multipletests(p, method='holm')[1].min():.3f})" in flat
    pooled = {line.split("|")[0].strip(): line for line in
              (ROOT / "docs" / "results" / "initbias" / "pooling.txt").read_text().splitlines() if "|" in line}
    for variant, said in (("2x2 max, global avg", "2x2 max with a global average"),
                          ("2x2 avg, global max", "2x2 average with a global max"),
                          ("2x2 max, global max (tanh-max)", "both (the setting)")):
        interval = pooled[variant].split("test ")[1].split(" strong")[0]
        assert f"{said} {interval}" in flat, variant


def test_the_document_level_p_quoted_is_the_registers():
    """findings-cpu.md quotes the p a confirmatory claim needs over the whole document (Holm):
    the register's p_needed for the claims it speaks of."""
    import pandas as pd
    register = pd.read_csv(ROOT / "docs" / "claims.csv").set_index("claim")
    text = " ".join((ROOT / "docs" / "findings-cpu.md").read_text().split())
    for claim in ("C19", "C50", "C51"):
        assert f"needs p <= {register.at[claim, 'p_needed']:.5f}" in text, claim
