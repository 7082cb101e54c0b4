"""Which code produced a result: the git commit (and whether the tree had local changes) and a digest
of the project's Python sources. Torch-free, so that the trials (study/provenance.py) and the
aggregation (analysis/pipeline.py, its aggregation.json) record the same thing the same way."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def source_digest() -> str:
    """sha256 over the project's Python sources: identifies the code also where no .git travels
    (e.g. a `ray job submit --working-dir` upload)."""
    h = hashlib.sha256()
    for pkg in ("study", "analysis"):
        for path in sorted((PACKAGE_ROOT / pkg).rglob("*.py")):
            h.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def revision_now() -> dict:
    """{git_commit, git_dirty, source_sha256} of the checkout as it is now (NOISESINK_REVISION
    stands in for the commit where git or .git is missing)."""
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


AT_IMPORT = revision_now()   # taken once with the code's import: a process that runs for hours
                             # records the code it loaded, not the commit current when it finishes
