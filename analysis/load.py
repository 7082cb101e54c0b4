"""Read a study's trial artifacts (local folder or URI) into compact run records + problems.

Only the trials' own artifacts are read (study.json, <trial>/trial.json, <trial>/arrays.npz),
never Tune's progress.csv. Every folder that cannot be used ends up in `problems` with the reason;
the rest is aggregated. No torch here.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from .contract import (
    ARRAYS_NPZ,
    COMPLETED,
    FINAL_STATUSES,
    PROBED,
    READABLE_SCHEMAS,
    REPORT_DIR,
    RUN_ONLY_KEYS,
    STUDY_JSON,
    TRIAL_JSON,
    TUNE_ERROR_TXT,
    config_changes,
    config_digest,
    open_filesystem,
    show_value,
)
from .errors import InputError

NOT_TRIALS = {REPORT_DIR}
# config keys that do not change what is measured (where, how fast): never part of a condition
NON_SEMANTIC = {"seed", *RUN_ONLY_KEYS}
REQUIRED = ("schema", "status", "config", "seed", "classes")
REQUIRED_COMPLETED = ("test_accuracy", "absorption", "absorber", "mst", "distance", "trajectory")


def read_bytes(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def condition_label(axes: dict) -> str:
    """`classes=cat.dog, augmentation=flip`; `default` when only seeds vary."""
    parts = [f"{k}={show_value(v)}" for k, v in axes.items() if k != "seed"]
    return ", ".join(parts) if parts else "default"


@dataclass
class Loaded:
    root: str
    study: dict | None
    axes: list[str]                 # grid axes (seed included when it is one)
    runs: list[dict] = field(default_factory=list)       # completed or diverged, one per grid point
    problems: list[dict] = field(default_factory=list)   # trial_id, reason, action
    fs: pafs.FileSystem | None = None
    _bad_arrays: set = field(default_factory=set)        # trials whose arrays.npz was refused
    # a study merged from several folders (load_many): each run's `source` -> (fs, root)
    sources: dict = field(default_factory=dict)

    def arrays(self, run: dict) -> dict[str, np.ndarray] | None:
        """The run's arrays.npz, checked against the sha256 trial.json records, or None with a
        problem (one per trial, however often its arrays are asked for)."""
        tid = run["trial_id"]
        if tid in self._bad_arrays:
            return None
        fs, root = self.sources.get(run.get("source"), (self.fs, self.root))
        try:
            data = read_bytes(fs, f"{root}/{tid}/{ARRAYS_NPZ}")
            if not run.get("arrays_sha256"):
                raise _Unusable("trial.json records no sha256 for arrays.npz, so it cannot be verified")
            if hashlib.sha256(data).hexdigest() != run["arrays_sha256"]:
                raise _Unusable("arrays.npz does not match the sha256 in trial.json (torn or altered)")
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (_Unusable, OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            reason = str(e) if isinstance(e, _Unusable) else f"arrays.npz unreadable ({type(e).__name__}: {e})"
            self._bad_arrays.add(tid)
            self.problems.append({"trial_id": tid, "reason": reason, "action": "arrays ignored"})
            return None


class _Unusable(ValueError):
    """A trial artifact the aggregation must not use; the message is the problem's reason."""


def _refuse_constant(name: str):
    """json.loads accepts NaN and Infinity, which no JSON writer of ours emits (non-finite values
    are written as null): a file holding them was written or edited by something else."""
    raise _Unusable(f"trial.json holds {name}, which is not JSON (this project writes null for a "
                    "missing or non-finite value)")


def _unit_interval(values, what: str) -> None:
    x = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(x)) or x.min(initial=0) < 0 or x.max(initial=0) > 1:
        raise _Unusable(f"trial.json's {what} has values outside [0, 1] or missing")


def _plausible(run: dict) -> None:
    """What the statistics take for granted: shares and accuracies in [0, 1], each noise family's
    shares summing to 1, finite distances, absorbers among the classes."""
    classes = run["classes"]
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) for c in classes):
        raise _Unusable(f"trial.json's classes are not >= 2 distinct names: {classes!r}")
    if run["trajectory"].size:
        _unit_interval(run["trajectory"], "trajectory")
    if run["status"] != COMPLETED:
        return
    _unit_interval([run["test_accuracy"]], "test_accuracy")
    _unit_interval(run["absorption"], "absorption")
    off = np.abs(run["absorption"].sum(axis=1) - 1)
    if off.max(initial=0) > 1e-3:
        raise _Unusable(f"trial.json's absorption of {run['families'][int(off.argmax())]} does not sum to 1")
    _unit_interval(run["top_share"], "absorber top_share")
    _unit_interval(run["entropy_norm"], "absorber entropy_norm")
    if not np.all(np.isfinite(run["distance"])) or run["distance"].min(initial=0) < 0:
        raise _Unusable("trial.json's distance matrices hold negative or missing values")
    stray = [a for a in run["absorber"] if a not in classes]
    if stray:
        raise _Unusable(f"trial.json names absorber {stray[0]!r}, which is not one of its classes")


def _compact(trial_id: str, t: dict) -> dict:
    """The parts of a trial.json the aggregation uses, as small numpy arrays."""
    classes = list(t["classes"])
    run = {"trial_id": trial_id, "status": t["status"], "seed": int(t["seed"]),
           "config": t["config"], "classes": classes,
           "heldout_classes": list(t.get("heldout_classes") or []),
           "test_accuracy": t.get("test_accuracy"), "n_test": t.get("n_test"), "tta_accuracy": t.get("tta_accuracy"),
           "train_seconds": (t.get("timing") or {}).get("train_seconds"),
           "arrays_sha256": (t.get("arrays") or {}).get("sha256"), "config_digest": t.get("config_digest"),
           "warnings": t.get("warnings") or [],
           "diverged_at_epoch": t.get("diverged_at_epoch"),
           # the weights file of a probed checkpoint (`noisesink probe`), None for a training
           "checkpoint": (t.get("checkpoint") or {}).get("path") if t.get("source") == PROBED else None}
    traj = t.get("trajectory") or []
    run["trajectory_epochs"] = np.array([p["epoch"] for p in traj], dtype=int)
    run["trajectory"] = np.array([[p["shares"].get(c, 0.0) for c in classes] for p in traj], dtype=float)
    if t["status"] != COMPLETED:
        return run
    families = list(t.get("noise_families") or t["absorption"].keys())
    run["families"] = families
    run["absorption"] = np.array([[t["absorption"][f][c] for c in classes] for f in families])
    run["absorber"] = [t["absorber"][f]["absorber"] for f in families]
    run["top_share"] = np.array([t["absorber"][f]["top_share"] for f in families])
    run["entropy_norm"] = np.array([t["absorber"][f]["entropy_norm"] for f in families])
    run["mean_max_softmax"] = np.array([t["absorber"][f].get("mean_max_softmax", np.nan) for f in families])
    # the absorber's own mean probability (trials before it was recorded: NaN)
    run["absorber_softmax"] = np.array([t["absorber"][f].get("absorber_softmax", np.nan) for f in families])
    run["mst"] = [[(u, v, float(w)) for u, v, w in t["mst"][f]] for f in families]
    run["distance"] = np.array([t["distance"][f]["matrix"] for f in families], dtype=float)
    run["nodes"] = list(t["distance"][families[0]]["nodes"])
    run["heldout"] = t.get("heldout") or {}
    run["n_noise"] = int(t["config"]["n_noise"])
    run["extra"] = {k: t[k] for k in ("clutter", "logit_decomposition", "ood", "frequency",
                                      "intervention", "amplitude", "batchnorm") if k in t}
    return run


def _load_one(fs, root: str, trial_id: str):
    """(compact run, None) or (None, problem)."""
    path = f"{root}/{trial_id}/{TRIAL_JSON}"
    try:
        raw = read_bytes(fs, path)
    except FileNotFoundError:
        reason = "no trial.json (the trial did not finish)"
        try:
            err = read_bytes(fs, f"{root}/{trial_id}/{TUNE_ERROR_TXT}").decode(errors="replace").strip().splitlines()
            reason += f"; Tune's error.txt: {err[-1][:300] if err else ''}"
        except OSError:
            pass
        return None, {"trial_id": trial_id, "reason": reason, "action": "excluded"}
    except OSError as e:
        return None, {"trial_id": trial_id, "reason": f"trial.json unreadable ({e})", "action": "excluded"}
    try:
        t = json.loads(raw, parse_constant=_refuse_constant)
    except _Unusable as e:
        return None, {"trial_id": trial_id, "reason": str(e), "action": "excluded"}
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        return None, {"trial_id": trial_id, "reason": f"trial.json is truncated or not JSON ({type(e).__name__}: {e})",
                      "action": "excluded"}
    if not isinstance(t, dict):
        return None, {"trial_id": trial_id, "reason": "trial.json is not a JSON object", "action": "excluded"}
    missing = [k for k in REQUIRED if k not in t]
    if not missing and t["schema"] not in READABLE_SCHEMAS:  # another layout: misread numbers are worse than none
        return None, {"trial_id": trial_id, "reason": f"trial.json schema {t['schema']!r} is not one this "
                      f"aggregation reads ({', '.join(map(str, READABLE_SCHEMAS))}); aggregate it with the "
                      "noisesink release that wrote it", "action": "excluded"}
    if not missing and t["status"] == COMPLETED:
        missing = [k for k in REQUIRED_COMPLETED if k not in t]
    if missing:
        return None, {"trial_id": trial_id, "reason": f"trial.json lacks {', '.join(missing)}",
                      "action": "excluded"}
    if t["status"] not in FINAL_STATUSES:
        return None, {"trial_id": trial_id, "reason": f"status {t['status']!r}", "action": "excluded"}
    try:
        run = _compact(trial_id, t)
        _plausible(run)
        return run, None
    except _Unusable as e:
        return None, {"trial_id": trial_id, "reason": str(e), "action": "excluded"}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        return None, {"trial_id": trial_id, "reason": f"trial.json malformed ({type(e).__name__}: {e})",
                      "action": "excluded"}


STUDY_HELP = ("a study folder written by `python -m study sweep` (<storage>/<name>, holding study.json "
              "and one folder per trial), local or s3://bucket/prefix, gs://bucket/prefix")


def _info(fs, path: str, results: str):
    """get_file_info, with an unreachable store (endpoint, credentials, network) as an InputError."""
    if not path.strip("/"):
        raise InputError(results, "names no bucket", STUDY_HELP)
    try:
        return fs.get_file_info(path)
    except (OSError, ValueError) as e:  # pyarrow: network, credentials; ArrowInvalid for a bad path
        raise InputError(results, f"cannot reach the storage ({type(e).__name__}: {str(e).splitlines()[0]})",
                         "a reachable location; check the endpoint and credentials") from None


def _find_root(fs, path: str, results: str) -> str:
    """The study folder: RESULTS itself, or its only subfolder holding a study.json."""
    kind = _info(fs, path, results).type
    if kind == pafs.FileType.NotFound:
        raise InputError(results, "no such folder", STUDY_HELP)
    if kind != pafs.FileType.Directory:
        raise InputError(results, "is a file, not a study folder", STUDY_HELP)
    if fs.get_file_info(f"{path}/{STUDY_JSON}").type == pafs.FileType.File:
        return path
    if fs.get_file_info(f"{path}/{TRIAL_JSON}").type == pafs.FileType.File:
        raise InputError(results, f"is one trial's folder (it holds {TRIAL_JSON}), not a study",
                         "the study folder above it, " + STUDY_HELP)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    studies = [i.path for i in infos if i.type == pafs.FileType.Directory
               and fs.get_file_info(f"{i.path}/{STUDY_JSON}").type == pafs.FileType.File]
    if len(studies) == 1 and not any(fs.get_file_info(f"{i.path}/{TRIAL_JSON}").type == pafs.FileType.File
                                     for i in infos if i.type == pafs.FileType.Directory):
        return studies[0]
    if len(studies) > 1:
        raise InputError(results, f"holds several studies ({', '.join(sorted(s.rsplit('/', 1)[-1] for s in studies))})",
                         "one of them")
    return path


def _read_study(fs, root: str) -> dict | None:
    """study.json, checked for what the loader relies on; None when there is none."""
    where = f"{root}/{STUDY_JSON}"
    if fs.get_file_info(where).type != pafs.FileType.File:
        return None
    allowed = "the study.json `python -m study sweep` writes: {name, axes: [...], points: [{dir, axes}, ...]}"
    try:
        study = json.loads(read_bytes(fs, where), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, OSError, RecursionError) as e:
        raise InputError(where, f"unreadable or not JSON ({type(e).__name__}: {e})", allowed) from None
    if not isinstance(study, dict):
        raise InputError(where, "is not a JSON object", allowed)
    points, axes = study.get("points"), study.get("axes")
    if not isinstance(axes, list) or not all(isinstance(a, str) for a in axes):
        raise InputError(where, "has no list of axes", allowed, axes)
    if not isinstance(points, list) or not points:
        raise InputError(where, "lists no grid points", allowed, points)
    for i, point in enumerate(points):
        d = point.get("dir") if isinstance(point, dict) else None
        if (not isinstance(d, str) or not isinstance(point.get("axes"), dict)
                or any(part in ("", ".", "..") for part in d.split("/"))):  # never a path out of the study
            raise InputError(f"{where}: points[{i}]", "not {dir: <a folder in the study>, axes: {...}}",
                             allowed, point)
    return study


def _trial_dirs(fs, root: str, study: dict | None) -> list[str]:
    """The folders to read: every grid point of study.json and every other folder holding a
    trial.json; without a study.json, every folder (a folder without trial.json is a problem)."""
    dirs = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(root))
                  if i.type == pafs.FileType.Directory and i.base_name not in NOT_TRIALS
                  and not i.base_name.startswith("."))
    with_trial = [d for d in dirs if fs.get_file_info(f"{root}/{d}/{TRIAL_JSON}").type == pafs.FileType.File]
    if study is None:
        return dirs if with_trial else []
    # a folder that is no grid point and holds no trial.json is not a trial (e.g. Tune's folder of
    # a fused group of seeds): leave it out rather than report it
    expected = [p["dir"] for p in study["points"]]
    return sorted(set(expected) | set(with_trial))


@dataclass
class Source:
    """Where a study's artifacts are, checked before any of them is read."""
    results: str
    fs: pafs.FileSystem
    root: str
    study: dict | None
    dirs: list[str]


def open_study(results: str) -> Source:
    """RESULTS -> the study folder, its study.json and its trial folders; an unusable RESULTS (no
    such folder, a file, an unreachable URI, a malformed study.json, no study at all) is an
    InputError, raised before anything is aggregated."""
    try:
        fs, path = open_filesystem(results)
    except Exception as e:  # pyarrow: unknown scheme, malformed URI, missing credentials provider
        raise InputError(results, f"cannot open ({type(e).__name__}: {str(e).splitlines()[0]})", STUDY_HELP) from None
    root = _find_root(fs, path.rstrip("/"), results)
    study = _read_study(fs, root)
    dirs = _trial_dirs(fs, root, study)
    if not dirs:
        raise InputError(results, "holds no study: no study.json and no trial folder with a trial.json",
                         STUDY_HELP)
    return Source(results, fs, root, study, dirs)


def load(results: str | Source, workers: int = 16) -> Loaded:
    src = results if isinstance(results, Source) else open_study(results)
    fs, root, study = src.fs, src.root, src.study
    with ThreadPoolExecutor(workers) as pool:
        loaded = list(pool.map(lambda d: _load_one(fs, root, d), src.dirs))
    runs = [r for r, _ in loaded if r is not None]
    problems = [p for _, p in loaded if p is not None]
    runs = _belonging(runs, study, problems)
    expected = [p["dir"] for p in study["points"]] if study else []
    axes = list(study["axes"]) if study else _varying_keys(runs)
    out = Loaded(root=root, study=study, axes=axes, problems=problems, fs=fs)
    out.runs = _dedupe(runs, axes, expected, out.problems)
    return out


def load_many(results: list[str], workers: int = 16) -> Loaded:
    """Several folders (or URIs) holding parts of one study, aggregated as one: a study run in
    parts on several machines (`noisesink sweep ... --seeds`). Every part must be of the same study
    design: the same axes and the same config apart from the axes (a difference is refused, naming
    both folders and the first key that differs). A grid point found in two parts is counted once
    when both hold the same result (the same config digest and arrays.npz), refused otherwise.
    Each run records the folder it came from (`source`)."""
    if len(results) == 1:
        return load(results[0], workers)
    sources = [open_study(r) for r in results]
    check_same_study(sources)
    parts = [load(src, workers) for src in sources]
    first = parts[0]
    merged = Loaded(root=first.root, study=merged_study([p.study for p in parts]), axes=first.axes, fs=first.fs)
    seen: dict[str, dict] = {}
    for src, part in zip(sources, parts):
        merged.sources[src.results] = (src.fs, src.root)
        merged.problems += [{**p, "trial_id": p["trial_id"], "reason": f"{p['reason']} [{src.results}]"}
                            for p in part.problems]
        for run in part.runs:
            run["source"] = src.results
            other = seen.get(run["trial_id"])
            if other is None:
                seen[run["trial_id"]] = run
                continue
            if (other["config_digest"], other["arrays_sha256"]) != (run["config_digest"], run["arrays_sha256"]):
                raise InputError(f"{other['source']} and {src.results}", f"both hold grid point {run['trial_id']} "
                                 "with different results", "each grid point in one folder only, or the same result "
                                 "(copies of one trial) in both", run["trial_id"])
            merged.problems.append({"trial_id": run["trial_id"], "reason": f"the same result is in {other['source']} "
                                    f"and {src.results}", "action": "counted once"})
    merged.runs = sorted(seen.values(), key=lambda r: r["trial_id"])
    return merged


def check_same_study(sources: list[Source]) -> None:
    """The parts of one study: each with its study.json (what they are compared by), the same axes,
    the same config apart from the axes, and the same keys for a condition in both (an arm's)."""
    for src in sources:
        if src.study is None:
            raise InputError(src.results, "holds trials but no study.json: parts of one study are compared by "
                             "their study.json", "study folders written by `noisesink sweep` (or `noisesink export`)")
    for src in sources[1:]:
        same_design(sources[0].study, src.study, f"{sources[0].results} and {src.results}")


def same_design(a: dict, b: dict, where: str) -> None:
    """Two study.json records of one study design, or an InputError naming `where` and the first
    difference: the axes, or a key of the config outside the grid."""
    allowed = "folders of one sweep file with one config, run in parts (e.g. with --seeds)"
    if list(a["axes"]) != list(b["axes"]):
        raise InputError(where, f"are not parts of one study: their grids have different axes ({a['axes']} vs "
                         f"{b['axes']})", allowed)
    ra, rb = a.get("resolved"), b.get("resolved")
    if isinstance(ra, dict) and isinstance(rb, dict):
        # a part written before a key existed lacks it: no change where the other part holds the
        # key's before-value (either part may be the older one; the newer one's before_key knows it)
        before = {**(a.get("before_key", a.get("defaults")) or {}), **(b.get("before_key", b.get("defaults")) or {})}
        changes = config_changes(rb, ra, before)
        if changes and config_changes(ra, rb, before):
            raise InputError(where, f"are not parts of one study: their configs differ outside the grid ({changes[0]})",
                             allowed)

    def condition_keys(study):   # condition (its axes but the seed) -> the keys its points set besides
        return {json.dumps({k: v for k, v in p["axes"].items() if k != "seed"}, sort_keys=True): p.get("keys", {})
                for p in study["points"]}
    ka, kb = condition_keys(a), condition_keys(b)
    for condition in sorted(set(ka) & set(kb)):
        changes = config_changes(kb[condition], ka[condition], {})
        if changes:
            raise InputError(where, f"are not parts of one study: condition {condition} differs ({changes[0]})",
                             allowed)


def merged_study(studies: list[dict | None]) -> dict | None:
    """study.json of the whole: the first part's, with every part's grid points and axis values."""
    present = [s for s in studies if s is not None]
    if not present:
        return None
    merged = dict(present[0])
    points: dict[str, dict] = {}
    grid = {a: [] for a in merged.get("grid", {})}
    for s in present:
        for p in s["points"]:
            points.setdefault(p["dir"], p)
        for a, values in (s.get("grid") or {}).items():
            grid.setdefault(a, [])
            grid[a] += [v for v in values if v not in grid[a]]
    merged["points"], merged["grid"] = list(points.values()), grid
    merged["parts"] = [s.get("file") for s in present]
    return merged


def _belonging(runs: list[dict], study: dict | None, problems: list) -> list[dict]:
    """The runs whose config is their grid point's in study.json (its `resolved` config with the
    point's axes); a result of another config (left by an earlier run of an edited study) is a
    problem, never mixed in. Studies written before study.json held `resolved` are not checked."""
    if not study or not isinstance(study.get("resolved"), dict):
        return runs
    expected = {p["dir"]: {**study["resolved"], **p.get("keys", {}), **p["axes"]} for p in study["points"]}
    kept = []
    for run in runs:
        cfg = expected.get(run["trial_id"])
        changes = [] if cfg is None or run.get("config_digest") == config_digest(cfg) else \
            config_changes(run["config"], cfg, study.get("before_key", study.get("defaults")) or {})
        if changes:
            problems.append({"trial_id": run["trial_id"], "reason": "a result of another config than "
                             f"study.json's ({'; '.join(changes)})", "action": "excluded"})
        else:
            kept.append(run)
    return kept


def _varying_keys(runs: list[dict]) -> list[str]:
    """Without a study.json: the config keys that differ between runs are the axes."""
    if not runs:
        return []
    keys = sorted(set().union(*(r["config"] for r in runs)))
    varying = [k for k in keys if len({json.dumps(r["config"].get(k), sort_keys=True) for r in runs}) > 1]
    return [k for k in varying if k not in NON_SEMANTIC] + (["seed"] if "seed" in varying else [])


def _dedupe(runs: list[dict], axes: list[str], expected: list[str], problems: list) -> list[dict]:
    """One run per grid point (axes values); the folder study.json names wins, else the first."""
    chosen: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: (r["trial_id"] not in expected, r["trial_id"])):
        values = {a: run["config"].get(a) for a in axes}
        run["axes"] = values
        run["condition"] = condition_label(values)
        key = json.dumps(values, sort_keys=True)
        if key in chosen:
            problems.append({"trial_id": run["trial_id"], "reason": f"duplicate of grid point "
                             f"{chosen[key]['trial_id']} (same axis values)", "action": "counted once"})
            continue
        chosen[key] = run
    return sorted(chosen.values(), key=lambda r: r["trial_id"])
