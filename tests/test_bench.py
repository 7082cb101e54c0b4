"""The throughput benchmark at its CPU size: one run, every setup side by side, ratios printed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # 4 spawned processes (2 DataLoader workers, 2 packed trainers) import torch
def test_cpu_benchmark_prints_and_writes_every_setup(tiny_data, tmp_path):
    """Every setup of the CPU size (its model and probe banks; packing and fusing at k = 2, the
    CPU size's k = 4 being the same code) at one timed step on the tiny fixture: the test checks
    that each setup runs, is timed, printed and written; the figures themselves come from real
    CIFAR-10 (docs/performance.md), not from CI. The timeout only guards against a hang (a
    loaded 2-core machine took 5 minutes at k = 2 and 4)."""
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "study.bench", "throughput", "--size", "cpu", "--steps", "1",
                          "--ks", "2", "--data-root", str(tiny_data), "--data-verify", "shapes", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads(out.read_text())
    names = [r["name"] for r in record["rows"]]
    assert names == ["a_baseline_dataloader_fp32", "b_project_trainer", "c_packed_k2", "c_fused_k2"]
    for r in record["rows"]:
        assert r["images_per_s"] > 0 and r["trainings_per_hour"] > 0
    assert record["rows"][0]["speedup_vs_a"] == pytest.approx(1.0)
    assert "x (a)" in res.stdout and "b_project_trainer" in res.stdout and "1 timed steps" in res.stdout
    assert (tmp_path / "bench.csv").exists()


@pytest.mark.parametrize("model, mmac", [("small_cnn", 67.0), ("resnet18", 556.0)])
def test_flop_counts_match_the_known_multiply_adds(model, mmac):
    """Known answers: small_cnn is a 67 MMAC net (README); the CIFAR ResNet-18 (3x3 stem, no
    max-pool) is 0.556 GMAC per 32x32 image, as published for it. Training = forward + backward
    = 3 forward passes' worth of multiply-adds."""
    from study.speed import flops_per_image, training_flops
    forward = flops_per_image(model)
    assert forward / 2 / 1e6 == pytest.approx(mmac, rel=0.01)
    assert flops_per_image(model, train=True) / forward == pytest.approx(3, rel=0.01)
    cfg = {"model": model, "classes": "all", "epochs": 2, "batch_size": 512}
    assert training_flops(cfg, 50_000) == pytest.approx(2 * 97 * 512 * flops_per_image(model, train=True))


def test_probe_cost_runs_the_first_grid_point_without_and_with_the_new_probes(tiny_config, tmp_path, capsys):
    import yaml

    from study.bench import probe_cost
    sweep = tmp_path / "probes.yaml"
    sweep.write_text(yaml.safe_dump({"name": "probes", "trial": tiny_config(classes=["cat", "dog", "ship"]),
                                     "grid": {"seed": [3, 4]}}))
    summary = probe_cost(str(sweep), str(tmp_path / "probes.json"))
    rows = summary["rows"]
    assert rows["without"]["hypothesis_probe_seconds"] < rows["with"]["hypothesis_probe_seconds"]
    assert summary["added_seconds"] == pytest.approx(rows["with"]["probe_seconds"] - rows["without"]["probe_seconds"])
    assert json.loads((tmp_path / "probes.json").read_text())["share_of_trial"] == summary["share_of_trial"]
    assert "added by the explanation probes" in capsys.readouterr().out


def test_bias_deal_power_benchmark_tells_the_two_truths_apart_by_the_identity_estimate(capsys):
    """benchmarks/bias_deal_power.py (docs/statistics.md quotes it): the identity estimate is 1/K where
    the biases pick the absorber and 1 where the weights do."""
    import importlib.util
    import re
    spec = importlib.util.spec_from_file_location("bdp", ROOT / "benchmarks" / "bias_deal_power.py")
    bdp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bdp)
    assert bdp.main(["--studies", "10", "--seeds", "8"]) == 0
    kept = dict(re.findall(r"^(biases decide|weights decide) .*absorber_kept_by_deals (\d\.\d+)",
                           capsys.readouterr().out, re.M))
    assert abs(float(kept["biases decide"]) - 0.1) < 0.03 and float(kept["weights decide"]) > 0.97
