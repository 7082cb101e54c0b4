"""The training loop, airbench-style: the data sits on the device as uint8, every batch is
augmented and normalised there, metrics accumulate on the device and are read once per epoch.

SGD with Nesterov momentum, one-cycle or warm-up + cosine schedule, label smoothing; on CUDA bf16
autocast and channels_last. All randomness of training (data order, augmentation) comes from one
generator, the seed's `train` stream (study/streams.py), whose state is part of the checkpoint, so
a resumed run is the same run.
"""
from __future__ import annotations

import copy
import math
import os
import socket
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import streams
from .augment import ALTERNATING_FLIP, AUGMENTATIONS
from .errors import InputError
from .interventions import TrainingIntervention, apply_class_intervention


def visible_gpus() -> list[str]:
    """The GPUs named in CUDA_VISIBLE_DEVICES: what a scheduler gives a process (Ray sets it for a
    trial with resources.gpu > 0). Unset, empty or "-1" (the usual way to hide every GPU): none."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return [] if value in ("", "-1") else [g.strip() for g in value.split(",") if g.strip()]


def no_cuda_reason() -> str:
    """Why CUDA is missing, as far as this process can tell: the node and the torch build."""
    cuda = torch.version.cuda
    build = (f"torch {torch.__version__}, built with CUDA {cuda}" if cuda
             else f"torch {torch.__version__}, a CPU-only build (no CUDA)")
    return (f"torch sees no CUDA device on node {socket.gethostname()} ({build}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")


def resolve_device(name: str, gpus: list | None = None) -> torch.device:
    """The trial's device, never a silent CPU fallback.

    `gpus`: the GPUs a scheduler assigned to this trial (the sweep passes Ray's `get_gpu_ids()`);
    None reads CUDA_VISIBLE_DEVICES. A trial whose config says cuda, or that was given GPUs while
    its config says auto, fails here at once when torch sees no CUDA device (a CPU-only torch,
    a missing driver, a node without the GPU it advertised), naming the node and the torch build:
    hours of CPU training that should have been seconds on the GPU is the failure this prevents.
    An explicit `device: cpu` is obeyed whatever was assigned.
    """
    gpus = visible_gpus() if gpus is None else [str(g) for g in gpus]
    wants_cuda = name.startswith("cuda") or (name == "auto" and bool(gpus))
    if wants_cuda and not torch.cuda.is_available():
        why = f"device: {name}" if name.startswith("cuda") else f"the scheduler gave this trial GPU(s) {gpus}"
        raise InputError("device", f"{why}, but {no_cuda_reason()}",
                         "a node whose torch sees its GPU (a CUDA build of torch and a working driver), "
                         "or device: cpu with resources.gpu: 0", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError("device", f"node {socket.gethostname()} has {torch.cuda.device_count()} CUDA "
                         "device(s)", f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}, cuda, auto", name)
    return device


NATIVE_SIZE = 32   # CIFAR-10's images (and every noise bank) are 32x32


class Normalizer:
    """Pixel space [0, 1] -> the network's input: per-channel (x - mean) / std of the training set,
    then, for a network that takes another input size (`image_size`), resized to it (bilinear,
    antialiased when shrinking), so that data and noise, both made at 32x32, are resized alike."""

    def __init__(self, mean, std, device: torch.device, image_size: int = NATIVE_SIZE):
        self.mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.as_tensor(np.asarray(std), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.image_size = image_size

    def __call__(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        if self.image_size != NATIVE_SIZE:
            # resizing averages neighbouring pixels with weights that sum to 1, so resizing before
            # or after the per-channel normalization gives the same input
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x


class Precision:
    """Training's number format and layout: bf16 autocast (on CUDA unless asked otherwise) and
    channels_last. Evaluation and probes are always fp32 (see `predict`)."""

    PROBES = "fp32"

    def __init__(self, device: torch.device, precision: str, channels_last: bool):
        cuda = device.type == "cuda"
        self.bf16 = precision == "bf16" or (precision == "auto" and cuda)
        self.channels_last = channels_last
        self.device_type = device.type

    @property
    def training(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

    def layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


TRIANGLE_START, TRIANGLE_END = 0.2, 0.07   # airbench94's triangle: from 0.2 of the peak, down to 0.07


def lr_multiplier(step: int, total: int, schedule: str, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction, then linear (onecycle) or cosine decay
    to 0 at the last step; triangle (airbench) rises linearly from TRIANGLE_START at step 0 to 1
    at the `warmup` fraction and falls linearly to TRIANGLE_END at step `total`."""
    if schedule == "triangle":
        peak = int(warmup * total)
        if step < peak:
            return TRIANGLE_START + (1 - TRIANGLE_START) * step / peak
        return 1 + (TRIANGLE_END - 1) * (step - peak) / max(1, total - peak)
    warm = max(1, round(warmup * total)) if warmup > 0 else 0
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - progress


NORM_TYPES = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


def make_optimizer(model: torch.nn.Module, cfg: dict, device: torch.device) -> torch.optim.SGD:
    """Nesterov SGD. With bias_lr_scale != 1 the normalization layers' shifts form a group of
    their own whose learning rate is scaled up and weight decay down by it (the decay per step,
    lr x weight_decay, stays the same: airbench's `bias_scaler`); each group's `lr_scale` is what
    the schedule's learning rate is multiplied by."""
    kwargs = dict(lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True,
                  weight_decay=cfg["weight_decay"])
    if device.type == "cuda":
        kwargs["fused"] = True      # one kernel for the whole update
    else:
        kwargs["foreach"] = True
    scale = cfg.get("bias_lr_scale", 1.0)   # configs built before the key existed: the plain recipe
    if scale == 1:
        groups = [{"params": list(model.parameters()), "lr_scale": 1.0}]
    else:
        shifts = {id(m.bias) for m in model.modules() if isinstance(m, NORM_TYPES) and m.bias is not None}
        groups = [{"params": [p for p in model.parameters() if id(p) not in shifts], "lr_scale": 1.0},
                  {"params": [p for p in model.parameters() if id(p) in shifts], "lr_scale": scale,
                   "weight_decay": cfg["weight_decay"] / scale}]
    return torch.optim.SGD(groups, **kwargs)


class Lookahead:
    """airbench's Lookahead as an exponential moving average of the weights (and BatchNorm's
    running statistics): every `EVERY` steps the average takes a step towards the weights,
    keeping a fraction decay = 0.95^5 (step / total)^3 of itself (~0 early, 0.77 at the end),
    and the weights are set to the average; the last step sets them to the average as it is."""

    EVERY = 5

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def step(self, step: int, total: int) -> None:
        """After optimizer step number `step` (1-based) of `total`: every EVERY-th step the average
        takes its scheduled step and the weights are set to it; the last step (after its own
        scheduled update, where it is an EVERY-th one) sets the weights to the average."""
        live = self.model.state_dict()
        if step % self.EVERY == 0:
            decay = 0.95 ** 5 * (step / total) ** 3
            for k, avg in self.average.items():
                avg.lerp_(live[k], 1 - decay)
                live[k].copy_(avg)
        elif step == total:
            for k, avg in self.average.items():
                live[k].copy_(avg)

    def state_dict(self) -> dict:
        return self.average

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.average[k].copy_(v)


def images_to_device(x_nhwc: np.ndarray, device: torch.device) -> Tensor:
    """uint8 NHWC numpy -> uint8 NCHW tensor on the device (4x smaller than float)."""
    return torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2).contiguous().to(device)


def compile_mode(cfg: dict, device: torch.device) -> bool | str:
    """What of `compile` applies on `device`: the config's value on CUDA, False elsewhere (a
    CUDA-only key; the trial records it as applied.compile, with a warning)."""
    return cfg["compile"] if device.type == "cuda" else False


def compiled(model: torch.nn.Module, cfg: dict, device: torch.device):
    """The model's forward, through torch.compile where `compile` applies (the graphs are cached
    per process, so later trials of a worker reuse them)."""
    mode = compile_mode(cfg, device)
    if not mode:
        return model
    return torch.compile(model, mode=mode if isinstance(mode, str) else None)


class EpochLoop:
    """The training step, once, for Trainer (one model) and FusedTrainer (M models as one array).

    Each step sets the learning rate of the schedule, draws a batch, runs the forward pass in the
    training precision and the loss in fp32, and makes one SGD step. Loss and accuracy stay on the
    device until the epoch ends (one host sync per epoch). A subclass says how an epoch's batches
    are drawn (`epoch_batches`), what the loss of a batch is (`loss`), which predictions are right
    (`correct`) and how the epoch's sums become metrics (`summary`).
    """

    def __init__(self, model: torch.nn.Module, cfg: dict, device: torch.device, precision: Precision,
                 n_images: int):
        self.model, self.cfg, self.device, self.precision = model, cfg, device, precision
        self.batch_size = min(cfg["batch_size"], n_images)
        self.steps_per_epoch = n_images // self.batch_size  # drop the ragged last batch
        self.total_steps = self.steps_per_epoch * cfg["epochs"]
        self.augment = AUGMENTATIONS[cfg["augmentation"]]
        self.optimizer = make_optimizer(model, cfg, device)
        self.forward = compiled(model, cfg, device)
        self.lookahead = Lookahead(model) if cfg.get("lookahead") else None
        self.epoch = 0

    def run_epoch(self) -> dict:
        self.model.train()
        start, cfg = time.perf_counter(), self.cfg
        if hasattr(self.model, "epoch_start"):  # a model whose layers change with the epoch (airbench)
            self.model.epoch_start(self.epoch)
        batch = self.epoch_batches()  # draws this epoch's data order now, from the stream
        loss_sum, correct = None, None
        for b in range(self.steps_per_epoch):
            step = self.epoch * self.steps_per_epoch + b
            lr = cfg["lr"] * lr_multiplier(step, self.total_steps, cfg["schedule"], cfg["warmup"])
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            x, y = batch(b)
            with self.precision.autocast():
                logits = self.forward(x)
                loss = self.loss(logits.float(), y)          # a scalar, or one per model
            self.optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # a sum of the models' losses: each model gets its own gradient
            self.optimizer.step()
            if self.lookahead is not None:
                self.lookahead.step(step + 1, self.total_steps)
            right = self.correct(logits.detach(), y)
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            correct = right if correct is None else correct + right
        self.epoch += 1
        return {"epoch": self.epoch, **self.summary(loss_sum, correct), "lr_last": lr,
                "seconds": time.perf_counter() - start}


class Trainer(EpochLoop):
    """One model's training, epoch by epoch; state_dict() is everything needed to resume."""

    def __init__(self, model: torch.nn.Module, train_x: np.ndarray, train_y: np.ndarray, cfg: dict,
                 device: torch.device, normalize: Normalizer, precision: Precision,
                 classes: list[str] | None = None):
        self.normalize = normalize
        self.x = images_to_device(train_x, device)
        self.y = torch.from_numpy(np.asarray(train_y, dtype=np.int64)).to(device)
        self.class_intervention = None
        if cfg["class_intervention"] != "none":  # changes the data once, before training
            self.x, self.y, self.class_intervention = apply_class_intervention(
                self.x, self.y, cfg["class_intervention"], classes,
                streams.torch_generator("class_intervention", cfg["seed"], device))
        self.intervention = TrainingIntervention(cfg["intervention"], cfg["intervention_strength"],
                                                 int(self.y.max()) + 1 if classes is None else len(classes),
                                                 normalize.mean.view(3), normalize.std.view(3))
        super().__init__(model, cfg, device, precision, len(self.x))
        self.gen = streams.torch_generator("train", cfg["seed"], device)
        # airbench's derandomised flip: each image flipped in every other epoch, starting with a
        # random half (drawn once, first from the stream, so a resumed run draws the same half)
        self.flip_first = (torch.rand(len(self.x), device=device, generator=self.gen) < 0.5
                           if cfg["augmentation"] in ALTERNATING_FLIP else None)

    def state_dict(self) -> dict:
        """A copy (not a view of live tensors) of everything needed to resume."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "generator": self.gen.get_state(), "epoch": self.epoch}
        if self.lookahead is not None:
            state["lookahead"] = self.lookahead.state_dict()
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(state["lookahead"])

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        x = self.x[idx].float().div_(255)
        if self.flip_first is None:
            x = self.augment(x, self.gen)
        else:
            x = self.augment(x, self.gen, flip=self.flip_first[idx] ^ bool(self.epoch % 2))
        x, y = self.intervention.batch(x, self.y[idx], self.gen)
        return self.precision.layout(self.normalize(x)), y

    def epoch_batches(self):
        order = torch.randperm(len(self.x), device=self.device, generator=self.gen)
        bs = self.batch_size
        return lambda b: self.batch(order[b * bs:(b + 1) * bs])

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return self.intervention.loss(logits, y, self.cfg["label_smoothing"])

    def correct(self, logits: Tensor, y: Tensor) -> Tensor:
        n = self.batch_size  # noise an intervention appends comes after the batch's own images
        return (logits[:n].argmax(1) == y[:n]).sum()

    def summary(self, loss_sum: Tensor, correct: Tensor) -> dict:
        return {"train_loss": float(loss_sum) / self.steps_per_epoch,  # the one host sync of the epoch
                "train_accuracy": int(correct) / (self.steps_per_epoch * self.batch_size)}


@torch.no_grad()
def predict(model: torch.nn.Module, images: Tensor, normalize: Normalizer, precision: Precision,
            batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(logits, penultimate features) as float32 numpy, in eval mode (running BN statistics).

    `images` is uint8 (0..255) or float pixel-space ([0, 1] units), on any device. Always fp32,
    whatever training used: bf16 keeps 8 bits of mantissa, so near-equal logits tie and argmax
    then favours the lowest class index (a fake absorber), and features, distances, OOD scores
    and the logit decomposition (w . f + b against the logits) would carry bf16's ~0.4% error.
    On CUDA, TF32 (10 mantissa bits, cuDNN's default for fp32 convolutions) is off here too.
    Only the memory layout is training's.
    """
    model.eval()
    logits, feats = [], []
    with ieee_fp32():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device, non_blocking=True)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
            f = model.features(precision.layout(normalize(x)))
            feats.append(f.float())
            logits.append(model.head(f).float())
    return torch.cat(logits).cpu().numpy(), torch.cat(feats).cpu().numpy()


def tta_views(x: Tensor, level: int) -> list[tuple[float, Tensor]]:
    """airbench's test-time augmentation as (weight, view) pairs of a float pixel batch: level 1
    the image and its mirror (1/2 each); level 2 those at 1/4 each, and the image translated by
    one pixel up-left and down-right (reflect padding), each with its mirror, at 1/8 each."""
    mirrored = [x, x.flip(3)]
    if level == 1:
        return [(0.5, v) for v in mirrored]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :-2, :-2], padded[..., 2:, 2:]]
    return [(0.25, v) for v in mirrored] + [(0.125, v) for s in shifted for v in (s, s.flip(3))]


def tta_logits(model: torch.nn.Module, images: Tensor, normalize: Normalizer, precision: Precision,
               batch_size: int, device: torch.device, level: int) -> np.ndarray:
    """The weighted mean of the logits over `tta_views`, for the test accuracy only (a probe's
    answer is always the one plain forward pass of `predict`)."""
    total = None
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        part = sum(w * predict(model, v, normalize, precision, batch_size, device)[0]
                   for w, v in tta_views(x, level))
        total = part if total is None else np.concatenate([total, part])
    return total


@contextmanager
def ieee_fp32():
    """fp32 convolutions and matmuls without TF32 for the block, then the previous setting."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
