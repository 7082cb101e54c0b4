"""The throughput benchmark at its CPU size: one run, every setup side by side, ratios printed."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT


def test_cpu_benchmark_prints_and_writes_every_setup(tmp_path, monkeypatch, capsys):
    """`study.bench throughput --size cpu`: the command line, the table and the files, around
    measurements with known rates (each setup's own measurement runs for real, at tiny sizes, in
    tests/test_gpu_check.py's dry run of the device script): every setup of the CPU size in order,
    packing and fusing at each --ks, the ratios against (a), the per-model epoch time and the
    trainings per hour from the recipe's 50,000 images and the probes' seconds."""
    from study import bench, speed
    seen = {}

    def fake(name, models, images_per_s):
        def measure(p, k=None):
            seen[name.format(k=k)] = p
            return speed.rate(name.format(k=k), images_per_s * p["steps"], p["steps"], models if k is None else k)
        return measure
    monkeypatch.setattr(bench, "baseline", fake("a_baseline_dataloader_fp32", 1, 100.0))
    monkeypatch.setattr(bench, "project", fake("b_project_trainer", 1, 150.0))
    monkeypatch.setattr(bench, "packed", fake("c_packed_k{k}", None, 240.0))
    monkeypatch.setattr(bench, "fused", fake("c_fused_k{k}", None, 300.0))
    monkeypatch.setattr(bench, "probe_seconds", lambda p: 10.0)
    out = tmp_path / "bench.json"
    assert bench.main(["throughput", "--size", "cpu", "--steps", "1", "--ks", "2", "--data-root", "somewhere",
                       "--data-verify", "shapes", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    rows = {r["name"]: r for r in record["rows"]}
    assert list(rows) == ["a_baseline_dataloader_fp32", "b_project_trainer", "c_packed_k2", "c_fused_k2"]
    assert all(p["steps"] == 1 and p["data_root"] == "somewhere" and p["data_verify"] == "shapes"
               for p in seen.values())
    assert [rows[n]["speedup_vs_a"] for n in rows] == pytest.approx([1.0, 1.5, 2.4, 3.0])
    epochs = speed.sizes("cpu")["epochs"]
    assert rows["c_packed_k2"]["s_per_epoch"] == pytest.approx(50_000 / 240 * 2)        # per model, wall
    assert rows["b_project_trainer"]["seconds_per_training"] == pytest.approx(epochs * 50_000 / 150 + 10)
    assert rows["a_baseline_dataloader_fp32"]["trainings_per_hour"] == pytest.approx(
        3600 / (epochs * 50_000 / 100 + 10))
    assert "x (a)" in printed and "b_project_trainer" in printed and "1 timed steps" in printed
    assert (tmp_path / "bench.csv").read_text().splitlines()[0].startswith("name,")


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
