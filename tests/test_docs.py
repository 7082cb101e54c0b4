"""The README stays true: every trial key with its default, every sweep key, the two commands."""
from __future__ import annotations

import json
import re

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
