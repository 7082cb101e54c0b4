"""A short trial on a slice of real CIFAR-10 (the shared tar), when it is present."""
from __future__ import annotations

import json

import numpy as np
import pytest

from study.data import load_cifar10
from study.trial import run_trial

pytestmark = [pytest.mark.realdata, pytest.mark.slow]  # decodes all 60,000 images; trains on 1000
PUBLISHED_SHA256 = "a408d35d926b651be423fe7f720aaf772d6ee1deab6dd930ac88a49faf0bf767"


def test_shared_tar_is_all_of_cifar10(real_tar):
    data = load_cifar10(str(real_tar), "full")
    assert data.train_x.shape == (50000, 32, 32, 3) and data.test_x.shape == (10000, 32, 32, 3)
    assert np.bincount(data.train_y).tolist() == [5000] * 10
    if real_tar.name == "cifar10-jpg.tar":
        assert data.checksum == PUBLISHED_SHA256
    mean, std = data.channel_stats()
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=2e-4)  # the tar's README
    np.testing.assert_allclose(std, [0.2452, 0.2428, 0.2606], atol=2e-4)


def test_short_trial_on_a_real_slice(real_tar, tmp_path):
    cfg = {"model": "small_cnn", "classes": ["cat", "ship"], "train_subset": 1000, "test_subset": 400,
           "epochs": 2, "batch_size": 100, "lr": 0.05, "n_noise": 200, "n_trajectory": 50,
           "data_root": str(real_tar), "device": "cpu"}
    result = run_trial(cfg, str(tmp_path), log=lambda m: None)
    on_disk = json.loads((tmp_path / "trial.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["n_train"] == 1000
    assert on_disk["data"]["kind"] == "tar"
    # cat vs ship is easy: two epochs on 1000 images beat chance clearly
    assert result["test_accuracy"] > 0.6
    history = result["train_history"]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert len(result["heldout"]) == 8
