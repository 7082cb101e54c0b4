"""The artifact contract between the two halves: what a study writes and the aggregation reads.

One place for every name both sides must agree on: the file names, the schema version, the
status values, the noise node's and the extra noise class's names, CIFAR-10's class names, the
trial folder names, how a local path or a URI becomes a filesystem, and how a URI is extended.

`study/` (the writer, with torch) and `analysis/` (the reader, without) both import this module;
it imports neither torch, Ray, nor anything of `study/`, so the layout rule holds: analysis/
imports neither torch nor study. (It lives under analysis/ because study may import analysis,
never the other way round.)
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import pyarrow.fs as pafs

# ---------------------------------------------------------------- files of a study
STUDY_JSON = "study.json"     # <study>/study.json: the resolved sweep (axes, grid points)
TRIAL_JSON = "trial.json"     # <study>/<trial>/trial.json: written last; its presence marks a finished trial
ARRAYS_NPZ = "arrays.npz"     # <study>/<trial>/arrays.npz: named by trial.json, with its sha256
TUNE_ERROR_TXT = "error.txt"  # Tune's note in a trial folder whose trial raised
REPORT_DIR = "report"         # <study>/report/: the aggregation's default output, never a trial
AGGREGATION_JSON = "aggregation.json"  # <report>/aggregation.json: the code and sources that aggregated it
STOPPED_JSON = "stopped.json"  # <study>/stopped.json: the sweep's driver stopped the study (run.pending_timeout)

# trial.json's layout; bump when a reader of the old layout would misread the new one
SCHEMA_VERSION = 1
# What a completed trial measures changes with the code as well as with its config: each change that
# adds or redefines a measurement bumps MEASUREMENTS, with its line in MEASUREMENT_CHANGES.
# trial.json records it (absent: 1), and no executor reuses a completed result of an older one.
MEASUREMENTS = 3
MEASUREMENT_CHANGES = {
    2: "the head's biases dealt at random (bias_deal_rank), the BatchNorm probe in batches of the training "
       "batch_size, the module kinds outside Hein et al.'s theorem",
    3: "the absorber's softmax mass (absorber_softmax) beside its argmax share, and the deals that keep the "
       "trained absorber (absorber_kept_by_deals)",
}
READABLE_SCHEMAS = (1,)       # the versions analysis/load.py understands

# ---------------------------------------------------------------- a trial's status
COMPLETED = "completed"       # trained and probed: every measurement is in trial.json
DIVERGED = "diverged"         # the training loss became non-finite: recorded, not probed
FINAL_STATUSES = (COMPLETED, DIVERGED)
# trial.json's `source` of a run that probed a checkpoint trained elsewhere (`noisesink probe`:
# epochs 0, no trajectory, the checkpoint's path and sha256 under `checkpoint`); a training's has none
PROBED = "probe"

# ---------------------------------------------------------------- names inside a trial.json
NOISE_NODE = "noise"          # the noise mean's node in the distance matrix and the MST
NOISE_CLASS = "noise_class"   # the extra output class of a model trained with intervention: noise_class
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")   # label order of CIFAR-10 itself
BIAS_DEALS = 99               # random deals of the head's biases per noise family: a run's rank among them
                              # resolves 1/100


def show_value(v) -> str:
    """A grid value as text for labels and folder names: [cat, dog] -> cat.dog,
    {target: bird, kind: blur, strength: 1.0} -> bird.blur.1.0; an arm {name: fast, ...} -> fast."""
    if isinstance(v, dict) and "name" in v:
        return show_value(v["name"])
    if isinstance(v, dict):
        return ".".join(show_value(x) for x in v.values())
    if isinstance(v, list):
        return ".".join(show_value(x) for x in v)
    return str(v)


def trial_dirname(axes: dict) -> str:
    """A grid point's folder: short, readable, unique: `classes=cat.dog_seed=3`; a hash only when
    a value had to be shortened or had characters a folder name should not carry."""
    raw = "_".join(f"{k}={show_value(v)}" for k, v in axes.items()) or "trial"
    name = re.sub(r"[^A-Za-z0-9_.=-]", "-", raw)[:80]
    if name != raw:
        name += "_" + hashlib.sha256(json.dumps(axes, sort_keys=True).encode()).hexdigest()[:6]
    return name


# ---------------------------------------------------------------- which config a result belongs to

# Trial keys that change where and how fast a trial runs, not what it measures: a result made
# with other values of these is the same result (and no condition of the aggregation).
RUN_ONLY_KEYS = ("device", "threads", "data_root", "data_verify", "eval_batch_size", "compile")
# Trial keys whose values decide which network a seed builds (its shapes and its weights): runs of
# two conditions that differ in one of these are different networks, so a seed does not pair them.
# (The architecture factors are not among them: models that differ only in a factor draw the same
# initial weights for a seed, study/models.py.)
NETWORK_KEYS = ("model", "width", "pretrained", "classes")
_MISSING = object()


def config_digest(cfg: dict) -> str:
    """sha256 of a resolved trial config without its RUN_ONLY_KEYS; trial.json records it, so a
    result is recognised as belonging to a config (or not) at a glance."""
    kept = {k: v for k, v in cfg.items() if k not in RUN_ONLY_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_changes(stored: dict, expected: dict, before_key: dict) -> list[str]:
    """The keys (RUN_ONLY_KEYS aside) whose value in a stored result's config differs from the
    expected config, each as `key: was X, now Y`; [] when the result belongs to the config. A key
    the stored config lacks (written before the key existed) is no change when the expected value
    is `before_key[key]`, the value that does what the code did before the key was added (its
    default, unless the default turns on a new measurement: then the value that turns it off)."""
    def show(key, v):
        if v is not _MISSING:
            return json.dumps(v)
        return f"absent (as {json.dumps(before_key[key])})" if key in before_key else "absent"

    changes = []
    for key in sorted((set(stored) | set(expected)) - set(RUN_ONLY_KEYS)):
        old, new = stored.get(key, _MISSING), expected.get(key, _MISSING)
        if old is _MISSING and new is not _MISSING and key in before_key and _plain(new) == _plain(before_key[key]):
            continue
        if old is _MISSING or new is _MISSING or _plain(old) != _plain(new):
            changes.append(f"{key}: was {show(key, old)}, now {show(key, new)}")
    return changes


def _plain(v):
    """As JSON holds it (tuples as lists), so a value read back from trial.json compares equal."""
    return json.loads(json.dumps(v))


# ---------------------------------------------------------------- where a study lives

def open_filesystem(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI pyarrow understands (s3://, gs://, file://,
    with endpoint options in the query string). Raises pyarrow's error for a URI it cannot open."""
    if "://" not in uri_or_path:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri_or_path))
    return pafs.FileSystem.from_uri(uri_or_path)


def join_uri(base: str, *names: str) -> str:
    """<base>/<name>/..., keeping a URI's query string (endpoint options) at the end."""
    head, sep, query = base.partition("?")
    path = "/".join([head.rstrip("/"), *(n.strip("/") for n in names if n.strip("/"))])
    return f"{path}{sep}{query}"
