"""What produced a result: library versions, the device, the code revision."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def versions(device=None) -> dict:
    import numpy
    import torch
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("torchvision", "ray", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if device is not None and device.type == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
    else:
        out["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return out


def source_digest() -> str:
    """sha256 over the project's Python sources: identifies the code also where no .git travels
    (e.g. a `ray job submit --working-dir` upload)."""
    h = hashlib.sha256()
    for pkg in ("study", "analysis"):
        for path in sorted((PACKAGE_ROOT / pkg).rglob("*.py")):
            h.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def code_revision() -> dict:
    """The code this process runs: taken once, when this module was imported (with the rest of the
    code), not when a trial ends. A study running for hours in one process while its checkout moves
    on would otherwise record each trial under the commit that was current when it finished."""
    return dict(_AT_IMPORT)


def _revision_now() -> dict:
    rev = {"git_commit": None, "git_dirty": None, "source_sha256": source_digest()}
    try:
        def git(*args):  # fixed arguments only: no value from a config reaches a command line
            return subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        rev["git_commit"] = git("rev-parse", "HEAD")
        rev["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        rev["git_commit"] = os.environ.get("NOISESINK_REVISION")
    return rev


_AT_IMPORT = _revision_now()
