"""load -> tables -> tests -> plots -> report, written to a local folder or a URI."""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from . import causal, core, document, explanations, factors, guard, inference, plots, report, tables, why
from .contract import AGGREGATION_JSON, COMPLETED, REPORT_DIR, join_uri, open_filesystem
from .load import Loaded, check_same_study, load, load_many, open_study
from .revision import AT_IMPORT
from .storage import check_writable
from .topic import Inputs, Topic, report_sections

REPORT_MD, REPORT_HTML = "report.md", "report.html"
# the topics (analysis/topic.py) in the order their tables and tests are made, their sections read
# and their Methods paragraphs joined; a topic may read the tables of those before it
TOPICS: tuple[Topic, ...] = (core.TOPIC, why.TOPIC, causal.TOPIC, factors.TOPIC, explanations.TOPIC)


def read_arrays(data: Loaded, groups: dict[str, list[dict]], gallery: list[str],
                workers: int = 16) -> tuple[dict, dict]:
    """One pass over the runs' arrays.npz, read in parallel one condition at a time (so at most
    one condition's arrays are in memory): (condition, noise) -> (n_images, K) counts of the runs'
    per-image labels, for the kappas; and, for the conditions in `gallery`, their mean images."""
    counts: dict[tuple[str, str], np.ndarray] = {}
    images: dict[str, tables.MeanImages] = {}

    def needed(run, pictures: bool):
        arrays = data.arrays(run)
        if arrays is None:
            return None
        return {k: v for k, v in arrays.items() if k.startswith("pred_")
                or (pictures and (k.startswith("noise_mean_") or k == "class_mean_images"))}

    with ThreadPoolExecutor(workers) as pool:
        for condition, runs in groups.items():
            pictures = condition in gallery
            arrays = list(pool.map(lambda r: needed(r, pictures), runs))  # noqa: B023  (all read in this iteration)
            if pictures:
                images[condition] = tables.mean_images(runs, arrays)
            k = len(runs[0]["classes"])
            for f in runs[0]["families"]:
                stack = [a[f"pred_{f}"] for a in arrays if a is not None and f"pred_{f}" in a]
                sizes = {len(x) for x in stack}
                if len(sizes) != 1:
                    continue  # banks of different sizes cannot be compared image by image
                stack = np.stack(stack)                                   # (runs, images)
                counts[(condition, f)] = np.stack([(stack == c).sum(0) for c in range(k)], axis=1)
    return counts, images


def catalog_of_test_ids(topics: tuple[Topic, ...] | None = None) -> dict[str, tuple[str, str]]:
    """Every test id of the topics (default: TOPICS) -> (its table, what a small p says): the
    catalog README's table of test ids is checked against. An id belongs to one topic."""
    catalog: dict[str, tuple[str, str]] = {}
    for topic in TOPICS if topics is None else topics:
        taken = sorted(set(topic.test_ids) & set(catalog))
        if taken:
            raise ValueError(f"topic {topic.name!r} declares test ids another topic has: {', '.join(taken)}")
        catalog.update(topic.test_ids)
    return catalog


def statistics(inputs: Inputs, weak_margin: float = guard.WEAK_MARGIN) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Every table of a study, by name (tests.csv as `tests`), and the notes the report prints. The
    topics' tables first, then their tests, corrected together under the weak-network guard
    (`accuracy_guard`), then the tables the topics read off the corrected tests. The one path from
    loaded runs to p-values: aggregate() writes its tables, and the whole-pipeline calibration
    (analysis/calibration.py) runs it on hundreds of simulated studies."""
    frames: dict[str, pd.DataFrame] = {}
    owner: dict[str, str] = {}

    def add(by: str, made: dict[str, pd.DataFrame]) -> None:
        # a topic may remake its own table (the core marks consistency's weak conditions), never take
        # another's: its file would overwrite theirs
        taken = {name: owner[name] for name in made if owner.setdefault(name, by) != by}
        if taken:
            raise ValueError(f"topic {by!r} makes tables another already has: "
                             + ", ".join(f"{name} ({other!r})" for name, other in taken.items()))
        frames.update(made)

    for topic in TOPICS:
        add(topic.name, topic.tables(inputs, frames))
    rows, notes = [], []
    for topic in TOPICS:
        found = topic.tests(inputs, frames)
        undeclared = sorted({r["test"] for r in found.rows} - {t for t, (table, _) in topic.test_ids.items()
                                                                  if table == "tests"})
        if undeclared:  # an id no catalog names would reach tests.csv unexplained and uncalibrated
            raise ValueError(f"topic {topic.name!r} emits tests.csv rows of test ids it does not declare in its "
                             f"test_ids: {', '.join(undeclared)}")
        add(topic.name, found.tables)
        rows += found.rows
        notes += found.notes
    accuracy = guard.accuracy_guard(inputs.groups, weak_margin)
    add("pipeline", {"accuracy_guard": accuracy,
                     "tests": inference.finalize(rows, guard.weak_conditions(accuracy), set(inputs.groups))})
    for topic in TOPICS:
        add(topic.name, topic.summaries(inputs, frames))
    return frames, notes


def aggregate(results: str | list[str], out: str | None = None, log: Callable[[str], None] | None = print,
              weak_margin: float = guard.WEAK_MARGIN) -> str:
    """Aggregate a study folder (local or URI) into CSVs, PNGs, report.md and report.html under `out`
    (default: <results>/report). Several folders are the parts of one study (load.load_many; the
    default `out` is then the first one's report folder). Returns a one-paragraph summary; `log`
    gets a progress line per stage, with its counts and the seconds since the start (None: silent)."""
    parts = [results] if isinstance(results, str) else list(results)
    sources = [open_study(r) for r in parts]  # an unusable RESULTS or --out ends here, before any work
    if len(parts) > 1:
        check_same_study(sources)
    results, src = parts[0], sources[0]
    where = "--out"
    if out is None:  # <the study folder>/report, as a URI when the results came as one
        _, given = open_filesystem(results)
        out = join_uri(results, src.root[len(given.rstrip("/")):], REPORT_DIR) \
            if "://" in results else join_uri(src.root, REPORT_DIR)
        where = "report folder (RESULTS/report; choose another with --out)"
    check_writable(out, where, "a writable folder or a bucket URI")
    progress = _Progress(log)
    progress(f"loading {sum(len(s.dirs) for s in sources)} trial folders from {', '.join(parts)}")
    data = load(src) if len(parts) == 1 else load_many(parts)
    progress(f"loaded {len(data.runs)} runs ({sum(r['status'] == 'completed' for r in data.runs)} completed); "
             f"{len(data.problems)} trial folder(s) with problems")
    groups = inference.by_condition(data)
    progress(f"reading the arrays of {sum(len(r) for r in groups.values())} runs in {len(groups)} conditions")
    label_counts, gallery = read_arrays(data, groups, list(groups)[:plots.MAX_GALLERY_CONDITIONS])
    inputs = Inputs(data, groups, label_counts, gallery)
    frames, notes = statistics(inputs, weak_margin)
    progress(f"tables: {len(frames)} ({sum(len(f) for f in frames.values())} rows); tests: {len(frames['tests'])} in "
             "tests.csv; drawing figures")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        figures = [f for topic in TOPICS for f in topic.figures(inputs, frames, folder)]
        progress(f"figures: {len(figures)} drawn; writing {len(frames)} tables and the report")
        for name, df in frames.items():
            write_table(df, folder / name)
        name = (data.study or {}).get("name") or Path(data.root).name
        ctx = report.ReportContext(name=name, root=" + ".join(parts), frames=frames, figures=figures, notes=notes)
        built = report.build(ctx, report_sections(TOPICS), [topic.methods() for topic in TOPICS])
        (folder / REPORT_MD).write_text(document.to_markdown(built))
        (folder / REPORT_HTML).write_text(document.to_html(built, folder))
        (folder / AGGREGATION_JSON).write_text(json.dumps(aggregation_record(parts, data, weak_margin), indent=1))
        progress(f"writing {len(list(folder.iterdir()))} files to {out}")
        _upload(folder, out)
    n_done = int((frames["runs"]["status"] == COMPLETED).sum()) if len(frames["runs"]) else 0
    return (f"aggregated {len(data.runs)} runs ({n_done} completed) from {' + '.join(parts)}; "
            f"{len(frames['problems'])} problem(s); report: {out}/{REPORT_MD} and {REPORT_HTML}")


def aggregation_record(parts: list[str], data: Loaded, weak_margin: float) -> dict:
    """What aggregated these tables: the code (its commit, whether the tree had changes, a digest of
    its sources), the libraries that compute the statistics, the parts read and their runs, the
    guard's rule. A table whose numbers a later fix changes is then traceable to the code before it
    (tests/test_claims.py demands this file of every committed results folder)."""
    libs = {}
    for name in ("numpy", "pandas", "scipy", "statsmodels", "networkx"):
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = None
    return {"code_revision": dict(AT_IMPORT), "libraries": libs, "sources": parts,
            "runs": len(data.runs), "completed": sum(r["status"] == COMPLETED for r in data.runs),
            "weak_margin": weak_margin, "aggregated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class _Progress:
    """A line per stage of the aggregation, prefixed with the seconds since it began."""

    def __init__(self, log: Callable[[str], None] | None):
        self.log, self.started = log, time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.log is not None:
            self.log(f"[aggregate {time.perf_counter() - self.started:7.1f} s] {message}")


def write_table(df: pd.DataFrame, stem: Path) -> None:
    """<stem>.csv for any tool, and <stem>.parquet beside it, which keeps the dtypes (categories,
    integers with gaps) and reads back in a fraction of the time. pyarrow writes both: several times
    faster than pandas' CSV writer for million-row tables."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    plain = df.astype({c: str for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)})
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # a column of mixed types (a grid axis such as [null, 3000, all]): its values as text
        table = pa.Table.from_pandas(_mixed_as_text(df), preserve_index=False)
        plain = _mixed_as_text(plain)
    pq.write_table(table, stem.with_suffix(".parquet"))
    pacsv.write_csv(pa.Table.from_pandas(plain, preserve_index=False), stem.with_suffix(".csv"))


def _mixed_as_text(df: pd.DataFrame) -> pd.DataFrame:
    def missing(v):
        return v is None or (isinstance(v, float) and np.isnan(v))
    mixed = [c for c in df.columns if df[c].dtype == object and len({type(v) for v in df[c] if not missing(v)}) > 1]
    return df.assign(**{c: df[c].map(lambda v: None if missing(v) else str(v)) for c in mixed})


def _upload(folder: Path, out: str) -> None:
    fs, path = open_filesystem(out)
    fs.create_dir(path, recursive=True)
    for file in sorted(folder.iterdir()):
        with fs.open_output_stream(f"{path}/{file.name}") as f:
            f.write(file.read_bytes())
