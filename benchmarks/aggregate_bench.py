"""Aggregation at scale: write a synthetic study of N trials (default 10,000: 50 conditions x 200
seeds, 10 noise families of 5000 images each, as a real sweep writes them), then time
`python -m analysis` on it in a fresh process and report its wall time and peak memory.

    python benchmarks/aggregate_bench.py [--trials 10000] [--conditions 50] [--keep DIR]

Goal on a 2-core, 24 GB machine: <= 60 s and <= 2 GB for 10,000 trials.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.contract import STUDY_JSON  # noqa: E402
from analysis.synthetic import CIFAR10, Condition, write_study  # noqa: E402

FAMILIES = ("gaussian", "gaussian_clipped", "uniform", "rademacher", "blobs", "salt_pepper", "pink",
            "phase_scrambled", "pixel_shuffled", "constant")
TREE = [("airplane", "ship"), ("automobile", "truck"), ("ship", "truck"), ("bird", "airplane"),
        ("cat", "dog"), ("deer", "horse"), ("dog", "horse"), ("frog", "bird"), ("cat", "frog"),
        ("bird", "noise")]


def _write_part(args):
    root, index, conditions, seeds, n_noise = args
    return str(write_study(Path(root) / f"part{index}", conditions, seeds, families=FAMILIES,
                           n_noise=n_noise, epochs=18, name="bench", seed=index))


def make_study(root: Path, trials: int, n_conditions: int, n_noise: int) -> Path:
    """Conditions are written in parallel parts, then moved into one study folder."""
    seeds = trials // n_conditions
    conditions = [Condition(f"c{i:03d}", classes=list(CIFAR10), absorber=CIFAR10[i % 10], p_absorber=0.8,
                            tree=TREE if i % 2 == 0 else None) for i in range(n_conditions)]
    parts = [conditions[i::4] for i in range(4)]
    with ProcessPoolExecutor(2) as pool:
        folders = list(pool.map(_write_part, [(root, i, p, seeds, n_noise) for i, p in enumerate(parts)]))
    study = root / "bench"
    study.mkdir()
    points = []
    for folder in map(Path, folders):
        record = json.loads((folder / STUDY_JSON).read_text())
        points += record["points"]
        for p in record["points"]:
            (folder / p["dir"]).rename(study / p["dir"])
    (study / STUDY_JSON).write_text(json.dumps({"name": "bench", "axes": ["augmentation", "seed"],
                                                "points": points}))
    return study


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--conditions", type=int, default=50)
    ap.add_argument("--n-noise", type=int, default=5000)
    ap.add_argument("--keep", help="write the study here and keep it (default: a temp folder)")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="aggbench"))
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    study = make_study(root, args.trials, args.conditions, args.n_noise)
    size = sum(f.stat().st_size for f in study.rglob("*") if f.is_file())
    print(f"wrote {args.trials} synthetic trials ({size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "analysis", str(study), "--out", str(root / "report")],
                         cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if res.returncode:
        print(res.stderr[-3000:])
        return 1
    print(res.stdout.strip())
    print(f"aggregation of {args.trials} trials: {wall:.1f} s wall, peak memory {peak_mb:.0f} MB "
          f"(goal: <= 60 s, <= 2048 MB)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
