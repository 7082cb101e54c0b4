"""Clutter measures: name -> fn(images or features) -> one number for a set of images.

Pixel measures take float images (N, 3, 32, 32) in [0, 1] units; feature measures take the
penultimate features (N, D) of the same images. Every class of a trial and every noise bank gets
the same measures, so "is the absorbing class more cluttered?" and "does noise look like it?"
can be asked of the numbers.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from .noise import radial_frequency

PIXEL_MEASURES: dict[str, Callable[[np.ndarray], float]] = {}
FEATURE_MEASURES: dict[str, Callable[[np.ndarray], float]] = {}


def pixel(name):
    def deco(fn):
        PIXEL_MEASURES[name] = fn
        return fn
    return deco


def feature(name):
    def deco(fn):
        FEATURE_MEASURES[name] = fn
        return fn
    return deco


def _gray(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def _uint8_hwc(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


@pixel("png_bits_per_pixel")
def png_bits_per_pixel(x: np.ndarray) -> float:
    """Lossless PNG size in bits per pixel: the "input complexity" of Serra et al. (2020)."""
    from PIL import Image
    sizes = []
    for img in _uint8_hwc(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=9)
        sizes.append(8 * len(buf.getvalue()) / (img.shape[0] * img.shape[1]))
    return float(np.mean(sizes))


def radial_power(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum (mean removed) at integer radii 1..15 (DC excluded)."""
    power = np.abs(np.fft.fft2(gray - gray.mean(axis=(1, 2), keepdims=True))) ** 2
    radius = np.round(radial_frequency().numpy() * 32).astype(int)
    radii = np.arange(1, 16)
    mean_power = power.mean(axis=0)
    return radii, np.array([mean_power[radius == r].mean() for r in radii])


@pixel("spectral_slope")
def spectral_slope(x: np.ndarray) -> float:
    """Slope of log power vs log frequency: about -2 for natural images, 0 for white noise;
    shallower means more fine structure."""
    radii, power = radial_power(_gray(x))
    return float(np.polyfit(np.log(radii), np.log(power + 1e-20), 1)[0])


@pixel("gradient_energy")
def gradient_energy(x: np.ndarray) -> float:
    """Mean squared intensity gradient (edge density)."""
    g = _gray(x)
    return float((np.diff(g, axis=1) ** 2).mean() + (np.diff(g, axis=2) ** 2).mean())


@pixel("colorfulness")
def colorfulness(x: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness, in [0, 1] units."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    per_image = (np.sqrt(rg.std(axis=(1, 2)) ** 2 + yb.std(axis=(1, 2)) ** 2)
                 + 0.3 * np.sqrt(rg.mean(axis=(1, 2)) ** 2 + yb.mean(axis=(1, 2)) ** 2))
    return float(per_image.mean())


@pixel("intensity_std")
def intensity_std(x: np.ndarray) -> float:
    """Within-image contrast: standard deviation of the grey levels, averaged over images."""
    return float(_gray(x).std(axis=(1, 2)).mean())


def _unit(f: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(n > 0, n, 1)


@feature("feature_trace")
def feature_trace(f: np.ndarray) -> float:
    """Total variance (trace of the covariance) of the unit-normalised features: spread in angle."""
    return float(_unit(f).var(axis=0).sum())


@feature("participation_ratio")
def participation_ratio(f: np.ndarray) -> float:
    """(sum lambda)^2 / sum lambda^2 of the feature covariance: how many directions carry variance."""
    lam = np.clip(np.linalg.eigvalsh(np.cov(f, rowvar=False)), 0, None)
    return float(lam.sum() ** 2 / (lam**2).sum()) if (lam**2).sum() > 0 else 0.0


@feature("twonn_dimension")
def twonn_dimension(f: np.ndarray) -> float:
    """Intrinsic dimension by TwoNN (Facco et al. 2017): mu = r2 / r1 per point, d = N / sum ln mu
    (maximum likelihood); duplicate points (r1 = 0) are left out."""
    from scipy.spatial import cKDTree
    dist, _ = cKDTree(f).query(f, k=3)
    r1, r2 = dist[:, 1], dist[:, 2]
    ok = r1 > 0
    mu = r2[ok] / r1[ok]
    return float(ok.sum() / np.log(mu).sum()) if ok.sum() > 1 else float("nan")


@feature("centroid_distance")
def centroid_distance(f: np.ndarray) -> float:
    """Mean Euclidean distance of unit-normalised features to their centroid."""
    u = _unit(f)
    return float(np.linalg.norm(u - u.mean(axis=0), axis=1).mean())


def measure_all(images: np.ndarray, features: np.ndarray) -> dict[str, float]:
    out = {name: fn(images) for name, fn in PIXEL_MEASURES.items()}
    out.update({name: fn(features) for name, fn in FEATURE_MEASURES.items()})
    return out
