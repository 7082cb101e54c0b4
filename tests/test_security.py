"""Untrusted input stays data: YAML tags, pickled checkpoints, shell commands, names in reports."""
from __future__ import annotations

import pickle
import re

import pytest

from analysis.pipeline import aggregate
from analysis.report import md
from analysis.synthetic import Condition, write_study
from conftest import ROOT
from study.__main__ import main
from study.errors import InputError
from study.plan import CHECKPOINT_FILE
from study.tune_trial import tune_state


def test_yaml_with_python_tags_is_refused_not_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: evil\ntrial: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["check", str(path)]) == 2
    assert "YAML syntax error" in capsys.readouterr().err
    assert not marker.exists()


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/noisesink-pwned-by-checkpoint",))


def test_pickled_checkpoint_code_is_not_run_and_the_trial_starts_over(tmp_path):
    import os

    from ray import tune
    target = "/tmp/noisesink-pwned-by-checkpoint"
    if os.path.exists(target):
        os.remove(target)
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / CHECKPOINT_FILE).write_bytes(pickle.dumps({"trainer": _Payload()}))
    notes: list[str] = []
    assert tune_state(tune.Checkpoint.from_directory(str(folder)), notes) is None
    assert not os.path.exists(target)  # torch.load(weights_only=True) refused the pickle
    assert notes and "restarted from scratch" in notes[0]


def test_no_shell_is_built_from_input():
    offenders = []
    for path in [*ROOT.glob("study/*.py"), *ROOT.glob("analysis/*.py")]:
        text = path.read_text()
        if re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(|(?<![\w.])(eval|exec)\(", text):
            offenders.append(path.name)
    assert offenders == []


def test_yaml_is_read_with_safe_load_only():
    for path in [*ROOT.glob("study/*.py"), *ROOT.glob("analysis/*.py")]:
        text = path.read_text()
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path.name


@pytest.mark.parametrize("name", ["<img src=x onerror=alert(1)>", "a|b", "*bold* _x_ [link](http://x)", "$x$"])
def test_markdown_escaping(name):
    escaped = md(name)
    for ch in "<>|*_[]()$":
        assert ch not in escaped.replace("\\" + ch, "")


def test_report_escapes_names_from_the_data(tmp_path):
    study = write_study(tmp_path, [Condition("<b>flip|x</b>", absorber="bird")], seeds=3)
    aggregate(str(study))
    text = (study / "report" / "report.md").read_text()
    assert "<b>" not in text and "\\<b\\>flip\\|x\\</b\\>" in text


def test_input_errors_survive_pickling():
    e = InputError("trial.lr", "out of range", "x > 0", -1)
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e) and again.where == "trial.lr"
