"""What the trained network does with noise: the logit decomposition at the noise features, the
mean noise image sent to each class, and Gaussian noise filtered to single frequency bands."""
from __future__ import annotations

import numpy as np
import torch

from analysis.contract import BIAS_DEALS

from .measure import shares
from . import streams
from .noise import NoiseContext, radial_frequency


def _top_share(z: np.ndarray) -> float:
    """The share of the images that the class winning most of them wins."""
    return float(np.bincount(z.argmax(1), minlength=z.shape[1]).max() / len(z))


def bias_deal(weight_term: np.ndarray, b: np.ndarray, rng: np.random.Generator, deals: int = BIAS_DEALS) -> dict:
    """The head-bias counterfactual without selecting a class: the top share (of whichever class
    wins most) with the biases as trained, against the same bias values dealt to the classes at
    random. H0 of the explanation's test: the trained deal is exchangeable with random ones, so its
    rank among them (ties broken at random) is uniform on 0..deals."""
    actual = _top_share(weight_term + b)
    dealt = np.array([_top_share(weight_term + b[rng.permutation(len(b))]) for _ in range(deals)])
    below, tied = int(np.sum(dealt < actual)), int(np.sum(dealt == actual))
    return {"top_share_dealt_mean": float(dealt.mean()), "bias_deals": deals,
            "bias_deal_rank": below + int(rng.integers(0, tied + 1))}


def logit_decomposition(logits: np.ndarray, feats: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                        classes: list[str], test_feats: np.ndarray, rng: np.random.Generator) -> dict:
    """logit_c = w_c . f + b_c at the noise features. For the images the absorber wins, its margin
    over the runner-up splits into a weight part (w_a - w_r) . f and a bias part b_a - b_r. `rng`
    deals the biases at random (bias_deal)."""
    f = np.asarray(feats, dtype=np.float64)
    w, b = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    weight_term = f @ w.T
    z = weight_term + b
    order = np.argsort(-z, axis=1)
    top, runner = order[:, 0], order[:, 1]
    absorber = int(np.bincount(top, minlength=len(classes)).argmax())
    won = top == absorber
    rows = np.flatnonzero(won)
    margin = z[rows, top[rows]] - z[rows, runner[rows]]
    bias_part = b[top[rows]] - b[runner[rows]]
    weight_part = margin - bias_part
    # every bias zeroed, how much does the absorber keep? (descriptive: the absorber was picked with
    # the biases, so any biases it loses favoured it; bias_deal is the counterfactual to test)
    without_bias = np.bincount(weight_term.argmax(1), minlength=len(classes))[absorber] / len(f)
    mean_noise = f.mean(axis=0)
    cos = w @ mean_noise / (np.linalg.norm(w, axis=1) * np.linalg.norm(mean_noise) + 1e-12)
    return {
        "absorber": classes[absorber], "n_images": int(len(rows)),
        "absorber_share": float(won.mean()), "absorber_share_without_bias": float(without_bias),
        "mean_margin": float(margin.mean()) if len(rows) else None,
        "mean_bias_part": float(bias_part.mean()) if len(rows) else None,
        "mean_weight_part": float(weight_part.mean()) if len(rows) else None,
        # share of the margin the bias provides (can exceed 1 when the weights favour the runner-up)
        "bias_share_of_margin": float(bias_part.sum() / margin.sum()) if len(rows) and margin.sum() else None,
        # images the absorber wins only thanks to its bias: the weight term favours the runner-up
        "decided_by_bias": float((weight_part < 0).mean()) if len(rows) else None,
        "cos_weight_noise_mean": dict(zip(classes, cos.tolist())),
        "bias": dict(zip(classes, b.tolist())),
        "weight_norm": dict(zip(classes, np.linalg.norm(w, axis=1).tolist())),
        "noise_feature_norm": float(np.linalg.norm(f, axis=1).mean()),
        "test_feature_norm": float(np.linalg.norm(test_feats, axis=1).mean()),
        "reconstruction_error": float(np.abs(z - logits).max()),
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
