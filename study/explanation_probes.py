"""Probe-time experiments that tell the published explanations of noise absorption apart.

No training: each probe takes the trained model (through `predict`) and noise, and returns what
trial.json records; analysis/explanations.py tests the records across runs and writes the scoreboard.

- **Amplitude** (Kang et al., ICLR 2024, against Hein et al., CVPR 2019): Gaussian noise around
  the data mean at multiples of the data's std (the same white noise at every amplitude). As
  inputs move off the data, Kang et al. predict that predictions revert to the optimal constant
  solution, about the training label frequencies (mean max-softmax falls, the mean prediction
  nears the label frequencies); Hein et al. prove that a ReLU network's max-softmax goes to 1 as
  an input is scaled up. The two predict opposite curves.
- **BatchNorm statistics**: the same Gaussian images through the network with BatchNorm in eval
  mode (running statistics, as every other probe), in train mode (each noise batch's own
  statistics) and with the running statistics re-estimated on other noise images (BN_MODES);
  the last two on a copy of the model, never changing it. If absorption vanishes without the
  running statistics, they carry it.

The other explanations (the untrained network's guessing bias, the head's bias, clutter) are read
from what a trial records anyway (trajectory, logit decomposition, clutter).
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from analysis.measures import absorption_summary, shares

from . import streams
from .noise import NOISE_FAMILIES, NoiseContext

Predict = Callable[[Tensor], tuple[np.ndarray, np.ndarray]]                 # images -> (logits, features)
PredictWith = Callable[[nn.Module, Tensor, int], tuple[np.ndarray, np.ndarray]]  # (model, images, batch)


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64: at large amplitudes the logits grow, and the mean prediction's KL needs
    the small probabilities float32 would round to 0."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) = sum_c p_c log(p_c / q_c) in nats, 0 log 0 = 0; infinite where q_c = 0 < p_c."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    on = p > 0
    if np.any(q[on] <= 0):
        return float("inf")
    return float(np.sum(p[on] * np.log(p[on] / q[on])))


def label_frequencies(labels: np.ndarray, k: int, extra_share: float = 0.0) -> np.ndarray:
    """The share of each of the K classes among the training labels as trained on (after a class
    intervention); with `extra_share` > 0, a last entry for the extra class a noise_class model is
    trained on (that share of every batch), the K shares scaled to the rest."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k)[:k].astype(np.float64)
    freq = counts / counts.sum()
    return np.append(freq * (1 - extra_share), extra_share) if extra_share > 0 else freq


def predictions(logits: np.ndarray, classes: list[str]) -> dict:
    """Where a set of images goes: absorber, top share, normalised entropy, mean max-softmax, the
    absorber's mean probability, and each class's share of the images."""
    probs = softmax64(logits)
    pred = probs.argmax(1)
    return {**absorption_summary(pred, probs, classes), "shares": shares(pred, classes)}


# ---------------------------------------------------------------- amplitude

def white_noise(n: int, noise_seed: int) -> Tensor:
    """N(0, 1) per pixel and channel from the amplitude stream: every amplitude scales this draw."""
    return torch.randn(n, 3, 32, 32, generator=streams.torch_generator("amplitude", noise_seed))


def around_the_mean(z: Tensor, amplitude: float, ctx: NoiseContext) -> Tensor:
    """Pixel images mean + amplitude * std * z: normalised, amplitude * z (at amplitude 1, the
    `gaussian` family's definition)."""
    return ctx.mean.view(1, 3, 1, 1) + amplitude * ctx.std.view(1, 3, 1, 1) * z


def amplitude_probe(predict: Predict, z: Tensor, ctx: NoiseContext, amplitudes: list[float], classes: list[str],
                    label_freq: np.ndarray, test_feature_norm: float) -> list[dict]:
    """One row per amplitude: where the images go (absorber, its share, entropy, mean
    max-softmax), the mean prediction and its KL to the uniform distribution and to the training
    label frequencies, and the mean feature norm against the test images' (`test_feature_norm`)."""
    rows = []
    uniform = np.full(len(classes), 1 / len(classes))
    for a in amplitudes:
        logits, feats = predict(around_the_mean(z, a, ctx))
        mean_prediction = softmax64(logits).mean(0)
        norm = float(np.linalg.norm(np.asarray(feats, dtype=np.float64), axis=1).mean())
        rows.append({"amplitude": float(a), **predictions(logits, classes),
                     "mean_prediction": dict(zip(classes, mean_prediction.tolist())),
                     "kl_uniform": kl_divergence(mean_prediction, uniform),
                     "kl_label_frequencies": kl_divergence(mean_prediction, label_freq),
                     "noise_feature_norm": norm, "feature_norm_ratio": norm / test_feature_norm})
    return rows


# Hein et al.'s far-field result is a theorem about networks piecewise affine in their input:
# ReLU-like activations, max/avg pooling, BatchNorm on running statistics (affine at probe time).
# GELU or tanh are not piecewise affine; GroupNorm and LayerNorm divide by the input's own scale;
# saturating ones (ReLU6, Hardtanh) are, but can leave the network constant far out, where the
# theorem promises nothing: they count as outside too.
PIECEWISE_AFFINE = (nn.Conv2d, nn.Linear, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.MaxPool2d, nn.AvgPool2d,
                    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.modules.batchnorm._BatchNorm, nn.Identity,
                    nn.Flatten, nn.Dropout)


def not_piecewise_affine(model: nn.Module) -> list[str]:
    """The kinds of the model's leaf modules that are not piecewise affine in eval mode ([] for a
    ReLU network). Judged by modules: a nonlinearity applied functionally in forward() is unseen."""
    return sorted({type(m).__name__ for m in model.modules()
                   if next(m.children(), None) is None and not isinstance(m, PIECEWISE_AFFINE)})


# ---------------------------------------------------------------- BatchNorm statistics

def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class KeepModes(nn.Module):
    """A model's `features` and `head` whose layers keep the train/eval flags they were given:
    `predict` calls `.eval()` on what it probes, which would put BatchNorm back on its running
    statistics."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.features, self.head = model.features, model.head

    def train(self, mode: bool = True) -> KeepModes:
        return self


# name -> prepare(model, reestimate) -> the module to probe; `reestimate(module)` runs the
# re-estimation images through a module (used by modes that re-estimate statistics)
BN_MODES: dict[str, Callable[[nn.Module, Callable[[nn.Module], None]], nn.Module]] = {}


def register_mode(name: str):
    def deco(fn):
        BN_MODES[name] = fn
        return fn
    return deco


@register_mode("eval")
def running_statistics(model: nn.Module, reestimate) -> nn.Module:
    """As trained and as every other probe sees it: BatchNorm uses the running statistics."""
    return model


@register_mode("batch_stats")
def batch_statistics(model: nn.Module, reestimate) -> nn.Module:
    """A copy whose BatchNorm layers normalise each noise batch by its own mean and variance
    (train mode; momentum 0, so even the copy's running statistics stay as they were); every other
    layer in eval mode."""
    probed = copy.deepcopy(model).eval()
    for bn in batchnorm_layers(probed):
        bn.train()
        bn.momentum = 0.0
    return KeepModes(probed)


@register_mode("noise_stats")
def noise_statistics(model: nn.Module, reestimate) -> nn.Module:
    """A copy whose running statistics are re-estimated on noise (reset, then the plain average
    over the re-estimation batches: momentum None), then used in eval mode."""
    probed = copy.deepcopy(model).eval()
    layers = batchnorm_layers(probed)
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    reestimate(KeepModes(probed))
    for bn in layers:
        bn.eval()
    return probed


def batchnorm_probe(predict_with: PredictWith, model: nn.Module, images: Tensor, reestimate_images: Tensor,
                    classes: list[str], batch_size: int) -> dict:
    """Where `images` go under each BN_MODES entry. Batch statistics depend on the batch, so the
    images are probed in equal batches of min(batch_size, len(images)) (a ragged rest is left out),
    and the statistics are re-estimated in batches of that size. The model is left unchanged."""
    layers = batchnorm_layers(model)
    if not layers:
        return {"applicable": False, "reason": "the model has no BatchNorm layers"}
    b = min(batch_size, len(images), len(reestimate_images))
    if b < 2:   # BatchNorm in train mode needs >= 2 values per channel (1x1 maps late in the network)
        return {"applicable": False, "reason": f"batch statistics need batches of >= 2 images (got {b}: "
                "batch_size, n_bn)"}
    images, reestimate_images = images[: len(images) // b * b], reestimate_images[: len(reestimate_images) // b * b]
    modes = {}
    with torch.no_grad():
        for name, prepare in BN_MODES.items():
            probed = prepare(model, lambda m: predict_with(m, reestimate_images, b))
            logits, _ = predict_with(probed, images, b)
            modes[name] = predictions(logits, classes)
    return {"applicable": True, "n_images": int(len(images)), "batch_size": int(b),
            "n_reestimate": int(len(reestimate_images)), "batchnorm_layers": len(layers), "modes": modes}


def batchnorm_images(n: int, noise_seed: int, ctx: NoiseContext) -> tuple[Tensor, Tensor]:
    """(images to probe, images to re-estimate the statistics on): 2n of the `gaussian` family's
    images from their own stream, so the statistics come from noise like, not the same as, the
    images probed."""
    x = NOISE_FAMILIES["gaussian"](2 * n, streams.torch_generator("batchnorm", noise_seed), ctx).float()
    return x[:n], x[n:]
