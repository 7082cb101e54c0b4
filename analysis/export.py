"""noisesink export RESULTS DIR: a study's finished trials, compact enough to commit or send.

Copies, for every grid point whose trial finished (completed or diverged) and whose arrays.npz
matches the sha256 its trial.json records, exactly those two files (no checkpoints, no Ray or Tune
files, no report), and the study.json, into DIR/<trial folder>/. DIR is then a study folder like any
other: `noisesink analyze DIR` (or several exports of one study's parts) aggregates it. A trial
already in DIR with the same files is left as it is; one with other files is refused, so an export
never overwrites another result. Works on local folders and URIs (s3://...) alike; torch-free.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

from .contract import ARRAYS_NPZ, STUDY_JSON, TRIAL_JSON, open_filesystem
from .errors import InputError, exit_code
from .load import load, merged_study, open_study, read_bytes, same_design
from .storage import check_writable


def export(results: str, dest: str, log=print) -> dict:
    """Returns {"trials": n exported, "kept": n already there, "bytes": size of DIR's trials}."""
    src = open_study(results)
    check_writable(dest, "DIR", "a writable folder or a bucket URI")
    data = load(src)
    fs, root = open_filesystem(dest)
    root = root.rstrip("/")
    fs.create_dir(root, recursive=True)
    exported = kept = size = 0
    if src.study is not None:  # another part of the same study exported here before: one study.json for both
        before = _existing(fs, f"{root}/{STUDY_JSON}")
        study = src.study
        if before is not None:
            earlier = json.loads(before)
            same_design(earlier, study, f"{dest} and {results}")
            study = merged_study([earlier, study])
        _write(fs, f"{root}/{STUDY_JSON}", json.dumps(study, indent=1).encode())
    for run in data.runs:
        tid = run["trial_id"]
        if data.arrays(run) is None:   # unreadable or not the arrays its trial.json names: not exported
            continue
        files = {name: read_bytes(src.fs, f"{src.root}/{tid}/{name}") for name in (TRIAL_JSON, ARRAYS_NPZ)}
        there = {name: _existing(fs, f"{root}/{tid}/{name}") for name in files}
        if all(there[n] is not None for n in files):
            if any(hashlib.sha256(there[n]).digest() != hashlib.sha256(b).digest() for n, b in files.items()):
                raise InputError(f"{dest}/{tid}", "already holds another result of this grid point",
                                 "an empty DIR, or the export of the same study", tid)
            kept += 1
        else:
            fs.create_dir(f"{root}/{tid}", recursive=True)
            _write(fs, f"{root}/{tid}/{ARRAYS_NPZ}", files[ARRAYS_NPZ])
            _write(fs, f"{root}/{tid}/{TRIAL_JSON}", files[TRIAL_JSON])   # last: marks the trial complete
            exported += 1
        size += sum(len(b) for b in files.values())
    skipped = len(data.problems)
    log(f"export: {exported} trials written, {kept} already there, to {dest} ({size / 1e6:.1f} MB of trials); "
        f"{skipped} trial folder(s) with problems not exported")
    return {"trials": exported, "kept": kept, "bytes": size}


def _existing(fs, path: str) -> bytes | None:
    try:
        return read_bytes(fs, path)
    except OSError:
        return None


def _write(fs, path: str, data: bytes) -> None:
    """Through a temporary name, renamed into place where the filesystem can (local folders)."""
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    try:
        fs.move(tmp, path)
    except OSError:   # object stores: the upload itself is atomic
        with fs.open_output_stream(path) as f:
            f.write(data)
        fs.delete_file(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="noisesink export", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a study folder or URI (<storage>/<name>)")
    p.add_argument("dir", help="folder or URI to export into (created if missing)")
    args = p.parse_args(argv)
    return exit_code(lambda: export(args.results, args.dir))


if __name__ == "__main__":
    sys.exit(main())
