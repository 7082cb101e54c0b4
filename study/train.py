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
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from . import streams
from .augment import AUGMENTATIONS
from .errors import InputError
from .interventions import TrainingIntervention, apply_class_intervention


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device", "CUDA was asked for but no GPU is visible", "auto, cpu", name)
    return torch.device(name)


class Normalizer:
    """Pixel space [0, 1] -> the network's input: per-channel (x - mean) / std of the training set."""

    def __init__(self, mean, std, device: torch.device):
        self.mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.as_tensor(np.asarray(std), dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Precision:
    """bf16 autocast (on CUDA unless asked otherwise) and the channels_last layout."""

    def __init__(self, device: torch.device, precision: str, channels_last: bool):
        cuda = device.type == "cuda"
        self.bf16 = precision == "bf16" or (precision == "auto" and cuda)
        self.channels_last = channels_last
        self.device_type = device.type

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

    def layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def lr_multiplier(step: int, total: int, schedule: str, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction, then linear (onecycle) or cosine decay
    to 0 at the last step."""
    warm = max(1, round(warmup * total)) if warmup > 0 else 0
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - progress


def make_optimizer(model: torch.nn.Module, cfg: dict, device: torch.device) -> torch.optim.SGD:
    kwargs = dict(lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True,
                  weight_decay=cfg["weight_decay"])
    if device.type == "cuda":
        kwargs["fused"] = True      # one kernel for the whole update
    else:
        kwargs["foreach"] = True
    return torch.optim.SGD(model.parameters(), **kwargs)


def images_to_device(x_nhwc: np.ndarray, device: torch.device) -> Tensor:
    """uint8 NHWC numpy -> uint8 NCHW tensor on the device (4x smaller than float)."""
    return torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2).contiguous().to(device)


class Trainer:
    """One model's training, epoch by epoch; state_dict() is everything needed to resume."""

    def __init__(self, model: torch.nn.Module, train_x: np.ndarray, train_y: np.ndarray, cfg: dict,
                 device: torch.device, normalize: Normalizer, precision: Precision,
                 classes: list[str] | None = None):
        self.model, self.cfg, self.device = model, cfg, device
        self.normalize, self.precision = normalize, precision
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
        self.batch_size = min(cfg["batch_size"], len(self.x))
        self.steps_per_epoch = len(self.x) // self.batch_size  # drop the ragged last batch
        self.total_steps = self.steps_per_epoch * cfg["epochs"]
        self.augment = AUGMENTATIONS[cfg["augmentation"]]
        self.optimizer = make_optimizer(model, cfg, device)
        self.gen = streams.torch_generator("train", cfg["seed"], device)
        self.epoch = 0
        self.forward = model
        if cfg["compile"] and device.type == "cuda":  # compiled graphs are cached per process
            mode = cfg["compile"] if isinstance(cfg["compile"], str) else None
            self.forward = torch.compile(model, mode=mode)

    def state_dict(self) -> dict:
        """A copy (not a view of live tensors) of everything needed to resume."""
        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "generator": self.gen.get_state(), "epoch": self.epoch})

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.epoch = int(state["epoch"])

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        x = self.augment(self.x[idx].float().div_(255), self.gen)
        x, y = self.intervention.batch(x, self.y[idx], self.gen)
        return self.precision.layout(self.normalize(x)), y

    def run_epoch(self) -> dict:
        self.model.train()
        start = time.perf_counter()
        cfg, bs = self.cfg, self.batch_size
        order = torch.randperm(len(self.x), device=self.device, generator=self.gen)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for b in range(self.steps_per_epoch):
            step = self.epoch * self.steps_per_epoch + b
            lr = cfg["lr"] * lr_multiplier(step, self.total_steps, cfg["schedule"], cfg["warmup"])
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            idx = order[b * bs:(b + 1) * bs]
            x, y = self.batch(idx)
            with self.precision.autocast():
                logits = self.forward(x)
                loss = self.intervention.loss(logits.float(), y, cfg["label_smoothing"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach()
            n = len(idx)  # noise an intervention appends comes after the batch's own images
            correct += (logits.detach()[:n].argmax(1) == y[:n]).sum()
            seen += n
        self.epoch += 1
        train_loss = float(loss_sum) / self.steps_per_epoch  # the one host sync of the epoch
        return {"epoch": self.epoch, "train_loss": train_loss,
                "train_accuracy": int(correct) / max(seen, 1), "lr_last": lr,
                "seconds": time.perf_counter() - start}


@torch.no_grad()
def predict(model: torch.nn.Module, images: Tensor, normalize: Normalizer, precision: Precision,
            batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(logits, penultimate features) as float32 numpy, in eval mode (running BN statistics).

    `images` is uint8 (0..255) or float pixel-space ([0, 1] units), on any device.
    """
    model.eval()
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        with precision.autocast():
            f = model.features(precision.layout(normalize(x)))
            z = model.head(f)
        feats.append(f.float())
        logits.append(z.float())
    return torch.cat(logits).cpu().numpy(), torch.cat(feats).cpu().numpy()
