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
    assert "bash .ci/install && NOISESINK_DATA=../shared/data/cifar10-jpg.tar .venv/bin/python -m study sweep sweeps/smoke.yaml" in README
    assert "bash .ci/install && .venv/bin/python -m pytest" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/install" in ci and ".venv/bin/python -m pytest" in ci


def test_every_test_id_is_documented_and_only_those():
    from analysis.inference import TESTS
    documented = re.findall(r"^\| `(\w+)` \| (tests|edge_frequency) \|", README, flags=re.M)
    assert dict(documented) == {k: table for k, (table, _) in TESTS.items()}


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
