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

from analysis.contract import (ARRAYS_NPZ, COMPLETED, DIVERGED, NOISE_CLASS, SCHEMA_VERSION, TRIAL_JSON,
                               config_digest)

from . import probe, streams
from .artifacts import ArtifactDir
from .config import trained_classes, validate_trial
from .clutter import measure_all
from .data import Cifar10, load_cifar10
from .explain import frequency_probes, logit_decomposition, noise_mean_images
from .models import build_model, factors_of
from .noise import NOISE_FAMILIES, NoiseContext, make_bank
from .ood import Detectors, evaluate
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
    interventions: dict = field(default_factory=dict)
    train_data: tuple | None = None   # (uint8 NCHW, labels) as trained on, after any class intervention
    applied: dict = field(default_factory=dict)   # config values that could not apply as given: what was used
    warnings: list = field(default_factory=list)  # why; both go into trial.json

    @property
    def classes(self) -> list[str]:
        """The model's outputs: the trained classes, and the extra class of a noise_class trial."""
        extra = [NOISE_CLASS] if self.cfg["intervention"] == "noise_class" else []
        return self.task.classes + extra

    @property
    def trajectory_bank(self) -> torch.Tensor:
        return self.gaussian_bank[: self.cfg["n_trajectory"]]

    def predictor(self, model: torch.nn.Module):
        """images -> (logits, penultimate features), in eval mode."""
        return partial(predict, model, normalize=self.normalize, precision=self.precision,
                       batch_size=self.cfg["eval_batch_size"], device=self.device)


def setup(config: dict, gpus: list | None = None) -> TrialSetup:
    """`gpus`: the GPUs a scheduler assigned (see train.resolve_device; None: CUDA_VISIBLE_DEVICES)."""
    cfg = validate_trial(config)
    started = time.perf_counter()
    device = resolve_device(cfg["device"], gpus)
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
    s.applied["compile"] = cfg["compile"] if device.type == "cuda" else False
    if cfg["compile"] and device.type != "cuda":
        s.warnings.append(f"compile: {cfg['compile']} applies on CUDA only; this trial ran on {device} "
                          "without torch.compile (results are the same, only slower)")
    return s


def new_model(s: TrialSetup) -> torch.nn.Module:
    model = build_model(s.cfg["model"], len(s.classes), s.cfg["seed"], s.cfg["pretrained"],
                        **factors_of(s.cfg)).to(s.device)
    return model.to(memory_format=torch.channels_last) if s.precision.channels_last else model


def run_trial(config: dict, out: ArtifactDir | str, *, on_epoch: OnEpoch | None = None,
              resume: dict | None = None, notes: list[str] | None = None,
              log: Callable[[str], None] = print, gpus: list | None = None) -> dict:
    """Train and probe one model as `config` says; write trial.json + arrays.npz into `out`.

    Returns the trial.json content. Status is `completed`, or `diverged` when the training loss
    became non-finite (recorded, not raised). `notes` (e.g. a checkpoint that could not be read)
    are kept in trial.json under `warnings`. `gpus`: what the scheduler assigned (see setup).
    """
    s = setup(config, gpus)
    cfg = s.cfg
    model = new_model(s)
    trainer = Trainer(model, s.task.train_x, s.task.train_y, cfg, s.device, s.normalize, s.precision,
                      classes=s.task.classes)
    s.interventions["class_intervention"] = trainer.class_intervention
    s.train_data = (trainer.x, trainer.y)
    model_predict = s.predictor(model)
    if resume is not None:
        trainer.load_state_dict(resume["trainer"])
        trajectory, history = list(resume["trajectory"]), list(resume["history"])
        log(f"resumed from the checkpoint of epoch {trainer.epoch}")
    else:
        trajectory = [probe.trajectory_point(model_predict, s.trajectory_bank, s.classes, epoch=0)]
        history = []
    status, t_train = COMPLETED, time.perf_counter()
    while trainer.epoch < cfg["epochs"]:
        metrics = trainer.run_epoch()
        history.append({k: metrics[k] for k in ("epoch", "train_loss", "train_accuracy", "lr_last")})
        if not math.isfinite(metrics["train_loss"]):
            status = DIVERGED
            log(f"epoch {trainer.epoch}: training loss is {metrics['train_loss']}: diverged")
            break
        trajectory.append(probe.trajectory_point(model_predict, s.trajectory_bank, s.classes, trainer.epoch))
        log(f"epoch {trainer.epoch}/{cfg['epochs']}: loss {metrics['train_loss']:.4f}, "
            f"train acc {metrics['train_accuracy']:.3f}, {metrics['seconds']:.1f} s")
        if on_epoch is not None:  # the trajectory's new point: the absorber forming, reported live
            on_epoch(trainer.epoch, {**metrics, "trajectory": trajectory[-1]}, lambda: {"trainer": trainer.state_dict(),
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
        "schema": SCHEMA_VERSION, "status": status, "config": cfg, "config_digest": config_digest(cfg),
        "seed": cfg["seed"], "noise_seed": cfg["noise_seed"],
        "classes": s.classes, "heldout_classes": s.task.heldout,
        "n_train": int(len(s.task.train_x)), "architecture": model.architecture,
        "train_history": history, "trajectory": trajectory,
        "normalization": {"mean": mean, "std": std},
        "data": {"source": s.data.source, "kind": s.data.kind, "sha256": s.data.checksum},
        "versions": versions(s.device), "code_revision": code_revision(),
        "compute": {"device": str(s.device), "training_precision": s.precision.training,
                    "probe_precision": s.precision.PROBES},
        "diverged_at_epoch": epoch if status == DIVERGED else None,
        "intervention": {"kind": cfg["intervention"], "strength": cfg["intervention_strength"],
                         "class_intervention": s.interventions.get("class_intervention")},
    }
    arrays = {}
    if status == COMPLETED:
        t_probe = time.perf_counter()
        result.update(_probe_all(s, model, arrays))
        s.timing["probe_seconds"] = time.perf_counter() - t_probe
    s.timing["total_seconds"] = time.perf_counter() - s.started
    result["timing"] = s.timing
    result["applied"], result["warnings"] = s.applied, list(notes or []) + s.warnings
    for w in s.warnings:
        print(f"WARNING: {w}")
    result["arrays"] = {"file": ARRAYS_NPZ, "sha256": out.write_npz(ARRAYS_NPZ, arrays)}
    out.write_json(TRIAL_JSON, result)  # last: its presence marks the trial as done
    return result


def _probe_all(s: TrialSetup, model: torch.nn.Module, arrays: dict) -> dict:
    """Test metrics, every noise family, the held-out classes, and why noise goes where it goes
    (clutter, logit decomposition, noise means, frequency probes, OOD detectors); fills `arrays`."""
    cfg, task, classes = s.cfg, s.task, s.classes
    model_predict = s.predictor(model)
    to_tensor = partial(images_to_device, device=torch.device("cpu"))
    test_logits, test_feats = model_predict(to_tensor(task.test_x))
    part, class_means = probe.test_metrics(test_logits, test_feats, task.test_y, classes)

    sample_x, sample_y = clutter_sample(s)  # training images as trained on (after a class intervention)
    n = cfg["sample_per_class"]
    per_class = {c: int((sample_y == i).sum()) for i, c in enumerate(task.classes)}
    short = [f"{c} ({k})" for c, k in per_class.items() if k < n]
    if short:
        s.warnings.append(f"sample_per_class {n} is more than the training images of {', '.join(short)}: "
                          "the clutter measures and the OOD detectors used all of them (clutter.images_per_class)")
    if cfg["n_noise"] < n:
        s.warnings.append(f"sample_per_class {n} is more than n_noise {cfg['n_noise']}: each noise "
                          f"family's clutter was measured on its {cfg['n_noise']} images")
    sample = to_tensor(sample_x)
    _, sample_feats = model_predict(sample)
    if cfg["intervention"] == "noise_class":  # its "class mean": the training noise it learned
        noise_ref = explain_noise_class_reference(s)
        class_means[-1] = model_predict(noise_ref)[1].mean(0)
    detectors = Detectors(sample_feats, sample_y)
    weight = model.head.weight.detach().float().cpu().numpy()
    bias = model.head.bias.detach().float().cpu().numpy()
    pixels = lambda x: (x.float() / 255).numpy() if x.dtype == torch.uint8 else x.numpy()  # noqa: E731
    clutter_classes = {c: measure_all(pixels(sample[sample_y == i]), sample_feats[sample_y == i])
                       for i, c in enumerate(task.classes)}
    arrays["class_means"] = class_means
    # each class's mean training image as trained on, shown beside the mean noise image it receives
    arrays["class_mean_images"], arrays["class_mean_counts"] = noise_mean_images(
        pixels(sample), np.asarray(sample_y, dtype=np.int64), len(task.classes))
    arrays["confusion"] = np.asarray(part["confusion"])

    families = list(NOISE_FAMILIES) if cfg["noise"] == "all" else cfg["noise"]
    found_all, ood_sets, clutter_noise, decomposition = {}, {}, {}, {}
    for family in families:
        bank = s.gaussian_bank if family == "gaussian" else make_bank(family, cfg["n_noise"], cfg["noise_seed"], s.noise_ctx)
        found = probe.probe_family(model_predict, bank, classes, class_means)
        found_all[family] = found
        logits, feats = found["arrays"]["logits"], found["arrays"]["features"]
        ood_sets[family] = (logits, feats)
        clutter_noise[family] = measure_all(bank[:n].numpy(), feats[:n])
        decomposition[family] = logit_decomposition(logits, feats, weight, bias, classes, test_feats)
        means, counts = noise_mean_images(bank, found["arrays"]["pred"].astype(np.int64), len(classes))
        arrays[f"noise_mean_images_{family}"], arrays[f"noise_mean_counts_{family}"] = means, counts
        arrays[f"pred_{family}"] = found["arrays"]["pred"]
        arrays[f"distance_{family}"] = found["arrays"]["distance"]
    arrays["noise_means"] = np.stack([found_all[f]["arrays"]["noise_mean"] for f in families])
    arrays["noise_families"] = np.array(families)
    heldout, heldout_outputs = probe.heldout_table(model_predict, task.heldout_x, classes, to_tensor)
    ood_sets.update({f"heldout:{c}": v for c, v in heldout_outputs.items()})
    return {**part, "noise_families": families,
            "absorption": {f: x["absorption"] for f, x in found_all.items()},
            "absorber": {f: x["summary"] for f, x in found_all.items()},
            "distance": {f: x["distance"] for f, x in found_all.items()},
            "mst": {f: x["mst"] for f, x in found_all.items()},
            "noise_neighbour": {f: x["noise_neighbour"] for f, x in found_all.items()},
            "heldout": heldout,
            "clutter": {"sample_per_class": int(n), "images_per_class": per_class,
                        "noise_images": min(n, int(cfg["n_noise"])),
                        "classes": _by_measure(clutter_classes), "noise": clutter_noise},
            "logit_decomposition": decomposition,
            "frequency": frequency_probes(model_predict, cfg["n_frequency"], cfg["noise_seed"], s.noise_ctx,
                                          cfg["frequency_cutoffs"], classes),
            "ood": {"convention": "in-distribution (the trained classes' test images) is the positive "
                                  "class; scores: higher = more in-distribution",
                    "rows": evaluate(detectors, (test_logits, test_feats), ood_sets)}}


def _by_measure(per_class: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """{class: {measure: v}} -> {measure: {class: v}} (the layout the aggregation reads)."""
    measures = next(iter(per_class.values())).keys()
    return {m: {c: per_class[c][m] for c in per_class} for m in measures}


def clutter_sample(s: TrialSetup) -> tuple[np.ndarray, np.ndarray]:
    """Up to sample_per_class training images per trained class, chosen by noise_seed, from the
    training set as the model saw it: a class intervention's changes are in the clutter measures."""
    if s.train_data is not None:
        x = s.train_data[0].cpu().permute(0, 2, 3, 1).numpy()
        y = s.train_data[1].cpu().numpy()
    else:
        x, y = s.task.train_x, s.task.train_y
    rng = streams.numpy_rng("clutter_sample", s.cfg["noise_seed"])
    picked = []
    for c in range(len(s.task.classes)):
        idx = np.flatnonzero(y == c)
        picked.append(np.sort(rng.choice(idx, size=min(s.cfg["sample_per_class"], len(idx)), replace=False)))
    idx = np.concatenate(picked)
    return x[idx], y[idx]


def explain_noise_class_reference(s: TrialSetup) -> torch.Tensor:
    """Training-like noise (data mean and std) from its own seed, for the noise class's mean."""
    gen = streams.torch_generator("noise_class_reference", s.cfg["noise_seed"])
    return (s.noise_ctx.mean.view(1, 3, 1, 1) + s.noise_ctx.std.view(1, 3, 1, 1)
            * torch.randn(min(2000, s.cfg["n_noise"]), 3, 32, 32, generator=gen))
