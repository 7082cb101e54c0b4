"""Trial and sweep configs: the schema (every key, its default and why), validation, --set.

Every error is an InputError that names the key path, the bad value and what is allowed, raised
before any work starts. Registries (models, augmentations, noise families) are looked up by name,
so a new entry is accepted here without touching this file.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .data import CIFAR10_CLASSES
from .errors import InputError

# ---------------------------------------------------------------- validators
# Each takes (value, where) and returns the normalised value or raises InputError.

def _number_as_text(v, where, allowed: str, whole: bool = False) -> None:
    """YAML 1.1 (PyYAML) reads `1e-3` and `5e4` as text: a float needs a dot in its mantissa.
    Say so, and how to write it, instead of a bare "must be a number"."""
    if not isinstance(v, str):
        return
    try:
        x = float(v.replace("_", ""))
    except ValueError:
        return
    if not math.isfinite(x):  # "nan", "inf": text that is no number to suggest
        return
    if whole and x.is_integer():
        fix = str(int(x))
    else:  # YAML 1.1's float: a dot in the mantissa and a signed exponent (1.0e-3, 5.0e+4)
        mantissa, _, exponent = v.lower().replace("_", "").partition("e")
        mantissa += "" if "." in mantissa else ".0"
        fix = f"{mantissa}e{int(exponent):+d}" if exponent.lstrip("+-").isdigit() else repr(x)
    raise InputError(where, f"YAML reads {v} as text, not a number (YAML's exponent form needs a dot "
                     f"and a sign: write {fix})", allowed, v)


def integer(lo: int | None = None, hi: int | None = None) -> Callable:
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, int):
            _number_as_text(v, where, _range(lo, hi), whole=True)
            raise InputError(where, "must be a whole number", _range(lo, hi), v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise InputError(where, "out of range", _range(lo, hi), v)
        return v
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable:
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _number_as_text(v, where, _range(lo, hi, lo_open))
            raise InputError(where, "must be a finite number", _range(lo, hi, lo_open), v)
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            raise InputError(where, "out of range", _range(lo, hi, lo_open), v)
        return float(v)
    return check


def _range(lo, hi, lo_open=False) -> str:
    if lo is not None and hi is not None:
        return f"{lo} {'<' if lo_open else '<='} x <= {hi}"
    if lo is not None:
        return f"x {'>' if lo_open else '>='} {lo}"
    return f"x <= {hi}" if hi is not None else "a number"


def boolean(v, where):
    if not isinstance(v, bool):
        raise InputError(where, "must be true or false", "true, false", v)
    return v


def choice(options: Callable[[], list[str]] | list[str]) -> Callable:
    def names():
        return list(options() if callable(options) else options)

    def check(v, where):
        if not isinstance(v, str) or v not in names():
            raise InputError(where, "unknown value", ", ".join(names()), v)
        return v
    return check


def optional(inner: Callable) -> Callable:
    def check(v, where):
        return None if v is None else inner(v, where)
    return check


def compile_mode(v, where):
    if v in (False, True, "reduce-overhead", "max-autotune"):
        return v
    raise InputError(where, "unknown value", "false, true, reduce-overhead, max-autotune", v)


def cutoff_list(v, where):
    allowed = "a non-empty list of distinct numbers 0 < c <= 1 (fractions of the Nyquist frequency)"
    if not isinstance(v, list) or not v or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c <= 1 for c in v):
        raise InputError(where, "invalid cutoffs", allowed, v)
    if len(set(v)) != len(v):
        raise InputError(where, "a cutoff is given twice", allowed, v)
    return [float(c) for c in v]


def amplitude_list(v, where):
    """[] (the amplitude probe off), or distinct amplitudes > 0 holding 1 (the data's own spread,
    the reference the far field is compared with) and at least one above it."""
    allowed = ("[] (off), or a list of distinct numbers 0 < a <= 1000 (multiples of the data's std) holding 1 and a "
               "larger one, e.g. [0.25, 0.5, 1, 2, 4, 8, 16]")
    if v == []:
        return []
    if not isinstance(v, list) or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                          and math.isfinite(a) and 0 < a <= 1000 for a in v):
        raise InputError(where, "invalid amplitudes", allowed, v)
    if len(set(v)) != len(v):
        raise InputError(where, "an amplitude is given twice", allowed, v)
    if 1 not in v or max(v) <= 1:
        raise InputError(where, "needs 1 (the reference) and an amplitude above it", allowed, v)
    return sorted(float(a) for a in v)


def probe_size(v, where):
    """0 turns a probe off; otherwise at least 10 images."""
    if isinstance(v, bool) or not isinstance(v, int) or (v != 0 and v < 10):
        _number_as_text(v, where, "0 (off) or a whole number >= 10", whole=True)
        raise InputError(where, "must be 0 (off) or a whole number >= 10", "0, or x >= 10", v)
    return v


CLASS_INTERVENTION_RANGES = {"gaussian_noise": (0, 1), "blur": (0, 8), "label_noise": (0, 1),
                             "subsample": (0.01, 1), "majority": (0.01, 1)}


def class_intervention(v, where):
    allowed = (f"none, or a mapping {{target: <trained class>, kind: {'|'.join(CLASS_INTERVENTION_RANGES)}, "
               "strength: <number>}")
    if v == "none":
        return "none"
    if not isinstance(v, dict) or set(v) != {"target", "kind", "strength"}:
        raise InputError(where, "must be `none` or have exactly the keys target, kind, strength", allowed, v)
    if v["target"] not in CIFAR10_CLASSES:
        raise InputError(f"{where}.target", "unknown class", ", ".join(CIFAR10_CLASSES), v["target"])
    if v["kind"] not in CLASS_INTERVENTION_RANGES:
        raise InputError(f"{where}.kind", "unknown value", ", ".join(CLASS_INTERVENTION_RANGES), v["kind"])
    lo, hi = CLASS_INTERVENTION_RANGES[v["kind"]]
    number(lo, hi)(v["strength"], f"{where}.strength")
    return {"target": v["target"], "kind": v["kind"], "strength": float(v["strength"])}


def text(v, where):
    if not isinstance(v, str) or not v:
        raise InputError(where, "must be a non-empty string", "a string", v)
    return v


def class_list(v, where):
    """`all` or a list of >= 2 distinct CIFAR-10 class names, kept in the order given."""
    allowed = "all, or a list of >= 2 distinct names from: " + ", ".join(CIFAR10_CLASSES)
    if v == "all":
        return "all"
    if isinstance(v, str) and "," in v:  # `--set trial.classes=cat,dog`: YAML reads one string
        raise InputError(where, f"is one string; a YAML list is written [{', '.join(x.strip() for x in v.split(','))}]",
                         allowed, v)
    if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
        raise InputError(where, "must be `all` or a list of class names", allowed, v)
    unknown = [c for c in v if c not in CIFAR10_CLASSES]
    if unknown:
        raise InputError(where, f"unknown class {unknown[0]!r}", allowed, v)
    if len(set(v)) != len(v):
        dup = next(c for c in v if v.count(c) > 1)
        raise InputError(where, f"class {dup!r} given twice", allowed, v)
    if len(v) < 2:
        raise InputError(where, "a classifier needs at least two classes", allowed, v)
    return list(v)


def name_list(registry: Callable[[], dict]) -> Callable:
    """`all` or a non-empty list of distinct registry names."""
    def check(v, where):
        names = list(registry())
        allowed = "all, or a list of: " + ", ".join(names)
        if v == "all":
            return "all"
        if isinstance(v, str) and "," in v:  # `--set trial.noise=gaussian,uniform`: YAML reads one string
            raise InputError(where, "is one string; a YAML list is written "
                             f"[{', '.join(x.strip() for x in v.split(','))}]", allowed, v)
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(n, str) for n in v):
            raise InputError(where, "must be `all` or a non-empty list of names", allowed, v)
        unknown = [n for n in v if n not in names]
        if unknown:
            raise InputError(where, f"unknown name {unknown[0]!r}", allowed, v)
        if len(set(v)) != len(v):
            raise InputError(where, "a name is given twice", allowed, v)
        return list(v)
    return check


def pattern(regex: str, allowed: str) -> Callable:
    def check(v, where):
        if not isinstance(v, str) or not re.fullmatch(regex, v):
            raise InputError(where, "invalid value", allowed, v)
        return v
    return check


# Registries live in torch modules; they are imported only when a value is checked.
def _models():
    from .models import MODELS
    return MODELS


def _factor_options(factor: str) -> Callable[[], list[str]]:
    def names():
        from .models import FACTORS
        return list(FACTORS[factor])
    return names


def model_name(v, where):
    """A registry name, timm:<name> for any model timm knows, or torchvision:<name> for any of
    torchvision's classification models."""
    from .models import TIMM_PREFIX, TORCHVISION_PREFIX, import_timm
    if isinstance(v, str) and v.startswith(TIMM_PREFIX):
        if not import_timm().is_model(v[len(TIMM_PREFIX):]):
            raise InputError(where, "unknown timm model", "timm:<a name from timm.list_models()>, e.g. "
                             "timm:resnet18, timm:convnext_atto, timm:vit_tiny_patch16_224", v)
        return v
    if isinstance(v, str) and v.startswith(TORCHVISION_PREFIX):
        from torchvision import models
        if v[len(TORCHVISION_PREFIX):] not in models.list_models(module=models):
            raise InputError(where, "unknown torchvision model", "torchvision:<a name from torchvision.models."
                             "list_models(module=torchvision.models)>, e.g. torchvision:resnet18", v)
        return v
    names = list(_models())
    if not isinstance(v, str) or v not in names:
        raise InputError(where, "unknown value", ", ".join(names) + ", timm:<name> or torchvision:<name>", v)
    return v


def _augmentations():
    from .augment import AUGMENTATIONS
    return AUGMENTATIONS


def _interventions():
    from .interventions import GLOBAL
    return GLOBAL


def _noise_families():
    from .noise import NOISE_FAMILIES
    return NOISE_FAMILIES


# ---------------------------------------------------------------- the trial schema

MAX_SEED = 2**63 - 1  # seeds are stored in 64-bit integer columns (tables, Parquet) and seed torch
# A probe bank is held in memory as float32: 100,000 images are 1.2 GB (a typo's 10^8 would be 1.2
# TB and end the trial in an out-of-memory kill); 5,000 already give shares to within 1.4% (95%).
MAX_PROBE_IMAGES = 100_000

_AS_DEFAULT = object()


@dataclass(frozen=True)
class Key:
    name: str
    default: Any
    help: str          # what it means, and why the default is what it is
    check: Callable
    # The value that does what the code did before the key existed, for a stored result whose config
    # lacks it (contract.config_changes). The default, unless the default measures something new.
    absent: Any = _AS_DEFAULT

    @property
    def before_key(self) -> Any:
        return self.default if self.absent is _AS_DEFAULT else self.absent


# image_size: below 8 pixels no network's downsampling is left a map; at 1024 one probe batch
# (eval_batch_size 1024) is already 12 GB of float32
IMAGE_SIZES = (8, 1024)
ARM_NAME = r"[A-Za-z0-9_.-]{1,60}"   # an arm's name labels its condition and its trial folders


def arm_name(v, where):
    """An arm's name (letters, digits, _ . -), or a whole arm {name: NAME, keys...} as a grid value
    (its keys are checked when each grid point is resolved: validate_trial expands it)."""
    if v is None:
        return None
    if isinstance(v, dict):
        expand_arm({"arm": v}, where[:-len("arm")] if where.endswith("arm") else "")
        arm_name(v["name"], f"{where}.name")
        return v
    if not isinstance(v, str) or not re.fullmatch(ARM_NAME, v):
        raise InputError(where, "invalid arm name", "null, or a name of 1-60 letters, digits, _ . -, or a mapping "
                         "{name: NAME, <trial keys>: ...}", v)
    return v


def expand_arm(raw: dict, where: str) -> dict:
    """`arm: {name: NAME, key: value, ...}` -> `arm: NAME` and the arm's keys: one grid axis that
    sets several trial keys at once (e.g. the rungs of a ladder: model, width, epochs). A key the
    arm sets may not be set beside it too (which of the two would hold is not obvious)."""
    arm = raw.get("arm")
    if not isinstance(arm, dict):
        return raw
    allowed = "a mapping {name: NAME, <trial keys>: values} (not seed or arm itself)"
    if "name" not in arm:
        raise InputError(f"{where}arm", "has no name", allowed, arm)
    keys = {k: v for k, v in arm.items() if k != "name"}
    for k in keys:
        if k not in _TRIAL_BY_NAME or k in ("arm", "seed"):
            raise InputError(f"{where}arm.{k}", "is not a key an arm can set", allowed, arm)
        if k in raw:
            raise InputError(f"{where}arm.{k}", f"is set both by the arm {arm['name']!r} and beside it "
                             f"({k}: {raw[k]!r})", "each key in one place: the arm, or the config", keys[k])
    return {**raw, **keys, "arm": arm["name"]}


TRIAL_KEYS = [
    Key("seed", 0, "seeds weight init, data order, augmentation, the train subset and a class "
        "intervention (each its own stream: study/streams.py)", integer(0, MAX_SEED)),
    Key("arm", None, "the name of this trial's condition when several keys change together (a grid axis of "
        "mappings {name: NAME, key: value, ...}, e.g. the rungs of a ladder); the name labels the condition",
        arm_name),
    Key("classes", "all", "`all` or a list of CIFAR-10 classes, labelled 0..K-1 in the order "
        "given; the classes left out are probed as natural out-of-distribution images", class_list),
    Key("model", "resnet18", "registry name, `timm:NAME` for any timm model, or `torchvision:NAME` for any "
        "torchvision classification model; resnet18 (CIFAR stem) is the original question's network", model_name),
    Key("activation", None, "relu, gelu or tanh (small_cnn, resnet18, airbench); null keeps the model's "
        "own (relu; airbench gelu): ReLU's non-zero mean is what biases untrained networks (Francazi et al. 2024)",
        optional(choice(_factor_options("activation")))),
    Key("pool", None, "max or avg: small_cnn's and airbench's every pooling, resnet18's global one; null keeps "
        "the model's own (small_cnn and airbench max, resnet18 avg): max-pooling biases them even with tanh",
        optional(choice(_factor_options("pool")))),
    Key("norm", None, "batch, group, layer (GroupNorm with 1 group) or none (small_cnn, "
        "resnet18, airbench); null keeps the model's own (batch; airbench's with a frozen scale)",
        optional(choice(_factor_options("norm")))),
    Key("width", None, "channel multiplier of models that take one (airbench, resnet18): 0.25 costs "
        "~1/16 of the FLOPs of 1; null keeps the model's own (1)", optional(number(0, 8, lo_open=True))),
    Key("pretrained", None, "resnet18_imagenet and timm models: `imagenet` (the library's "
        "weights, downloaded) or a path to a saved weights file; null trains from scratch",
        optional(text)),
    Key("epochs", 18, "passes over the training set; 18 reaches ~93% with resnet18 and this "
        "recipe", integer(1)),
    Key("batch_size", 512, "large enough to fill a GPU, small enough to converge in few epochs",
        integer(1)),
    Key("lr", 0.2, "peak learning rate of the schedule (SGD, Nesterov)", number(0, lo_open=True)),
    Key("momentum", 0.9, "Nesterov momentum", number(0, 1)),
    Key("weight_decay", 5e-4, "L2 on all weights; the usual value for ResNets on CIFAR",
        number(0)),
    Key("label_smoothing", 0.1, "softens targets; speeds up short schedules", number(0, 1)),
    Key("schedule", "onecycle", "onecycle: linear warm-up then linear decay to 0; cosine: "
        "warm-up then cosine decay; triangle: airbench's, from 0.2 of the peak up to it, then down "
        "to 0.07 of it at the last step", choice(["onecycle", "cosine", "triangle"])),
    Key("warmup", 0.2, "fraction of the steps spent warming up", number(0, 1)),
    Key("bias_lr_scale", 1.0, "learning-rate multiplier (and weight-decay divisor) of the "
        "normalization layers' shifts; airbench's 64 lets its BatchNorm shifts, the only affine part "
        "of its norms, keep up in few epochs", number(0, lo_open=True)),
    Key("lookahead", False, "airbench's Lookahead (Zhang et al. 2019) as an EMA: every 5 steps the "
        "weights move to an average of their past that forgets less as training ends, and the "
        "last step takes the average; smooths the short schedule's end", boolean),
    Key("image_size", 32, "the side of the images the network sees: 32 is CIFAR-10's own; larger resizes "
        "training, test, held-out and noise images alike (bilinear, antialiased; the noise is generated at 32x32 "
        "like the data) for a network made for bigger inputs, e.g. an ImageNet ResNet-18 fine-tuned as in the "
        "original question; compute grows with its square", integer(*IMAGE_SIZES)),
    Key("tta", 0, "test-time augmentation of the test accuracy only (tta_accuracy beside the "
        "single-view test_accuracy): 0 none, 1 mirror, 2 mirror and 1-pixel translations "
        "(airbench); probes are always one plain forward pass", integer(0, 2)),
    Key("augmentation", "flip_crop", "registry name; flip_crop is the standard CIFAR recipe",
        choice(lambda: list(_augmentations()))),
    Key("train_subset", None, "null for the whole training set, or N images, class-balanced and "
        "seeded from `seed` (for CPU studies)", optional(integer(2))),
    Key("test_subset", None, "null for the whole test set, or N images, class-balanced and "
        "seeded from `noise_seed` so every trial sees the same ones", optional(integer(2))),
    Key("noise", "all", "noise families to probe: `all` or a list of registry names",
        name_list(_noise_families)),
    Key("n_noise", 5000, "images per noise family (one bank per family from noise_seed)",
        integer(10, MAX_PROBE_IMAGES)),
    Key("noise_seed", 0, "seeds the noise banks, the test subset and the clutter sample, separately "
        "from `seed`, so every trial of a study sees the same probe images", integer(0, MAX_SEED)),
    Key("n_trajectory", 500, "gaussian images whose absorption is tracked after every epoch",
        integer(10)),
    Key("eval_batch_size", 1024, "batch size for evaluation and probes (no gradients)",
        integer(1)),
    Key("sample_per_class", 500, "training images per class for the clutter measures and for "
        "fitting the OOD detectors (Mahalanobis, KNN)", integer(2)),
    Key("n_frequency", 1000, "images per band-limited Gaussian probe (lowpass and highpass at "
        "each cutoff)", integer(10, MAX_PROBE_IMAGES)),
    Key("frequency_cutoffs", [0.125, 0.25, 0.5], "cutoffs of the frequency probes, as fractions "
        "of the Nyquist frequency", cutoff_list),
    Key("amplitudes", [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], "Gaussian noise around the data mean at these multiples "
        "of the data's std (one draw, scaled): far from the data, do predictions revert to the label frequencies "
        "(Kang et al. 2024) or grow overconfident (Hein et al. 2019)? Holds 1 (the reference) and a larger one; "
        "[] turns the probe off", amplitude_list, absent=[]),
    Key("n_amplitude", None, "images per amplitude; null: n_trajectory (a Gaussian probe as large as the "
        "trajectory's)", optional(integer(10))),
    Key("n_bn", None, "gaussian images probed with BatchNorm on its running statistics, on each batch's own and "
        "on running statistics re-estimated on as many other noise images (models with BatchNorm); null: "
        "n_trajectory; 0 turns the probe off", optional(probe_size), absent=0),
    Key("intervention", "none", "train against noise: none, outlier_exposure (noise pushed to "
        "the uniform distribution), noise_class (an extra class of noise), train_noise_aug "
        "(Gaussian noise added to training images)", choice(lambda: list(_interventions()))),
    Key("intervention_strength", None, "null for the intervention's default (outlier_exposure: "
        "loss weight 0.5; noise_class: 1 noise image per 8; train_noise_aug: noise std up to 0.1)",
        optional(number(0))),
    Key("class_intervention", "none", "none, or {target: a trained class, kind: gaussian_noise | "
        "blur | label_noise | subsample | majority, strength: x}: changes only the target class's "
        "training images (noise std, blur sigma in pixels, fraction of labels, fraction kept), or, "
        "for majority, keeps all of them and a fraction x of every other class's",
        class_intervention),
    Key("data_root", None, "CIFAR-10 copy: torchvision folder, image-folder tree, .tar, or a URI "
        "of a .tar (s3://...); null: NOISESINK_DATA, else torchvision's download", optional(text)),
    Key("data_verify", "full", "full: require all of CIFAR-10 (50,000 + 10,000 images); shapes: "
        "check classes and image size only (test fixtures)", choice(["full", "shapes"])),
    Key("device", "auto", "auto (cuda when present), cpu, cuda or cuda:N",
        pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda, cuda:N")),
    Key("precision", "auto", "auto: bf16 autocast on CUDA, fp32 on CPU",
        choice(["auto", "bf16", "fp32"])),
    Key("channels_last", True, "NHWC memory layout: faster convolutions on CUDA and (measured) "
        "1.5x faster on CPU with oneDNN", boolean),
    Key("compile", False, "CUDA only: false, true (torch.compile, compiled once per process and "
        "reused by later trials), or a torch.compile mode: reduce-overhead (CUDA graphs), "
        "max-autotune", compile_mode),
    Key("threads", 0, "CPU threads for torch; 0 leaves torch's default (or the sweep's cpu "
        "share)", integer(0)),
]
TRIAL_DEFAULTS = {k.name: k.default for k in TRIAL_KEYS}
TRIAL_BEFORE_KEY = {k.name: k.before_key for k in TRIAL_KEYS}  # see Key.absent
_TRIAL_BY_NAME = {k.name: k for k in TRIAL_KEYS}


def validate_trial(raw: dict, where: str = "") -> dict:
    """Defaults + raw, every key checked; returns the resolved config."""
    if not isinstance(raw, dict):
        raise InputError(where or "config", "must be a mapping of keys to values",
                         "a YAML mapping", raw)
    unknown = [k for k in raw if k not in _TRIAL_BY_NAME]
    if unknown:
        raise InputError(f"{where}{unknown[0]}", "unknown key", ", ".join(_TRIAL_BY_NAME))
    raw = expand_arm(raw, where)
    cfg = dict(TRIAL_DEFAULTS)
    for k, v in raw.items():
        cfg[k] = _TRIAL_BY_NAME[k].check(v, f"{where}{k}")
    _cross_check(cfg, where)
    return cfg


def trained_classes(cfg: dict) -> list[str]:
    return list(CIFAR10_CLASSES) if cfg["classes"] == "all" else list(cfg["classes"])


def _cross_check(cfg: dict, where: str) -> None:
    """Rules between keys, checkable without the data."""
    n_classes = len(trained_classes(cfg))
    if cfg["train_subset"] is not None:
        if cfg["train_subset"] < n_classes:
            raise InputError(f"{where}train_subset", f"fewer images than the {n_classes} trained "
                             "classes", f"at least {n_classes}", cfg["train_subset"])
        if cfg["batch_size"] > cfg["train_subset"]:
            raise InputError(f"{where}batch_size", f"larger than the training subset "
                             f"(train_subset: {cfg['train_subset']})",
                             f"1 <= batch_size <= {cfg['train_subset']}", cfg["batch_size"])
    elif cfg["data_verify"] == "full" and cfg["batch_size"] > 5000 * n_classes:
        raise InputError(f"{where}batch_size", "larger than the training set",
                         f"1 <= batch_size <= {5000 * n_classes}", cfg["batch_size"])
    if cfg["test_subset"] is not None and cfg["test_subset"] < n_classes:
        raise InputError(f"{where}test_subset", f"fewer images than the {n_classes} trained classes",
                         f"at least {n_classes}", cfg["test_subset"])
    if cfg["schedule"] == "triangle" and not 0 < cfg["warmup"] < 1:
        raise InputError(f"{where}warmup", "the triangle schedule rises for this fraction of the steps, then falls",
                         "0 < warmup < 1 with schedule: triangle (airbench: 0.23)", cfg["warmup"])
    if cfg["n_trajectory"] > cfg["n_noise"]:
        raise InputError(f"{where}n_trajectory", "larger than the noise bank",
                         f"<= n_noise ({cfg['n_noise']})", cfg["n_trajectory"])
    ci = cfg["class_intervention"]
    if ci != "none" and ci["target"] not in trained_classes(cfg):
        raise InputError(f"{where}class_intervention.target", "is not a trained class",
                         ", ".join(trained_classes(cfg)), ci["target"])
    if cfg["intervention"] == "none" and cfg["intervention_strength"] is not None:
        raise InputError(f"{where}intervention_strength", "set, but intervention is none",
                         "null, or an intervention", cfg["intervention_strength"])
    from .models import FACTOR_MODELS, TIMM_PREFIX
    if cfg["pretrained"] is not None and not (cfg["model"] == "resnet18_imagenet"
                                              or cfg["model"].startswith(TIMM_PREFIX)):
        raise InputError(f"{where}pretrained", f"only resnet18_imagenet and timm models take "
                         f"pretrained weights, model is {cfg['model']}", "null", cfg["pretrained"])
    from .models import WIDTH_MODELS
    if cfg["width"] is not None and cfg["model"] not in WIDTH_MODELS:
        raise InputError(f"{where}width", f"model {cfg['model']} has no width multiplier",
                         f"null, or model: {' | '.join(sorted(WIDTH_MODELS))}", cfg["width"])
    for factor in ("activation", "pool", "norm"):
        if cfg[factor] is not None and cfg["model"] not in FACTOR_MODELS:
            raise InputError(f"{where}{factor}", f"model {cfg['model']} has no architecture factors",
                             f"null, or model: {' | '.join(sorted(FACTOR_MODELS))}", cfg[factor])


# ---------------------------------------------------------------- YAML and --set

class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` then overriding a key is YAML's own override, not a slip
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error follows
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (first on line {first.line + 1}); "
                        "YAML would keep only the last", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> data, every syntax problem (a duplicate key included) as one InputError
    naming `where` and the line."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(where, f"YAML syntax error{at}: {e.problem}", "valid YAML") from None
    except yaml.YAMLError as e:  # ReaderError: a control character, e.g. a binary file
        raise InputError(where, f"YAML syntax error: {str(e).splitlines()[0]}", "valid YAML") from None
    except RecursionError:
        raise InputError(where, "nested deeper than a config can be", "a YAML mapping of config keys") from None
    finally:
        loader.dispose()


def read_text(path: str | Path, kind: str) -> str:
    """A config file's text; a missing, unreadable, binary or non-UTF-8 file is an InputError."""
    path = Path(path)
    if path.is_dir():
        raise InputError(str(path), "is a folder, not a file", kind)
    if not path.is_file():
        raise InputError(str(path), "no such file", kind)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(str(path), f"cannot be read ({e.strerror})", kind) from None
    if b"\0" in data[:8192]:
        raise InputError(str(path), "is a binary file, not text", kind)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(str(path), f"is not UTF-8 text (byte {data[e.start]:#04x} on line {line})",
                         f"{kind}, saved as UTF-8") from None


def read_yaml(path: str | Path) -> Any:
    text = read_text(path, "a YAML file")
    data = parse_yaml(text, str(path))
    if data is None:
        raise InputError(str(path), "file is empty", "a YAML mapping of config keys")
    if not isinstance(data, dict):
        raise InputError(str(path), "top level must be a mapping of keys to values",
                         "a YAML mapping", data)
    return data


def parse_set(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML, so `[0,1]` is a list)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise InputError(f"--set {item}", "expected key=value", "e.g. --set epochs=2")
    return key.split("."), (parse_yaml(value, f"--set {key}") if value else None)


def apply_sets(data: dict, sets: list[str], known: Callable[[list[str]], bool],
               hint: Callable[[list[str]], str]) -> dict:
    """Apply --set overrides onto a copy of `data`; `known(path)` says whether a path exists,
    `hint(path)` what to write instead when it does not."""
    data = copy.deepcopy(data)
    for item in sets or []:
        path, value = parse_set(item)
        if not known(path):
            raise InputError(f"--set {'.'.join(path)}", "no such key", hint(path))
        node = data
        for part in path[:-1]:
            if node.get(part) is None:  # `trial:` left empty in the file
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise InputError(f"--set {'.'.join(path)}", f"`{part}` in the file is not a mapping",
                                 "a YAML mapping", node)
        node[path[-1]] = value
    return data


BASE = "base"   # a trial config's `base: OTHER.yaml` (relative to it): OTHER's keys, then its own over them


def read_trial_keys(path: str | Path, _seen: tuple = ()) -> dict:
    """A trial config's own keys over those of its `base` chain (unresolved: no defaults added), so
    that variants of a recipe (another width, the cat/dog classes) name only what they change."""
    path = Path(path)
    data = read_yaml(path)
    if {"trial", "grid"} & set(data) and not set(data) & set(_TRIAL_BY_NAME):
        raise InputError(str(path), "is a sweep file (it has trial/grid sections), not a trial config",
                         "a trial config (configs/*.yaml); a sweep file runs with `study check` / `study sweep`")
    if BASE not in data:
        return data
    base = data[BASE]
    if not isinstance(base, str) or not base:
        raise InputError(f"{path}: {BASE}", "must be the path of another trial config", "a path, relative to this file",
                         base)
    file = (path.parent / base).resolve()
    if file in _seen or file == path.resolve():
        raise InputError(f"{path}: {BASE}", "the chain of bases comes back to a config already in it",
                         "bases that end in a config without one", base)
    own = {k: v for k, v in data.items() if k != BASE}
    return {**read_trial_keys(file, (*_seen, path.resolve())), **own}


def load_trial_config(path: str | Path, sets: list[str] | None = None) -> dict:
    data = read_trial_keys(path)
    data = apply_sets(data, sets, lambda p: len(p) == 1 and p[0] in _TRIAL_BY_NAME, _trial_set_hint)
    return validate_trial(data)


def _trial_set_hint(path: list[str]) -> str:
    """The trial command's --set takes bare trial keys (the sweep's takes section.key)."""
    if len(path) == 2 and path[0] in ("trial", "grid") and path[1] in _TRIAL_BY_NAME:
        return f"a trial key without a section: --set {path[1]}=..."
    return "a trial key (no section), e.g. --set epochs=2, --set seed=3; keys: " + ", ".join(_TRIAL_BY_NAME)


# ---------------------------------------------------------------- the sweep schema

STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "mock")
SWEEP_SECTIONS = {"name", "trial", "grid", "resources", "run"}


def storage_value(v, where):
    """run.storage (or --storage, --out): a local path or a URI of a known scheme with a bucket."""
    allowed = ("a local path, s3://bucket/prefix, gs://bucket/prefix (also " +
               ", ".join(f"{s}://" for s in STORAGE_SCHEMES if s not in ("file", "s3", "gs")) + "), file:///path")
    if not isinstance(v, str) or not v.strip():
        raise InputError(where, "must be a path or URI", allowed, v)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(/[^?#]*)?", v)
    if scheme is None and "://" in v:
        raise InputError(where, "malformed URI", allowed, v)
    if scheme:
        name, host, rest = scheme.group(1).lower(), scheme.group(2), scheme.group(3) or ""
        if name not in STORAGE_SCHEMES:
            raise InputError(where, f"unknown storage scheme {scheme.group(1)!r}", allowed, v)
        if name == "file" and (host not in ("", "localhost") or not rest.strip("/")):
            raise InputError(where, "a file:// URI needs an absolute path (file:///path)", allowed, v)
        if name not in ("file", "mock") and not host:
            raise InputError(where, f"no bucket after {name}://", allowed, v)
    return v


def _trackers(v, where):
    from .tracking import TRACKERS
    allowed = "a list of " + ", ".join(TRACKERS) + " (Ray Tune's logger callbacks)"
    if not isinstance(v, list):
        raise InputError(where, "must be a list", allowed, v)
    for i, name in enumerate(v):
        if name not in TRACKERS:
            raise InputError(f"{where}[{i}]", "unknown tracker", allowed, name)
        if not TRACKERS[name].installed():
            raise InputError(f"{where}[{i}]", f"{name} is not installed",
                             f"pip install 'noisesink[{TRACKERS[name].extra}]'", name)
    if len(set(v)) != len(v):
        raise InputError(where, "names a tracker twice", allowed, v)
    return list(v)


def _gpu(v, where):
    allowed = "0, a fraction 0 < gpu <= 1 (trials share a GPU), or a whole number of GPUs"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        _number_as_text(v, where, allowed)
        raise InputError(where, "must be a non-negative number", allowed, v)
    if v > 1 and v != int(v):
        raise InputError(where, "Ray shares a GPU only in fractions <= 1", allowed, v)
    return float(v) if v < 1 else int(v)


RESOURCE_KEYS = {"cpu": (1, number(0, lo_open=True)), "gpu": (0, _gpu)}
RUN_KEYS = {
    "storage": ("results", storage_value),          # local folder or URI holding every trial's artifacts
    "max_concurrent": (None, optional(integer(1))),   # null: as many as the resources allow
    "max_failures": (2, integer(-1)),          # retries per trial after a crash (-1: forever)
    "checkpoint_every": (1, integer(1)),       # epochs between checkpoints (cheap: small models)
    "fuse_seeds": (1, integer(1)),             # train up to this many seeds of a condition as one array
    # on a cluster, stop the study when trials have waited this long (s) for a node and none runs:
    # no node fits a trial; generous, since an autoscaler takes minutes to add one (null: wait forever)
    "pending_timeout": (1800, optional(number(0, lo_open=True))),
    "callbacks": ([], _trackers),              # experiment trackers (mlflow, wandb); TensorBoard is always on
}
# The largest study `check` and `sweep` accept: every point is validated and listed in study.json,
# and the aggregation is measured up to 10,000 trials (README); a bigger grid is almost always a
# mistake (an axis listed instead of a value), found before building the points.
MAX_GRID_POINTS = 10_000
NAME_CHECK = pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "letters, digits, _ . - (<= 64 chars)")


@dataclass
class Sweep:
    name: str
    trial: dict                 # fixed trial keys (as given; resolved per grid point)
    grid: dict[str, list]       # axis -> values, in file order
    resources: dict
    run: dict

    def points(self) -> list[dict]:
        """Every grid point as a resolved trial config, in a deterministic order."""
        axes = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[a] for a in axes)):
            point = dict(zip(axes, values))
            try:
                out.append(validate_trial({**self.trial, **point}))
            except InputError as e:
                raise self.locate(point, e) from None
        return out

    def locate(self, point: dict, e: InputError) -> InputError:
        """An error about one grid point's config, named by the section its key came from (grid or
        trial) and by the point's axis values."""
        section = "grid" if e.where.split(".")[0] in self.grid else "trial"
        return InputError(f"{section}.{e.where}", f"{e.problem} (grid point {self.axis_values(point)})",
                          e.allowed, e.value)

    def axis_values(self, cfg: dict) -> dict:
        return {a: cfg[a] for a in self.grid}


def _sweep_path_known(path: list[str]) -> bool:
    if len(path) == 1:
        return path[0] == "name"
    if len(path) != 2:
        return False
    section, key = path
    return ((section in ("trial", "grid") and key in _TRIAL_BY_NAME)
            or (section == "resources" and key in RESOURCE_KEYS)
            or (section == "run" and key in RUN_KEYS))


def _sweep_set_hint(path: list[str]) -> str:
    if len(path) == 1 and path[0] in _TRIAL_BY_NAME:
        return f"a section and a key: --set trial.{path[0]}=... (fixed) or --set grid.{path[0]}=[...] (an axis)"
    return "section.key, e.g. trial.epochs, grid.seed, resources.gpu, run.storage; or name"


def validate_sweep(data: dict) -> Sweep:
    unknown = [k for k in data if k not in SWEEP_SECTIONS]
    if unknown:
        raise InputError(unknown[0], "unknown top-level key", ", ".join(sorted(SWEEP_SECTIONS)))
    if "name" not in data:
        raise InputError("name", "missing", "a study name of letters, digits, _ . -")
    name = NAME_CHECK(data["name"], "name")
    sections = {}
    for section in ("trial", "grid", "resources", "run"):
        value = data.get(section) or {}
        if not isinstance(value, dict):
            raise InputError(section, "must be a mapping", "a YAML mapping", value)
        sections[section] = value

    trial = sections["trial"]
    for k, v in trial.items():
        if k not in _TRIAL_BY_NAME:
            raise InputError(f"trial.{k}", "unknown key", ", ".join(_TRIAL_BY_NAME))
        _TRIAL_BY_NAME[k].check(v, f"trial.{k}")  # fixed keys first: their errors need no grid point
    grid = {}
    for axis, values in sections["grid"].items():
        if axis not in _TRIAL_BY_NAME:
            raise InputError(f"grid.{axis}", "unknown axis (grid axes are trial keys)",
                             ", ".join(_TRIAL_BY_NAME))
        if not isinstance(values, list):
            raise InputError(f"grid.{axis}", "must be a list of values", "a non-empty list",
                             values)
        if not values:
            raise InputError(f"grid.{axis}", "empty axis: the study would have no trials",
                             "a non-empty list")
        if len(values) > MAX_GRID_POINTS:
            raise InputError(f"grid.{axis}", f"{len(values):,} values, more than a study may have "
                             f"points", f"at most {MAX_GRID_POINTS:,} grid points in all")
        seen = {}
        for i, v in enumerate(values):  # each value on its own, so the error names it
            checked = _TRIAL_BY_NAME[axis].check(v, f"grid.{axis}[{i}]")
            first = seen.setdefault(json.dumps(checked, sort_keys=True), i)
            if first != i:
                raise InputError(f"grid.{axis}", f"value {v!r} is listed twice ([{first}] and [{i}]): a "
                                 "duplicated grid point", "distinct values")
        if axis in trial:
            raise InputError(f"grid.{axis}", "also fixed in `trial`; give it in one place only")
        grid[axis] = values

    size = math.prod(len(v) for v in grid.values())
    if size > MAX_GRID_POINTS:  # counted from the axes: never build a billion points to say so
        raise InputError("grid", f"{size:,} grid points (" + " x ".join(f"{len(v)} {a}" for a, v in grid.items())
                         + ")", f"at most {MAX_GRID_POINTS:,} points; split the study or shorten an axis")
    resources = _section(sections["resources"], RESOURCE_KEYS, "resources")
    run = _section(sections["run"], RUN_KEYS, "run")
    sweep = Sweep(name=name, trial=trial, grid=grid, resources=resources, run=run)
    if run["fuse_seeds"] > 1 and "seed" not in grid:
        raise InputError("run.fuse_seeds", "fuses seeds, but `seed` is not a grid axis",
                         "1, or a grid with a seed axis", run["fuse_seeds"])
    points = sweep.points()  # validates every grid point, cross-key rules included
    from .models import LIBRARY_PREFIXES
    library_points = [p["model"] for p in points if p["model"].startswith(LIBRARY_PREFIXES)]
    if run["fuse_seeds"] > 1 and library_points:
        raise InputError("run.fuse_seeds", f"fused training covers the registry's models, not timm's or "
                         f"torchvision's ({library_points[0]})", "1 for timm and torchvision models", run["fuse_seeds"])
    if resources["gpu"] == 0 and any(p["device"].startswith("cuda") for p in points):
        raise InputError("resources.gpu", "is 0 but trials ask for device cuda",
                         "gpu > 0, or trial.device: auto/cpu", 0)
    return sweep


def _section(given: dict, schema: dict, section: str) -> dict:
    out = {}
    for k in given:
        if k not in schema:
            raise InputError(f"{section}.{k}", "unknown key", ", ".join(schema))
    for k, (default, check) in schema.items():
        out[k] = check(given[k], f"{section}.{k}") if k in given else default
    return out


def load_sweep(path: str | Path, sets: list[str] | None = None) -> Sweep:
    data = read_yaml(path)
    if set(data) & set(_TRIAL_BY_NAME) and not {"trial", "grid"} & set(data):
        raise InputError(str(path), "is a trial config (trial keys at the top level), not a sweep file",
                         "a sweep file (name, trial, grid, resources, run); a trial config runs with "
                         "`study trial CONFIG --out DIR`")
    data = apply_sets(data, sets, _sweep_path_known, _sweep_set_hint)
    arms = (data.get("grid") or {}).get("arm") if isinstance(data.get("grid"), dict) else None
    if isinstance(arms, list):
        data["grid"]["arm"] = [arm_from_config(a, Path(path).parent, f"grid.arm[{i}]") for i, a in enumerate(arms)]
    return validate_sweep(data)


def arm_from_config(arm, folder: Path, where: str):
    """An arm `{name: NAME, config: FILE, key: value ...}` takes FILE's trial keys (FILE relative to
    the sweep file's folder), then its own keys over them: the rungs of a ladder are the operating
    points' own config files, so a recipe is written once."""
    if not isinstance(arm, dict) or "config" not in arm:
        return arm
    file = Path(arm["config"]) if Path(str(arm["config"])).is_absolute() else folder / str(arm["config"])
    keys = read_trial_keys(file)
    unknown = [k for k in keys if k not in _TRIAL_BY_NAME]
    if unknown:
        raise InputError(f"{where}.config: {file}", f"unknown key {unknown[0]!r}", ", ".join(_TRIAL_BY_NAME))
    named = {"name": arm["name"]} if "name" in arm else {}
    return {**named, **keys, **{k: v for k, v in arm.items() if k not in ("name", "config")}}
