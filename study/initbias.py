"""Initial guessing bias, measured as Francazi, Lucchi & Baity-Jesi (ICML 2024) do: no training,
many independently initialised networks per setting, and for each network the fraction of the
images it sends to its most favoured class (max_f) and which class that is.

A setting is `ACTIVATION-POOL-NORM[.MODE]-INPUTS`, e.g. `relu-max-none-centered` or
`relu-max-batch.train-centered`: the architecture factors of study/models.py, BatchNorm's mode
(eval: running statistics, at initialisation the identity; train: each probe set's own batch
statistics), and the inputs (centered: (x - mean) / std with the training set's channel mean and
std, as every trial feeds them; uncentered: x / std, the same scale with the mean kept).

Network i of every setting is built from seed i, so its weights are those of the trial with seed i
(and the same draws in every setting): per-network differences between settings are paired. Each
network sees the same test images (class-balanced, from `noise_seed`) and the same Gaussian noise
bank as the trials. The logits are taken twice: with the head's bias as initialised (what a trial
sees at epoch 0) and with it zeroed (the paper's networks have no explicit biases, so that only
the architecture can favour a class).

    python -m study initbias [--nets 200] [--images 100] [--out results/initbias] [--settings ...]

writes initbias.csv (one row per setting x network x image set x head bias), the summary, tests,
predictions, a histogram of max_f per setting and initbias.md (analysis/initbias_report.py), and
initbias.json (arguments, versions, code revision, timing) last.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from .artifacts import ArtifactDir
from .config import MAX_SEED, integer
from .data import CIFAR10_CLASSES, check_source, load_cifar10
from .errors import InputError
from .models import FACTOR_MODELS, FACTORS, FITTED_MODELS, build_model
from .noise import NoiseContext, make_bank
from .plan import check_storage
from .provenance import code_revision, versions
from .task import make_task

INPUTS = ("centered", "uncentered")
BN_MODES = ("eval", "train")
# the paper's contrasts (activation, pooling, centering) and each normalization, around ReLU +
# max-pooling without normalization, the setting the paper predicts to be most biased
DEFAULT_SETTINGS = (
    "relu-max-none-centered", "relu-avg-none-centered", "gelu-max-none-centered",
    "tanh-max-none-centered", "tanh-avg-none-centered",
    "relu-max-none-uncentered", "tanh-avg-none-uncentered",
    "relu-max-batch.eval-centered", "relu-max-batch.train-centered",
    "relu-max-group-centered", "relu-max-layer-centered",
)


@dataclass(frozen=True)
class Setting:
    activation: str
    pool: str
    norm: str
    bn_mode: str     # eval | train for BatchNorm, "-" otherwise
    inputs: str

    @property
    def name(self) -> str:
        norm = f"{self.norm}.{self.bn_mode}" if self.norm == "batch" else self.norm
        return f"{self.activation}-{self.pool}-{norm}-{self.inputs}"


def parse_setting(text: str, where: str = "--settings") -> Setting:
    allowed = ("ACTIVATION-POOL-NORM[.MODE]-INPUTS with ACTIVATION " + "|".join(FACTORS["activation"])
               + ", POOL " + "|".join(FACTORS["pool"]) + ", NORM " + "|".join(FACTORS["norm"])
               + " (batch.eval or batch.train), INPUTS " + "|".join(INPUTS) + ", e.g. relu-max-none-centered")
    parts = text.split("-") if isinstance(text, str) else []
    if len(parts) != 4:
        raise InputError(where, "not a setting", allowed, text)
    activation, pool, norm, inputs = parts
    norm, _, mode = norm.partition(".")
    ok = (activation in FACTORS["activation"] and pool in FACTORS["pool"] and norm in FACTORS["norm"]
          and inputs in INPUTS and (mode in BN_MODES if norm == "batch" else mode == ""))
    if not ok:
        raise InputError(where, "unknown option in setting", allowed, text)
    return Setting(activation, pool, norm, mode or "-", inputs)


@dataclass
class Probe:
    """The images every network sees, in [0, 1] pixel units, and the two input normalisations."""
    test: torch.Tensor
    noise: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    data: dict          # the CIFAR-10 source and its sha256, for the record

    def inputs(self, images: torch.Tensor, inputs: str) -> torch.Tensor:
        x = images - self.mean.view(1, 3, 1, 1) if inputs == "centered" else images
        return (x / self.std.view(1, 3, 1, 1)).contiguous(memory_format=torch.channels_last)


def load_probe(n_images: int, noise_seed: int, data_root: str | None) -> Probe:
    """n_images class-balanced test images (the ones a trial with test_subset: n_images sees) and
    n_images Gaussian noise images (the first of the trials' gaussian bank)."""
    data = load_cifar10(data_root, "full")
    task = make_task(data, list(CIFAR10_CLASSES), 0, noise_seed, train_subset=len(CIFAR10_CLASSES),
                     test_subset=n_images)
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in data.channel_stats())
    ctx = NoiseContext(mean, std, natural=torch.from_numpy(data.test_x).permute(0, 3, 1, 2))
    test = torch.from_numpy(task.test_x).permute(0, 3, 1, 2).float() / 255
    return Probe(test, make_bank("gaussian", n_images, noise_seed, ctx), mean, std,
                 {"source": data.source, "kind": data.kind, "sha256": data.checksum})


@torch.no_grad()
def measure(setting: Setting, probe: Probe, nets: int, model: str = "small_cnn", n_classes: int = 10,
            log=print, edit=None) -> list[dict]:
    """Rows (one per network x image set x head bias) of top class and max_f for `nets` networks
    of one setting, seeds 0..nets-1. `edit(net)`, where given, changes each network after its
    initialisation (benchmarks/initbias_pooling.py swaps pooling layers, keeping the weights)."""
    rows = []
    sets = {"test": probe.inputs(probe.test, setting.inputs), "noise": probe.inputs(probe.noise, setting.inputs)}
    started = time.perf_counter()
    for seed in range(nets):
        net = build_model(model, n_classes, seed, activation=setting.activation, pool=setting.pool,
                          norm=setting.norm).to(memory_format=torch.channels_last)
        if edit is not None:
            edit(net)
        # train mode only changes BatchNorm (no dropout anywhere): batch statistics of each set
        net.train(setting.bn_mode == "train")
        w, b = net.head.weight, net.head.bias
        for images, x in sets.items():
            f = net.features(x)      # one batch per set: train-mode BatchNorm uses its statistics
            for head_bias, z in (("initial", f @ w.T + b), ("zero", f @ w.T)):
                counts = torch.bincount(z.argmax(1), minlength=n_classes)
                top = int(counts.argmax())
                rows.append({"setting": setting.name, **asdict(setting), "net": seed, "images": images,
                             "head_bias": head_bias, "top_class": CIFAR10_CLASSES[top] if n_classes == 10 else top,
                             "max_f": float(counts[top]) / len(x), "n_images": len(x)})
    log(f"{setting.name}: {nets} networks in {time.perf_counter() - started:.0f} s")
    return rows


def run(settings: list[str], nets: int, n_images: int, out: str, noise_seed: int = 0,
        data_root: str | None = None, threads: int = 0, model: str = "small_cnn", log=print) -> dict:
    """Validate everything, measure every setting, write the CSV, the analysis and initbias.json."""
    parsed = [parse_setting(s) for s in settings]
    if len({s.name for s in parsed}) != len(parsed):
        raise InputError("--settings", "a setting is given twice", "distinct settings", settings)
    if nets < 2:
        raise InputError("--nets", "too few networks for a distribution", ">= 2 (the paper's setup: >= 200)", nets)
    if n_images < 10:
        raise InputError("--images", "too few images per network for a fraction", ">= 10", n_images)
    if model not in FACTOR_MODELS or model in FITTED_MODELS:
        why = ("has a first layer a trial fits to the training data, which these untrained networks never see"
               if model in FITTED_MODELS else "has no architecture factors")
        raise InputError("--model", why, ", ".join(sorted(FACTOR_MODELS - FITTED_MODELS)), model)
    integer(0, MAX_SEED)(noise_seed, "--noise-seed")
    integer(0)(threads, "--threads")
    check_source(data_root)
    check_storage(out, where="--out")  # an unwritable --out fails now, not after the measurement
    if threads:
        torch.set_num_threads(threads)
    target = ArtifactDir.at(out)
    started = time.perf_counter()
    probe = load_probe(n_images, noise_seed, data_root)
    rows = []
    for s in parsed:
        rows += measure(s, probe, nets, model, log=log)
    seconds = time.perf_counter() - started

    import pandas as pd

    from analysis.initbias_report import analyse
    files = analyse(pd.DataFrame(rows), n_classes=len(CIFAR10_CLASSES))
    for name, content in files.items():
        target.write_bytes(name, content)
    record = {"command": "initbias", "settings": [s.name for s in parsed], "nets": nets, "images": n_images,
              "model": model, "noise_seed": noise_seed, "seeds": f"0..{nets - 1}", "data": probe.data,
              "threads": torch.get_num_threads(), "measure_seconds": seconds,
              "versions": versions(), "code_revision": code_revision(), "files": sorted(files)}
    target.write_json("initbias.json", record)  # last: its presence marks a complete measurement
    return record
