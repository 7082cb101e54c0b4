"""Read a study's trial artifacts (local folder or URI) into compact run records + problems.

Only the trials' own artifacts are read (study.json, <trial>/trial.json, <trial>/arrays.npz),
never Tune's progress.csv. Every folder that cannot be used ends up in `problems` with the reason;
the rest is aggregated. No torch here.
"""
from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

STUDY_JSON, TRIAL_JSON, ARRAYS_NPZ = "study.json", "trial.json", "arrays.npz"
NOT_TRIALS = {"report"}
# config keys that do not change what is measured (where, how fast): never part of a condition
NON_SEMANTIC = {"seed", "device", "threads", "data_root", "eval_batch_size", "compile", "data_verify"}
REQUIRED = ("status", "config", "seed", "classes")
REQUIRED_COMPLETED = ("test_accuracy", "absorption", "absorber", "mst", "distance", "trajectory")


def open_results(results: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in results:
        import os
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(results))
    return pafs.FileSystem.from_uri(results)


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def show_value(v) -> str:
    """A grid value as text for labels and folder names: [cat, dog] -> cat.dog,
    {target: bird, kind: blur, strength: 1.0} -> bird.blur.1.0."""
    if isinstance(v, dict):
        return ".".join(show_value(x) for x in v.values())
    if isinstance(v, list):
        return ".".join(show_value(x) for x in v)
    return str(v)


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

    def arrays(self, run: dict) -> dict[str, np.ndarray] | None:
        """The run's arrays.npz (checked against trial.json's sha256), or None with a problem."""
        path = f"{self.root}/{run['trial_id']}/{ARRAYS_NPZ}"
        try:
            data = _read(self.fs, path)
        except OSError as e:
            self.problems.append({"trial_id": run["trial_id"], "reason": f"arrays.npz unreadable ({e})",
                                  "action": "arrays ignored"})
            return None
        if run.get("arrays_sha256") and hashlib.sha256(data).hexdigest() != run["arrays_sha256"]:
            self.problems.append({"trial_id": run["trial_id"], "reason": "arrays.npz does not match "
                                  "the sha256 in trial.json (torn or altered)", "action": "arrays ignored"})
            return None
        with np.load(io.BytesIO(data)) as z:
            return {k: z[k] for k in z.files}


def _compact(trial_id: str, t: dict) -> dict:
    """The parts of a trial.json the aggregation uses, as small numpy arrays."""
    classes = list(t["classes"])
    run = {"trial_id": trial_id, "status": t["status"], "seed": int(t["seed"]),
           "config": t["config"], "classes": classes,
           "heldout_classes": list(t.get("heldout_classes") or []),
           "test_accuracy": t.get("test_accuracy"),
           "train_seconds": (t.get("timing") or {}).get("train_seconds"),
           "arrays_sha256": (t.get("arrays") or {}).get("sha256"),
           "warnings": t.get("warnings") or [],
           "diverged_at_epoch": t.get("diverged_at_epoch")}
    traj = t.get("trajectory") or []
    run["trajectory_epochs"] = np.array([p["epoch"] for p in traj], dtype=int)
    run["trajectory"] = np.array([[p["shares"].get(c, 0.0) for c in classes] for p in traj], dtype=float)
    if t["status"] != "completed":
        return run
    families = list(t.get("noise_families") or t["absorption"].keys())
    run["families"] = families
    run["absorption"] = np.array([[t["absorption"][f][c] for c in classes] for f in families])
    run["absorber"] = [t["absorber"][f]["absorber"] for f in families]
    run["top_share"] = np.array([t["absorber"][f]["top_share"] for f in families])
    run["entropy_norm"] = np.array([t["absorber"][f]["entropy_norm"] for f in families])
    run["mean_max_softmax"] = np.array([t["absorber"][f].get("mean_max_softmax", np.nan) for f in families])
    run["mst"] = [[(u, v, float(w)) for u, v, w in t["mst"][f]] for f in families]
    run["distance"] = np.array([t["distance"][f]["matrix"] for f in families], dtype=float)
    run["nodes"] = list(t["distance"][families[0]]["nodes"])
    run["heldout"] = t.get("heldout") or {}
    run["n_noise"] = int(t["config"].get("n_noise", 0))
    run["extra"] = {k: t[k] for k in ("clutter", "logit_decomposition", "ood", "frequency",
                                      "intervention") if k in t}
    return run


def _load_one(fs, root: str, trial_id: str):
    """(compact run, None) or (None, problem)."""
    path = f"{root}/{trial_id}/{TRIAL_JSON}"
    try:
        raw = _read(fs, path)
    except FileNotFoundError:
        reason = "no trial.json (the trial did not finish)"
        try:
            err = _read(fs, f"{root}/{trial_id}/error.txt").decode(errors="replace").strip().splitlines()
            reason += f"; Tune's error.txt: {err[-1][:300] if err else ''}"
        except OSError:
            pass
        return None, {"trial_id": trial_id, "reason": reason, "action": "excluded"}
    except OSError as e:
        return None, {"trial_id": trial_id, "reason": f"trial.json unreadable ({e})", "action": "excluded"}
    try:
        t = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return None, {"trial_id": trial_id, "reason": f"trial.json is truncated or not JSON ({e})",
                      "action": "excluded"}
    if not isinstance(t, dict):
        return None, {"trial_id": trial_id, "reason": "trial.json is not a JSON object", "action": "excluded"}
    missing = [k for k in REQUIRED if k not in t]
    if not missing and t["status"] == "completed":
        missing = [k for k in REQUIRED_COMPLETED if k not in t]
    if missing:
        return None, {"trial_id": trial_id, "reason": f"trial.json lacks {', '.join(missing)}",
                      "action": "excluded"}
    if t["status"] not in ("completed", "diverged"):
        return None, {"trial_id": trial_id, "reason": f"status {t['status']!r}", "action": "excluded"}
    try:
        return _compact(trial_id, t), None
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return None, {"trial_id": trial_id, "reason": f"trial.json malformed ({type(e).__name__}: {e})",
                      "action": "excluded"}


def _find_root(fs, path: str) -> str:
    """The study folder: RESULTS itself, or its only subfolder holding a study.json."""
    if fs.get_file_info(f"{path}/{STUDY_JSON}").type == pafs.FileType.File:
        return path
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    if not infos and fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: no such folder")
    studies = [i.path for i in infos if i.type == pafs.FileType.Directory
               and fs.get_file_info(f"{i.path}/{STUDY_JSON}").type == pafs.FileType.File]
    if len(studies) == 1 and not any(fs.get_file_info(f"{i.path}/{TRIAL_JSON}").type == pafs.FileType.File
                                     for i in infos if i.type == pafs.FileType.Directory):
        return studies[0]
    if len(studies) > 1:
        raise ValueError(f"{path} holds several studies ({', '.join(s.rsplit('/', 1)[-1] for s in studies)}); "
                         "point at one of them")
    return path


def load(results: str, workers: int = 16) -> Loaded:
    fs, path = open_results(results)
    root = _find_root(fs, path.rstrip("/"))
    study = None
    if fs.get_file_info(f"{root}/{STUDY_JSON}").type == pafs.FileType.File:
        study = json.loads(_read(fs, f"{root}/{STUDY_JSON}"))
    dirs = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(root))
                  if i.type == pafs.FileType.Directory and i.base_name not in NOT_TRIALS
                  and not i.base_name.startswith("."))
    expected = [p["dir"] for p in study["points"]] if study else []
    if study:  # a folder that is no grid point and holds no trial.json is not a trial (e.g. Tune's
        # folder of a fused group of seeds): leave it out rather than report it
        dirs = [d for d in dirs if d in expected or
                fs.get_file_info(f"{root}/{d}/{TRIAL_JSON}").type == pafs.FileType.File]
    for d in expected:  # grid points whose folder never appeared
        if d not in dirs:
            dirs.append(d)
    with ThreadPoolExecutor(workers) as pool:
        loaded = list(pool.map(lambda d: _load_one(fs, root, d), dirs))
    runs = [r for r, _ in loaded if r is not None]
    problems = [p for _, p in loaded if p is not None]
    axes = list(study["axes"]) if study else _varying_keys(runs)
    out = Loaded(root=root, study=study, axes=axes, problems=problems, fs=fs)
    out.runs = _dedupe(runs, axes, expected, out.problems)
    return out


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
