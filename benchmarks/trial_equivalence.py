"""Does a refactor change what a trial writes? Run fixed small CPU trials with one code tree, then
with another, and compare: trial.json must be identical except timing, versions, code revision
and the arrays file's checksum (np.savez stamps the time into its zip); arrays.npz must hold the
same arrays, bit for bit.

    PYTHONPATH=/tmp/base python benchmarks/trial_equivalence.py run /tmp/before   # the old tree
    python benchmarks/trial_equivalence.py run /tmp/after                         # this tree
    python benchmarks/trial_equivalence.py compare /tmp/before /tmp/after

The trials (real CIFAR-10 from NOISESINK_DATA, 1-2 epochs on a few hundred images, small probe
banks) cover each path through trial.py: a plain trial, a noise-class model (its class mean comes
from learned noise), a class intervention (the clutter sample comes from the changed training
set), a diverged trial (no probes), and two seeds trained fused (study/fused.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: `run` uses whichever tree PYTHONPATH names first

from analysis.contract import ARRAYS_NPZ, TRIAL_JSON  # noqa: E402

BASE = {"model": "small_cnn", "epochs": 2, "batch_size": 50, "lr": 0.05, "train_subset": 400,
        "test_subset": 200, "classes": ["cat", "dog", "ship"], "noise": ["gaussian", "uniform", "blobs"],
        "n_noise": 100, "n_trajectory": 20, "n_frequency": 40, "sample_per_class": 20,
        "device": "cpu", "threads": 1, "seed": 3, "noise_seed": 5}
TRIALS = {
    "plain": {},
    "noise_class": {"intervention": "noise_class"},
    "class_intervention": {"class_intervention": {"target": "cat", "kind": "subsample", "strength": 0.25},
                           "augmentation": "flip_crop"},
    "diverged": {"lr": 1e6, "epochs": 1},
}
FUSED_SEEDS = (3, 4)
VARIABLE = ("timing", "versions", "code_revision")  # differ between two runs of the same code


def run(out: Path) -> None:
    import study
    from study.fused import run_fused_trials
    from study.trial import run_trial
    print(f"code: {Path(study.__file__).parent}")
    for name, extra in TRIALS.items():
        run_trial({**BASE, **extra}, str(out / name), log=lambda m: None)
    run_fused_trials([{**BASE, "seed": s} for s in FUSED_SEEDS],
                     [str(out / f"fused_{s}") for s in FUSED_SEEDS], log=lambda m: None)


def compare(a: Path, b: Path) -> int:
    differ = 0
    for trial in sorted(p.parent.name for p in a.glob(f"*/{TRIAL_JSON}")):
        ja, jb = (json.loads((d / trial / TRIAL_JSON).read_text()) for d in (a, b))
        for j in (ja, jb):
            for k in VARIABLE:
                j.pop(k, None)
            j["arrays"].pop("sha256")
        keys = sorted(set(ja) | set(jb))
        bad = [k for k in keys if ja.get(k) != jb.get(k)]
        za, zb = (np.load(d / trial / ARRAYS_NPZ) for d in (a, b))
        for k in sorted(set(za.files) | set(zb.files)):
            if k not in za.files or k not in zb.files:
                bad.append(f"arrays.npz:{k} in one only")
            elif not np.array_equal(za[k], zb[k], equal_nan=za[k].dtype.kind == "f"):
                bad.append(f"arrays.npz:{k} values")
            elif za[k].dtype != zb[k].dtype:
                bad.append(f"arrays.npz:{k} dtype {za[k].dtype} -> {zb[k].dtype} (values equal)")
        print(f"{trial:<20} {len(keys)} trial.json keys, {len(za.files)} arrays: "
              + ("identical" if not bad else f"DIFFER in {bad}"))
        differ += bool(bad)
    return 1 if differ else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("run").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    if args.what == "run":
        run(args.out)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
