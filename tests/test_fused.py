"""Fused multi-seed training: the array model is M separate models, trained as separate trials
would be (same init, same batches), and it writes the same artifacts."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from study import train
from study.config import validate_trial
from study.fused import FusedClassifier, FusedTrainer, check_fusable, run_fused_trials
from study.models import FACTORS, MODELS, build_model
from study.train import EpochLoop, Trainer
from study.trial import new_model, run_trial, setup

# Tolerance for a fused seed against its separate trial after 3 CPU epochs: grouped and plain
# convolutions round differently and training amplifies rounding (measured: weights differ by
# ~1e-6 after one full-batch step, ~3e-4 after an epoch of batch 150 at lr 0.02; at batch 50 and
# lr 0.05 the tiny fixture is chaotic and they part by 0.7 within an epoch).
LOSS_RTOL, ACCURACY_ATOL, SHARE_ATOL = 0.01, 0.05, 0.10


# every registry model, and the small CNN with each non-default factor option (GroupNorm fuses too)
FUSABLE = [(name, {}) for name in sorted(MODELS)] + [
    ("small_cnn", {f: o}) for f, opts in FACTORS.items() for o in opts if o not in ("relu", "max", "batch")]


@pytest.mark.parametrize("name, options", FUSABLE, ids=[f"{n}-{o}" for n, o in FUSABLE])
def test_array_forward_equals_the_separate_models_and_splits_back(name, options):
    models = [build_model(name, 5, seed, **options).eval() for seed in (0, 1, 2)]
    fused = FusedClassifier([copy.deepcopy(m) for m in models]).eval()
    xs = [torch.randn(3, 3, 32, 32) for _ in models]
    with torch.no_grad():
        out = fused(torch.cat(xs, dim=1))
        for i, m in enumerate(models):
            torch.testing.assert_close(out[:, i], m(xs[i]), atol=2e-5, rtol=1e-4)
    back = fused.split([build_model(name, 5, 99, **options) for _ in models])
    for a, b in zip(back, models):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)


def test_one_fused_step_equals_separate_steps(tiny_config):
    cfgs = [tiny_config(seed=s, train_subset=200, batch_size=200, augmentation="flip_crop") for s in (0, 1)]
    setups = [setup(c) for c in cfgs]
    separate = []
    for s in setups:
        model = new_model(s)
        Trainer(model, s.task.train_x, s.task.train_y, s.cfg, s.device, s.normalize, s.precision).run_epoch()
        separate.append(model)
    models = [new_model(s) for s in setups]
    trainer = FusedTrainer(setups, models)
    trainer.run_epoch()
    for a, b in zip(separate, trainer.model.split(models)):
        for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
            if va.dtype.is_floating_point:
                torch.testing.assert_close(va, vb, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # four 3-epoch trainings
def test_fused_seed_agrees_with_its_separate_trial(tiny_config, tmp_path):
    cfgs = [tiny_config(seed=s, epochs=3, batch_size=150, lr=0.02, n_noise=200, n_trajectory=50,
                        noise=["gaussian", "uniform"]) for s in (0, 1)]
    separate = [run_trial(c, str(tmp_path / f"sep{c['seed']}"), log=lambda m: None) for c in cfgs]
    fused = run_fused_trials(cfgs, [str(tmp_path / f"fused{c['seed']}") for c in cfgs], log=lambda m: None)
    for a, b in zip(separate, fused):
        assert set(a) == set(b)  # the same artifacts
        la = [h["train_loss"] for h in a["train_history"]]
        lb = [h["train_loss"] for h in b["train_history"]]
        np.testing.assert_allclose(la, lb, rtol=LOSS_RTOL)
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= ACCURACY_ATOL
        for f in ("gaussian", "uniform"):
            for c in a["classes"]:
                assert abs(a["absorption"][f][c] - b["absorption"][f][c]) <= SHARE_ATOL
        assert json.loads((tmp_path / f"fused{a['seed']}" / "trial.json").read_text())["timing"]["fused_models"] == 2


def test_only_seeds_may_differ():
    with pytest.raises(ValueError, match=r"differ in \['lr'\]"):
        check_fusable([validate_trial({"seed": 0, "lr": 0.1}), validate_trial({"seed": 1, "lr": 0.2})])


def test_one_training_step_serves_both_trainers():
    assert Trainer.run_epoch is FusedTrainer.run_epoch is EpochLoop.run_epoch


@pytest.mark.parametrize("mode", [True, "reduce-overhead", "max-autotune"])
def test_compile_is_applied_on_cuda_in_separate_and_fused_runs(mode, monkeypatch, tiny_config):
    """`compile` reaches torch.compile for both trainers (on CUDA; on the CPU it is off, as the
    config key says). torch.compile is replaced by a recorder: no GPU here."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: calls.append((model, mode)) or model)
    model = build_model("small_cnn", 3, 0)
    assert train.compiled(model, {"compile": mode}, torch.device("cuda")) is model
    assert calls == [(model, None if mode is True else mode)]
    assert train.compiled(model, {"compile": mode}, torch.device("cpu")) is model and len(calls) == 1
    assert train.compiled(model, {"compile": False}, torch.device("cuda")) is model and len(calls) == 1
    seen = []
    monkeypatch.setattr(train, "compiled", lambda m, cfg, device: seen.append((type(m).__name__, cfg["compile"])) or m)
    setups = [setup(tiny_config(seed=s, compile=mode)) for s in (0, 1)]
    FusedTrainer(setups, [new_model(s) for s in setups])
    s = setups[0]
    Trainer(new_model(s), s.task.train_x, s.task.train_y, s.cfg, s.device, s.normalize, s.precision)
    assert seen == [("FusedClassifier", mode), ("Classifier", mode)]
