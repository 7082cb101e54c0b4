"""One trial: a plain function of a resolved config. Data -> train -> probe -> measure -> write.

No Ray here. The sweep layer passes `on_epoch` (to report and checkpoint) and `resume` (the last
checkpoint's state); run on its own, a trial needs neither. `setup` and `finish` are shared with
the fused multi-seed trainer (study/fused.py) and with `noisesink probe` (study/checkpoints.py,
which probes checkpoints trained elsewhere), so all write the very same artifacts.

Read top to bottom: `setup` (an immutable TrialSetup), `run_trial` (the training half), `finish`
(probe, then write), and the probe half as named steps that return what they measured:
`test_set`, `class_means`, `trained_sample`, `noise_family` (once per family), `heldout_classes`,
`why_measures`, `hypothesis_probes`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from analysis.contract import (
    ARRAYS_NPZ,
    COMPLETED,
    DIVERGED,
    MEASUREMENTS,
    NOISE_CLASS,
    SCHEMA_VERSION,
    TRIAL_JSON,
    config_digest,
)

from . import explanation_probes, probe, streams
from .artifacts import ArtifactDir
from .clutter import measure_all
from .config import trained_classes, validate_trial
from .data import Cifar10, load_cifar10
from .explain import frequency_probes, logit_decomposition, noise_mean_images
from .interventions import TrainingIntervention
from .models import build_model, factors_of
from .noise import NoiseContext, make_bank, noise_families
from .ood import Detectors, evaluate
from .provenance import code_revision, versions
from .task import Task, check_task, make_task
from .train import Normalizer, Precision, Trainer, compile_mode, images_to_device, predict, resolve_device, tta_logits

OnEpoch = Callable[[int, dict, Callable[[], dict]], None]
Predict = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]  # images -> (logits, features)


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs before its model exists; never changed afterwards."""
    cfg: dict
    device: torch.device
    data: Cifar10
    task: Task
    normalize: Normalizer
    precision: Precision
    noise_ctx: NoiseContext
    gaussian_bank: torch.Tensor
    started: float          # time.perf_counter() when the trial began: total_seconds counts from here
    data_seconds: float     # loading the data, cutting the task, making the gaussian bank
    applied: dict           # config values that could not apply as given: what was used
    warnings: tuple         # why (into trial.json, with the probes' own warnings)

    @property
    def classes(self) -> list[str]:
        """The model's outputs: the trained classes, and the extra class of a noise_class trial."""
        extra = [NOISE_CLASS] if self.cfg["intervention"] == "noise_class" else []
        return self.task.classes + extra

    @property
    def trajectory_bank(self) -> torch.Tensor:
        return self.gaussian_bank[: self.cfg["n_trajectory"]]

    def predictor(self, model: torch.nn.Module) -> Predict:
        """images -> (logits, penultimate features), in eval mode."""
        return partial(predict, model, normalize=self.normalize, precision=self.precision,
                       batch_size=self.cfg["eval_batch_size"], device=self.device)


@dataclass(frozen=True)
class TrainedData:
    """The training set exactly as the model saw it: after a class intervention, its changed
    images and labels. The clutter measures and the OOD detectors' fit are taken from it."""
    x: np.ndarray                      # uint8 (N, 32, 32, 3)
    y: np.ndarray                      # labels 0..K-1
    class_intervention: dict | None    # what the class intervention did, or None

    @classmethod
    def of(cls, trainer: Trainer) -> TrainedData:
        return cls(trainer.x.cpu().permute(0, 2, 3, 1).numpy(), trainer.y.cpu().numpy(), trainer.class_intervention)

    @classmethod
    def untouched(cls, task: Task) -> TrainedData:
        """The task's training set, as trained on when no class intervention ran (fused training)."""
        return cls(task.train_x, task.train_y, None)


@dataclass(frozen=True)
class Training:
    """How a model's training went: what `finish` writes beside the probes."""
    status: str                      # COMPLETED or DIVERGED
    history: list                    # per epoch: loss, accuracy, last learning rate
    trajectory: list                 # the share of each class among the trajectory images, per epoch
    epochs: int                      # epochs trained (the one whose loss turned non-finite, if any)
    seconds: float                   # training time (a fused array's time shared out per model)
    data: TrainedData
    notes: list                      # warnings for trial.json (e.g. an unreadable checkpoint)
    fused_models: int | None = None  # how many models shared a fused array, if any


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
    # noise is made in pixel units from the training set's own statistics; the scrambled families
    # start from natural (test) images
    noise_ctx = NoiseContext(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32),
                             natural=torch.from_numpy(data.test_x).permute(0, 3, 1, 2))
    gaussian_bank = make_bank("gaussian", cfg["n_noise"], cfg["noise_seed"], noise_ctx)
    data_seconds = time.perf_counter() - started
    warnings = []
    if cfg["compile"] and not compile_mode(cfg, device):
        warnings.append(f"compile: {cfg['compile']} applies on CUDA only; this trial ran on {device} "
                        "without torch.compile (results are the same, only slower)")
    return TrialSetup(cfg, device, data, task, Normalizer(mean, std, device, cfg["image_size"]),
                      Precision(device, cfg["precision"], cfg["channels_last"]), noise_ctx, gaussian_bank,
                      started=started, data_seconds=data_seconds, applied={"compile": compile_mode(cfg, device)},
                      warnings=tuple(warnings))


WHITENING_IMAGES = 5000  # airbench fits its whitening layer to the first 5,000 training images


def new_model(s: TrialSetup) -> torch.nn.Module:
    model = build_model(s.cfg["model"], len(s.classes), s.cfg["seed"], s.cfg["pretrained"],
                        image_size=s.cfg["image_size"], **factors_of(s.cfg)).to(s.device)
    if hasattr(model, "fit_to_data"):  # a first layer made from the data (airbench's whitening)
        x = images_to_device(s.task.train_x[:WHITENING_IMAGES], s.device).float().div_(255)
        model.fit_to_data(s.normalize(x))
    return placed(s, model)


def placed(s: TrialSetup, model: torch.nn.Module) -> torch.nn.Module:
    """The model on the trial's device, in its memory layout."""
    model = model.to(s.device)
    return model.to(memory_format=torch.channels_last) if s.precision.channels_last else model


# ---------------------------------------------------------------- the training half

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
    # the trainer applies a class intervention to its copy of the training set, once, here
    trainer = Trainer(model, s.task.train_x, s.task.train_y, cfg, s.device, s.normalize, s.precision,
                      classes=s.task.classes)
    model_predict = s.predictor(model)
    if resume is not None:
        # the same run continued: weights, optimizer, and the generator whose state decides the
        # data order and augmentation still to come; what earlier epochs measured is kept
        trainer.load_state_dict(resume["trainer"])
        trajectory, history = list(resume["trajectory"]), list(resume["history"])
        log(f"resumed from the checkpoint of epoch {trainer.epoch}")
    else:
        # epoch 0: where noise goes before any training (the untrained network's own preference)
        trajectory = [probe.trajectory_point(model_predict, s.trajectory_bank, s.classes, epoch=0)]
        history = []
    status, t_train = COMPLETED, time.perf_counter()
    while trainer.epoch < cfg["epochs"]:
        metrics = trainer.run_epoch()
        history.append({k: metrics[k] for k in ("epoch", "train_loss", "train_accuracy", "lr_last")})
        if not math.isfinite(metrics["train_loss"]):
            # recorded, not raised: a diverged seed is a result the aggregation counts and excludes
            status = DIVERGED
            log(f"epoch {trainer.epoch}: training loss is {metrics['train_loss']}: diverged")
            break
        trajectory.append(probe.trajectory_point(model_predict, s.trajectory_bank, s.classes, trainer.epoch))
        log(f"epoch {trainer.epoch}/{cfg['epochs']}: loss {metrics['train_loss']:.4f}, "
            f"train acc {metrics['train_accuracy']:.3f}, {metrics['seconds']:.1f} s")
        if on_epoch is not None:
            # the trajectory's new point is the absorber forming, reported live; the checkpoint is
            # a callable, copied only when the sweep keeps one this epoch
            on_epoch(trainer.epoch, {**metrics, "trajectory": trajectory[-1]},
                     lambda: {"trainer": trainer.state_dict(), "trajectory": list(trajectory),
                              "history": list(history)})
    training = Training(status, history, trajectory, trainer.epoch, time.perf_counter() - t_train,
                        TrainedData.of(trainer), list(notes or []))
    return finish(s, model, training, out)


def finish(s: TrialSetup, model: torch.nn.Module, training: Training, out: ArtifactDir | str,
           record: dict | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Probe a trained model (unless it diverged) and write its artifacts; returns trial.json.
    `record`: more top-level keys for trial.json (a probed checkpoint's source, path and sha256);
    `log`: gets a line as each probe step starts."""
    out = ArtifactDir.at(out) if isinstance(out, str) else out
    cfg = s.cfg
    # the network's input normalization (the noise banks are made from the data's statistics)
    mean, std = s.normalize.mean.flatten().tolist(), s.normalize.std.flatten().tolist()
    result = {
        "schema": SCHEMA_VERSION, "measurements": MEASUREMENTS, "status": training.status, "config": cfg,
        "config_digest": config_digest(cfg),
        "seed": cfg["seed"], "noise_seed": cfg["noise_seed"],
        "classes": s.classes, "heldout_classes": s.task.heldout,
        "n_train": int(len(s.task.train_x)), "architecture": model.architecture,
        "train_history": training.history, "trajectory": training.trajectory,
        "normalization": {"mean": mean, "std": std},
        "data": {"source": s.data.source, "kind": s.data.kind, "sha256": s.data.checksum},
        "versions": versions(s.device), "code_revision": code_revision(),
        "compute": {"device": str(s.device), "training_precision": s.precision.training,
                    "probe_precision": s.precision.PROBES},
        "diverged_at_epoch": training.epochs if training.status == DIVERGED else None,
        "intervention": {"kind": cfg["intervention"], "strength": cfg["intervention_strength"],
                         "class_intervention": training.data.class_intervention},
        **(record or {}),
    }
    timing = {"data_seconds": s.data_seconds, "train_seconds": training.seconds}
    if training.fused_models is not None:
        timing["fused_models"] = training.fused_models
    arrays, warnings = {}, list(s.warnings)
    if training.status == COMPLETED:  # a diverged model's outputs are NaN: nothing to probe
        t_probe = time.perf_counter()
        probes = probe_model(s, model, training.data, log)
        result.update(probes.measured)
        arrays, warnings = probes.arrays, warnings + probes.warnings
        timing.update(probes.seconds)
        timing["probe_seconds"] = time.perf_counter() - t_probe
    timing["total_seconds"] = time.perf_counter() - s.started
    result["timing"] = timing
    result["applied"], result["warnings"] = s.applied, list(training.notes) + warnings
    for w in warnings:
        print(f"WARNING: {w}")
    result["arrays"] = {"file": ARRAYS_NPZ, "sha256": out.write_npz(ARRAYS_NPZ, arrays)}
    out.write_json(TRIAL_JSON, result)  # last: its presence marks the trial as done
    return result


# ---------------------------------------------------------------- the probe half

@dataclass(frozen=True)
class Probes:
    """What the probes of one trained model found."""
    measured: dict       # into trial.json
    arrays: dict         # into arrays.npz
    warnings: list       # what a probe could not take as asked
    seconds: dict        # the timing of steps worth their own entry (inside probe_seconds)


def probe_model(s: TrialSetup, model: torch.nn.Module, trained: TrainedData,
                log: Callable[[str], None] | None = None) -> Probes:
    """Everything measured on a trained model: the test set, every noise family, the held-out
    classes, and why noise goes where it goes. Each step returns what it measured; `log` gets a
    line as each step starts."""
    log = log or (lambda line: None)
    predict = s.predictor(model)
    log(f"test set ({len(s.task.test_y)} images)")
    test = test_set(s, predict)
    test.metrics["tta_accuracy"] = tta_accuracy(s, model)
    nodes = class_means(s, predict, test)
    log(f"training sample (up to {s.cfg['sample_per_class']} images per class)")
    sample = trained_sample(s, predict, trained)
    head = (model.head.weight.detach().float().cpu().numpy(), model.head.bias.detach().float().cpu().numpy())
    families = {}
    for f in noise_families(s.cfg):
        log(f"noise {f} ({s.cfg['n_noise']} images)")
        families[f] = noise_family(s, predict, f, nodes, test, head)
    log(f"held-out classes ({len(s.task.heldout)})")
    heldout = heldout_classes(s, predict)
    log("hypothesis probes (amplitude, BatchNorm modes)")
    started = time.perf_counter()
    explanations = hypothesis_probes(s, model, trained, test)
    seconds = {"hypothesis_probe_seconds": time.perf_counter() - started}
    log("clutter, logit decomposition, band-limited noise, OOD detectors")
    measured = {
        **test.metrics, "noise_families": list(families),
        "absorption": {f: p.found["absorption"] for f, p in families.items()},
        "absorber": {f: p.found["summary"] for f, p in families.items()},
        "distance": {f: p.found["distance"] for f, p in families.items()},
        "mst": {f: p.found["mst"] for f, p in families.items()},
        "noise_neighbour": {f: p.found["noise_neighbour"] for f, p in families.items()},
        "heldout": heldout.shares,
        **why_measures(s, predict, test, sample, families, heldout),
        **explanations,
    }
    # each class's mean training image as trained on, shown beside the mean noise image it receives
    class_images, class_counts = noise_mean_images(sample.pixels(), sample.labels.astype(np.int64), len(s.task.classes))
    arrays = {"class_means": nodes, "class_mean_images": class_images, "class_mean_counts": class_counts,
              "confusion": np.asarray(test.metrics["confusion"])}
    for f, p in families.items():
        arrays.update({f"noise_mean_images_{f}": p.mean_images, f"noise_mean_counts_{f}": p.mean_counts,
                       f"pred_{f}": p.found["arrays"]["pred"], f"distance_{f}": p.found["arrays"]["distance"]})
    arrays["noise_means"] = np.stack([p.found["arrays"]["noise_mean"] for p in families.values()])
    arrays["noise_families"] = np.array(list(families))
    return Probes(measured, arrays, sample_warnings(s, sample), seconds)


@dataclass(frozen=True)
class TestSet:
    """The trained classes' test images through the model."""
    metrics: dict             # test_accuracy, per_class_accuracy, confusion, n_test
    logits: np.ndarray
    feats: np.ndarray         # penultimate features, the OOD detectors' in-distribution set


def test_set(s: TrialSetup, predict: Predict) -> TestSet:
    logits, feats = predict(_on_cpu(s.task.test_x))
    return TestSet(probe.test_metrics(logits, s.task.test_y, s.classes), logits, feats)


def tta_accuracy(s: TrialSetup, model: torch.nn.Module) -> float | None:
    """The test accuracy under test-time augmentation (`tta` > 0), else None; beside the
    single-view test_accuracy, never instead of it."""
    if not s.cfg["tta"]:
        return None
    logits = tta_logits(model, _on_cpu(s.task.test_x), s.normalize, s.precision, s.cfg["eval_batch_size"],
                        s.device, s.cfg["tta"])
    return float((logits.argmax(1) == s.task.test_y).mean())


def class_means(s: TrialSetup, predict: Predict, test: TestSet) -> np.ndarray:
    """(K, D): the mean penultimate feature of each output class, the nodes of every geometry.

    A trained class: over its test images. A noise_class model's extra class has no test images;
    its node is the mean feature of the training-like noise it learned, so the noise node's
    distance to it means what the distances to the other classes mean."""
    means = [test.feats[s.task.test_y == c].mean(0) for c in range(len(s.task.classes))]
    if s.cfg["intervention"] == "noise_class":
        means.append(predict(noise_class_reference(s))[1].mean(0))
    return np.stack(means)


@dataclass(frozen=True)
class FamilyProbe:
    found: dict               # probe.probe_family: absorption, summary, distance, mst, noise_neighbour, arrays
    clutter: dict             # the clutter measures of the bank's first sample_per_class images
    decomposition: dict       # the logit decomposition at the bank's features
    mean_images: np.ndarray   # (K, 32, 32, 3) uint8: the mean noise image sent to each class
    mean_counts: np.ndarray   # how many images each mean is over


def noise_family(s: TrialSetup, predict: Predict, family: str, nodes: np.ndarray, test: TestSet,
                 head: tuple) -> FamilyProbe:
    """One noise bank through the model: where its images go, the noise node among the class
    means `nodes`, and the measures that need the bank itself."""
    cfg = s.cfg
    # banks are made and dropped one at a time: at n_noise 5000 each is 60 MB; the gaussian one
    # was made with the setup, for the trajectory
    bank = (s.gaussian_bank if family == "gaussian"
            else make_bank(family, cfg["n_noise"], cfg["noise_seed"], s.noise_ctx))
    found = probe.probe_family(predict, bank, s.classes, nodes)
    logits, feats = found["arrays"]["logits"], found["arrays"]["features"]
    n = cfg["sample_per_class"]  # as many noise images as class images in the clutter measures
    means, counts = noise_mean_images(bank, found["arrays"]["pred"].astype(np.int64), len(s.classes))
    return FamilyProbe(found, measure_all(bank[:n].numpy(), feats[:n]),
                       logit_decomposition(logits, feats, *head, s.classes, test.feats,
                                           streams.numpy_rng("bias_deal", cfg["seed"], family)), means, counts)


@dataclass(frozen=True)
class HeldOut:
    """The classes left out of training (their test images) through the model."""
    shares: dict              # held-out class -> the share of its images given to each output class
    outputs: dict             # held-out class -> (logits, features), for the OOD detectors


def heldout_classes(s: TrialSetup, predict: Predict) -> HeldOut:
    return HeldOut(*probe.heldout_table(predict, s.task.heldout_x, s.classes, _on_cpu))


@dataclass(frozen=True)
class TrainedSample:
    """Up to sample_per_class training images per trained class, as trained on, and their features:
    what the clutter measures and the OOD detectors' fit are taken from."""
    images: torch.Tensor     # uint8 (N, 3, 32, 32)
    labels: np.ndarray       # 0..K-1
    feats: np.ndarray        # penultimate features
    per_class: dict          # trained class -> its images here (fewer than asked if the class has fewer)

    def pixels(self, mask: np.ndarray | None = None) -> np.ndarray:
        """The images (or those under `mask`) as float [0, 1] pixels, NCHW."""
        x = self.images if mask is None else self.images[mask]
        return (x.float() / 255).numpy()


def trained_sample(s: TrialSetup, predict: Predict, trained: TrainedData) -> TrainedSample:
    # from the training set as the model saw it: a class intervention's changes are in what is measured
    x, y = clutter_sample(s, trained)
    images = _on_cpu(x)
    _, feats = predict(images)
    return TrainedSample(images, y, feats, {c: int((y == i).sum()) for i, c in enumerate(s.task.classes)})


def clutter_sample(s: TrialSetup, trained: TrainedData) -> tuple[np.ndarray, np.ndarray]:
    """Up to sample_per_class training images per trained class, chosen by noise_seed (the same
    positions in every trial), from the training set as the model saw it."""
    rng = streams.numpy_rng("clutter_sample", s.cfg["noise_seed"])
    picked = []
    for c in range(len(s.task.classes)):
        idx = np.flatnonzero(trained.y == c)
        picked.append(np.sort(rng.choice(idx, size=min(s.cfg["sample_per_class"], len(idx)), replace=False)))
    idx = np.concatenate(picked)
    return trained.x[idx], trained.y[idx]


def sample_warnings(s: TrialSetup, sample: TrainedSample) -> list[str]:
    """What the clutter measures could not take as asked."""
    n, warnings = s.cfg["sample_per_class"], []
    short = [f"{c} ({k})" for c, k in sample.per_class.items() if k < n]
    if short:
        warnings.append(f"sample_per_class {n} is more than the training images of {', '.join(short)}: "
                        "the clutter measures and the OOD detectors used all of them (clutter.images_per_class)")
    if s.cfg["n_noise"] < n:
        warnings.append(f"sample_per_class {n} is more than n_noise {s.cfg['n_noise']}: each noise "
                        f"family's clutter was measured on its {s.cfg['n_noise']} images")
    return warnings


def why_measures(s: TrialSetup, predict: Predict, test: TestSet, sample: TrainedSample,
                 families: dict[str, FamilyProbe], heldout: HeldOut) -> dict:
    """Why noise goes where it goes: the clutter of each trained class and of each noise bank, the
    logit decomposition, band-limited noise, and OOD detectors against every noise family and
    every held-out class."""
    cfg, n = s.cfg, s.cfg["sample_per_class"]
    clutter_classes = {c: measure_all(sample.pixels(sample.labels == i), sample.feats[sample.labels == i])
                       for i, c in enumerate(s.task.classes)}
    # the detectors are fitted on the training sample's features; the test images are in-distribution
    ood_sets = {f: (p.found["arrays"]["logits"], p.found["arrays"]["features"]) for f, p in families.items()}
    ood_sets.update({f"heldout:{c}": v for c, v in heldout.outputs.items()})
    return {
        "clutter": {"sample_per_class": int(n), "images_per_class": sample.per_class,
                    "noise_images": min(n, int(cfg["n_noise"])),
                    "classes": _by_measure(clutter_classes), "noise": {f: p.clutter for f, p in families.items()}},
        "logit_decomposition": {f: p.decomposition for f, p in families.items()},
        "frequency": frequency_probes(predict, cfg["n_frequency"], cfg["noise_seed"], s.noise_ctx,
                                      cfg["frequency_cutoffs"], s.classes),
        "ood": {"convention": "in-distribution (the trained classes' test images) is the positive "
                              "class; scores: higher = more in-distribution",
                "rows": evaluate(Detectors(sample.feats, sample.labels), (test.logits, test.feats), ood_sets)}}


def hypothesis_probes(s: TrialSetup, model: torch.nn.Module, trained: TrainedData, test: TestSet) -> dict:
    """The probe-time experiments that tell the published explanations apart
    (study/explanation_probes.py): the amplitude probe (unless `amplitudes` is []) and the BatchNorm
    modes (unless n_bn is 0); n_amplitude and n_bn left null take n_trajectory."""
    cfg, out = s.cfg, {}
    if cfg["amplitudes"]:
        # the label frequencies as trained on: a class intervention's, and a noise_class model's extra class
        iv = TrainingIntervention(cfg["intervention"], cfg["intervention_strength"], len(s.task.classes),
                                  s.noise_ctx.mean, s.noise_ctx.std)
        batch = min(cfg["batch_size"], len(trained.y))
        extra = iv.extra_per_batch(batch)
        freq = explanation_probes.label_frequencies(trained.y, len(s.task.classes), extra / (batch + extra))
        norm = float(np.linalg.norm(np.asarray(test.feats, dtype=np.float64), axis=1).mean())
        n = cfg["n_amplitude"] or cfg["n_trajectory"]
        z = explanation_probes.white_noise(n, cfg["noise_seed"])
        out["amplitude"] = {"n_images": n, "label_frequencies": dict(zip(s.classes, freq.tolist())),
                            "test_feature_norm": norm,
                            "not_piecewise_affine": explanation_probes.not_piecewise_affine(model),
                            "rows": explanation_probes.amplitude_probe(s.predictor(model), z, s.noise_ctx,
                                                                       cfg["amplitudes"], s.classes, freq, norm)}
    n_bn = cfg["n_trajectory"] if cfg["n_bn"] is None else cfg["n_bn"]
    if n_bn:
        # BatchNorm's batch statistics depend on the batch: the probe uses the batch size the
        # network was trained with (a key of the config), never eval_batch_size (a speed setting)
        predict_with = partial(_predict_with, s)
        images, again = explanation_probes.batchnorm_images(n_bn, cfg["noise_seed"], s.noise_ctx)
        out["batchnorm"] = explanation_probes.batchnorm_probe(predict_with, model, images, again, s.classes,
                                                              cfg["batch_size"])
    return out


def _predict_with(s: TrialSetup, model: torch.nn.Module, images: torch.Tensor, batch_size: int):
    return predict(model, images, normalize=s.normalize, precision=s.precision, batch_size=batch_size, device=s.device)


def _by_measure(per_class: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """{class: {measure: v}} -> {measure: {class: v}} (the layout the aggregation reads)."""
    measures = next(iter(per_class.values())).keys()
    return {m: {c: per_class[c][m] for c in per_class} for m in measures}


def noise_class_reference(s: TrialSetup) -> torch.Tensor:
    """Training-like noise (data mean and std) from its own stream, for the noise class's mean."""
    gen = streams.torch_generator("noise_class_reference", s.cfg["noise_seed"])
    return (s.noise_ctx.mean.view(1, 3, 1, 1) + s.noise_ctx.std.view(1, 3, 1, 1)
            * torch.randn(min(2000, s.cfg["n_noise"]), 3, 32, 32, generator=gen))


def _on_cpu(images_nhwc: np.ndarray) -> torch.Tensor:
    """uint8 NHWC images as the uint8 NCHW tensor `predict` takes (it moves each batch to the device)."""
    return images_to_device(images_nhwc, torch.device("cpu"))
