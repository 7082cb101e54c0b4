"""`noisesink probe`: trained checkpoints (yours, torchvision's, timm's) through every probe a
trial runs, each checkpoint a run of the trial contract, so the cross-run statistics apply.

    noisesink probe WEIGHTS [WEIGHTS ...] --model ARCH --out DIR
            [--classes all | cat,dog | ...] [--normalize cifar10 | imagenet | M1,M2,M3/S1,S2,S3]
            [--image-size 32] [--noise all | gaussian,...] [--condition LABEL] [--trust-code]
            [--set KEY=VALUE ...]

Each checkpoint becomes DIR/<its name>/trial.json + arrays.npz, written by the trial's own
`finish` (study/trial.py: the same probes, the same artifacts), with `source: probe`, the file's
path and sha256, and no training (epochs 0, no trajectory). DIR/study.json (the sweep's layout:
study/plan.study_record) makes the checkpoints the runs of one condition, the grid axis `arm` =
--condition with `seed` numbering the checkpoints, so `noisesink analyze DIR` aggregates them as
it aggregates a sweep's seeds. Probing more checkpoints into the same DIR with another --condition
adds a condition to compare.

Everything is checked before anything is written: the options, the architecture at --image-size,
every checkpoint (readable, a state dict, finite, fits the architecture, K outputs), the data.
Bad input exits with code 2 and one line naming the file or option.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import math
import re
import sys
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.fs as pafs

from analysis.contract import COMPLETED, PROBED, STUDY_JSON, join_uri
from analysis.errors import exit_code
from analysis.load import NOT_TRIALS
from analysis.storage import check_writable

from .artifacts import ArtifactDir
from .config import ARM_NAME, IMAGE_SIZES, TRIAL_DEFAULTS, integer, parse_set, trained_classes, validate_trial
from .errors import InputError
from .plan import CHECKPOINT_FILE

# the trial keys a probe reads (the rest are training's): the registry architecture the checkpoint
# was trained as, the probes' sizes and seeds, the data, where it runs. batch_size: the BatchNorm
# probe's batches are the training batch size (study/trial.hypothesis_probes)
PROBE_KEYS = ("activation", "pool", "norm", "width", "batch_size", "tta", "test_subset", "noise_seed", "n_noise",
              "n_trajectory", "eval_batch_size", "sample_per_class", "n_frequency", "frequency_cutoffs",
              "amplitudes", "n_amplitude", "n_bn", "data_root", "data_verify", "device", "channels_last", "threads")
FLAGS = {"model": "--model", "classes": "--classes", "noise": "--noise", "arm": "--condition",
         "image_size": "--image-size"}  # trial key -> option
# torchvision's ImageNet statistics; `cifar10` is the data's own, as every trial of this project normalizes
NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
NORMALIZE_HELP = "cifar10 (the training set's own mean and std), imagenet, or MEAN1,MEAN2,MEAN3/STD1,STD2,STD3"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")   # where training scripts keep the state dict
PREFIXES = ("module.", "model.", "_orig_mod.")   # DataParallel / DDP, Lightning-like wrappers, torch.compile
WEIGHTS_HELP = ("a state dict (.pt/.pth saved with torch.save(model.state_dict()), or .safetensors), or a "
                f"training checkpoint holding one under {', '.join(WRAPPER_KEYS)}")


@dataclass(frozen=True)
class Checkpoint:
    """A weights file, checked: what its run records (the tensors are read again to probe)."""
    path: Path
    name: str              # the run's folder in --out
    sha256: str
    size: int              # bytes
    format: str            # state dict | safetensors | torchscript
    key: str | None        # where the state dict was inside a training checkpoint
    stripped: tuple        # prefixes taken off every key

    def record(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "bytes": self.size, "format": self.format,
                "key": self.key, "stripped_prefixes": list(self.stripped)}


# ---------------------------------------------------------------- the options

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="noisesink probe", description="Probe trained checkpoints with every probe "
                                "a trial runs; each checkpoint is a run, `noisesink analyze DIR` aggregates them.")
    p.add_argument("weights", nargs="+", metavar="WEIGHTS", help=WEIGHTS_HELP + "; this project's own "
                   f"<trial>/checkpoint_*/{CHECKPOINT_FILE} too")
    p.add_argument("--model", required=True, help="the architecture: a registry name (small_cnn, resnet18, "
                   "airbench, ...), timm:<name> or torchvision:<name>")
    p.add_argument("--out", required=True, help="folder (or URI) for the runs and study.json")
    p.add_argument("--classes", default="all", help="the model's outputs, in its label order: all (CIFAR-10's "
                   "order) or comma-separated CIFAR-10 classes, e.g. cat,dog")
    p.add_argument("--normalize", default="cifar10",
                   help=f"the input normalization it was trained with: {NORMALIZE_HELP}")
    p.add_argument("--image-size", type=int, default=32, help="the input size it takes: test images and noise "
                   "(both 32x32) are resized to it, alike (default 32)")
    p.add_argument("--noise", default="all", help="noise families: all, or comma-separated names")
    p.add_argument("--condition", help="the runs' condition in the aggregation (default: the --model name)")
    p.add_argument("--trust-code", action="store_true", help="accept TorchScript archives, whose own code runs "
                   "when loaded (only for files you trust)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a trial key the probes "
                   f"read ({', '.join(PROBE_KEYS)}), e.g. --set n_noise=1000; parsed as YAML")
    return p


def _names(value: str) -> str | list[str]:
    """`all` or a comma-separated list, as the trial keys take them."""
    return "all" if value == "all" else [v.strip() for v in value.split(",") if v.strip()]


def as_option(e: InputError) -> InputError:
    """A trial key's error, named by the option or the --set that gave the key."""
    key = e.where.split(".")[0]
    where = FLAGS.get(key) or (f"--set {key}" if key in TRIAL_DEFAULTS else e.where)
    return InputError(where, e.problem, e.allowed, e.value)


def probe_config(args) -> dict:
    """The probes' trial config: --set keys and the options as trial keys, every key checked as a
    trial's (an error names the option it came from). Its training keys keep their defaults, unused:
    the runs record epochs 0."""
    raw = {}
    for item in args.set:
        path, value = parse_set(item)
        key = ".".join(path)
        if key not in PROBE_KEYS:
            training = " (a training key: a probe trains nothing)" if key in TRIAL_DEFAULTS else ""
            raise InputError(f"--set {key}", f"is not a key the probes read{training}", ", ".join(PROBE_KEYS))
        raw[key] = value
    if args.condition is not None and not re.fullmatch(ARM_NAME, args.condition):
        raise InputError("--condition", "invalid label", "1-60 letters, digits, _ . -", args.condition)
    condition = args.condition if args.condition is not None else re.sub(r"[^A-Za-z0-9_.-]", "-", args.model)[:60]
    raw.update(model=args.model, classes=_names(args.classes), noise=_names(args.noise), arm=condition,
               image_size=args.image_size)
    try:
        return validate_trial(raw)
    except InputError as e:
        raise as_option(e) from None


def normalization(spec: str) -> tuple[tuple, tuple] | None:
    """--normalize -> (mean, std), or None for the data's own statistics (cifar10)."""
    if spec == "cifar10":
        return None
    if spec in NORMALIZATIONS:
        return NORMALIZATIONS[spec]
    try:
        mean, std = (tuple(float(x) for x in part.split(",")) for part in spec.split("/"))
    except ValueError:
        raise InputError("--normalize", "cannot read it", NORMALIZE_HELP, spec) from None
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(x) for x in mean + std) or min(std) <= 0:
        raise InputError("--normalize", "needs three finite means and three positive stds", NORMALIZE_HELP, spec)
    return mean, std


# ---------------------------------------------------------------- the architecture

def architecture(cfg: dict, image_size: int):
    """The model the checkpoints are loaded into (random weights until then), checked to take
    `image_size` x `image_size` images and to give (N, features) to its linear head."""
    import torch

    from .models import build_model, factors_of
    integer(*IMAGE_SIZES)(image_size, "--image-size")
    try:
        model = build_model(cfg["model"], len(trained_classes(cfg)), 0, image_size=image_size, **factors_of(cfg))
    except InputError as e:
        raise as_option(e) from None
    try:
        with torch.no_grad():
            feats = model.eval().features(torch.zeros(2, 3, image_size, image_size))
        if feats.ndim != 2 or feats.shape[1] != model.head.in_features:
            raise ValueError(f"features of shape {tuple(feats.shape)}, the head reads {model.head.in_features}")
    except Exception as e:  # a kernel larger than the map, a fixed-size position embedding, ...
        raise InputError("--image-size", f"{cfg['model']} cannot take {image_size}x{image_size} images "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                         f"the input size the model was trained at ({IMAGE_SIZES[0]} <= size <= {IMAGE_SIZES[1]})",
                         image_size) from None
    return model


# ---------------------------------------------------------------- the checkpoints

def run_name(path: Path) -> str:
    """The run's folder: the file's name without its extension; this project's own checkpoint
    (<trial>/checkpoint_*/state.pt) is named after its trial."""
    stem = path.parent.parent.name if path.name == CHECKPOINT_FILE and path.parent.name.startswith("checkpoint_") \
        else path.stem
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", stem) or "checkpoint"


def is_torchscript(data: bytes) -> bool:
    """A TorchScript archive: a zip holding code and constants (torch.save's zip holds neither)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_weights(path: Path, trust_code: bool) -> tuple[dict, bytes, str, str | None]:
    """(state dict, the file's bytes, format, wrapper key) of a weights file, or an InputError."""
    import torch
    where = str(path)
    if path.is_dir():
        raise InputError(where, "is a folder, not a weights file", WEIGHTS_HELP)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(where, "no such file", WEIGHTS_HELP) from None
    except OSError as e:
        raise InputError(where, f"cannot be read ({e.strerror})", WEIGHTS_HELP) from None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load
        try:
            return load(data), data, "safetensors", None
        except (SafetensorError, ValueError, OSError) as e:
            raise InputError(where, f"is not a readable safetensors file ({type(e).__name__}: {e})",
                             WEIGHTS_HELP) from None
    if is_torchscript(data):
        if not trust_code:
            raise InputError(where, "is a TorchScript archive: loading it runs the code it holds",
                             "--trust-code to load it anyway (only a file you trust), or its state dict "
                             "saved with torch.save(model.state_dict())")
        try:
            return dict(torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict()), data, "torchscript", None
        except Exception as e:
            raise InputError(where, f"TorchScript archive cannot be loaded ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]})", WEIGHTS_HELP) from None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        # a pickled object (a whole model saved with torch.save(model)): unpickling it would run its code
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise InputError(where, f"holds a pickled Python object ({found.group(1)}) that weights-only loading "
                             "refuses (unpickling it would run its code), e.g. a whole model saved with "
                             "torch.save(model)", WEIGHTS_HELP) from None
        raise InputError(where, f"cannot be read as PyTorch weights ({type(e).__name__}: not a weights file, or "
                         "truncated or corrupt)", WEIGHTS_HELP) from None
    state, key = find_state(obj, where)
    return state, data, "state dict", key


def _is_state(obj) -> bool:
    import torch
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def find_state(obj, where: str) -> tuple[dict, str | None]:
    """The state dict in what torch.load returned: itself, under a usual key, or this project's own
    checkpoint's (the trainer's `model`, beside its optimizer and generator)."""
    if _is_state(obj):
        return dict(obj), None
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_state(obj.get(key)):
                return dict(obj[key]), key
        trainer = obj.get("trainer")
        if isinstance(trainer, dict) and _is_state(trainer.get("model")):
            return dict(trainer["model"]), "trainer.model"
        keys = ", ".join(map(str, list(obj)[:6])) + (", ..." if len(obj) > 6 else "")
        found = f"a dict with keys {keys}" if obj else "an empty dict"
    else:
        found = f"a {type(obj).__name__}"
    raise InputError(where, f"holds no state dict ({found})", WEIGHTS_HELP)


def strip_prefixes(state: dict, expected: dict) -> tuple[dict, tuple]:
    """The state dict without the prefixes wrappers add to every key (those the architecture's own
    keys do not all carry), and the prefixes taken off."""
    stripped = []
    while True:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state)
                       and not all(k.startswith(p) for k in expected)), None)
        if prefix is None:
            return state, tuple(stripped)
        state = {k[len(prefix):]: v for k, v in state.items()}
        stripped.append(prefix)


def check_finite(state: dict, where: str) -> None:
    import torch
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise InputError(where, f"{key} holds {bad} NaN or Inf value{'s' * (bad > 1)} (of {value.numel()})",
                                 "finite weights (a diverged training's last state computes nothing to probe)")


def check_fit(state: dict, model, cfg: dict, where: str) -> None:
    """The state dict has the architecture's keys and shapes, and its head the K classes' outputs."""
    from .models import weights_module
    module = weights_module(model)
    expected = module.state_dict()
    k = len(trained_classes(cfg))
    head = next(name for name, m in module.named_modules() if m is model.head)
    weight = state.get(f"{head}.weight")
    if weight is not None and weight.ndim == 2 and weight.shape[0] != k:
        n = weight.shape[0]
        raise InputError(where, f"its head ({head}.weight) has {n} outputs, --classes has {k} classes "
                         f"({', '.join(trained_classes(cfg))})", f"--classes naming the model's {n} classes in its "
                         "label order" + (" (all: CIFAR-10's, in CIFAR-10's order)" if n == 10 else ", e.g. cat,dog"))
    # BatchNorm's step counter (num_batches_tracked) is unused in eval mode; older checkpoints lack it
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    shapes = [f"{key} {tuple(state[key].shape)} vs {tuple(v.shape)}" for key, v in expected.items()
              if key in state and state[key].shape != v.shape]
    parts = [f"{len(found)} {what} (first: {', '.join(found[:3])})" for what, found in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches, file vs model", shapes))
             if found]
    if parts:
        layout = "the library's own layout" if module is not model else "this project's features.* and head.*"
        raise InputError(where, f"does not fit {cfg['model']}: {'; '.join(parts)}",
                         f"a state dict of {cfg['model']} with {k} outputs ({layout})")


def check_checkpoints(paths: list[str], model, cfg: dict, trust_code: bool) -> list[Checkpoint]:
    """Every file read and checked, then let go (a study of large checkpoints is never all in memory)."""
    from .models import weights_module
    expected = weights_module(model).state_dict()
    checked = []
    for path in map(Path, paths):
        where = str(path)
        state, data, fmt, key = read_weights(path, trust_code)
        state, stripped = strip_prefixes(state, expected)
        check_finite(state, where)
        check_fit(state, model, cfg, where)
        checked.append(Checkpoint(path.resolve(), run_name(path), hashlib.sha256(data).hexdigest(), len(data),
                                  fmt, key, stripped))
    return checked


def load_into(model, ckpt: Checkpoint, trust_code: bool) -> None:
    """The checked checkpoint's weights into the model (every parameter and buffer replaced)."""
    from .models import weights_module
    module = weights_module(model)
    state, _, _, _ = read_weights(ckpt.path, trust_code)
    state, _ = strip_prefixes(state, module.state_dict())
    module.load_state_dict(state, strict=False)  # strict but for num_batches_tracked (check_fit)


# ---------------------------------------------------------------- --out and study.json

def existing_points(out: ArtifactDir) -> tuple[list[str], list[dict]]:
    """(folders, configs) of the runs an earlier `noisesink probe` wrote into --out, from its
    study.json; none for a new or empty folder; a sweep's study is refused."""
    if not out.exists(STUDY_JSON):
        return [], []
    try:
        study = out.read_json(STUDY_JSON)
    except (ValueError, OSError) as e:
        raise InputError("--out", f"holds a study.json that cannot be read ({type(e).__name__})",
                         "a new folder, or one an earlier `noisesink probe` wrote", str(out)) from None
    if not isinstance(study, dict) or study.get("source") != PROBED:
        raise InputError("--out", "holds a sweep's study (study.json), not checkpoints probed by noisesink probe",
                         "a new folder, or one an earlier `noisesink probe` wrote", str(out))
    points = study["points"]
    return [p["dir"] for p in points], [{**study["resolved"], **p.get("keys", {}), **p["axes"]} for p in points]


def check_names(checkpoints: list[Checkpoint], out: ArtifactDir, taken: list[str]) -> None:
    """Each checkpoint's folder is new: not another checkpoint's, not in --out already."""
    seen: dict[str, Path] = {}
    for c in checkpoints:
        if c.name in seen:
            raise InputError(str(c.path), f"has the name {c.name!r}, as {seen[c.name]} has: two runs cannot share "
                             "one folder in --out", "checkpoints with distinct file names (rename one)")
        if c.name in NOT_TRIALS or c.name.startswith("."):
            raise InputError(str(c.path), f"would be run folder {c.name!r}, which the aggregation reads as no run",
                             "another file name")
        exists = out.fs.get_file_info(f"{out.path}/{c.name}").type != pafs.FileType.NotFound
        if c.name in taken or exists:
            raise InputError(str(c.path), f"has the name {c.name!r}, which --out holds already ({out}/{c.name})",
                             "a checkpoint of another name, or another --out")
        seen[c.name] = c.path


def write_study(out: ArtifactDir, dirnames: list[str], configs: list[dict]) -> None:
    """study.json in the sweep's layout (plan.study_record): the axes arm (the condition) and seed;
    each run's config is `resolved` with its point's axes and `keys`."""
    from .config import Sweep
    from .plan import Plan, study_record
    arms = list(dict.fromkeys(c["arm"] for c in configs))
    seeds = sorted({c["seed"] for c in configs})
    name = Path(out.path).name or "probe"
    sweep = Sweep(name=name, trial={}, grid={"arm": arms, "seed": seeds}, resources={}, run={})
    record = study_record(Plan(sweep, "noisesink probe", str(out), configs, dirnames))
    out.write_json(STUDY_JSON, {**record, "source": PROBED})


# ---------------------------------------------------------------- the command

def probe(args) -> int:
    from .train import Normalizer
    from .trial import TrainedData, Training, finish, placed, setup
    started = time.perf_counter()
    cfg = probe_config(args)
    stats = normalization(args.normalize)
    check_writable(args.out, "--out", "a writable folder or a bucket URI")
    out = ArtifactDir.at(args.out)
    taken, earlier = existing_points(out)

    print(f"checking {len(args.weights)} checkpoint(s) against {cfg['model']} at {args.image_size}x"
          f"{args.image_size}", flush=True)
    model = architecture(cfg, args.image_size)
    checkpoints = check_checkpoints(args.weights, model, cfg, args.trust_code)
    check_names(checkpoints, out, taken)
    print(f"loading CIFAR-10 ({', '.join(trained_classes(cfg))}) and the noise banks", flush=True)
    try:
        s = setup(cfg)
    except InputError as e:
        raise as_option(e) from None
    mean, std = stats if stats is not None else s.data.channel_stats()
    cfg = {**s.cfg, "epochs": 0}   # what each run records: trained here for no epoch
    s = replace(s, cfg=cfg, normalize=Normalizer(mean, std, s.device, cfg["image_size"]))
    model = placed(s, model)

    # seeds number a condition's checkpoints, after those an earlier probe gave it
    first = 1 + max((c["seed"] for c in earlier if c["arm"] == cfg["arm"]), default=-1)
    configs = [{**cfg, "seed": first + i} for i in range(len(checkpoints))]
    write_study(out, taken + [c.name for c in checkpoints], earlier + configs)
    for i, (ckpt, run_cfg) in enumerate(zip(checkpoints, configs), start=1):
        tag = f"[{i}/{len(checkpoints)} {ckpt.name}]"
        print(f"{tag} loading {ckpt.path} ({ckpt.format}, sha256 {ckpt.sha256[:12]})", flush=True)
        load_into(model, ckpt, args.trust_code)
        run = replace(s, cfg=run_cfg, started=time.perf_counter())
        trusted = ["TorchScript archive loaded with --trust-code: its own code ran"] * (ckpt.format == "torchscript")
        training = Training(COMPLETED, history=[], trajectory=[], epochs=0, seconds=0.0,
                            data=TrainedData.untouched(s.task), notes=trusted)
        record = {"source": PROBED, "checkpoint": ckpt.record(),
                  "probe": {"normalize": args.normalize, "image_size": args.image_size}}
        result = finish(run, model, training, ArtifactDir.at(join_uri(args.out, ckpt.name)), record,
                        log=lambda line, tag=tag: print(f"{tag} {line}", flush=True))
        gaussian = (result.get("absorber") or {}).get("gaussian")
        print(f"{tag} test accuracy {result['test_accuracy']:.4f}"
              + (f"; gaussian noise -> {gaussian['absorber']} ({gaussian['top_share']:.1%})" if gaussian else "")
              + f"; {result['timing']['total_seconds']:.1f} s", flush=True)
    print(f"wrote {len(checkpoints)} run(s) of condition arm={cfg['arm']} to {args.out} in "
          f"{time.perf_counter() - started:.0f} s\nnext: noisesink analyze {args.out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return exit_code(lambda: probe(args))


if __name__ == "__main__":
    sys.exit(main())
