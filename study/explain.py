"""What the trained network does with noise: the logit decomposition at the noise features, the
mean noise image sent to each class, and Gaussian noise filtered to single frequency bands."""
from __future__ import annotations

import numpy as np
import torch

from analysis.decomposition import bias_deal, margin_split
from analysis.measures import shares

from . import streams
from .noise import NoiseContext, radial_frequency


def logit_decomposition(logits: np.ndarray, feats: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                        classes: list[str], test_feats: np.ndarray, rng: np.random.Generator) -> dict:
    """logit_c = w_c . f + b_c at the noise features: the absorber's margins split into weight and
    bias parts (analysis.decomposition.margin_split), the biases dealt at random by `rng`
    (bias_deal), and what needs the features themselves (cosines, norms, the reconstruction)."""
    f = np.asarray(feats, dtype=np.float64)
    w, b = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    weight_term = f @ w.T
    record, _ = margin_split(weight_term, b, classes)
    mean_noise = f.mean(axis=0)
    cos = w @ mean_noise / (np.linalg.norm(w, axis=1) * np.linalg.norm(mean_noise) + 1e-12)
    return {
        **record,
        "cos_weight_noise_mean": dict(zip(classes, cos.tolist())),
        "weight_norm": dict(zip(classes, np.linalg.norm(w, axis=1).tolist())),
        "noise_feature_norm": float(np.linalg.norm(f, axis=1).mean()),
        "test_feature_norm": float(np.linalg.norm(test_feats, axis=1).mean()),
        "reconstruction_error": float(np.abs(weight_term + b - logits).max()),
        **bias_deal(weight_term, b, rng),
    }


def noise_mean_images(bank: torch.Tensor, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean image (of a noise bank, or of training images) given to each class (uint8,
    (K, 32, 32, 3); black where none) and how many images each mean is over."""
    x = bank.numpy() if isinstance(bank, torch.Tensor) else bank
    counts = np.bincount(pred, minlength=k)
    means = np.zeros((k, 32, 32, 3), dtype=np.uint8)
    for c in np.flatnonzero(counts):
        means[c] = (np.clip(x[pred == c].mean(axis=0), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    return means, counts


def band_limited_gaussian(n: int, noise_seed: int, ctx: NoiseContext, kind: str, cutoff: float) -> torch.Tensor:
    """Gaussian noise keeping only frequencies below (lowpass) or above (highpass) `cutoff` x the
    Nyquist frequency, rescaled to the data's per-channel mean and std, so that only the spectrum
    differs from the `gaussian` family. The same white noise underlies every cutoff."""
    gen = streams.torch_generator("frequency", noise_seed)
    white = torch.randn(n, 3, 32, 32, generator=gen)
    f = radial_frequency()
    keep = (f <= cutoff * 0.5) if kind == "lowpass" else (f >= cutoff * 0.5)
    keep = keep & (f > 0)  # the mean is set below, not by the DC component
    img = torch.fft.ifft2(torch.fft.fft2(white) * keep).real
    img = (img - img.mean(dim=(2, 3), keepdim=True)) / img.std(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    return ctx.mean.view(1, 3, 1, 1) + ctx.std.view(1, 3, 1, 1) * img


def frequency_probes(predict, n: int, noise_seed: int, ctx: NoiseContext, cutoffs: list[float],
                     classes: list[str]) -> list[dict]:
    rows = []
    for kind in ("lowpass", "highpass"):
        for cutoff in cutoffs:
            logits, _ = predict(band_limited_gaussian(n, noise_seed, ctx, kind, cutoff))
            s = shares(logits.argmax(1), classes)
            absorber = max(s, key=s.get)
            rows.append({"kind": kind, "cutoff": cutoff, "absorber": absorber, "top_share": s[absorber],
                         "shares": s})
    return rows
