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
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from analysis.contract import COMPLETED, DIVERGED

from . import probe, streams
from .artifacts import ArtifactDir
from .train import EpochLoop, images_to_device
from .trial import TrainedData, Training, TrialSetup, finish, new_model, setup

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
            for key in template.state_dict():
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
    from .augment import ALTERNATING_FLIP
    from .models import FITTED_MODELS
    if (first["lookahead"] or first["bias_lr_scale"] != 1 or first["augmentation"] in ALTERNATING_FLIP
            or first["model"] in FITTED_MODELS):
        raise ValueError("fused training runs the plain recipe (no lookahead, bias_lr_scale 1, random flips, "
                         "no data-fitted first layer); train these seeds as separate trials")
    for c in configs[1:]:
        differ = sorted(k for k in first if first[k] != c[k] and k not in PER_MODEL_KEYS)
        if differ:
            raise ValueError(f"configs fused into one array may differ only in {sorted(PER_MODEL_KEYS)}, "
                             f"these differ in {differ}")


class FusedTrainer(EpochLoop):
    """Trains M models at once; every model sees exactly the batches its separate Trainer would.
    The step is Trainer's (EpochLoop), so `compile` applies to the array model as to one model."""

    def __init__(self, setups: list[TrialSetup], models: list[nn.Module]):
        s0 = setups[0]
        device, self.normalize = s0.device, s0.normalize
        model = FusedClassifier(models).to(device)
        if s0.precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        shared = s0.cfg["train_subset"] is None  # the whole training set: one copy on the device
        self.xs = [images_to_device(s.task.train_x, device) for s in (setups[:1] if shared else setups)]
        self.ys = [torch.from_numpy(s.task.train_y).to(device) for s in (setups[:1] if shared else setups)]
        if shared:
            self.xs, self.ys = self.xs * len(setups), self.ys * len(setups)
        super().__init__(model, s0.cfg, device, s0.precision, len(self.xs[0]))
        self.gens = [streams.torch_generator("train", s.cfg["seed"], device) for s in setups]

    def epoch_batches(self):
        orders = [torch.randperm(len(x), device=self.device, generator=g) for x, g in zip(self.xs, self.gens)]
        bs = self.batch_size

        def batch(b: int) -> tuple[Tensor, Tensor]:
            """Each model's own batch, augmented by its own generator, side by side in channels."""
            xs, ys = [], []
            for x, y, order, g in zip(self.xs, self.ys, orders, self.gens):
                idx = order[b * bs:(b + 1) * bs]
                xs.append(self.normalize(self.augment(x[idx].float().div_(255), g)))
                ys.append(y[idx])
            return self.precision.layout(torch.cat(xs, dim=1)), torch.stack(ys, dim=1)   # (N, M*3, H, W), (N, M)
        return batch

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """(N, M, K) logits -> each model's mean loss (M,), as its separate training has it."""
        return F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none",
                               label_smoothing=self.cfg["label_smoothing"]).mean(0)

    def correct(self, logits: Tensor, y: Tensor) -> Tensor:
        return (logits.argmax(-1) == y).sum(0)

    def summary(self, loss_sum: Tensor, correct: Tensor) -> dict:
        seen = self.steps_per_epoch * self.batch_size
        return {"train_loss": (loss_sum / self.steps_per_epoch).tolist(),  # the one host sync of the epoch
                "train_accuracy": (correct.float() / seen).tolist()}


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
    note = f"trained fused with seeds {[c['seed'] for c in configs]}"
    results = []
    for i, (s, mdl, out) in enumerate(zip(setups, models, outs)):
        # fused seeds run no interventions (check_fusable): each trained on its task's data as is
        training = Training(DIVERGED if i in diverged else COMPLETED, histories[i], trajectories[i],
                            diverged.get(i, trainer.epoch), train_seconds / len(setups),  # an amortized share
                            TrainedData.untouched(s.task), [note], fused_models=len(setups))
        results.append(finish(s, mdl, training, out))
    return results
