"""The code base is clean under its lint configuration ([tool.ruff] in pyproject.toml): `ruff check .`
from the repository root, as a developer runs it."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_ruff_check_passes():
    # --no-cache: a test writes nothing into the checkout (.ruff_cache)
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"ruff check . failed (exit {res.returncode}):\n{res.stdout}{res.stderr}"
