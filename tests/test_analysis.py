"""The aggregation end to end: planted structure recovered, broken folders reported, no torch."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis.inference import finalize, result_row
from analysis.pipeline import aggregate, catalog_of_test_ids, write_table
from analysis.synthetic import Condition, write_study
from conftest import ROOT

PLANTED_TREE = [("airplane", "ship"), ("automobile", "truck"), ("ship", "truck"), ("bird", "airplane"),
                ("cat", "dog"), ("deer", "horse"), ("dog", "horse"), ("frog", "bird"), ("cat", "frog"),
                ("bird", "noise")]

TABLES = ["runs", "absorption", "absorbers", "heldout", "mst_edges", "edge_frequency", "trajectory",
          "tests", "problems", "consistency", "absorber_distribution"]
COLUMNS = {
    "runs": ["trial_id", "status", "condition", "seed", "augmentation", "test_accuracy", "train_seconds"],
    "absorption": ["trial_id", "condition", "seed", "noise", "class", "share"],
    "absorbers": ["trial_id", "condition", "seed", "noise", "absorber", "top_share", "entropy_norm"],
    "heldout": ["trial_id", "condition", "seed", "heldout_class", "class", "share"],
    "mst_edges": ["trial_id", "condition", "seed", "noise", "u", "v", "weight"],
    "edge_frequency": ["test", "condition", "noise", "u", "v", "n_runs", "frequency", "null_frequency", "p_value",
                       "p_min", "q_value"],
    "trajectory": ["trial_id", "condition", "seed", "epoch", "class", "share"],
    "tests": ["test", "family", "hypothesis", "condition", "noise", "variable", "statistic", "p_value", "p_adjusted",
              "p_min", "p_needed", "can_reject", "n_needed", "effect", "effect_name", "ci_low", "ci_high", "n_runs",
              "method"],
    "consistency": ["condition", "noise", "modal_absorber", "modal_count", "n_runs", "modal_share",
                    "modal_share_ci_low", "modal_share_ci_high", "p_value", "p_min", "agreement", "agreement_ci_low",
                    "agreement_ci_high"],
    "absorber_distribution": ["condition", "noise", "class", "count", "n_runs", "share", "ci_low", "ci_high"],
    "problems": ["trial_id", "reason"],
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    study = write_study(root, [Condition("flip", absorber="bird", tree=PLANTED_TREE),
                               Condition("none", absorber="cat", tree=PLANTED_TREE)], seeds=12)
    summary = aggregate(str(study))
    report = study / "report"
    return study, report, {t: pd.read_csv(report / f"{t}.csv") for t in TABLES}, summary


def test_every_table_plot_and_report_is_written(planted):
    study, report, frames, summary = planted
    for table, columns in COLUMNS.items():
        assert set(columns) <= set(frames[table].columns), table
    for png in ("absorption_heatmap.png", "absorber_frequency.png", "consensus_mst_gaussian.png",
                "distance_heatmap_gaussian.png", "trajectory.png", "accuracy.png"):
        assert (report / png).stat().st_size > 10_000, png
    text = (report / "report.md").read_text()
    for link in ["runs.csv", "tests.csv", "consensus_mst_gaussian.png"]:
        assert f"({link})" in text
    assert "24 runs (24 completed" in summary


@pytest.mark.parametrize("table", TABLES)
def test_parquet_beside_each_csv_holds_the_same_rows(planted, table):
    _, report, frames, _ = planted
    parquet = pd.read_parquet(report / f"{table}.parquet")
    csv = frames[table]
    assert list(parquet.columns) == list(csv.columns) and len(parquet) == len(csv)
    # the CSV loses dtypes (categories become strings), so compare as the CSV reads back
    roundtrip = pd.read_csv(io.StringIO(parquet.to_csv(index=False)))
    pd.testing.assert_frame_equal(roundtrip, csv, check_dtype=False)


def test_a_column_of_mixed_types_is_written_as_text(tmp_path):
    df = pd.DataFrame({"train_subset": [None, 3000, "all"], "share": [0.1, 0.2, 0.3]})
    write_table(df, tmp_path / "runs")
    back = pd.read_parquet(tmp_path / "runs.parquet")
    assert back["train_subset"].isna().tolist() == [True, False, False]
    assert list(back["train_subset"])[1:] == ["3000", "all"] and list(back["share"]) == [0.1, 0.2, 0.3]
    assert pd.read_csv(tmp_path / "runs.csv")["train_subset"].tolist()[1:] == ["3000", "all"]


def test_unanimous_runs_plot_with_their_interval(tmp_path):
    """Every one of 6 runs picks the same absorber: the Wilson bound sits exactly at 1 (rounding
    once put it below the observed fraction, and matplotlib refused the negative error bar)."""
    study = write_study(tmp_path, [Condition("flip", absorber="bird", p_absorber=1.0),
                                   Condition("none", absorber="bird", p_absorber=1.0)], seeds=6)
    aggregate(str(study))
    assert (study / "report" / "absorber_frequency.png").stat().st_size > 10_000


def test_planted_absorbers_are_recovered(planted):
    _, _, frames, _ = planted
    cons = frames["consistency"].set_index(["condition", "noise"])
    assert cons.loc[("augmentation=flip", "gaussian"), "modal_absorber"] == "bird"
    assert cons.loc[("augmentation=none", "gaussian"), "modal_absorber"] == "cat"
    assert (cons["p_value"] < 1e-3).all()
    tests = frames["tests"]
    paired = tests[tests["test"] == "absorber_vs_condition"].set_index("noise")
    assert len(paired) == 2 and (paired["p_value"] < 0.01).all() and paired["can_reject"].all()
    assert paired.loc["gaussian", "family"] == "confirmatory" and paired.loc["uniform", "family"] == "exploratory"
    assert set(tests["test"]) <= set(catalog_of_test_ids()) and tests["p_min"].notna().all()
    assert (tests.loc[tests["family"] == "confirmatory", "noise"] == "gaussian").all()
    dist = frames["absorber_distribution"]
    bird = dist[(dist["condition"] == "augmentation=flip") & (dist["noise"] == "gaussian") & (dist["class"] == "bird")]
    assert len(bird) == 1 and bird["ci_low"].iloc[0] <= bird["share"].iloc[0] <= bird["ci_high"].iloc[0]


def test_planted_tree_edges_are_reliable_and_others_are_not(planted):
    _, report, frames, _ = planted
    ef = frames["edge_frequency"]
    cell = ef[(ef["condition"] == "augmentation=flip") & (ef["test"] == "mst_edge")]
    edges = {tuple(sorted(e)) for e in PLANTED_TREE if "noise" not in e}
    is_planted = cell.apply(lambda r: (r["u"], r["v"]) in edges, axis=1)
    assert len(cell) == 45 and is_planted.sum() == 9 and (cell["noise"] == "(all)").all()
    assert (cell.loc[is_planted, "q_value"] < 0.05).all()
    assert (cell.loc[~is_planted, "q_value"] > 0.05).all()
    assert (cell["null_frequency"] == 0.2).all()                       # 2/K: classes relabelled, noise kept
    noise = ef[(ef["condition"] == "augmentation=flip") & (ef["test"] == "noise_edge") & (ef["noise"] == "gaussian")]
    assert len(noise) == 10 and noise.set_index("u")["q_value"].idxmin() == "bird"
    assert "noise node hangs on **bird**" in (report / "report.md").read_text()


def test_report_answers_in_plain_words(planted):
    text = (planted[1] / "report.md").read_text()
    assert "Gaussian noise goes to **bird** in" in text
    assert "Holm-adjusted" in text and "## Methods" in text and "modal share" in text
    assert "augmentation=flip vs augmentation=none" in text
    # the argmax share never stands alone: the softmax mass on the absorber beside it
    cons = pd.read_csv(planted[1] / "consistency.csv")
    assert cons["mean_absorber_softmax"].between(0, 1).all()
    assert "at a mean softmax mass of" in text.split("Gaussian noise goes to **bird** in")[1].split("\n")[0]


def test_broken_folders_are_reported_and_the_rest_aggregates(tmp_path):
    study = write_study(tmp_path, [Condition("flip", absorber="bird")], seeds=6)
    (study / "augmentation=flip_seed=0" / "trial.json").unlink()                     # missing
    t1 = study / "augmentation=flip_seed=1" / "trial.json"
    t1.write_text(t1.read_text()[:500])                                              # truncated
    (study / "augmentation=flip_seed=2" / "trial.json").write_text('{"status": "completed"}')  # invalid
    (study / "augmentation=flip_seed=3" / "error.txt").write_text("Traceback...\nRuntimeError: CUDA OOM\n")
    (study / "augmentation=flip_seed=3" / "trial.json").unlink()                     # failed in Tune
    shutil.copytree(study / "augmentation=flip_seed=4", study / "augmentation=flip_seed=4_copy")  # duplicate
    arrays = study / "augmentation=flip_seed=5" / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:-10])                                    # torn arrays
    aggregate(str(study))
    problems = pd.read_csv(study / "report" / "problems.csv").set_index("trial_id")
    assert "no trial.json" in problems.loc["augmentation=flip_seed=0", "reason"]
    assert "truncated or not JSON" in problems.loc["augmentation=flip_seed=1", "reason"]
    assert "lacks" in problems.loc["augmentation=flip_seed=2", "reason"]
    assert "CUDA OOM" in problems.loc["augmentation=flip_seed=3", "reason"]
    assert "duplicate of grid point" in problems.loc["augmentation=flip_seed=4_copy", "reason"]
    assert "sha256" in problems.loc["augmentation=flip_seed=5", "reason"]
    runs = pd.read_csv(study / "report" / "runs.csv")
    assert sorted(runs["trial_id"]) == ["augmentation=flip_seed=4", "augmentation=flip_seed=5"]


def test_diverged_runs_are_listed_and_excluded(tmp_path):
    study = write_study(tmp_path, [Condition("flip", absorber="bird")], seeds=4)
    t = study / "augmentation=flip_seed=0" / "trial.json"
    data = json.loads(t.read_text())
    t.write_text(json.dumps({k: data[k] for k in ("schema", "seed", "classes", "config", "trajectory")}
                            | {"status": "diverged", "diverged_at_epoch": 2}))
    aggregate(str(study))
    runs = pd.read_csv(study / "report" / "runs.csv")
    assert (runs["status"] == "diverged").sum() == 1
    cons = pd.read_csv(study / "report" / "consistency.csv")
    assert (cons["n_runs"] == 3).all()
    assert "1 diverged (excluded from all statistics): augmentation=flip\\_seed=0 (epoch 2)" in \
        (study / "report" / "report.md").read_text()


def test_analysis_imports_no_torch():
    code = ("import sys, analysis.pipeline, analysis.__main__; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow
def test_command_line(tmp_path):
    study = write_study(tmp_path, [Condition("flip", absorber="bird")], seeds=3)
    out = tmp_path / "elsewhere"
    res = subprocess.run([sys.executable, "-m", "analysis", str(study), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (out / "report.md").exists() and (out / "tests.csv").exists()
    res = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "nope")], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "no such folder" in res.stderr


@pytest.mark.slow  # writes and aggregates 200 trials
def test_aggregation_benchmark_script_runs_at_a_small_size():
    res = subprocess.run([sys.executable, "benchmarks/aggregate_bench.py", "--trials", "200", "--conditions", "4",
                          "--n-noise", "500"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "aggregation of 200 trials:" in res.stdout and "peak memory" in res.stdout


def test_n_needed_is_no_promise_where_the_design_not_n_holds_a_test_back():
    """A pairing test with both labels on one class has p = 1 at any n; its p_min_of_n (the most
    favourable marginals) reaches the level at 5 runs. With 8 runs already there, tests.csv must not
    say '5 runs would let it' (the report says 'cannot reach significance in this design'). Other
    tests keep their n_needed: their p_min falls with the informative runs more seeds bring."""
    floor = lambda n: 0.5 ** n   # noqa: E731  (reaches 0.05 at n = 5)
    held = result_row("noise_neighbour", "h", "c", "gaussian", {"p_value": 1.0, "p_min": 1.0, "n_runs": 8}, "m",
                      p_min_of_n=floor)
    short = result_row("noise_neighbour", "h", "d", "gaussian", {"p_value": 0.25, "p_min": 0.25, "n_runs": 2}, "m",
                       p_min_of_n=floor)
    # a paired absorber test with few discordant seeds: more seeds bring more of them, n_needed stands
    swap = result_row("absorber_vs_condition", "h", "c", "gaussian", {"p_value": 0.25, "p_min": 0.25, "n_runs": 12},
                      "m", p_min_of_n=floor)
    df = finalize([held, short, swap])
    assert not df["can_reject"].any()
    assert np.isnan(df.loc[0, "n_needed"])            # held back by the labels' distributions
    assert df.loc[1, "n_needed"] > 2                   # held back by n: more runs would help
    assert np.isfinite(df.loc[2, "n_needed"])
