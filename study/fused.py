"""Fused multi-seed training: M seeds of one condition trained as one "array" model.

Every Conv2d becomes one grouped convolution over the M models' concatenated channels (groups
multiplied by M), every BatchNorm2d one BatchNorm over the concatenated channels (its statistics
are per channel, so per model), and the linear head a batched matmul. Each seed keeps its own
initial weights, data order and augmentation (its own generator, used in the same order as a
separate trial), and the loss is the sum of the M mean losses, so each model's gradient, weight
decay and momentum are those of its separate training. Afterwards the array is split back into M
ordinary models, which are probed and written exactly like separate trials.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import probe, streams
from analysis.contract import COMPLETED, DIVERGED

from .artifacts import ArtifactDir
from .augment import AUGMENTATIONS
from .train import images_to_device, lr_multiplier, make_optimizer
from .trial import TrialSetup, finish, new_model, setup

# what may differ between the configs fused into one array (everything else must be equal)
PER_MODEL_KEYS = {"seed"}


class FusedLinear(nn.Module):
    def __init__(self, heads: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]).clone())   # (M, K, D)
        self.bias = nn.Parameter(torch.stack([h.bias.detach() for h in heads]).clone())       # (M, K)

    def forward(self, f: Tensor) -> Tensor:  # (N, M*D) -> (N, M, K)
        m, k, d = self.weight.shape
        return torch.einsum("nmd,mkd->nmk", f.reshape(len(f), m, d), self.weight) + self.bias


def _fuse(modules: list[nn.Module]) -> nn.Module:
    """One module computing the M given (architecturally identical) modules side by side."""
    first, m = modules[0], len(modules)
    if isinstance(first, nn.Conv2d):
        c = first
        fused = nn.Conv2d(m * c.in_channels, m * c.out_channels, c.kernel_size, c.stride, c.padding,
                          c.dilation, m * c.groups, c.bias is not None, c.padding_mode)
        fused.weight.data = torch.cat([x.weight.detach() for x in modules]).clone()
        if c.bias is not None:
            fused.bias.data = torch.cat([x.bias.detach() for x in modules]).clone()
        return fused
    if isinstance(first, nn.BatchNorm2d):
        b = first
        fused = nn.BatchNorm2d(m * b.num_features, b.eps, b.momentum, b.affine, b.track_running_stats)
        for name in ("weight", "bias"):
            getattr(fused, name).data = torch.cat([getattr(x, name).detach() for x in modules]).clone()
        for name in ("running_mean", "running_var"):
            getattr(fused, name).copy_(torch.cat([getattr(x, name) for x in modules]))
        fused.num_batches_tracked.copy_(b.num_batches_tracked)
        return fused
    if isinstance(first, nn.GroupNorm):  # groups never straddle two models: each keeps its own statistics
        g = first
        fused = nn.GroupNorm(m * g.num_groups, m * g.num_channels, g.eps, g.affine)
        if g.affine:
            for name in ("weight", "bias"):
                getattr(fused, name).data = torch.cat([getattr(x, name).detach() for x in modules]).clone()
        return fused
    if list(first.parameters(recurse=False)):
        raise TypeError(f"cannot fuse {type(first).__name__}: only Conv2d, BatchNorm2d, GroupNorm and parameter-free "
                        "layers (activations, pooling, flatten) can run side by side")
    fused = copy.copy(first)  # parameter-free: ReLU, pooling, Flatten, Identity, containers
    fused._modules = {name: _fuse([x._modules[name] for x in modules]) for name in first._modules}
    return fused


class FusedClassifier(nn.Module):
    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.m = len(models)
        self.features = _fuse([x.features for x in models])
        self.head = FusedLinear([x.head for x in models])

    def forward(self, x: Tensor) -> Tensor:  # (N, M*3, H, W) -> (N, M, K)
        return self.head(self.features(x))

    def split(self, templates: list[nn.Module]) -> list[nn.Module]:
        """The M ordinary models, with the array's weights and BatchNorm statistics."""
        state = self.state_dict()
        out = []
        for i, template in enumerate(templates):
            own = {}
            for key, value in template.state_dict().items():
                fused = state[key]
                own[key] = fused if fused.dim() == 0 else fused[i] if key.startswith("head.") \
                    else fused.chunk(self.m)[i]
            template.load_state_dict(own)
            out.append(template)
        return out


def check_fusable(configs: list[dict]) -> None:
    first = configs[0]
    if first["intervention"] != "none" or first["class_intervention"] != "none":
        raise ValueError("fused training runs no interventions; train these seeds as separate trials")
    for c in configs[1:]:
        differ = sorted(k for k in first if first[k] != c[k] and k not in PER_MODEL_KEYS)
        if differ:
            raise ValueError(f"configs fused into one array may differ only in {sorted(PER_MODEL_KEYS)}, "
                             f"these differ in {differ}")


class FusedTrainer:
    """Trains M models at once; every model sees exactly the batches its separate Trainer would."""

    def __init__(self, setups: list[TrialSetup], models: list[nn.Module]):
        s0 = setups[0]
        self.cfg, self.device, self.precision, self.normalize = s0.cfg, s0.device, s0.precision, s0.normalize
        self.model = FusedClassifier(models).to(self.device)
        if self.precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        shared = s0.cfg["train_subset"] is None  # the whole training set: one copy on the device
        self.xs = [images_to_device(s.task.train_x, self.device) for s in (setups[:1] if shared else setups)]
        self.ys = [torch.from_numpy(s.task.train_y).to(self.device) for s in (setups[:1] if shared else setups)]
        if shared:
            self.xs, self.ys = self.xs * len(setups), self.ys * len(setups)
        self.batch_size = min(self.cfg["batch_size"], len(self.xs[0]))
        self.steps_per_epoch = len(self.xs[0]) // self.batch_size
        self.total_steps = self.steps_per_epoch * self.cfg["epochs"]
        self.augment = AUGMENTATIONS[self.cfg["augmentation"]]
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        self.gens = [streams.torch_generator("train", s.cfg["seed"], self.device) for s in setups]
        self.epoch = 0

    def run_epoch(self) -> dict:
        self.model.train()
        start, cfg, bs, m = time.perf_counter(), self.cfg, self.batch_size, len(self.gens)
        orders = [torch.randperm(len(x), device=self.device, generator=g) for x, g in zip(self.xs, self.gens)]
        loss_sum = torch.zeros(m, device=self.device)
        correct = torch.zeros(m, device=self.device, dtype=torch.long)
        for b in range(self.steps_per_epoch):
            step = self.epoch * self.steps_per_epoch + b
            lr = cfg["lr"] * lr_multiplier(step, self.total_steps, cfg["schedule"], cfg["warmup"])
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            xs, ys = [], []
            for x, y, order, g in zip(self.xs, self.ys, orders, self.gens):
                idx = order[b * bs:(b + 1) * bs]
                xs.append(self.normalize(self.augment(x[idx].float().div_(255), g)))
                ys.append(y[idx])
            x = self.precision.layout(torch.cat(xs, dim=1))
            y = torch.stack(ys, dim=1)                                        # (N, M)
            with self.precision.autocast():
                logits = self.model(x)                                        # (N, M, K)
                per_model = F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none",
                                            label_smoothing=cfg["label_smoothing"]).mean(0)
            self.optimizer.zero_grad(set_to_none=True)
            per_model.sum().backward()
            self.optimizer.step()
            loss_sum += per_model.detach()
            correct += (logits.detach().argmax(-1) == y).sum(0)
        self.epoch += 1
        losses = (loss_sum / self.steps_per_epoch).tolist()  # the one host sync of the epoch
        accuracy = (correct.float() / (self.steps_per_epoch * bs)).tolist()
        return {"epoch": self.epoch, "train_loss": losses, "train_accuracy": accuracy,
                "seconds": time.perf_counter() - start, "lr_last": lr}


def run_fused_trials(configs: list[dict], outs: list[ArtifactDir | str],
                     log: Callable[[str], None] = print,
                     on_epoch: Callable[[int, dict], None] | None = None,
                     gpus: list | None = None) -> list[dict]:
    """Train len(configs) seeds of one condition as one array; write each seed's artifacts as a
    separate trial would. A seed whose loss turns non-finite is recorded as diverged; the others
    go on (its weights no longer influence theirs). `on_epoch(epoch, metrics)` reports progress;
    `gpus`: what the scheduler assigned (see trial.setup)."""
    setups = [setup(c, gpus) for c in configs]
    check_fusable([s.cfg for s in setups])
    for s in setups:
        if s.applied["compile"]:  # the array model is not compiled
            s.applied["compile"] = False
            s.warnings.append(f"compile: {s.cfg['compile']} is not applied to fused training (run.fuse_seeds)")
    models = [new_model(s) for s in setups]
    predictors = [s.predictor(mdl) for s, mdl in zip(setups, models)]
    trajectories = [[probe.trajectory_point(p, s.trajectory_bank, s.classes, 0)] for p, s in zip(predictors, setups)]
    histories: list[list] = [[] for _ in setups]
    diverged: dict[int, int] = {}
    trainer = FusedTrainer(setups, models)
    t_train = time.perf_counter()
    while trainer.epoch < setups[0].cfg["epochs"]:
        metrics = trainer.run_epoch()
        trainer.model.split(models)  # the separate models, for the trajectory probes
        for i, loss in enumerate(metrics["train_loss"]):
            if i in diverged:
                continue
            histories[i].append({"epoch": trainer.epoch, "train_loss": loss,
                                 "train_accuracy": metrics["train_accuracy"][i], "lr_last": metrics["lr_last"]})
            if not math.isfinite(loss):
                diverged[i] = trainer.epoch
                continue
            trajectories[i].append(probe.trajectory_point(predictors[i], setups[i].trajectory_bank,
                                                          setups[i].classes, trainer.epoch))
        log(f"epoch {trainer.epoch}: losses {[round(x, 4) for x in metrics['train_loss']]}, "
            f"{metrics['seconds']:.1f} s for {len(setups)} models")
        if on_epoch is not None:  # with each live model's new trajectory point
            on_epoch(trainer.epoch, {**metrics, "trajectories": [t[-1] for i, t in enumerate(trajectories)
                                                                 if i not in diverged]})
    train_seconds = time.perf_counter() - t_train  # `models` hold the last epoch's weights (split above)
    results = []
    for i, (s, mdl, out) in enumerate(zip(setups, models, outs)):
        s.timing["train_seconds"] = train_seconds / len(setups)  # amortized share of the array
        s.timing["fused_models"] = len(setups)
        status = DIVERGED if i in diverged else COMPLETED
        results.append(finish(s, mdl, status, histories[i], trajectories[i], diverged.get(i, trainer.epoch),
                              [f"trained fused with seeds {[c['seed'] for c in configs]}"], out))
    return results
