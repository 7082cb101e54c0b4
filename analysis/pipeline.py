"""load -> tables -> tests -> plots -> report, written to a local folder or a URI."""
from __future__ import annotations

import json
import tempfile
import time
from importlib import metadata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import causal, document, factors, guard, hypotheses, inference, plots, report, tables, trees, why
from .contract import AGGREGATION_JSON, COMPLETED, REPORT_DIR, join_uri, open_filesystem
from .load import Loaded, check_same_study, load, load_many, open_study
from .revision import AT_IMPORT
from .storage import check_writable


REPORT_MD, REPORT_HTML = "report.md", "report.html"
# the report's sections in reading order (each a function of report.ReportContext); add a new one here
REPORT_SECTIONS = (report.absorber_section, report.condition_section, report.mst_section, report.distance_section,
                   report.heldout_section, report.trajectory_section, report.learned_images_section,
                   why.report_section, causal.report_section, factors.report_section, hypotheses.probes_section,
                   report.problems_section, hypotheses.scoreboard_section)


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
            arrays = list(pool.map(lambda r: needed(r, pictures), runs))
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


def statistics(data: Loaded, groups: dict[str, list[dict]], counts: dict | None = None,
               frames: dict | None = None, weak_margin: float = guard.WEAK_MARGIN) -> dict:
    """Every test of a study: `tests` (tests.csv), `edge_frequency` (the per-edge MST tests),
    `consistency`, `absorber_distribution`, `causal_pairs`, `causal_dose`, `factor_pairs`, and
    the `notes` the report prints. The one path from loaded runs to p-values: aggregate() writes
    its tables, and the whole-pipeline calibration (analysis/calibration.py) runs it on hundreds of
    simulated studies. `counts`: per-image labels for the kappas (read_arrays; None leaves the
    kappas out, which no test uses); `frames`: the `absorbers`, `clutter`, `logit_decomposition`,
    `ood`, `amplitude` and `batchnorm` tables where already made (else made here)."""
    frames = dict(frames or {})
    for name, make in (("absorbers", tables.absorbers_table), ("clutter", why.clutter_table),
                       ("logit_decomposition", why.decomposition_table), ("ood", why.ood_table),
                       ("amplitude", hypotheses.amplitude_table), ("batchnorm", hypotheses.batchnorm_table)):
        if name not in frames:
            frames[name] = make(data)
    consistency, distribution, tests = inference.consistency(groups, counts or {})
    dependence, notes = inference.condition_dependence(groups)
    edge_freq, geometry_tests = inference.tree_tests(groups)
    pairs = causal.pairs_table(data)
    factor_pairs = factors.pairs_table(data)
    rows = (tests + dependence + inference.accuracy_trends(groups) + geometry_tests + why.clutter_tests(groups) + why.lookalike_tests(frames)
            + why.intervention_tests(data) + causal.causal_tests(pairs)
            + factors.factor_tests(factor_pairs) + factors.favourite_tests(groups) + hypotheses.tests_of_study(frames))
    accuracy = guard.accuracy_guard(groups, weak_margin)
    weak = guard.weak_conditions(accuracy)
    consistency["too_weak"] = [c in weak for c in consistency["condition"]] if len(consistency) else []
    return {"tests": inference.finalize(rows, weak, set(groups)), "accuracy_guard": accuracy, "edge_frequency": edge_freq,
            "consistency": consistency,
            "absorber_distribution": distribution, "causal_pairs": pairs, "causal_dose": causal.dose_table(pairs),
            "factor_pairs": factor_pairs, "notes": notes}


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

    frames = {"runs": tables.runs_table(data), "absorption": tables.absorption_table(data),
              "absorbers": tables.absorbers_table(data), "heldout": tables.heldout_table(data),
              "mst_edges": tables.mst_edges_table(data), "trajectory": tables.trajectory_table(data)}
    progress(f"tables: {sum(len(f) for f in frames.values())} rows; reading the arrays of "
             f"{sum(len(r) for r in groups.values())} runs in {len(groups)} conditions")
    label_counts, gallery = read_arrays(data, groups, list(groups)[:plots.MAX_GALLERY_CONDITIONS])
    why_frames = {"clutter": why.clutter_table(data), "logit_decomposition": why.decomposition_table(data),
                  "ood": why.ood_table(data), "frequency": why.frequency_table(data)}
    why_frames["ood_summary"] = why.ood_summary(why_frames["ood"])
    probe_frames = {"amplitude": hypotheses.amplitude_table(data), "batchnorm": hypotheses.batchnorm_table(data),
                    "handover": hypotheses.handover_table(data), "literature": hypotheses.literature_table(why_frames["ood"])}
    tested = statistics(data, groups, label_counts, {"absorbers": frames["absorbers"], **why_frames, **probe_frames},
                        weak_margin=weak_margin)
    consistency, edge_freq, notes = tested["consistency"], tested["edge_frequency"], tested["notes"]
    pairs, doses, factor_pairs = tested["causal_pairs"], tested["causal_dose"], tested["factor_pairs"]
    frames.update({"consistency": consistency, "absorber_distribution": tested["absorber_distribution"],
                   "edge_frequency": edge_freq, "tests": tested["tests"], "problems": tables.problems_table(data),
                   "accuracy_guard": tested["accuracy_guard"]})
    frames.update({k: v for k, v in why_frames.items() if not v.empty})
    frames.update({k: v for k, v in probe_frames.items() if not v.empty})
    frames["scoreboard"] = hypotheses.scoreboard(frames["tests"], list(groups), {**probe_frames, **why_frames})
    if not pairs.empty:
        frames.update({"causal_pairs": pairs, "causal_dose": doses})
    factor_table = factors.factor_table(factor_pairs, frames["tests"])
    if not factor_pairs.empty:
        frames.update({"factor_pairs": factor_pairs, "factors": factor_table})
    consensus = trees.consensus_trees(edge_freq) if len(edge_freq) else {}
    progress(f"tests: {len(frames['tests'])} in tests.csv, {len(edge_freq)} MST edges; drawing figures")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        figures = [f for f in _figures(frames, groups, consensus, gallery, folder) if f]
        with_why = {**frames, **why_frames}  # frames keeps only the non-empty why tables
        figures += why.plots(with_why, folder, groups)
        figures += [f for f in [causal.plot(doses, folder)] if f]
        figures += hypotheses.plots(probe_frames, folder)
        progress(f"figures: {len(figures)} drawn; writing {len(frames)} tables and the report")
        for name, df in frames.items():
            write_table(df, folder / name)
        name = (data.study or {}).get("name") or Path(data.root).name
        ctx = report.ReportContext(name=name, root=" + ".join(parts), frames=frames, figures=figures, consensus=consensus,
                                   notes=notes)
        built = report.build(ctx, REPORT_SECTIONS)
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


def _figures(frames, groups, consensus, gallery, folder: Path) -> list:
    figures = []
    if len(frames["absorption"]):
        figures += [plots.absorption_heatmap(frames["absorption"], folder),
                    plots.absorber_frequency(frames["absorbers"], {c: r[0]["classes"] for c, r in groups.items()}, folder),
                    plots.consensus_mst(consensus, folder)]
        shown = [c for c, runs in groups.items() if "gaussian" in inference.families_of(runs)]
        distances = {c: tables.mean_distance(groups[c], "gaussian") for c in shown[:plots.MAX_PANELS]}
        figures.append(plots.distance_heatmap(distances, folder))
    figures += [plots.trajectory(frames["trajectory"], folder), plots.absorber_strips(frames["trajectory"], folder),
                plots.accuracy_strip(frames["runs"], folder)]
    families = dict.fromkeys(f for g in gallery.values() for f in g.noise)
    figures += [plots.mean_image_gallery(gallery, f, folder) for f in families]
    return figures


def _upload(folder: Path, out: str) -> None:
    fs, path = open_filesystem(out)
    fs.create_dir(path, recursive=True)
    for file in sorted(folder.iterdir()):
        with fs.open_output_stream(f"{path}/{file.name}") as f:
            f.write(file.read_bytes())
