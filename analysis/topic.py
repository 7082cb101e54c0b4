"""A topic of the analysis: the tables, tests, figures, report sections and Methods of one question.

Each topic module exposes one `Topic` as `TOPIC`: analysis/core.py (what every trial records: the
absorbers, the trees, training, the runs), analysis/why.py, analysis/causal.py, analysis/factors.py
and analysis/explanations.py. analysis/pipeline.py holds the one ordered list, `pipeline.TOPICS`, and
runs every topic through each phase in turn, in its order:

1. `tables(inputs, frames)`: the topic's tables from the loaded runs;
2. `tests(inputs, frames)`: its tests.csv rows, with any table made on the way and notes for the
   report (`Findings`); pipeline.statistics corrects every topic's rows together (inference.finalize);
3. `summaries(inputs, frames)`: tables read off the corrected tests.csv (the factor table, the
   scoreboard);
4. `figures(inputs, frames, folder)`: the PNGs it draws there, by file name;
5. the report: every topic's `sections`, then every topic's `closing` sections (the runs and their
   problems, then the scoreboard, which weighs every topic's tests, end the report), each a
   function of report.ReportContext; the Methods join every topic's `methods` paragraph.

So the list fixes the order of everything a topic adds: its tables among the files, its rows in
tests.csv, its figures, its sections, its paragraph. `frames` holds every table made so far, by
name (the file stem it is written under): a topic's tables may read those of the topics before it
(explanations' literature table reads why's OOD table); its tests, summaries and figures read every
topic's. A name belongs to one topic (pipeline.statistics refuses a second), and every table in
`frames` is written: a topic whose tables exist only where the trials measured something returns
them through `measured`, and reads such a table of another topic with `frames.get`. Adding a topic
is writing its module with a `TOPIC` (its test ids declared in `test_ids`) and putting it in the
list; README's table of test ids is checked against every topic's (pipeline.catalog_of_test_ids).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .load import Loaded
from .report import SectionFn
from .tables import MeanImages

Frames = Mapping[str, pd.DataFrame]


@dataclass(frozen=True)
class Inputs:
    """What every topic reads besides the tables: the loaded study, its completed runs by condition
    (inference.by_condition), and what the one pass over the runs' arrays gave (pipeline.read_arrays;
    empty where it was not made, as in the calibration's simulated studies)."""
    data: Loaded
    groups: dict[str, list[dict]]
    label_counts: Mapping[tuple[str, str], np.ndarray] = field(default_factory=dict)  # for the kappas
    mean_images: Mapping[str, MeanImages] = field(default_factory=dict)               # for the galleries


@dataclass(frozen=True)
class Findings:
    """A topic's tests: tests.csv rows (inference.result_row, before the corrections), the tables
    made on the way (the core's consistency and edge frequencies), and caveats the report prints."""
    rows: list[dict] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Topic:
    """One question of the analysis, each part a function the pipeline calls (see the module)."""
    name: str
    tables: Callable[[Inputs, Frames], dict[str, pd.DataFrame]] = lambda inputs, frames: {}
    tests: Callable[[Inputs, Frames], Findings] = lambda inputs, frames: Findings()
    summaries: Callable[[Inputs, Frames], dict[str, pd.DataFrame]] = lambda inputs, frames: {}
    figures: Callable[[Inputs, Frames, Path], list[str]] = lambda inputs, frames, folder: []
    sections: tuple[SectionFn, ...] = ()
    closing: tuple[SectionFn, ...] = ()
    # authored markdown (report.methods_text), built when called so that it quotes the current settings
    methods: Callable[[], str] = lambda: ""
    # the test ids its tests emit -> (the table they are written to, what a small p says): a row of
    # an id its topic does not declare is refused (pipeline.statistics)
    test_ids: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def measured(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables with rows: a study that did not measure a thing has no table of it."""
    return {name: df for name, df in tables.items() if not df.empty}


def report_sections(topics: Sequence[Topic]) -> list[SectionFn]:
    """The report's sections in reading order: every topic's sections, then every topic's closing ones."""
    return [s for t in topics for s in t.sections] + [s for t in topics for s in t.closing]
