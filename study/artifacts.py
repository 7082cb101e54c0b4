"""A trial's artifact folder on any pyarrow filesystem (local, s3://, gs://), written atomically.

trial.json is written last, so its presence means the trial finished (study/plan.py's result_state
also checks whose config it holds); it names the arrays file and its sha256, so a reader can tell
a complete result from a torn one. Local writes go to a
temporary name first and are renamed; object stores make a PUT visible whole or not at all.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import uuid

import numpy as np
import pyarrow.fs as pafs

from analysis.contract import TRIAL_JSON, open_filesystem

from .errors import InputError


def filesystem(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI pyarrow understands; a URI it cannot open is
    an InputError about the storage."""
    try:
        return open_filesystem(uri_or_path)
    except Exception as e:
        raise InputError("storage", f"cannot open {uri_or_path} ({type(e).__name__}: {e})",
                         "a local path, s3://bucket/prefix, gs://bucket/prefix, file:///path") from None


def json_safe(obj):
    """Plain JSON: numpy scalars/arrays to Python, non-finite floats to null."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


class ArtifactDir:
    def __init__(self, fs: pafs.FileSystem, path: str):
        self.fs, self.path = fs, path.rstrip("/")

    @classmethod
    def at(cls, uri_or_path: str) -> ArtifactDir:
        return cls(*filesystem(uri_or_path))

    def _p(self, name: str) -> str:
        return f"{self.path}/{name}"

    def __str__(self) -> str:
        return self.path

    def remove(self, name: str) -> None:
        """Delete `name` if it is there."""
        if self.exists(name):
            self.fs.delete_file(self._p(name))

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self._p(name)).type == pafs.FileType.File

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._p(name)) as f:
            return f.read()

    def read_json(self, name: str = TRIAL_JSON) -> dict:
        return json.loads(self.read_bytes(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        self.fs.create_dir(self.path, recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = self._p(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, self._p(name))  # rename: atomic on one filesystem
        else:
            with self.fs.open_output_stream(self._p(name)) as f:
                f.write(data)

    def write_json(self, name: str, obj) -> None:
        self.write_bytes(name, json.dumps(json_safe(obj), indent=1, allow_nan=False).encode())

    def write_npz(self, name: str, arrays: dict[str, np.ndarray]) -> str:
        """Write the arrays, deflated: a 10-class trial's noise mean images and predictions halve
        (a study's export must stay small enough to commit) and reading one back costs ~5 ms;
        returns their sha256 for trial.json to record."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        data = buf.getvalue()
        self.write_bytes(name, data)
        return hashlib.sha256(data).hexdigest()
