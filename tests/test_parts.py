"""A study run in parts on several machines: --seeds picks a slice, `analyze A B` aggregates the
parts as one study (same design required, a grid point in two parts only if identical), and
`export` copies the finished trials compactly and idempotently."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from analysis.contract import ARRAYS_NPZ, STUDY_JSON, TRIAL_JSON
from analysis.errors import InputError
from analysis.export import export
from analysis.load import load, load_many
from analysis.pipeline import aggregate
from analysis.synthetic import Condition, write_study
from study.__main__ import parse_seeds


@pytest.mark.parametrize("spec, seeds", [("0-5", [0, 1, 2, 3, 4, 5]), ("3", [3]), ("0,2,4-6", [0, 2, 4, 5, 6])])
def test_seeds_are_read_as_lists_and_ranges(spec, seeds):
    assert parse_seeds(spec) == seeds


@pytest.mark.parametrize("spec, message", [("5-2", "cannot read"), ("a", "cannot read"), ("-1", "cannot read"),
                                           ("1,1", "twice"), ("0-3,2", "twice")])
def test_bad_seeds_are_one_clear_error(spec, message):
    with pytest.raises(InputError, match=message):
        parse_seeds(spec)


def _parts(tmp_path, seeds=8, split=4, change_b=None):
    """One synthetic study of `seeds` seeds, split into two part folders at seed `split`; `change_b`
    changes part b's config outside the grid (as study.json records it)."""
    whole = write_study(tmp_path / "whole", [Condition("flip", absorber="bird"), Condition("none", absorber="cat")],
                        seeds=seeds)
    study = json.loads((whole / STUDY_JSON).read_text())
    config = json.loads((whole / study["points"][0]["dir"] / TRIAL_JSON).read_text())["config"]
    resolved = {k: v for k, v in config.items() if k not in study["axes"]}
    parts = []
    for name, keep, part_resolved in (("a", range(split), resolved),
                                      ("b", range(split, seeds), {**resolved, **(change_b or {})})):
        part = tmp_path / name / "synthetic"
        points = [p for p in study["points"] if p["axes"]["seed"] in keep]
        for p in points:
            shutil.copytree(whole / p["dir"], part / p["dir"])
        (part / STUDY_JSON).write_text(json.dumps({**study, "points": points, "resolved": part_resolved,
                                                   "grid": {"augmentation": ["flip", "none"], "seed": list(keep)}}))
        parts.append(part)
    return whole, parts


def test_parts_load_as_the_whole_study_with_their_sources(tmp_path):
    whole, (a, b) = _parts(tmp_path)
    merged, single = load_many([str(a), str(b)]), load(str(whole))
    assert [r["trial_id"] for r in merged.runs] == [r["trial_id"] for r in single.runs]
    assert {r["source"] for r in merged.runs} == {str(a), str(b)}
    assert len(merged.study["points"]) == 16 and merged.study["grid"]["seed"] == list(range(8))
    run = next(r for r in merged.runs if r["seed"] == 6)
    assert merged.arrays(run) is not None   # read from its own folder
    summary = aggregate([str(a), str(b)], str(tmp_path / "report"), log=None)
    assert "16 runs" in summary
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert set(runs["source"]) == {str(a), str(b)} and len(runs) == 16
    assert f"`{a}`: 8." in (tmp_path / "report" / "report.md").read_text()


def test_parts_of_different_configs_are_refused_naming_both_and_the_key(tmp_path):
    _, (a, b) = _parts(tmp_path, change_b={"n_noise": 300})
    with pytest.raises(InputError, match=r"n_noise: was 300, now 200") as e:
        aggregate([str(a), str(b)], str(tmp_path / "report"), log=None)
    assert str(a) in str(e.value) and str(b) in str(e.value)
    assert not (tmp_path / "report").exists()   # refused before any work


def test_parts_written_before_and_after_a_key_existed_are_one_study_in_either_order():
    """A part run by code that predates a key (its study.json lacks it) and a part that records the
    key at its before-value (the newer study.json's before_key says so) are one study, whichever is
    named first; another value of the key is a difference."""
    from analysis.load import same_design
    old = {"axes": ["seed"], "resolved": {"n_noise": 200}, "before_key": {"n_noise": 2000}, "points": []}
    new = {"axes": ["seed"], "resolved": {"n_noise": 200, "image_size": 32},
           "before_key": {"n_noise": 2000, "image_size": 32}, "points": []}
    same_design(old, new, "here")
    same_design(new, old, "here")
    with pytest.raises(InputError, match=r"image_size"):
        same_design(old, {**new, "resolved": {"n_noise": 200, "image_size": 64}}, "here")


def test_a_grid_point_in_two_parts_counts_once_if_identical_else_is_refused(tmp_path):
    _, (a, b) = _parts(tmp_path)
    shutil.copytree(a / "augmentation=flip_seed=0", b / "augmentation=flip_seed=0")
    merged = load_many([str(a), str(b)])
    assert len(merged.runs) == 16
    assert any("counted once" == p["action"] for p in merged.problems)
    t = json.loads((b / "augmentation=flip_seed=0" / TRIAL_JSON).read_text())
    t["config_digest"] = "another"
    (b / "augmentation=flip_seed=0" / TRIAL_JSON).write_text(json.dumps(t))
    with pytest.raises(InputError, match="different results"):
        load_many([str(a), str(b)])


def test_export_copies_only_the_finished_trials_and_is_idempotent(tmp_path):
    whole, (a, b) = _parts(tmp_path)
    (a / "augmentation=flip_seed=1" / "checkpoint_000001").mkdir()
    (a / "augmentation=flip_seed=1" / "checkpoint_000001" / "state.pt").write_bytes(b"x" * 1000)
    (a / "augmentation=none_seed=2" / TRIAL_JSON).unlink()          # unfinished: not exported
    dest = tmp_path / "export"
    first = export(str(a), str(dest), log=lambda m: None)
    assert first["trials"] == 7
    assert sorted(p.name for p in (dest / "augmentation=flip_seed=1").iterdir()) == [ARRAYS_NPZ, TRIAL_JSON]
    assert not (dest / "augmentation=none_seed=2").exists()
    again = export(str(a), str(dest), log=lambda m: None)
    assert again == {**first, "trials": 0, "kept": 7}
    export(str(b), str(dest), log=lambda m: None)    # the other part into the same folder: one study
    study = json.loads((dest / STUDY_JSON).read_text())
    assert len(study["points"]) == 16
    assert len(load(str(dest)).runs) == 15
    other = tmp_path / "other"
    shutil.copytree(a, other)
    t = json.loads((other / "augmentation=flip_seed=0" / TRIAL_JSON).read_text())
    t["test_accuracy"] = 0.5
    (other / "augmentation=flip_seed=0" / TRIAL_JSON).write_text(json.dumps(t))
    with pytest.raises(InputError, match="another result"):
        export(str(other), str(dest), log=lambda m: None)


# ---------------------------------------------------------------- arms: several keys as one axis

def test_an_arm_sets_its_keys_and_names_the_condition():
    from study.config import validate_trial
    cfg = validate_trial({"model": "small_cnn", "arm": {"name": "rung_1", "epochs": 3, "lr": 0.05}})
    assert (cfg["arm"], cfg["epochs"], cfg["lr"]) == ("rung_1", 3, 0.05)


@pytest.mark.parametrize("raw, message", [
    ({"epochs": 4, "arm": {"name": "a", "epochs": 3}}, "set both by the arm"),
    ({"arm": {"name": "a", "no_such_key": 3}}, "not a key an arm can set"),
    ({"arm": {"name": "a", "seed": 3}}, "not a key an arm can set"),
    ({"arm": {"epochs": 3}}, "has no name"),
    ({"arm": "bad name!"}, "invalid arm name"),
])
def test_bad_arms_are_one_clear_error(raw, message):
    from study.config import validate_trial
    with pytest.raises(InputError, match=message):
        validate_trial(raw)


def test_a_sweep_of_arms_records_each_points_keys_and_its_results_belong(tmp_path):
    import yaml

    from analysis.load import _belonging
    from study.config import load_sweep
    from study.plan import Plan, study_record
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump({"name": "ladder", "trial": {"model": "small_cnn", "device": "cpu"},
                                    "grid": {"arm": [{"name": "short", "epochs": 2},
                                                     {"name": "long", "epochs": 6, "lr": 0.1}],
                                             "seed": [0, 1]}}))
    sweep = load_sweep(path)
    points = sweep.points()
    dirs = [f"arm={p['arm']}_seed={p['seed']}" for p in points]
    record = study_record(Plan(sweep, str(path), str(tmp_path), points, dirs))
    assert "epochs" not in record["resolved"] and "lr" not in record["resolved"]
    assert record["points"][2] == {"dir": "arm=long_seed=0", "axes": {"arm": "long", "seed": 0},
                                   "keys": {"epochs": 6, "lr": 0.1}}
    from analysis.contract import config_digest
    runs = [{"trial_id": d, "config": p, "config_digest": config_digest(p)} for d, p in zip(dirs, points)]
    problems = []
    assert len(_belonging(runs, record, problems)) == 4 and problems == []
    stale = [{**runs[2], "config": {**points[2], "epochs": 5}, "config_digest": "old"}]
    assert _belonging(stale, record, problems) == [] and "epochs: was 5, now 6" in problems[0]["reason"]


@pytest.mark.slow
def test_conditions_of_different_networks_are_compared_unpaired(tmp_path):
    """Rungs of a ladder build different networks (model, width): seed s of one is no partner of seed
    s of another, so the confirmatory test of 'the absorber depends on the condition' is the
    permutation of condition labels over runs; arms of one network (augmentation) stay paired."""
    rungs = write_study(tmp_path / "r", [Condition("small_cnn", absorber="frog"),
                                         Condition("airbench", absorber="bird")], seeds=8, axis="model")
    for trial in rungs.glob("*/" + TRIAL_JSON):   # the rungs are arms, as a ladder's are (sweeps/ladder.yaml)
        t = json.loads(trial.read_text())
        t["config"]["arm"] = t["config"]["model"]
        trial.write_text(json.dumps(t))
    same = write_study(tmp_path / "s", [Condition("flip", absorber="frog"), Condition("none", absorber="bird")],
                       seeds=8)
    for study, method in ((rungs, "permutation chi-square"), (same, "marginal homogeneity")):
        aggregate(str(study), str(study / "report"), log=None)
        tests = pd.read_csv(study / "report" / "tests.csv")
        row = tests[(tests["test"] == "absorber_vs_condition") & (tests["noise"] == "gaussian")].iloc[0]
        assert row["family"] == "confirmatory" and row["method"].startswith(method)
        # the trend with accuracy is pre-registered where the conditions are different networks (a ladder)
        trend = tests[(tests["test"] == "accuracy_trend") & (tests["noise"] == "gaussian")]
        assert set(trend["variable"]) == {"top_share", "mean_max_softmax"}
        assert set(trend["family"]) == {"confirmatory" if study is rungs else "exploratory"}
    assert "does not pair their runs" in (rungs / "report" / "report.md").read_text()


def test_two_arms_of_one_name_are_refused_before_any_work(tmp_path):
    import yaml

    from study.plan import prepare
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "trial": {"model": "small_cnn", "device": "cpu"},
                                    "grid": {"arm": [{"name": "a", "epochs": 1}, {"name": "a", "epochs": 2}],
                                             "seed": [0]}}))
    with pytest.raises(InputError, match="share the trial folder arm=a_seed=0"):
        prepare(str(path), storage=str(tmp_path / "results"))


def test_an_arm_whose_keys_changed_between_parts_is_refused(tmp_path):
    _, (a, b) = _parts(tmp_path)
    study = json.loads((b / STUDY_JSON).read_text())
    for p in study["points"]:
        p["keys"] = {"epochs": 12 if p["axes"]["augmentation"] == "flip" else 10}
    (b / STUDY_JSON).write_text(json.dumps(study))
    study_a = json.loads((a / STUDY_JSON).read_text())
    for p in study_a["points"]:
        p["keys"] = {"epochs": 10}
    (a / STUDY_JSON).write_text(json.dumps(study_a))
    with pytest.raises(InputError, match="augmentation.*flip.*differs \\(epochs: was 12, now 10\\)"):
        load_many([str(a), str(b)])


def test_parts_without_a_study_json_are_refused(tmp_path):
    _, (a, b) = _parts(tmp_path)
    (b / STUDY_JSON).unlink()
    with pytest.raises(InputError, match="no study.json"):
        load_many([str(a), str(b)])
