"""The throughput benchmark at its CPU size: one run, every setup side by side, ratios printed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_cpu_benchmark_prints_and_writes_every_setup(real_tar, tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "study.bench", "throughput", "--size", "cpu",
                          "--data-root", str(real_tar), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads(out.read_text())
    names = [r["name"] for r in record["rows"]]
    assert names == ["a_baseline_dataloader_fp32", "b_project_trainer", "c_packed_k2", "c_fused_k2",
                     "c_packed_k4", "c_fused_k4"]
    for r in record["rows"]:
        assert r["images_per_s"] > 0 and r["trainings_per_hour"] > 0
    assert record["rows"][0]["speedup_vs_a"] == pytest.approx(1.0)
    assert "x (a)" in res.stdout and "b_project_trainer" in res.stdout
    assert (tmp_path / "bench.csv").exists()
