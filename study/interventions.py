"""Interventions on training, usable as grid axes.

Global (`intervention`, does training against noise remove absorption?):
  none | outlier_exposure | noise_class | train_noise_aug
Per class (`class_intervention`, is clutter the cause?): change only one trained class's
training images: gaussian_noise | blur | label_noise | subsample, by `strength`; or change its
frequency the other way (`majority`: the target keeps all its images, every other class keeps the
fraction `strength` of its own), so that it becomes the most frequent class (Kang et al. 2024:
far-from-data inputs go to the class the prior favours). The kinds and their ranges are listed
once, in config.CLASS_INTERVENTION_RANGES.

Both act on the training device, seeded from the trial's `seed`; test images are never touched.
The training noise is Gaussian with the data's per-channel mean and std, drawn from the trainer's
own generator: never the probe banks, so every other noise family stays unseen in training.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

GLOBAL = ("none", "outlier_exposure", "noise_class", "train_noise_aug")
GLOBAL_DEFAULT_STRENGTH = {
    "outlier_exposure": 0.5,  # lambda of the uniform-target loss (Hendrycks et al. 2019)
    "noise_class": 0.125,     # noise images added per training image (1 per 8)
    "train_noise_aug": 0.1,   # max std of the Gaussian noise added to a training image, [0, 1] units
}


def noise_batch(n: int, like: Tensor, mean: Tensor, std: Tensor, gen: torch.Generator) -> Tensor:
    return mean.view(1, 3, 1, 1) + std.view(1, 3, 1, 1) * torch.randn(
        n, *like.shape[1:], device=like.device, generator=gen)


class TrainingIntervention:
    """Changes each training batch (in [0, 1] pixel space) and the loss. `none` changes nothing."""

    def __init__(self, kind: str, strength: float | None, n_classes: int, mean: Tensor, std: Tensor):
        self.kind = kind
        self.strength = GLOBAL_DEFAULT_STRENGTH.get(kind, 0.0) if strength is None else strength
        self.k, self.mean, self.std = n_classes, mean, std

    def batch(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        n = len(x)
        if self.kind == "train_noise_aug":
            sigma = self.strength * torch.rand(n, 1, 1, 1, device=x.device, generator=gen)
            return x + sigma * torch.randn(x.shape, device=x.device, generator=gen), y
        if self.kind == "outlier_exposure":  # half as many noise images, marked -1
            m = max(1, n // 2)
            return (torch.cat([x, noise_batch(m, x, self.mean, self.std, gen)]),
                    torch.cat([y, torch.full((m,), -1, device=y.device, dtype=y.dtype)]))
        if self.kind == "noise_class":  # labelled as the extra class K
            m = self.extra_per_batch(n)
            return (torch.cat([x, noise_batch(m, x, self.mean, self.std, gen)]),
                    torch.cat([y, torch.full((m,), self.k, device=y.device, dtype=y.dtype)]))
        return x, y

    def extra_per_batch(self, n: int) -> int:
        """noise_class: the noise images added to a batch of n (labelled as the extra class)."""
        return max(1, math.ceil(n * self.strength)) if self.kind == "noise_class" else 0

    def loss(self, logits: Tensor, y: Tensor, label_smoothing: float) -> Tensor:
        if self.kind != "outlier_exposure":
            return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        known = y >= 0
        ce = F.cross_entropy(logits[known], y[known], label_smoothing=label_smoothing)
        # cross-entropy to the uniform distribution on the outliers
        uniform = -F.log_softmax(logits[~known], dim=1).mean(dim=1).mean()
        return ce + self.strength * uniform


# ---------------------------------------------------------------- per-class data interventions

def _gaussian_kernel(sigma: float, device) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    return k / k.sum()


def blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of float images (N, 3, H, W), reflect padding."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma, x.device)
    r = len(k) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)


def _to_uint8(x: Tensor) -> Tensor:
    """[0, 1] floats back to the stored uint8 pixels."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def apply_class_intervention(x: Tensor, y: Tensor, spec: dict, classes: list[str],
                             gen: torch.Generator) -> tuple[Tensor, Tensor, dict]:
    """x: uint8 (N, 3, H, W) training images on the device, y: labels. Changes only images of
    spec['target'] (by label); returns the new x, y and a record of what was done."""
    target = classes.index(spec["target"])
    kind, strength = spec["kind"], float(spec["strength"])
    idx = torch.nonzero(y == target).flatten()
    record = {"target": spec["target"], "kind": kind, "strength": strength, "target_images": int(len(idx))}
    if kind == "gaussian_noise":
        imgs = x[idx].float() / 255
        noisy = imgs + strength * torch.randn(imgs.shape, device=x.device, generator=gen)
        x = x.clone()
        x[idx] = _to_uint8(noisy)
        record["touched"] = int(len(idx))
    elif kind == "blur":
        x = x.clone()
        for chunk in idx.split(4096):
            x[chunk] = _to_uint8(blur(x[chunk].float() / 255, strength))
        record["touched"] = int(len(idx))
    elif kind == "label_noise":
        n = int(round(strength * len(idx)))
        chosen = idx[torch.randperm(len(idx), device=x.device, generator=gen)[:n]]
        others = torch.tensor([c for c in range(len(classes)) if c != target], device=y.device)
        y = y.clone()
        y[chosen] = others[torch.randint(0, len(others), (n,), device=y.device, generator=gen)]
        record["touched"] = n
    elif kind == "subsample":
        keep_n = int(round(strength * len(idx)))
        dropped = idx[torch.randperm(len(idx), device=x.device, generator=gen)[keep_n:]]
        keep = torch.ones(len(y), dtype=torch.bool, device=y.device)
        keep[dropped] = False
        x, y = x[keep], y[keep]
        record["touched"] = int(len(dropped))
        record["kept"] = keep_n
    elif kind == "majority":  # each other class thinned on its own, so they stay balanced among themselves
        keep = torch.ones(len(y), dtype=torch.bool, device=y.device)
        kept = {}
        for c in range(len(classes)):
            if c == target:
                continue
            members = torch.nonzero(y == c).flatten()
            keep_n = int(round(strength * len(members)))
            keep[members[torch.randperm(len(members), device=x.device, generator=gen)[keep_n:]]] = False
            kept[classes[c]] = keep_n
        x, y = x[keep], y[keep]
        record["touched"] = int((~keep).sum())
        record["kept"] = kept
        record["target_share"] = float((y == target).float().mean())
    else:  # config.CLASS_INTERVENTION_RANGES admits only the kinds above
        raise ValueError(f"no class intervention of kind {kind!r}")
    return x, y, record
