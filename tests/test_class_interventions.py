"""Per-class interventions touch only the target class's training images, by the stated amount."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from study.interventions import apply_class_intervention
from study.train import Normalizer, Precision, Trainer, images_to_device

CLASSES = ["cat", "dog", "bird"]


def data(n_per_class=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(96, 160, size=(3 * n_per_class, 32, 32, 3), dtype=np.uint8)  # mid-grey: no clipping
    y = np.repeat(np.arange(3), n_per_class)
    return images_to_device(x, torch.device("cpu")), torch.from_numpy(y)


def run(kind, strength, target="bird", seed=1):
    x, y = data()
    out = apply_class_intervention(x, y, {"target": target, "kind": kind, "strength": strength}, CLASSES,
                                   torch.Generator().manual_seed(seed))
    return x, y, *out


def test_gaussian_noise_has_the_stated_std_on_the_target_only():
    x, y, x2, y2, rec = run("gaussian_noise", 0.05)
    target = y == 2
    diff = (x2.float() - x.float()) / 255
    assert torch.equal(x2[~target], x[~target]) and torch.equal(y2, y)
    assert diff[target].std().item() == pytest.approx(0.05, rel=0.05)   # +-1/255 rounding
    assert rec["touched"] == 200 and rec["target_images"] == 200


def test_blur_lowers_high_frequency_energy_of_the_target_only():
    x, y, x2, y2, rec = run("blur", 1.0)
    target = y == 2

    def high_freq(imgs):
        g = imgs.float().mean(1)
        return ((g[:, 1:, :] - g[:, :-1, :]) ** 2).mean().item()
    assert torch.equal(x2[~target], x[~target])
    assert high_freq(x2[target]) < 0.2 * high_freq(x[target])
    assert rec["touched"] == 200


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5])
def test_label_noise_changes_the_stated_fraction_of_target_labels(fraction):
    x, y, x2, y2, rec = run("label_noise", fraction)
    changed = y2 != y
    assert changed.sum().item() == round(fraction * 200) == rec["touched"]
    assert (y[changed] == 2).all() and (y2[changed] != 2).all()   # only target labels, to other classes
    assert torch.equal(x2, x)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_subsample_keeps_exactly_the_stated_fraction(fraction):
    x, y, x2, y2, rec = run("subsample", fraction)
    counts = torch.bincount(y2, minlength=3).tolist()
    assert counts == [200, 200, round(fraction * 200)] and rec["kept"] == round(fraction * 200)
    assert torch.equal(x2[y2 != 2], x[y != 2])


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_majority_keeps_the_target_and_the_stated_fraction_of_every_other_class(fraction):
    x, y, x2, y2, rec = run("majority", fraction)
    counts = torch.bincount(y2, minlength=3).tolist()
    assert counts == [round(fraction * 200), round(fraction * 200), 200]
    assert rec["kept"] == {"cat": round(fraction * 200), "dog": round(fraction * 200)}
    assert rec["touched"] == 400 - 2 * round(fraction * 200)
    assert rec["target_share"] == pytest.approx(200 / sum(counts))
    assert torch.equal(x2[y2 == 2], x[y == 2])  # the target's images untouched and all there
    kept_rows = {tuple(r.flatten()[:64].tolist()) for r in x2[y2 == 0]}
    assert kept_rows <= {tuple(r.flatten()[:64].tolist()) for r in x[y == 0]}  # a subset, not new images


def test_majority_makes_the_target_the_most_frequent_class_in_the_causal_dose():
    from analysis.causal import dose
    assert dose("majority", 0.25) == 0.75 and dose("subsample", 0.25) == 0.75 and dose("blur", 2.0) == 2.0


def test_same_seed_same_change():
    a, b = run("label_noise", 0.3, seed=5), run("label_noise", 0.3, seed=5)
    assert torch.equal(a[3], b[3])


def test_none_leaves_the_training_data_bit_identical():
    x_np = np.random.default_rng(0).integers(0, 256, size=(60, 32, 32, 3), dtype=np.uint8)
    y_np = np.repeat(np.arange(3), 20)
    cfg = {"class_intervention": "none", "intervention": "none", "intervention_strength": None, "batch_size": 20,
           "epochs": 1, "augmentation": "none", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "seed": 0,
           "compile": False}
    device = torch.device("cpu")
    trainer = Trainer(torch.nn.Linear(1, 1), x_np, y_np, cfg, device,
                      Normalizer(np.zeros(3), np.ones(3), device), Precision(device, "fp32", False), CLASSES)
    assert torch.equal(trainer.x, images_to_device(x_np, device)) and trainer.class_intervention is None
    assert torch.equal(trainer.y, torch.from_numpy(y_np))
