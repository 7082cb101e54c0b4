"""Batched, on-device augmentations: name -> fn(x, gen) -> x.

x is a float batch (N, 3, H, W) in [0, 1] pixel space on the training device; `gen` is a
torch.Generator on that device, so the augmentation is seeded and costs no host round trip (no
per-image PIL, no DataLoader workers, no `.item()`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS: dict[str, Callable[..., Tensor]] = {}
# entries whose flips the trainer decides (fn(x, gen, flip=bool per image)): each image is flipped
# in every other epoch, which sees both views of every image in two epochs (airbench)
ALTERNATING_FLIP: set[str] = set()


def register(name: str, alternating_flip: bool = False):
    def deco(fn):
        AUGMENTATIONS[name] = fn
        if alternating_flip:
            ALTERNATING_FLIP.add(name)
        return fn
    return deco


def _uniform(n: int, x: Tensor, gen: torch.Generator) -> Tensor:
    return torch.rand(n, device=x.device, generator=gen)


# ---------------------------------------------------------------- building blocks

def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    flip = _uniform(len(x), x, gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_crop(x: Tensor, gen: torch.Generator, pad: int = 4) -> Tensor:
    """Reflect-pad by `pad`, then take a random HxW window per image (one gather, no loop)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, cols)


def cutout(x: Tensor, gen: torch.Generator, size: int = 16) -> Tensor:
    """Blank a size x size square (clipped at the border) with the batch's mean colour
    (DeVries & Taylor 2017 fill zeros after normalisation, i.e. the mean)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device, generator=gen)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device, generator=gen)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy).abs() * 2 < size) & ((xs - cx).abs() * 2 < size)
    fill = x.mean(dim=(0, 2, 3), keepdim=True)
    return torch.where(inside[:, None], fill, x)


# ---------------------------------------------------------------- TrivialAugment (batched)
# TrivialAugmentWide (Mueller & Hutter 2021) with torchvision's op set and magnitudes: each image
# gets one op, drawn uniformly, at a magnitude drawn uniformly from 31 bins. Every op is computed
# for the whole batch and selected per image with torch.where, so the batch never leaves the device.

_N_BINS = 31
_TA_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
           "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
           "autocontrast", "equalize")


def _gray(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance: b + factor * (a - b)."""
    return (b + factor * (a - b)).clamp(0, 1)


def _sharpen_base(x: Tensor) -> Tensor:
    kernel = torch.tensor([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]], device=x.device, dtype=x.dtype) / 13
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    out = x.clone()  # PIL leaves the border pixels as they are
    out[..., 1:-1, 1:-1] = blurred[..., 1:-1, 1:-1]
    return out


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1 / (hi - lo).clamp_min(1e-8), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x)


def _equalize(x: Tensor) -> Tensor:
    """Per-image, per-channel histogram equalisation on 256 levels (PIL's algorithm)."""
    n, c, h, w = x.shape
    levels = (x * 255).round().long().clamp(0, 255).reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float))
    last = hist.gather(1, levels.max(dim=1, keepdim=True).values)  # count of the top level
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) - hist + torch.div(step, 2, rounding_mode="floor"),
                    step.clamp_min(1), rounding_mode="floor").clamp(0, 255)
    out = lut.gather(1, levels) / 255
    return torch.where(step > 0, out, levels / 255).reshape(n, c, h, w)


def _affine(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor) -> Tensor:
    """One grid_sample for shear, translate and rotate (identity matrix for other images)."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    s = sign * mag * 0.99                       # shear factor up to 0.99
    t = sign * mag * 32 * 2 / w                 # translation up to 32 px, in [-1, 1] units
    a = sign * mag * math.radians(135)          # rotation up to 135 degrees
    is_ = lambda name: op == _TA_OPS.index(name)  # noqa: E731
    theta[:, 0, 1] = torch.where(is_("shear_x"), s, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(is_("shear_y"), s, theta[:, 1, 0])
    theta[:, 0, 2] = torch.where(is_("translate_x"), t, theta[:, 0, 2])
    theta[:, 1, 2] = torch.where(is_("translate_y"), t, theta[:, 1, 2])
    rot = is_("rotate")
    theta[:, 0, 0] = torch.where(rot, torch.cos(a), theta[:, 0, 0])
    theta[:, 0, 1] = torch.where(rot, -torch.sin(a), theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(rot, torch.sin(a), theta[:, 1, 0])
    theta[:, 1, 1] = torch.where(rot, torch.cos(a), theta[:, 1, 1])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def trivial_augment(x: Tensor, gen: torch.Generator) -> Tensor:
    n = len(x)
    op = torch.randint(0, len(_TA_OPS), (n,), device=x.device, generator=gen)
    mag = torch.randint(0, _N_BINS, (n,), device=x.device, generator=gen).float() / (_N_BINS - 1)
    sign = torch.where(_uniform(n, x, gen) < 0.5, -1.0, 1.0)
    f = (1 + sign * mag * 0.99)[:, None, None, None]        # enhance factor in [0.01, 1.99]
    bits = (8 - (mag * (_N_BINS - 1) / ((_N_BINS - 1) / 6)).round())[:, None, None, None]
    threshold = (1 - mag)[:, None, None, None]
    quantum = 2 ** (8 - bits)
    candidates = {
        "brightness": _blend(x, torch.zeros_like(x), f),
        "color": _blend(x, _gray(x).expand_as(x), f),
        "contrast": _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), f),
        "sharpness": _blend(x, _sharpen_base(x), f),
        "posterize": torch.floor(torch.floor(x * 255 + 0.5) / quantum) * quantum / 255,
        "solarize": torch.where(x >= threshold, 1 - x, x),
        "autocontrast": _autocontrast(x),
        "equalize": _equalize(x),
    }
    geometric = (op >= _TA_OPS.index("shear_x")) & (op <= _TA_OPS.index("rotate"))
    out = torch.where(geometric[:, None, None, None], _affine(x, op, mag, sign), x)
    for name, value in candidates.items():
        out = torch.where((op == _TA_OPS.index(name))[:, None, None, None], value, out)
    return out.clamp(0, 1)


# ---------------------------------------------------------------- the registry

@register("none")
def no_augmentation(x: Tensor, gen: torch.Generator) -> Tensor:
    return x


@register("flip")
def flip(x: Tensor, gen: torch.Generator) -> Tensor:
    return random_flip(x, gen)


@register("flip_crop")
def flip_crop(x: Tensor, gen: torch.Generator) -> Tensor:
    return random_crop(random_flip(x, gen), gen)


@register("flip_crop_cutout")
def flip_crop_cutout(x: Tensor, gen: torch.Generator) -> Tensor:
    return cutout(random_crop(random_flip(x, gen), gen), gen)


@register("trivialaugment")
def flip_crop_trivialaugment(x: Tensor, gen: torch.Generator) -> Tensor:
    """The strong policy: flip + crop, then one TrivialAugmentWide op per image."""
    return trivial_augment(random_crop(random_flip(x, gen), gen), gen)


@register("altflip_translate", alternating_flip=True)
def altflip_translate(x: Tensor, gen: torch.Generator, flip: Tensor | None = None) -> Tensor:
    """airbench's: the flips the trainer alternates (`flip`, a bool per image; None flips a random
    half), then a random translation by up to 2 pixels (reflect padding)."""
    if flip is None:
        flip = _uniform(len(x), x, gen) < 0.5
    return random_crop(torch.where(flip[:, None, None, None], x.flip(3), x), gen, pad=2)
