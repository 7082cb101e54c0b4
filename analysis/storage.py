"""Where results will be written, checked before any work: shared by the sweep (study/plan.py,
study/__main__.py) and the aggregation and export (analysis/pipeline.py, analysis/export.py).
Torch-free, like analysis/contract.py."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from .contract import open_filesystem
from .errors import InputError


def check_writable(location: str, where: str, allowed: str = "a writable folder or a bucket URI") -> None:
    """Fail before any work if results cannot be written at `location` (creates nothing): a local
    path that is a file, lies under a file or is read-only; a bucket that is unreachable or absent."""
    if "://" not in location or location.startswith("file://"):
        path = Path(location.removeprefix("file://")).expanduser().absolute()
        if path.exists() and not path.is_dir():
            raise InputError(where, "is a file, not a folder", allowed, location)
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise InputError(where, f"lies under {probe}, which is a file, not a folder", allowed, location)
        if not os.access(probe, os.W_OK | os.X_OK):
            raise InputError(where, f"not writable ({probe} is read-only for this user)", allowed, location)
        return
    try:
        fs, path = open_filesystem(location)
    except Exception as e:  # pyarrow: malformed URI, unknown scheme
        raise InputError(where, f"cannot open ({type(e).__name__}: {str(e).splitlines()[0]})", allowed,
                         location) from None
    bucket = path.split("/")[0]
    if not bucket:
        raise InputError(where, "names no bucket", allowed, location)
    try:
        info = fs.get_file_info(bucket)
    except Exception as e:
        raise InputError(where, f"cannot reach the storage ({type(e).__name__}: {str(e).splitlines()[0]})",
                         "a reachable bucket; check the endpoint and credentials", location) from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(where, f"bucket {bucket!r} does not exist", "an existing bucket", location)
    if path.rstrip("/") != bucket and fs.get_file_info(path).type == pafs.FileType.File:
        raise InputError(where, "is an object (a file), not a prefix", allowed, location)
