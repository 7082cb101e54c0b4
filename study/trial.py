"""One trial: a plain function of a resolved config. Data -> train -> probe -> measure -> write.

No Ray here. The sweep layer passes `on_epoch` (to report and checkpoint) and `resume` (the last
checkpoint's state); run on its own, a trial needs neither. `setup` and `finish` are shared with
the fused multi-seed trainer (study/fused.py), so both write the very same artifacts.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import torch

from . import probe
from .artifacts import ARRAYS_NPZ, SCHEMA_VERSION, TRIAL_JSON, ArtifactDir
from .config import trained_classes, validate_trial
from .data import Cifar10, load_cifar10
from .models import build_model
from .noise import NOISE_FAMILIES, NoiseContext, make_bank
from .provenance import code_revision, versions
from .task import Task, check_task, make_task
from .train import Normalizer, Precision, Trainer, images_to_device, predict, resolve_device

OnEpoch = Callable[[int, dict, Callable[[], dict]], None]


@dataclass
class TrialSetup:
    """Everything a trial needs before its model exists."""
    cfg: dict
    device: torch.device
    data: Cifar10
    task: Task
    normalize: Normalizer
    precision: Precision
    noise_ctx: NoiseContext
    gaussian_bank: torch.Tensor
    started: float = field(default_factory=time.perf_counter)
    timing: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.task.classes

    @property
    def trajectory_bank(self) -> torch.Tensor:
        return self.gaussian_bank[: self.cfg["n_trajectory"]]

    def predictor(self, model: torch.nn.Module):
        """images -> (logits, penultimate features), in eval mode."""
        return partial(predict, model, normalize=self.normalize, precision=self.precision,
                       batch_size=self.cfg["eval_batch_size"], device=self.device)


def setup(config: dict) -> TrialSetup:
    cfg = validate_trial(config)
    started = time.perf_counter()
    device = resolve_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    data = load_cifar10(cfg["data_root"], cfg["data_verify"])
    classes = trained_classes(cfg)
    check_task(data, cfg, classes)
    task = make_task(data, classes, cfg["seed"], cfg["noise_seed"], cfg["train_subset"], cfg["test_subset"])
    mean, std = data.channel_stats()
    noise_ctx = NoiseContext(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32),
                             natural=torch.from_numpy(data.test_x).permute(0, 3, 1, 2))
    s = TrialSetup(cfg, device, data, task, Normalizer(mean, std, device),
                   Precision(device, cfg["precision"], cfg["channels_last"]), noise_ctx,
                   make_bank("gaussian", cfg["n_noise"], cfg["noise_seed"], noise_ctx), started=started)
    s.timing["data_seconds"] = time.perf_counter() - started
    return s


def new_model(s: TrialSetup) -> torch.nn.Module:
    model = build_model(s.cfg["model"], len(s.classes), s.cfg["seed"], s.cfg["pretrained"]).to(s.device)
    return model.to(memory_format=torch.channels_last) if s.precision.channels_last else model


def run_trial(config: dict, out: ArtifactDir | str, *, on_epoch: OnEpoch | None = None,
              resume: dict | None = None, notes: list[str] | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Train and probe one model as `config` says; write trial.json + arrays.npz into `out`.

    Returns the trial.json content. Status is `completed`, or `diverged` when the training loss
    became non-finite (recorded, not raised). `notes` (e.g. a checkpoint that could not be read)
    are kept in trial.json under `warnings`.
    """
    s = setup(config)
    cfg = s.cfg
    model = new_model(s)
    trainer = Trainer(model, s.task.train_x, s.task.train_y, cfg, s.device, s.normalize, s.precision)
    model_predict = s.predictor(model)
    if resume is not None:
        trainer.load_state_dict(resume["trainer"])
        trajectory, history = list(resume["trajectory"]), list(resume["history"])
        log(f"resumed from the checkpoint of epoch {trainer.epoch}")
    else:
        trajectory = [probe.trajectory_point(model_predict, s.trajectory_bank, s.classes, epoch=0)]
        history = []
    status, t_train = "completed", time.perf_counter()
    while trainer.epoch < cfg["epochs"]:
        metrics = trainer.run_epoch()
        history.append({k: metrics[k] for k in ("epoch", "train_loss", "train_accuracy", "lr_last")})
        if not math.isfinite(metrics["train_loss"]):
            status = "diverged"
            log(f"epoch {trainer.epoch}: training loss is {metrics['train_loss']}: diverged")
            break
        trajectory.append(probe.trajectory_point(model_predict, s.trajectory_bank, s.classes, trainer.epoch))
        log(f"epoch {trainer.epoch}/{cfg['epochs']}: loss {metrics['train_loss']:.4f}, "
            f"train acc {metrics['train_accuracy']:.3f}, {metrics['seconds']:.1f} s")
        if on_epoch is not None:
            on_epoch(trainer.epoch, metrics, lambda: {"trainer": trainer.state_dict(),
                                                      "trajectory": list(trajectory), "history": list(history)})
    s.timing["train_seconds"] = time.perf_counter() - t_train
    return finish(s, model, status, history, trajectory, trainer.epoch, notes, out)


def finish(s: TrialSetup, model: torch.nn.Module, status: str, history: list, trajectory: list,
           epoch: int, notes: list[str] | None, out: ArtifactDir | str) -> dict:
    """Probe a trained model (unless it diverged) and write its artifacts; returns trial.json."""
    out = ArtifactDir.at(out) if isinstance(out, str) else out
    cfg = s.cfg
    mean, std = s.noise_ctx.mean.tolist(), s.noise_ctx.std.tolist()
    result = {
        "schema": SCHEMA_VERSION, "status": status, "config": cfg,
        "seed": cfg["seed"], "noise_seed": cfg["noise_seed"],
        "classes": s.classes, "heldout_classes": s.task.heldout,
        "n_train": int(len(s.task.train_x)), "train_history": history, "trajectory": trajectory,
        "normalization": {"mean": mean, "std": std},
        "data": {"source": s.data.source, "kind": s.data.kind, "sha256": s.data.checksum},
        "versions": versions(s.device), "code_revision": code_revision(),
        "diverged_at_epoch": epoch if status == "diverged" else None,
        "warnings": list(notes or []),
    }
    arrays = {}
    if status == "completed":
        t_probe = time.perf_counter()
        result.update(_probe_all(s, s.predictor(model), arrays))
        s.timing["probe_seconds"] = time.perf_counter() - t_probe
    s.timing["total_seconds"] = time.perf_counter() - s.started
    result["timing"] = s.timing
    result["arrays"] = {"file": ARRAYS_NPZ, "sha256": out.write_npz(ARRAYS_NPZ, arrays)}
    out.write_json(TRIAL_JSON, result)  # last: its presence marks the trial as done
    return result


def _probe_all(s: TrialSetup, model_predict, arrays: dict) -> dict:
    """Test metrics, every noise family, the held-out classes; fills `arrays` for the .npz."""
    cfg, task, classes = s.cfg, s.task, s.classes
    to_tensor = partial(images_to_device, device=torch.device("cpu"))
    logits, feats = model_predict(to_tensor(task.test_x))
    part, class_means = probe.test_metrics(logits, feats, task.test_y, classes)
    arrays["class_means"] = class_means
    arrays["confusion"] = np.asarray(part["confusion"])

    families = list(NOISE_FAMILIES) if cfg["noise"] == "all" else cfg["noise"]
    absorption, summary, distance, mst, neighbour, noise_means = {}, {}, {}, {}, {}, []
    for family in families:
        bank = s.gaussian_bank if family == "gaussian" else make_bank(family, cfg["n_noise"], cfg["noise_seed"], s.noise_ctx)
        found = probe.probe_family(model_predict, bank, classes, class_means)
        absorption[family], summary[family] = found["absorption"], found["summary"]
        distance[family], mst[family] = found["distance"], found["mst"]
        neighbour[family] = found["noise_neighbour"]
        noise_means.append(found["arrays"]["noise_mean"])
        arrays[f"pred_{family}"] = found["arrays"]["pred"]
        arrays[f"distance_{family}"] = found["arrays"]["distance"]
    arrays["noise_means"] = np.stack(noise_means)
    arrays["noise_families"] = np.array(families)
    heldout = probe.heldout_table(model_predict, task.heldout_x, classes, to_tensor)
    return {**part, "noise_families": families, "absorption": absorption, "absorber": summary,
            "distance": distance, "mst": mst, "noise_neighbour": neighbour, "heldout": heldout}
