"""The probe-time experiments (study/explanation_probes.py) as pure functions, each against a known
answer: KL and label frequencies, the amplitude probe on models whose far field is known (a linear
net whose logits scale with the input, a constant net that always predicts its bias), and the
BatchNorm modes on a model whose only layer is a BatchNorm with planted running statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from study import explanation_probes as H
from study.models import build_model
from study.noise import NoiseContext
from study.train import Normalizer, Precision, predict

MEAN = torch.tensor([0.49, 0.48, 0.45])
STD = torch.tensor([0.25, 0.24, 0.26])
CTX = NoiseContext(MEAN, STD, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
CPU = torch.device("cpu")


def predict_with(model, images, batch_size=64):
    return predict(model, images, Normalizer(MEAN, STD, CPU), Precision(CPU, "fp32", False), batch_size, CPU)


class Net(nn.Module):
    """`features` + linear `head`, like every registry model."""

    def __init__(self, features: nn.Module, dim: int, k: int):
        super().__init__()
        self.features, self.head = features, nn.Linear(dim, k)


def test_kl_known_answers():
    assert H.kl_divergence([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert H.kl_divergence([0.3, 0.7], [0.3, 0.7]) == 0
    assert H.kl_divergence([0.5, 0.5], [1, 0]) == math.inf
    p, q = np.array([0.2, 0.5, 0.3]), np.array([0.1, 0.6, 0.3])
    assert H.kl_divergence(p, q) == pytest.approx(float((p * np.log(p / q)).sum()))


def test_label_frequencies_as_trained_and_with_an_extra_class():
    np.testing.assert_allclose(H.label_frequencies(np.array([0, 0, 1, 0]), 3), [0.75, 0.25, 0.0])
    np.testing.assert_allclose(H.label_frequencies(np.array([0, 1]), 2, extra_share=0.2), [0.4, 0.4, 0.2])


def test_the_same_white_noise_at_every_amplitude_normalises_to_amplitude_times_z():
    z = H.white_noise(8, noise_seed=3)
    assert torch.equal(z, H.white_noise(8, noise_seed=3)) and not torch.equal(z, H.white_noise(8, noise_seed=4))
    norm = Normalizer(MEAN, STD, CPU)
    for a in (0.5, 1.0, 16.0):
        torch.testing.assert_close(norm(H.around_the_mean(z, a, CTX)), a * z, atol=1e-5 * a, rtol=1e-5)


def _linear_net(k=4) -> Net:
    """logits = W x: positively homogeneous, so scaling the (normalised) input scales the logits."""
    torch.manual_seed(0)
    net = Net(nn.Flatten(), 3 * 32 * 32, k)
    net.head.bias.data.zero_()
    return net


def test_a_linear_net_grows_overconfident_far_from_the_mean():
    """Hein et al.'s far field, exactly: the logits at amplitude a are a times those at 1, so the
    mean max-softmax rises toward 1 and the mean prediction moves away from uniform; the feature
    norm (here the input's) grows as a."""
    net, classes = _linear_net(), list("abcd")
    z = H.white_noise(200, 0)
    freq = np.full(4, 0.25)
    rows = H.amplitude_probe(lambda x: predict_with(net, x), z, CTX, [1, 4, 16, 64], classes, freq,
                             test_feature_norm=1.0)
    msp = [r["mean_max_softmax"] for r in rows]
    assert msp[0] < msp[1] < msp[2] < msp[3] and msp[3] > 0.95
    logits1, _ = predict_with(net, H.around_the_mean(z, 1, CTX))
    logits16, _ = predict_with(net, H.around_the_mean(z, 16, CTX))
    np.testing.assert_allclose(logits16, 16 * logits1, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose([r["feature_norm_ratio"] for r in rows[1:]],
                               [a * rows[0]["noise_feature_norm"] for a in (4, 16, 64)], rtol=1e-4)
    assert rows[0]["kl_uniform"] == rows[0]["kl_label_frequencies"]  # uniform label frequencies


def test_a_constant_net_predicts_its_bias_at_every_amplitude():
    """Kang et al.'s constant solution, planted: features always 0, so every image gets
    softmax(b); with b = log(label frequencies) the KL to them is 0 at every amplitude."""
    freq = np.array([0.5, 0.3, 0.2])
    net = Net(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)), 2, 3)
    net.features[1].weight.data.zero_()
    net.features[1].bias.data.zero_()
    net.head.bias.data = torch.log(torch.tensor(freq, dtype=torch.float32))
    rows = H.amplitude_probe(lambda x: predict_with(net, x), H.white_noise(50, 0), CTX, [0.25, 1, 16], list("abc"),
                             freq, test_feature_norm=2.0)
    for r in rows:
        assert r["kl_label_frequencies"] == pytest.approx(0, abs=1e-6)
        assert r["kl_uniform"] == pytest.approx(H.kl_divergence(freq, np.full(3, 1 / 3)), rel=1e-5)
        assert (r["mean_max_softmax"] == pytest.approx(0.5, rel=1e-5)
                and r["absorber_softmax"] == pytest.approx(0.5, rel=1e-5))
        assert r["absorber"] == "a" and r["top_share"] == 1.0 and r["feature_norm_ratio"] == 0.0


# ---------------------------------------------------------------- BatchNorm

def _bn_net() -> Net:
    """One BatchNorm on the normalised input, global mean pooling, a fixed head: the pooled
    feature of an image is exactly (mean(x_c) - mu_c) / sqrt(var_c + eps) per channel, so each
    mode's features can be computed by hand. Running statistics planted far from noise's."""
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(2.0)
    bn.running_var.fill_(0.25)
    net = Net(nn.Sequential(bn, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 3, 3)
    net.head.weight.data = torch.eye(3)
    net.head.bias.data.zero_()
    return net.eval()


def _by_hand(x_normalised: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> np.ndarray:
    return ((x_normalised.mean((2, 3)) - mu) / torch.sqrt(var + 1e-5)).numpy()


def test_batch_statistics_normalise_each_batch_by_its_own_and_leave_the_model_unchanged():
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = H.around_the_mean(H.white_noise(64, 1), 1.0, CTX)
    probed = H.BN_MODES["batch_stats"](net, reestimate=None)
    _, feats = predict_with(probed, images, batch_size=32)
    x = Normalizer(MEAN, STD, CPU)(images)
    for i in (0, 32):
        batch = x[i:i + 32]
        expected = _by_hand(batch, batch.mean((0, 2, 3)), batch.var((0, 2, 3), unbiased=False))
        np.testing.assert_allclose(feats[i:i + 32], expected, atol=1e-4)
    _, eval_feats = predict_with(H.BN_MODES["eval"](net, None), images)
    np.testing.assert_allclose(eval_feats, _by_hand(x, torch.full((3,), 2.0), torch.full((3,), 0.25)), atol=1e-4)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m.training for m in net.modules())


def test_running_statistics_reestimated_on_noise_are_the_average_of_its_batch_statistics():
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    again = H.around_the_mean(H.white_noise(96, 2), 3.0, CTX)
    probed = H.BN_MODES["noise_stats"](net, lambda m: predict_with(m, again, 32))
    bn = H.batchnorm_layers(probed)[0]
    x = Normalizer(MEAN, STD, CPU)(again)
    batches = [x[i:i + 32] for i in range(0, 96, 32)]
    expected_mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    expected_var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, expected_var, atol=1e-4, rtol=1e-4)
    assert not bn.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_batchnorm_probe_reports_every_mode_and_moves_noise_off_a_planted_absorber():
    """Planted: running mean 2 and variance 0.25 on every channel, so in eval mode every noise
    image's features are about (0 - 2) / 0.5 = -4 per channel and the head diag(-1, 1, 1) gives
    class a +4, the others -4: a absorbs all. With the noise's own statistics (batch or
    re-estimated) the features centre on 0 and the classes share the images."""
    net = _bn_net()
    net.head.weight.data = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    images = H.around_the_mean(H.white_noise(256, 5), 1.0, CTX)
    again = H.around_the_mean(H.white_noise(256, 6), 1.0, CTX)
    out = H.batchnorm_probe(predict_with, net, images, again, list("abc"), batch_size=64)
    assert out["applicable"] and set(out["modes"]) == set(H.BN_MODES) and out["n_images"] == 256
    assert out["modes"]["eval"]["absorber"] == "a" and out["modes"]["eval"]["top_share"] == 1.0
    for mode in ("batch_stats", "noise_stats"):
        assert out["modes"][mode]["top_share"] < 0.9, mode


def test_batchnorm_probe_keeps_equal_batches_and_a_trained_model_intact():
    net = build_model("small_cnn", 3, seed=0)
    with torch.no_grad():  # planted running statistics, as after training
        for bn in H.batchnorm_layers(net):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = H.batchnorm_probe(predict_with, net, H.around_the_mean(H.white_noise(70, 0), 1, CTX),
                            H.around_the_mean(H.white_noise(70, 1), 1, CTX), list("abc"), batch_size=32)
    assert out["n_images"] == 64 and out["batch_size"] == 32 and out["batchnorm_layers"] == 6
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_model_without_batchnorm_is_not_applicable():
    net = build_model("small_cnn", 3, seed=0, norm="group")
    out = H.batchnorm_probe(predict_with, net, torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32), list("abc"), 8)
    assert out == {"applicable": False, "reason": "the model has no BatchNorm layers"}


def test_batches_of_one_image_are_not_applicable_rather_than_a_crash():
    """batch_size: 1 would put one image per BatchNorm batch: train mode cannot normalise
    a single value per channel, so the probe says why instead of ending the trial."""
    net = build_model("small_cnn", 3, seed=0)
    out = H.batchnorm_probe(predict_with, net, torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32), list("abc"), 1)
    assert out["applicable"] is False and "batches of >= 2 images" in out["reason"]
