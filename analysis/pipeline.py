"""load -> tables -> tests -> plots -> report, written to a local folder or a URI."""
from __future__ import annotations

import io
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from . import inference, plots, tables
from .load import Loaded, load, open_results
from .report import write_report


def kappa_counts(data: Loaded, groups: dict[str, list[dict]], workers: int = 16) -> dict:
    """(condition, noise) -> (n_images, K) counts of the runs' per-image labels, streamed from
    each run's arrays.npz so that no more than one run's arrays are held per worker."""
    counts: dict[tuple[str, str], np.ndarray] = {}
    jobs = [(c, r) for c, runs in groups.items() for r in runs]

    def one(job):
        condition, run = job
        arrays = data.arrays(run)
        if arrays is None:
            return condition, run, {}
        return condition, run, {f: arrays[f"pred_{f}"] for f in run["families"] if f"pred_{f}" in arrays}

    with ThreadPoolExecutor(workers) as pool:
        for condition, run, preds in pool.map(one, jobs):
            k = len(run["classes"])
            for f, pred in preds.items():
                key = (condition, f)
                if key not in counts:
                    counts[key] = np.zeros((len(pred), k), dtype=np.int32)
                if counts[key].shape != (len(pred), k):
                    continue  # a bank of another size: cannot be compared image by image
                np.add.at(counts[key], (np.arange(len(pred)), pred.astype(np.int64)), 1)
    return counts


def aggregate(results: str, out: str | None = None) -> str:
    """Aggregate a study folder (local or URI) into CSVs, PNGs and report.md under `out`
    (default: <results>/report). Returns a one-paragraph summary."""
    data = load(results)
    if out is None:  # <the study folder>/report, as a URI when the results came as one
        _, given = open_results(results)
        out = _join(results, data.root[len(given.rstrip("/")):].lstrip("/") + "/report") \
            if "://" in results else f"{data.root}/report"
    groups = inference.by_condition(data)

    frames = {"runs": tables.runs_table(data), "absorption": tables.absorption_table(data),
              "absorbers": tables.absorbers_table(data), "heldout": tables.heldout_table(data),
              "mst_edges": tables.mst_edges_table(data), "trajectory": tables.trajectory_table(data)}
    consistency, tests = inference.consistency(groups, kappa_counts(data, groups))
    dependence, notes = inference.condition_dependence(groups)
    edge_freq, _, geometry_tests = inference.geometry(groups)
    test_rows = tests + dependence + geometry_tests + inference.clutter(groups)
    frames.update({"consistency": consistency, "edge_frequency": edge_freq,
                   "tests": inference.finalize(test_rows), "problems": tables.problems_table(data)})
    consensus = inference.consensus_trees(edge_freq) if len(edge_freq) else {}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        figures = [f for f in _figures(frames, groups, consensus, folder) if f]
        names = []
        for name, df in frames.items():
            df.to_csv(folder / f"{name}.csv", index=False)
            names.append(f"{name}.csv")
        name = (data.study or {}).get("name") or Path(data.root).name
        report = write_report({"name": name, "root": results, "runs": frames["runs"],
                               "problems": frames["problems"], "consistency": consistency,
                               "tests": frames["tests"], "notes": notes, "edge_freq": edge_freq,
                               "consensus": consensus, "heldout": frames["heldout"],
                               "trajectory": frames["trajectory"], "figures": figures, "tables": names})
        (folder / "report.md").write_text(report)
        _upload(folder, out)
    n_done = int((frames["runs"]["status"] == "completed").sum()) if len(frames["runs"]) else 0
    return (f"aggregated {len(data.runs)} runs ({n_done} completed) from {results}; "
            f"{len(frames['problems'])} problem(s); report: {out}/report.md")


def _figures(frames, groups, consensus, folder: Path) -> list:
    figures = []
    if len(frames["absorption"]):
        figures += [plots.absorption_heatmap(frames["absorption"], folder),
                    plots.absorber_frequency(frames["absorbers"], {c: r[0]["classes"] for c, r in groups.items()}, folder),
                    plots.consensus_mst(consensus, folder)]
        distances = {c: tables.mean_distance(runs, "gaussian") for c, runs in groups.items()
                     if "gaussian" in inference.families_of(runs)}
        figures.append(plots.distance_heatmap(distances, folder))
    figures += [plots.trajectory(frames["trajectory"], folder), plots.accuracy_strip(frames["runs"], folder)]
    return figures


def _join(uri: str, name: str) -> str:
    base, sep, query = uri.partition("?")
    return f"{base.rstrip('/')}/{name.lstrip('/')}{sep}{query}"


def _upload(folder: Path, out: str) -> None:
    fs, path = open_results(out)
    fs.create_dir(path, recursive=True)
    for file in sorted(folder.iterdir()):
        with fs.open_output_stream(f"{path}/{file.name}") as f:
            f.write(file.read_bytes())
