"""Model registry: name -> constructor(num_classes, pretrained, **factors) -> Classifier.

Every model is `features` (image -> penultimate vector) followed by a linear `head`, kept apart
so that the probes can read the features, and the logit decomposition the head's weights and bias.

Architecture factors (trial keys `activation`, `pool`, `norm`; grid axes like any key) switch the
causes the literature names for a biased untrained network (Francazi et al., ICML 2024) on and off
in the models registered with `factors=True`; null keeps the model's own. `timm:<name>` builds any
timm model for 32x32 images and K classes, `torchvision:<name>` any of torchvision's classification
models (its own architecture, as torchvision builds it), each split the same way.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from . import streams
from .errors import InputError

MODELS: dict[str, Callable[..., Classifier]] = {}
FACTOR_MODELS: set[str] = set()   # the registry entries that take activation / pool / norm
WIDTH_MODELS: set[str] = set()    # the registry entries that take a width multiplier
FITTED_MODELS: set[str] = set()   # the entries whose first layer is fitted to the data (fit_to_data)
TIMM_PREFIX = "timm:"
TORCHVISION_PREFIX = "torchvision:"
LIBRARY_PREFIXES = (TIMM_PREFIX, TORCHVISION_PREFIX)   # models built by a library, not the registry

# factor -> option -> what it builds; every option of every factor is a registry of its own
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}
POOLS: dict[str, tuple[Callable[[int], nn.Module], Callable[[int], nn.Module]]] = {
    "max": (nn.MaxPool2d, nn.AdaptiveMaxPool2d),      # (downsampling by k, global to k x k)
    "avg": (nn.AvgPool2d, nn.AdaptiveAvgPool2d),
}


def _groups(channels: int) -> int:
    """Wu & He (2018)'s 32 groups, fewer below 128 channels so a group keeps >= 4 channels."""
    return math.gcd(32, channels // 4)


def widths_at(base: tuple, width: float) -> tuple:
    """Channel counts scaled by `width`, rounded to multiples of 4 (at least 4): GroupNorm's groups
    (_groups) need a multiple of 4 channels."""
    return tuple(max(4, 4 * round(c * width / 4)) for c in base)


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "group": lambda c: nn.GroupNorm(_groups(c), c),
    "layer": lambda c: nn.GroupNorm(1, c),   # LayerNorm of a conv map: over (C, H, W) per image
    "none": lambda c: nn.Identity(),
}
FACTORS = {"activation": ACTIVATIONS, "pool": POOLS, "norm": NORMS}


def register(name: str, factors: bool = False, width: bool = False, fitted: bool = False):
    def deco(fn):
        MODELS[name] = fn
        if fitted:
            FITTED_MODELS.add(name)
        if factors:
            FACTOR_MODELS.add(name)
        if width:
            WIDTH_MODELS.add(name)
        return fn
    return deco


class Classifier(nn.Module):
    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.features = features
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.architecture: dict = {}   # what was built (resolved factors), recorded in trial.json

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build_model(name: str, num_classes: int, seed: int, pretrained: str | None = None,
                activation: str | None = None, pool: str | None = None, norm: str | None = None,
                width: float | None = None, image_size: int = 32) -> Classifier:
    """The same (name, num_classes, seed, factors) always gives the same initial weights (the seed's
    `init` stream; torch's global generator is left as it was); models that differ only in their
    factors draw the same random numbers, so seed s of every variant starts from the same weights
    wherever their shapes agree (paired comparisons). `image_size`: the input size a timm model with
    a fixed one (ViT, Swin) is built for (the others take any size as they are)."""
    factors = {"activation": activation, "pool": pool, "norm": norm}
    given = {k: v for k, v in factors.items() if v is not None}
    if given and name not in FACTOR_MODELS:
        raise InputError(next(iter(given)), f"model {name} has no architecture factors",
                         f"null, or a model among {', '.join(sorted(FACTOR_MODELS))}", next(iter(given.values())))
    if width is not None:
        if name not in WIDTH_MODELS:
            raise InputError("width", f"model {name} has no width multiplier",
                             f"null, or a model among {', '.join(sorted(WIDTH_MODELS))}", width)
        given["width"] = width
    with streams.global_torch("init", seed):  # layers initialise from torch's global generator
        if name.startswith(TIMM_PREFIX):
            model = timm_model(name[len(TIMM_PREFIX):], num_classes, pretrained, image_size)
        elif name.startswith(TORCHVISION_PREFIX):
            model = torchvision_model(name[len(TORCHVISION_PREFIX):], num_classes)
        else:
            model = MODELS[name](num_classes=num_classes, pretrained=pretrained, **given)
    model.architecture = {"model": name, **model.architecture,
                          "parameters": sum(p.numel() for p in model.parameters()),
                          "feature_dim": model.feature_dim}
    return model


def factors_of(cfg: dict) -> dict:
    """The architecture factors and width of a resolved trial config, as build_model takes them."""
    return {**{k: cfg.get(k) for k in FACTORS}, "width": cfg.get("width")}


def _scale_for_no_norm(features: nn.Module, activation: str) -> None:
    """Without normalization nothing rescales the signal between layers; PyTorch's default conv
    init (variance 1/(3 fan_in)) would shrink its variance ~6x per ReLU layer. Each conv's weights are
    rescaled (same draws, so the pairing by seed holds) to std gain/sqrt(fan_in), the
    variance-preserving choice for the activation (gain: sqrt 2 for relu and gelu, 5/3 for tanh)."""
    gain = nn.init.calculate_gain("tanh" if activation == "tanh" else "relu")
    with torch.no_grad():
        for m in features.modules():
            if isinstance(m, nn.Conv2d) and not isinstance(m, PatchWhitening):  # that one is fitted to data
                fan_in = m.weight[0].numel()
                m.weight.mul_(gain / math.sqrt(fan_in) / m.weight.std())


# ---------------------------------------------------------------- small_cnn

def _conv_block(c_in: int, c_out: int, downsample: bool, activation: str, pool: str, norm: str) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if downsample:
        layers.append(POOLS[pool][0](2))  # pool before the norm: it then sees the smaller map (cheaper)
    return layers + [NORMS[norm](c_out), ACTIVATIONS[activation]()]


@register("small_cnn", factors=True)
def small_cnn(num_classes: int, pretrained: str | None = None, widths=(32, 64, 128),
              activation: str = "relu", pool: str = "max", norm: str = "batch") -> Classifier:
    """A VGG-like net in the spirit of airbench: ~67 MMAC per image, >= 60% on CIFAR-10 in a few
    CPU minutes. 32 -> 16 -> 8 -> 4 pixels, global pooling, `widths[-1]`-d features. `pool` is
    every pooling (the three 2x2 and the global one); no conv has a bias."""
    w0, w1, w2 = widths
    block = partial(_conv_block, activation=activation, pool=pool, norm=norm)
    features = nn.Sequential(
        *block(3, w0, downsample=False),
        *block(w0, w1, downsample=True), *block(w1, w1, downsample=False),
        *block(w1, w2, downsample=True), *block(w2, w2, downsample=False),
        *block(w2, w2, downsample=True),
        POOLS[pool][1](1), nn.Flatten(),
    )
    if norm == "none":
        _scale_for_no_norm(features, activation)
    model = Classifier(features, w2, num_classes)
    model.architecture = {"activation": activation, "pool": pool, "norm": norm}
    return model


# ---------------------------------------------------------------- resnet18 (CIFAR variant)

def _resnet_features(net: nn.Module) -> nn.Sequential:
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                         net.layer3, net.layer4, net.avgpool, nn.Flatten())


RESNET18_WIDTHS = (64, 128, 256, 512)   # the four stages' channels at width 1


def _resnet18_at_width(num_classes: int, norm_layer, width: float) -> nn.Module:
    """torchvision's ResNet-18 with every stage's channels x `width`: its own `_make_layer` builds
    the stages anew at the scaled widths, and its own initialisation (He-normal convs, norm
    scales 1 and shifts 0) is applied to them. Width 1 is torchvision's model untouched (so its
    seeds draw the same initial weights as before the width existed)."""
    from torchvision.models import resnet18
    from torchvision.models.resnet import BasicBlock
    net = resnet18(num_classes=num_classes, norm_layer=norm_layer)
    if width == 1:
        return net
    c = widths_at(RESNET18_WIDTHS, width)
    net.inplanes = c[0]
    net.bn1 = norm_layer(c[0])
    net.layer1 = net._make_layer(BasicBlock, c[0], 2)
    for i, stage in enumerate(("layer2", "layer3", "layer4"), start=1):
        setattr(net, stage, net._make_layer(BasicBlock, c[i], 2, stride=2))
    net.fc = nn.Linear(c[3], num_classes)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return net


@register("resnet18", factors=True, width=True)
def resnet18_cifar(num_classes: int, pretrained: str | None = None, activation: str = "relu",
                   pool: str = "avg", norm: str = "batch", width: float = 1.0) -> Classifier:
    """torchvision's ResNet-18 with the CIFAR stem: 3x3 stride-1 first conv, no max-pool
    (He et al. 2016, sec. 4.2), so 32x32 inputs keep 4x4 maps before the pooling of the last
    stage's 512 x `width` channels. `pool` is the global pooling (the CIFAR stem has no other);
    `norm` every normalization layer; `width` scales every stage (0.25: ~1/16 of the FLOPs)."""
    net = _resnet18_at_width(num_classes, NORMS[norm], width)
    net.conv1 = nn.Conv2d(3, widths_at(RESNET18_WIDTHS, width)[0], kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.avgpool = POOLS[pool][1](1)
    for m in list(net.modules()):  # the stem's and every BasicBlock's activation (used twice there)
        if isinstance(getattr(m, "relu", None), nn.ReLU):
            m.relu = ACTIVATIONS[activation]()
    features = _resnet_features(net)
    if norm == "none":
        _scale_for_no_norm(features, activation)
    model = Classifier(features, net.fc.in_features, num_classes)
    model.head = net.fc
    model.architecture = {"activation": activation, "pool": pool, "norm": norm}
    if width != 1:
        model.architecture["width"] = width
    return model


# ---------------------------------------------------------------- resnet18_imagenet

@register("resnet18_imagenet")
def resnet18_imagenet(num_classes: int, pretrained: str | None = None) -> Classifier:
    """torchvision's ResNet-18 as is (7x7 stem, max-pool), optionally with ImageNet weights to
    fine-tune; `pretrained` is `imagenet` or the path of a saved state_dict (works offline)."""
    from torchvision.models import resnet18
    net = resnet18()
    if pretrained is not None:
        backbone = {k: v for k, v in _imagenet_state(pretrained).items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(backbone, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise InputError("pretrained", "weights do not fit torchvision's resnet18 "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                             "a torchvision resnet18 state_dict", pretrained)
    net.fc = nn.Linear(512, num_classes)  # a new head for the CIFAR classes
    model = Classifier(_resnet_features(net), 512, num_classes)
    model.head = net.fc
    return model


def _imagenet_state(pretrained: str) -> dict:
    if pretrained == "imagenet":
        from torchvision.models import ResNet18_Weights
        try:
            return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:
            raise InputError("pretrained", f"ImageNet weights could not be downloaded ({e})",
                             "a local state_dict file: download resnet18-f37072fd.pth once and "
                             "set pretrained: /path/to/resnet18-f37072fd.pth", "imagenet") from None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise InputError("pretrained", "no such weights file", "imagenet, or the path of a "
                         "torchvision resnet18 state_dict (.pth)", pretrained)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError("pretrained", f"cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                         "a torchvision resnet18 state_dict saved with torch.save", pretrained) from None
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise InputError("pretrained", "file is not a torchvision resnet18 state_dict",
                         "a state_dict with keys conv1.weight, layer1.0..., fc.weight", pretrained)
    return state


# ---------------------------------------------------------------- any timm model

class LibraryFeatures(nn.Module):
    """A library's whole network `net` (its classifier included, shared with the Classifier's
    `head`) as the `features` of a Classifier: `net` keeps the library's own layout, so its
    state dict is the one the library's checkpoints hold (see `weights_module`)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


def weights_module(model: Classifier) -> nn.Module:
    """The module whose state dict a checkpoint of this architecture holds: the library's own
    network for timm: and torchvision: models (their checkpoints know nothing of the features/head
    split), the Classifier itself for the registry's models (this project's trials save that)."""
    return model.features.net if isinstance(model.features, LibraryFeatures) else model


class TimmFeatures(LibraryFeatures):
    """A timm model up to its classifier: forward_features, then the head's pooling (and norm,
    for ConvNeXt-like heads) with pre_logits=True, i.e. exactly what its classifier reads."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def timm_model(name: str, num_classes: int, pretrained: str | None = None,
               image_size: int = 32) -> Classifier:
    """timm's `name` with K outputs for 32x32 images: models with a fixed input size (ViT, Swin,
    ...) are built for `image_size` (32; timm resamples pretrained position embeddings), the
    others take any size as they are (an ImageNet stem shrinks 32x32 hard: timm's resnet18 ends at 1x1).
    `pretrained`: `imagenet` (timm's default weights, downloaded) or a local weights file; the
    classifier is always new. The classifier must be a linear layer (the logit decomposition
    reads its weights and bias); it becomes `head`, the rest `features`."""
    timm = import_timm()
    if not timm.is_model(name):
        raise InputError("model", "unknown timm model", "timm:<a name from timm.list_models()>, e.g. "
                         "timm:resnet18, timm:convnext_atto, timm:vit_tiny_patch16_224", TIMM_PREFIX + name)
    kwargs = {"num_classes": num_classes}
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    if pretrained is not None and pretrained != "imagenet":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise InputError("pretrained", "no such weights file", f"imagenet, or the path of a {name} "
                             "weights file (.pth, .bin or .safetensors)", pretrained)
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        net = timm.create_model(name, pretrained=pretrained is not None, **kwargs)
    except Exception as e:  # offline download, a file for another model, a model that cannot take 32x32
        what = "weights could not be loaded" if pretrained is not None else "could not be built"
        raise InputError("model" if pretrained is None else "pretrained",
                         f"timm model {name}: {what} ({type(e).__name__}: {str(e)[:300]})",
                         "a timm model that builds for 32x32 images; for weights offline, a local file: "
                         "pretrained: /path/to/weights", pretrained or TIMM_PREFIX + name) from None
    head = net.get_classifier()
    if not isinstance(head, nn.Linear):
        raise InputError("model", f"timm model {name}'s classifier is a {type(head).__name__}, not a "
                         "linear layer (the logit decomposition needs its weights and bias)",
                         "a timm model whose get_classifier() is nn.Linear", TIMM_PREFIX + name)
    model = Classifier(TimmFeatures(net), head.in_features, num_classes)
    model.head = head  # shared with net (timm's own forward stays intact); parameters() counts it once
    model.architecture = {"timm": timm.__version__}
    return model


class TorchvisionFeatures(LibraryFeatures):
    """A torchvision classifier up to its last linear layer (`head_name`): what that layer reads.
    torchvision's models have no forward_features, so the whole forward runs and the head's
    input is taken on the way (the head itself costs one small matrix product more)."""

    def __init__(self, net: nn.Module, head_name: str):
        super().__init__(net)
        self.head_name = head_name

    def forward(self, x: Tensor) -> Tensor:
        seen = []
        head = self.net.get_submodule(self.head_name)
        hook = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            self.net(x)
        finally:
            hook.remove()
        return seen[-1]


def torchvision_model(name: str, num_classes: int) -> Classifier:
    """torchvision's classification model `name` with K outputs, random weights (a checkpoint's
    are loaded into it afterwards: `weights_module`), as torchvision builds it: an ImageNet stem
    takes 32x32 images down hard (torchvision's resnet18 ends at 1x1). Its last linear layer with
    K outputs is the `head` (the logit decomposition reads its weights and bias)."""
    import torchvision
    from torchvision import models
    names = models.list_models(module=models)  # the classification models (not detection, segmentation)
    if name not in names:
        raise InputError("model", "unknown torchvision model", "torchvision:<a name from "
                         "torchvision.models.list_models(module=torchvision.models)>, e.g. torchvision:resnet18, "
                         "torchvision:mobilenet_v3_small", TORCHVISION_PREFIX + name)
    net = models.get_model(name, weights=None, num_classes=num_classes)
    heads = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise InputError("model", f"torchvision model {name}'s classifier is not a linear layer (the "
                         "logit decomposition needs its weights and bias)", "a torchvision model whose last "
                         "layer is nn.Linear", TORCHVISION_PREFIX + name)
    head_name, head = heads[-1]
    model = Classifier(TorchvisionFeatures(net, head_name), head.in_features, num_classes)
    model.head = head  # shared with net, as timm's
    model.architecture = {"torchvision": torchvision.__version__}
    return model


def import_timm():
    """timm, or one error naming the model key when it is not installed."""
    try:
        import timm
    except ImportError:
        raise InputError("model", "timm is not installed", "pip install timm (a noisesink dependency)",
                         "timm:...") from None
    return timm


# ---------------------------------------------------------------- airbench (Jordan 2024)

class _Scale(nn.Module):
    """Multiplies by a constant: airbench's 1/9 before the classifier, which sets the logits'
    scale at init and, as part of the features, scales the head's gradient as published."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def _airbench_norm(channels: int) -> nn.BatchNorm2d:
    """airbench's BatchNorm: scale frozen at 1 (only the shift learns), eps 1e-12, and running
    statistics that follow the batches fast (PyTorch momentum 0.4, i.e. airbench's 0.6)."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)
    return bn


def _identity_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 'same' conv without bias, its first c_in filters initialised to the identity (Dirac):
    at init each block passes its input through, plus PyTorch's default random part elsewhere."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(c_in, c_out)])
    return conv


class PatchWhitening(nn.Conv2d):
    """airbench's first layer: a frozen 2x2 conv (no padding: 32 -> 31 pixels) whose filters are
    the eigenvectors of the training patches' covariance divided by sqrt(eigenvalue + eps), each
    also negated (2 * 3 * 2 * 2 = 24 channels), so its output is the whitened patches. Only its
    bias learns, for the first `bias_epochs` epochs. `fit(x)` sets the filters from normalised
    training images (N, 3, H, W); until then they are PyTorch's default random conv filters (an
    untrained network that was never fitted still computes something, e.g. for new_model's callers
    that probe it before any data: the trial fits it first)."""

    EPS = 5e-4          # airbench: regularises the smallest eigenvalues
    bias_epochs = 3     # airbench: the bias trains for 3 of the ~10 epochs, then freezes

    def __init__(self):
        super().__init__(3, 24, kernel_size=2, padding=0, bias=True)
        self.weight.requires_grad_(False)
        with torch.no_grad():
            self.bias.zero_()

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        k = self.kernel_size[0]
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1)                  # N, C, H', W', k, k
        patches = patches.transpose(1, 3).reshape(-1, 3 * k * k).double()    # rows in (C, kh, kw) order
        patches = patches - patches.mean(0)  # centred; airbench's uncentred form differs by mean^2 ~ 0
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + self.EPS)[:, None]).reshape(-1, 3, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))

    def epoch_start(self, epoch: int) -> None:
        self.bias.requires_grad_(epoch < self.bias_epochs)


class Airbench(Classifier):
    """A Classifier whose first layer is fitted to the training data before training
    (`fit_to_data`) and whose whitening bias freezes after `PatchWhitening.bias_epochs`."""

    def fit_to_data(self, x: Tensor) -> None:
        self.features[0].fit(x)

    def epoch_start(self, epoch: int) -> None:
        self.features[0].epoch_start(epoch)


AIRBENCH_WIDTHS = (64, 256, 256)   # airbench94's block widths at width 1


@register("airbench", factors=True, width=True, fitted=True)
def airbench(num_classes: int, pretrained: str | None = None, width: float = 1.0,
             activation: str = "gelu", pool: str = "max", norm: str = "batch") -> Classifier:
    """airbench94's network (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"):
    the 2x2 patch-whitening layer (24 channels), then three blocks of conv -> pool 2 -> norm ->
    act -> conv -> norm -> act at widths (64, 256, 256) x `width`, a global pooling of the last
    3x3 map, and the features scaled by 1/9. As published: GELU, max-pooling, BatchNorm with a
    frozen scale, identity-initialised convs. One difference: the linear head has a bias
    (initialised at 0; airbench's has none) because the logit decomposition reads it.
    `activation`, `pool` and `norm` switch the factors like small_cnn's."""
    w1, w2, w3 = widths_at(AIRBENCH_WIDTHS, width)
    norm_layer = _airbench_norm if norm == "batch" else NORMS[norm]
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = [PatchWhitening(), act()]
    c_in = 24
    for c in (w1, w2, w3):
        layers += [_identity_conv(c_in, c), POOLS[pool][0](2), norm_layer(c), act(),
                   _identity_conv(c, c), norm_layer(c), act()]
        c_in = c
    layers += [POOLS[pool][1](1), nn.Flatten(), _Scale(1 / 9)]   # the last map is 3x3: airbench's pool of 3
    features = nn.Sequential(*layers)
    if norm == "none":
        _scale_for_no_norm(features, activation)
    model = Airbench(features, w3, num_classes)
    with torch.no_grad():
        model.head.bias.zero_()
    model.architecture = {"activation": activation, "pool": pool, "norm": norm, "width": width,
                          "widths": [w1, w2, w3]}
    return model
