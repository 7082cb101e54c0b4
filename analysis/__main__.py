"""python -m analysis RESULTS [RESULTS ...] [--out DIR]: aggregate a study's trial artifacts.

RESULTS is a study folder written by `python -m study sweep` (<storage>/<name>), local or a URI
pyarrow reads (s3://, gs://, file://). Several are the parts of one study, run on several machines
(`noisesink sweep SWEEP --seeds ...` on each): aggregated as one, each run's folder in runs.csv.
Writes tidy CSVs, PNG plots, report.md and report.html to --out (default RESULTS/report). Needs no
torch and no Ray.

Bad input (a folder that holds no study, a file, an unreachable URI, a malformed study.json, an
--out that cannot be written) exits with code 2 and one message, before any table is computed;
a trial folder that cannot be used is a row of problems.csv, and the rest is aggregated.
"""
from __future__ import annotations

import argparse
import sys

from .errors import exit_code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="study folder or URI (<storage>/<name>); several: the parts of "
                   "one study run on several machines (the same sweep file, e.g. with --seeds), aggregated as one")
    p.add_argument("--out", help="where to write the report (default: RESULTS/report)")
    from .guard import WEAK_MARGIN
    p.add_argument("--weak-margin", type=float, default=WEAK_MARGIN, metavar="M",
                   help="a condition is too weak to interpret (marked, out of the confirmatory family) when the lower "
                   f"bound of its test accuracy is below chance + M (default {WEAK_MARGIN})")
    args = p.parse_args(argv)
    if not 0 <= args.weak_margin < 1:
        print(f"error: --weak-margin: out of range (got {args.weak_margin}); allowed: 0 <= M < 1", file=sys.stderr)
        return 2
    from .pipeline import aggregate
    return exit_code(lambda: print(aggregate(args.results if len(args.results) > 1 else args.results[0], args.out,
                                             weak_margin=args.weak_margin)))


if __name__ == "__main__":
    sys.exit(main())
