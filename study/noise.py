"""Noise families: name -> fn(n, gen, ctx) -> float32 images (n, 3, 32, 32) in [0, 1] pixel units.

Banks are generated on the CPU from `noise_seed` and the family's name, so every trial of a study,
on any device, probes the very same images; the trial normalises them like its training data.
Some families are deliberately not clipped to [0, 1] (gaussian, pink, phase_scrambled): clipping
would change the statistic that defines them.

The literature's families are here exactly as their reference code draws them, so our numbers
line up with the published tables (analysis/explanations.py holds those tables):
- ODIN (Liang, Li & Srikant, ICLR 2018; facebookresearch/odin, code/calData.py, testGaussian and
  testUni): `odin_gaussian` and `uniform`, drawn in pixel space and normalised like the data;
- Outlier Exposure (Hendrycks, Mazeika & Dietterich, ICLR 2019; hendrycks/outlier-exposure,
  CIFAR/test.py): `oe_gaussian`, `rademacher` and `oe_blobs`, drawn directly in the network's
  normalised input space. Our banks are pixel images, so these are written as mean + std * z:
  normalising them gives back z (to float rounding), whatever the data's statistics.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import streams

NOISE_FAMILIES: dict[str, Callable[[int, torch.Generator, NoiseContext], Tensor]] = {}


def register(name: str):
    def deco(fn):
        NOISE_FAMILIES[name] = fn
        return fn
    return deco


@dataclass(frozen=True)
class NoiseContext:
    mean: Tensor            # (3,) per-channel mean of the training images, [0, 1] units
    std: Tensor             # (3,) per-channel std
    natural: Tensor         # uint8 (M, 3, 32, 32) natural images for the scrambled families


def noise_families(cfg: dict) -> list[str]:
    """The noise families a trial config probes, in registry order for `all`."""
    return list(NOISE_FAMILIES) if cfg["noise"] == "all" else list(cfg["noise"])


def make_bank(family: str, n: int, noise_seed: int, ctx: NoiseContext) -> Tensor:
    gen = streams.torch_generator("noise_bank", noise_seed, name=family)
    return NOISE_FAMILIES[family](n, gen, ctx).float().contiguous()


def _channels(v: Tensor) -> Tensor:
    return v.view(1, 3, 1, 1)


def _natural(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    idx = torch.randint(0, len(ctx.natural), (n,), generator=gen)
    return ctx.natural[idx].float() / 255


def radial_frequency(h: int = 32, w: int = 32) -> Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.fftfreq(w)[None, :]
    return torch.sqrt(fy**2 + fx**2)


@register("gaussian")
def gaussian(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """The original question's noise: per-channel mean and std of the training set, unclipped."""
    return _channels(ctx.mean) + _channels(ctx.std) * torch.randn(n, 3, 32, 32, generator=gen)


@register("gaussian_clipped")
def gaussian_clipped(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    return gaussian(n, gen, ctx).clamp(0, 1)


@register("uniform")
def uniform(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """U[0, 1] per pixel and channel in pixel space: ODIN's uniform noise (`torch.rand`, then
    normalised with the data's statistics)."""
    return torch.rand(n, 3, 32, 32, generator=gen)


@register("odin_gaussian")
def odin_gaussian(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """ODIN's Gaussian noise: clamp(N(0.5, 1), 0, 1) per pixel and channel in pixel space, then
    normalised like the data (about 31% of the values sit at each bound)."""
    return (torch.randn(n, 3, 32, 32, generator=gen) + 0.5).clamp(0, 1)


def _normalised(z: Tensor, ctx: NoiseContext) -> Tensor:
    """The pixel image whose normalised input is z (for the families defined in that space)."""
    return _channels(ctx.mean) + _channels(ctx.std) * z


@register("rademacher")
def rademacher(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """mean +- std with equal odds: gaussian's first two moments, but only two values; normalised,
    exactly Outlier Exposure's Rademacher noise (+-1 in the network's input space)."""
    signs = torch.randint(0, 2, (n, 3, 32, 32), generator=gen).float() * 2 - 1
    return _normalised(signs, ctx)


@register("oe_gaussian")
def oe_gaussian(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """Outlier Exposure's Gaussian noise: N(0, 0.5^2) clipped to [-1, 1], in the normalised input
    space (half the spread of `gaussian`, 2.3% of the values at each bound)."""
    return _normalised((0.5 * torch.randn(n, 3, 32, 32, generator=gen)).clamp(-1, 1), ctx)


OE_BLOB_P, OE_BLOB_SIGMA, OE_BLOB_THRESHOLD = 0.7, 1.5, 0.75   # Outlier Exposure's constants


@register("oe_blobs")
def oe_blobs(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """Outlier Exposure's blobs, as its code makes them: Bernoulli(0.7) on an HxWx3 array, blurred
    by skimage's `gaussian(sigma=1.5, multichannel=False)`, i.e. scipy's gaussian_filter over all
    three axes, the colour axis included (mode nearest, truncate 4); values below 0.75 set to 0
    (the rest keep their blurred value), then 2v - 1 in the normalised input space: -1 off a
    blob, 0.5..1 on it."""
    from scipy.ndimage import gaussian_filter
    on = (torch.rand(n, 32, 32, 3, generator=gen) < OE_BLOB_P).double().numpy()
    blurred = gaussian_filter(on, sigma=(0, OE_BLOB_SIGMA, OE_BLOB_SIGMA, OE_BLOB_SIGMA), mode="nearest",
                              truncate=4.0)
    blurred[blurred < OE_BLOB_THRESHOLD] = 0.0
    z = torch.from_numpy(blurred).float().permute(0, 3, 1, 2) * 2 - 1
    return _normalised(z, ctx)


@register("blobs")
def blobs(n: int, gen: torch.Generator, ctx: NoiseContext, max_blobs: int = 6) -> Tensor:
    """1..6 soft Gaussian blobs of random colour, size and place on a random plain background."""
    img = torch.rand(n, 3, 1, 1, generator=gen).expand(n, 3, 32, 32).clone()
    count = torch.randint(1, max_blobs + 1, (n,), generator=gen)
    yy = torch.arange(32.0)[:, None]
    xx = torch.arange(32.0)[None, :]
    for j in range(max_blobs):
        cy, cx = (torch.rand(n, 2, generator=gen) * 32).unbind(1)
        sigma = 2 + 6 * torch.rand(n, generator=gen)
        colour = torch.rand(n, 3, 1, 1, generator=gen)
        d2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
        alpha = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2)) * (j < count)[:, None, None]
        img = img * (1 - alpha[:, None]) + colour * alpha[:, None]
    return img


@register("salt_pepper")
def salt_pepper(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """A plain image of the training mean colour with a random 5..50% of pixels black or white."""
    density = 0.05 + 0.45 * torch.rand(n, 1, 1, 1, generator=gen)
    u = torch.rand(n, 1, 32, 32, generator=gen)
    img = _channels(ctx.mean).expand(n, 3, 32, 32)
    img = torch.where(u < density / 2, torch.zeros(()), img)
    return torch.where((u >= density / 2) & (u < density), torch.ones(()), img)


@register("pink")
def pink(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """Amplitude ~ 1/f like natural images (power ~ 1/f^2), scaled to the data's mean and std."""
    spectrum = torch.fft.fft2(torch.randn(n, 3, 32, 32, generator=gen))
    f = radial_frequency()
    scale = torch.where(f > 0, 1 / f.clamp_min(1e-12), torch.zeros(()))
    img = torch.fft.ifft2(spectrum * scale).real
    img = (img - img.mean(dim=(2, 3), keepdim=True)) / img.std(dim=(2, 3), keepdim=True)
    return _channels(ctx.mean) + _channels(ctx.std) * img


@register("phase_scrambled")
def phase_scrambled(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """Natural images with a random Fourier phase added (the same for all channels, as in vision
    science), amplitude spectrum and mean colour kept exactly: natural statistics, no objects."""
    src = _natural(n, gen, ctx)
    # the phase of a real image's spectrum is odd-symmetric, so the result stays real
    phase = torch.angle(torch.fft.fft2(torch.rand(n, 1, 32, 32, generator=gen)))
    phase[..., 0, 0] = 0  # keep the mean colour
    out = torch.fft.ifft2(torch.fft.fft2(src) * torch.exp(1j * phase))
    return out.real


@register("pixel_shuffled")
def pixel_shuffled(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """Natural images with their pixel positions permuted: colour histogram kept, structure gone."""
    src = _natural(n, gen, ctx).view(n, 3, 1024)
    perm = torch.argsort(torch.rand(n, 1024, generator=gen), dim=1)
    return src.gather(2, perm[:, None, :].expand(n, 3, 1024)).view(n, 3, 32, 32)


@register("constant")
def constant(n: int, gen: torch.Generator, ctx: NoiseContext) -> Tensor:
    """Solid images of uniformly random colours."""
    return torch.rand(n, 3, 1, 1, generator=gen).expand(n, 3, 32, 32)
