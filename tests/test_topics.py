"""Topics as plug-ins (analysis/topic.py): a topic written here and put in pipeline.TOPICS reaches
every output (its table, its tests.csv row, its figure, its report section and its Methods
paragraph) with no other file edited, its test id declared by itself; the shipped topics are
Topics, each with its own name, its own tables and its own test ids."""
from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis import inference, pipeline
from analysis.document import Paragraph, Section, text
from analysis.inference import result_row
from analysis.load import load
from analysis.nulls import Design, Effects, write_null_study
from analysis.synthetic import Condition, write_study
from analysis.topic import Findings, Inputs, Topic

TOY_TEST = "toy_runs"


def toy_tables(inputs: Inputs, frames) -> dict:
    return {"toy": pd.DataFrame({"condition": list(inputs.groups), "runs": [len(r) for r in inputs.groups.values()]})}


def toy_tests(inputs: Inputs, frames) -> Findings:
    return Findings([result_row(TOY_TEST, "the condition has runs", r.condition, "gaussian",
                                {"statistic": r.runs, "p_value": 0.5, "p_min": 0.01, "n_runs": r.runs}, "counted")
                     for r in frames["toy"].itertuples()])


def toy_figures(inputs: Inputs, frames, folder) -> list[str]:
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().bar(frames["toy"]["condition"], frames["toy"]["runs"])
    fig.savefig(folder / "toy.png")
    return ["toy.png"]


def toy_section(ctx) -> Section:
    s = Section("How many runs has each condition?", key="toy")
    toy = ctx.table("toy")
    if toy.empty:
        return s
    s.blocks += [Paragraph(text("; ".join(f"{r.condition}: {r.runs} runs" for r in toy.itertuples()) + ".")),
                 *ctx.figure("toy.png", "Runs per condition")]
    return s


TOY = Topic("toy", tables=toy_tables, tests=toy_tests, figures=toy_figures, sections=(toy_section,),
            methods=lambda: "- **Toy**: the runs of each condition, counted.",
            test_ids={TOY_TEST: ("tests", "the condition has runs")})


def test_a_topic_put_in_the_list_reaches_every_output(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "TOPICS", (*pipeline.TOPICS, TOY))
    assert pipeline.catalog_of_test_ids()[TOY_TEST] == ("tests", "the condition has runs")
    study = write_study(tmp_path, [Condition("flip", absorber="bird"), Condition("none", absorber="cat")], seeds=3)
    pipeline.aggregate(str(study), log=None)
    out = study / "report"
    toy = pd.read_csv(out / "toy.csv")
    assert toy.to_dict("list") == {"condition": ["augmentation=flip", "augmentation=none"], "runs": [3, 3]}
    tests = pd.read_csv(out / "tests.csv")
    rows = tests[tests["test"] == TOY_TEST]
    assert list(rows["condition"]) == ["augmentation=flip", "augmentation=none"]
    assert (rows["family"] == "exploratory").all() and rows["p_adjusted"].notna().all()
    assert (out / "toy.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    # after every topic's own sections, before the closing ones (the runs, the scoreboard)
    at = report.index("\n## How many runs has each condition?\n")
    closing = report.index("\n## Runs: accuracy")
    assert report.index("\n## When does the absorber appear during training?") < at < closing
    assert "augmentation=flip: 3 runs; augmentation=none: 3 runs." in report[at:]
    assert "](toy.png)" in report[at:closing]
    assert "[toy.csv](toy.csv)" in report[report.index("\n## Files"):]
    methods = report[report.index("\n## Methods"):]
    assert methods.index("- **Probe-time experiments**") < methods.index("- **Toy**: the runs of each condition, "
                                                                         "counted.") < methods.index("- Permutation")
    assert "How many runs has each condition?" in (out / "report.html").read_text()


def test_the_topics_are_topics_with_their_own_names_and_test_ids():
    assert all(isinstance(t, Topic) for t in pipeline.TOPICS)
    names = [t.name for t in pipeline.TOPICS]
    assert len(set(names)) == len(names)
    assert len(pipeline.catalog_of_test_ids()) == sum(len(t.test_ids) for t in pipeline.TOPICS)   # none declared twice
    twice = Topic("twice", test_ids={"bias_deal": ("tests", "again")})
    with pytest.raises(ValueError, match=r"topic 'twice' declares test ids another topic has: bias_deal"):
        pipeline.catalog_of_test_ids((*pipeline.TOPICS, twice))


def test_a_row_of_a_test_id_its_topic_does_not_declare_is_refused(tmp_path, monkeypatch):
    undeclared = Topic("undeclared", tables=toy_tables, tests=toy_tests)   # emits toy_runs, declares nothing
    monkeypatch.setattr(pipeline, "TOPICS", (*pipeline.TOPICS, undeclared))
    study = write_study(tmp_path, [Condition("flip", absorber="bird")], seeds=2)
    data = load(str(study))
    with pytest.raises(ValueError, match=r"topic 'undeclared' emits tests.csv rows of test ids it does not declare "
                                         r"in its test_ids: toy_runs"):
        pipeline.statistics(Inputs(data, inference.by_condition(data)))


@pytest.mark.parametrize("axis, tables", [("class_intervention", {"causal_pairs", "causal_dose"}),
                                          ("activation", {"factor_pairs", "factors"})])
def test_every_topic_makes_its_tables_without_taking_anothers_name(tmp_path, axis, tables):
    """statistics refuses a table name a second topic makes; these studies exercise every topic."""
    design = Design(k=5, seeds=4, axis=axis, arms=2, n_noise=200, families=("gaussian", "uniform", "oe_gaussian",
                                                                            "rademacher"))
    data = load(str(write_null_study(tmp_path, design, Effects())))
    frames, _ = pipeline.statistics(Inputs(data, inference.by_condition(data)))
    assert tables | {"runs", "consistency", "edge_frequency", "clutter", "ood", "amplitude", "literature", "scoreboard",
                     "tests", "accuracy_guard"} <= set(frames)


def test_a_table_name_another_topic_has_is_refused(tmp_path, monkeypatch):
    clash = Topic("clash", tables=lambda inputs, frames: {"absorbers": pd.DataFrame({"x": [1]})})
    monkeypatch.setattr(pipeline, "TOPICS", (*pipeline.TOPICS, clash))
    study = write_study(tmp_path, [Condition("flip", absorber="bird")], seeds=2)
    data = load(str(study))
    with pytest.raises(ValueError, match=r"topic 'clash' makes tables another already has: absorbers \('core'\)"):
        pipeline.statistics(Inputs(data, inference.by_condition(data)))
