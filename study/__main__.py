"""noisesink's command line.

    python -m study trial CONFIG.yaml --out DIR [--set key=value ...]
    python -m study check SWEEP.yaml [--set section.key=value ...]
    python -m study sweep SWEEP.yaml [--storage PATH_OR_URI] [--name NAME] [--set ...]
                                     [--resume] [--no-report] [--address RAY_ADDRESS]

Bad input (config, sweep file, data source, storage) exits with code 2 and one message that names
the key or file, the bad value and what is allowed, before any training starts.
"""
from __future__ import annotations

import argparse
import sys

from .errors import InputError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study", description="noisesink: why do image "
                                "classifiers send noise to one class?")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trial", help="train and probe one model")
    t.add_argument("config", help="trial config YAML (keys: see README)")
    t.add_argument("--out", required=True, help="folder (or URI) for trial.json and arrays.npz")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; the value is parsed as YAML")

    for name, help_ in (("check", "validate a sweep file and show what it would run"),
                        ("sweep", "run a sweep on Ray Tune")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("sweep", help="sweep YAML (sweeps/*.yaml)")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a key by its dotted path, e.g. trial.epochs=2, grid.seed=[0,1]")
        s.add_argument("--storage", help="local folder or URI (s3://, gs://) for the results; "
                       "overrides run.storage")
        s.add_argument("--name", help="study name; overrides the file's `name`")
        if name == "sweep":
            s.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
            s.add_argument("--no-report", action="store_true", help="skip the aggregation at the end")
            s.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a "
                           "local Ray)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "trial":
            return _trial(args)
        from . import sweep  # the only module that imports Ray
        plan = sweep.prepare(args.sweep, args.set, storage=args.storage, name=args.name)
        if args.command == "check":
            print(plan.describe())
            return 0
        return sweep.run(plan, resume=args.resume, report=not args.no_report, address=args.address)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _trial(args) -> int:
    from .artifacts import ArtifactDir
    from .config import load_trial_config
    from .data import check_source
    cfg = load_trial_config(args.config, args.set)
    check_source(cfg["data_root"])
    out = ArtifactDir.at(args.out)
    from .trial import run_trial
    result = run_trial(cfg, out)
    summary = result.get("absorber", {}).get("gaussian")
    print(f"status {result['status']}; test accuracy {result.get('test_accuracy', float('nan')):.4f}"
          + (f"; gaussian noise -> {summary['absorber']} ({summary['top_share']:.1%})" if summary else "")
          + f"; wrote {out}/trial.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
