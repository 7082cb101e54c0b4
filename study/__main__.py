"""noisesink's command line: the installed `noisesink` command (also `python -m study`).

    noisesink trial CONFIG.yaml --out DIR [--set key=value ...]
    noisesink check SWEEP.yaml [--set section.key=value ...]
    noisesink sweep SWEEP.yaml [--storage PATH_OR_URI] [--name NAME] [--set ...] [--seeds 0-5]
                               [--resume] [--no-report] [--address RAY_ADDRESS]
                               [--executor ray|local] [--time-limit SECONDS]
    noisesink analyze RESULTS [RESULTS ...] [--out DIR]  (the aggregation: python -m analysis)
    noisesink probe WEIGHTS ... --model ARCH --out DIR  (trained checkpoints as runs: python -m study.checkpoints)
    noisesink export RESULTS DIR                   (completed trials' trial.json + arrays.npz, to commit)
    noisesink bench throughput|accuracy|recipe ... (the benchmark: python -m study.bench)
    noisesink power [--k 10] [--seeds 5 8 12 20] ...  (seeds needed: python -m analysis.power)
    noisesink calibrate [--studies 400] ...        (tests under realistic nulls: python -m analysis.calibration)
    noisesink init DIR                             (copy the shipped sweeps and configs)
    noisesink initbias [--nets 200] [--images 100] [--settings S ...] [--out DIR]

Bad input (config, sweep file, data source, storage) exits with code 2 and one message that names
the key or file, the bad value and what is allowed, before any training starts.
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from pathlib import Path

from .errors import InputError

# Commands that are another module's own command line, passed through unchanged:
# name -> (module with main(argv), help). Each module also runs as `python -m <module>`.
DELEGATED = {
    "analyze": ("analysis.__main__", "aggregate a study's trials into tables, figures, report.md and report.html"),
    "export": ("analysis.export", "copy a study's finished trials (trial.json + arrays.npz) to commit or send"),
    "probe": ("study.checkpoints", "probe trained checkpoints (yours, torchvision's, timm's) with every probe "
              "of a trial, each checkpoint a run"),
    "bench": ("study.bench", "measure training throughput and the recipe's accuracy"),
    "power": ("analysis.power", "power of the absorber tests by simulation, and the seeds they need"),
    "calibrate": ("analysis.calibration", "every test's false-positive rate under realistic null studies, "
                  "and its power under planted effects"),
    "claims": ("analysis.claims", "refresh docs/claims.csv from the committed tables and render the findings' "
               "claim tags"),
}
SHIPPED = ("sweeps", "configs")   # folders of YAML files that `noisesink init` copies


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("noisesink")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def shipped(folder: str) -> Path:
    """A shipped folder: inside the package in an installed wheel (study/sweeps), beside it in a
    checkout or an editable install (sweeps/)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / folder, here.parent / folder):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise FileNotFoundError(f"the shipped {folder}/ is missing from this installation ({here})")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="noisesink", description="noisesink: why do image "
                                "classifiers send noise to one class?")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("trial", help="train and probe one model")
    t.add_argument("config", help="trial config YAML (keys: see README)")
    t.add_argument("--out", required=True, help="folder (or URI) for trial.json and arrays.npz")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; the value is parsed as YAML")

    for name, help_ in (("check", "validate a sweep file and show what it would run"),
                        ("sweep", "run a sweep on Ray Tune (or without Ray: --executor local)")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("sweep", help="sweep YAML (sweeps/*.yaml)")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a key by its dotted path, e.g. trial.epochs=2, grid.seed=[0,1]")
        s.add_argument("--storage", help="local folder or URI (s3://, gs://) for the results; "
                       "overrides run.storage")
        s.add_argument("--name", help="study name; overrides the file's `name`")
        s.add_argument("--seeds", metavar="LIST", help="run only these seeds of the grid, e.g. 0-5 or 0,2,4-7 "
                       "(the same as --set grid.seed=[...]): one part of a study run in parts on several "
                       "machines; `noisesink analyze PART1 PART2 ...` aggregates the parts as one study")
        s.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local "
                       "Ray, whose machine bounds the resources a trial may ask for)")
        if name == "check":
            s.add_argument("--cluster", action="store_true", help="validate for a cluster not reachable "
                           "from here: this machine's CPUs and GPUs do not bound the resources")
        if name == "sweep":
            s.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
            s.add_argument("--no-report", action="store_true", help="skip the aggregation at the end")
            s.add_argument("--executor", choices=["ray", "local"], default="ray",
                           help="ray (default: local Ray or a cluster) or local (no Ray: this process, "
                           "or worker processes as the resources allow on this machine)")
            s.add_argument("--time-limit", type=float, metavar="SECONDS",
                           help="local executor: start no trial after this long; running ones stop at "
                           "their next epoch (--resume finishes them)")
    for name, (_module, help_) in DELEGATED.items():
        sub.add_parser(name, help=f"{help_} (noisesink {name} --help)", add_help=False)
    i = sub.add_parser("init", help="copy the shipped sweeps/ and configs/ into a folder, to run "
                       "and edit outside a git checkout")
    i.add_argument("dir", help="folder to create or fill (existing files are never overwritten)")

    from .initbias import DEFAULT_SETTINGS
    b = sub.add_parser("initbias", help="initial guessing bias of untrained networks (no training)")
    b.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), metavar="SETTING",
                   help="ACTIVATION-POOL-NORM[.MODE]-INPUTS, e.g. relu-max-none-centered "
                   "(default: the paper's contrasts and every normalization)")
    b.add_argument("--nets", type=int, default=200, help="independently initialised networks per setting "
                   "(seeds 0..nets-1; the paper's protocol: >= 200)")
    b.add_argument("--images", type=int, default=100, help="test images (class-balanced) and noise images "
                   "per network")
    b.add_argument("--model", default="small_cnn", help="a model with architecture factors")
    b.add_argument("--noise-seed", type=int, default=0, help="seeds the test images and the noise, as in the trials")
    b.add_argument("--data-root", help="CIFAR-10 copy (default: NOISESINK_DATA)")
    b.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    b.add_argument("--out", default="results/initbias", help="folder (or URI) for the CSVs, figures and report")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:  # its own parser, its own --help
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return module.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "trial":
            return _trial(args)
        if args.command == "init":
            return _init(Path(args.dir))
        if args.command == "initbias":
            return _initbias(args)
        if args.command == "sweep":
            _check_executor(args)
        from .plan import cluster_address, prepare, probe_address
        on_ray = getattr(args, "executor", "ray") == "ray"
        address, where = cluster_address(args.address) if on_ray else (None, "")
        if address:  # a cluster that does not answer fails now, not after the checks (or minutes of retries)
            probe_address(address, where)
        ray = sys.modules.get("ray")  # a Ray this process already joined brings its own resources
        joined = on_ray and ray is not None and ray.is_initialized()
        sets = args.set + ([f"grid.seed={parse_seeds(args.seeds)}"] if args.seeds is not None else [])
        plan = prepare(args.sweep, sets, storage=args.storage, name=args.name,
                       local=not (address or joined or getattr(args, "cluster", False)))
        if args.command == "check":
            print(plan.describe())
            print(plan.power())
            if address:  # compare with the cluster's nodes (connects to it: Ray)
                from . import sweep
                sweep.init_ray(address)
                warning = sweep.node_fit_warning(plan.sweep.resources)
                print(f"WARNING: {warning}" if warning else f"cluster {address}: a node can hold a trial")
            return 0
        if args.executor == "local":
            from . import local
            return local.run(plan, resume=args.resume, report=not args.no_report, time_limit=args.time_limit)
        from . import sweep  # the only module that imports Ray
        return sweep.run(plan, resume=args.resume, report=not args.no_report, address=args.address)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def check_output(out: str) -> None:
    """--out of `study trial`, checked before training: a folder (or URI) that can be written and
    holds no earlier result, which the new one would replace."""
    from analysis.storage import check_writable

    from .artifacts import TRIAL_JSON, ArtifactDir, filesystem
    from .config import storage_value
    storage_value(out, "--out")  # a path, or a URI with a known scheme and a bucket
    check_writable(out, "--out", "a writable folder or a bucket URI")
    if ArtifactDir(*filesystem(out)).exists(TRIAL_JSON):
        raise InputError("--out", f"already holds a trial's {TRIAL_JSON}, which this run would replace",
                         "a new folder (or delete the old result first)", out)


def parse_seeds(spec: str) -> list[int]:
    """--seeds: whole numbers and inclusive ranges, comma-separated ("0-5", "0,2,4-7"), each seed once."""
    allowed = "comma-separated seeds and inclusive ranges of seeds >= 0, e.g. 0-5 or 0,2,4-7"
    seeds = []
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not (lo.isdigit() and (not dash or hi.isdigit())) or (dash and int(hi) < int(lo)):
            raise InputError("--seeds", f"cannot read {part.strip()!r}", allowed, spec)
        seeds += range(int(lo), int(hi) + 1) if dash else [int(lo)]
    if len(set(seeds)) != len(seeds):
        raise InputError("--seeds", "a seed is given twice", allowed, spec)
    return seeds


def _check_executor(args) -> None:
    """Options that only one executor has, refused before any work."""
    if args.executor == "local" and args.address:
        raise InputError("--address", "names a Ray cluster, but --executor local runs without Ray",
                         "no --address with --executor local", args.address)
    if args.time_limit is not None and (args.executor != "local" or args.time_limit <= 0):
        raise InputError("--time-limit", "is the local executor's (Ray Tune has its own stoppers)"
                         if args.executor != "local" else "must be positive",
                         "--executor local --time-limit SECONDS (> 0)", args.time_limit)


def _trial(args) -> int:
    from .artifacts import ArtifactDir
    from .config import load_trial_config
    cfg = load_trial_config(args.config, args.set)
    check_output(args.out)
    import torch

    from .plan import check_trials  # the checks `study check` makes for every grid point
    for warning in check_trials([cfg], gpu_here=torch.cuda.is_available()):
        print(f"WARNING: {warning}")
    out = ArtifactDir.at(args.out)
    from .trial import run_trial
    result = run_trial(cfg, out)
    summary = result.get("absorber", {}).get("gaussian")
    print(f"status {result['status']}; test accuracy {result.get('test_accuracy', float('nan')):.4f}"
          + (f"; gaussian noise -> {summary['absorber']} ({summary['top_share']:.1%})" if summary else "")
          + f"; wrote {out}/trial.json")
    return 0


def _init(dest: Path) -> int:
    from analysis.storage import check_writable
    check_writable(str(dest), "DIR", "a new or empty folder that can be written")
    sources = {f"{folder}/{f.name}": f for folder in SHIPPED for f in sorted(shipped(folder).glob("*.yaml"))}
    clashes = [name for name in sources if (dest / name).exists()]
    if clashes:
        raise InputError(str(dest / clashes[0]), f"already exists ({len(clashes)} of the "
                         f"{len(sources)} shipped files do)", "an empty or new folder")
    for name, src in sources.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / name)
    print(f"wrote {len(sources)} files to {dest}: " + ", ".join(f"{f}/" for f in SHIPPED)
          + f"\nnext: cd {dest} && noisesink check sweeps/smoke.yaml")
    return 0


def _initbias(args) -> int:
    from .initbias import run
    record = run(args.settings, args.nets, args.images, args.out, noise_seed=args.noise_seed,
                 data_root=args.data_root, threads=args.threads, model=args.model)
    print(f"{len(record['settings'])} settings x {record['nets']} networks in {record['measure_seconds']:.0f} s; "
          f"wrote {args.out}/initbias.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
