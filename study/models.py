"""Model registry: name -> constructor(num_classes, pretrained) -> Classifier.

Every model is `features` (image -> penultimate vector) followed by a linear `head`, kept apart
so that the probes can read the features, and the logit decomposition the head's weights and bias.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from .errors import InputError

MODELS: dict[str, Callable[..., "Classifier"]] = {}


def register(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


class Classifier(nn.Module):
    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.features = features
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build_model(name: str, num_classes: int, seed: int, pretrained: str | None = None) -> Classifier:
    """The same (name, num_classes, seed) always gives the same initial weights."""
    torch.manual_seed(seed)
    return MODELS[name](num_classes=num_classes, pretrained=pretrained)


# ---------------------------------------------------------------- small_cnn

def _conv_bn(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))  # pool before BN: BN then sees the smaller map (cheaper)
    return layers + [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register("small_cnn")
def small_cnn(num_classes: int, pretrained: str | None = None, widths=(32, 64, 128)) -> Classifier:
    """A VGG-like net in the spirit of airbench: ~67 MMAC per image, >= 60% on CIFAR-10 in a few
    CPU minutes. 32 -> 16 -> 8 -> 4 pixels, global max pool, `widths[-1]`-d features."""
    w0, w1, w2 = widths
    features = nn.Sequential(
        *_conv_bn(3, w0, pool=False),
        *_conv_bn(w0, w1, pool=True), *_conv_bn(w1, w1, pool=False),
        *_conv_bn(w1, w2, pool=True), *_conv_bn(w2, w2, pool=False),
        *_conv_bn(w2, w2, pool=True),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
    )
    return Classifier(features, w2, num_classes)


# ---------------------------------------------------------------- resnet18 (CIFAR variant)

def _resnet_features(net: nn.Module) -> nn.Sequential:
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                         net.layer3, net.layer4, net.avgpool, nn.Flatten())


@register("resnet18")
def resnet18_cifar(num_classes: int, pretrained: str | None = None) -> Classifier:
    """torchvision's ResNet-18 with the CIFAR stem: 3x3 stride-1 first conv, no max-pool
    (He et al. 2016, sec. 4.2), so 32x32 inputs keep 4x4 maps before the 512-d pooling."""
    from torchvision.models import resnet18
    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    model = Classifier(_resnet_features(net), 512, num_classes)
    model.head = net.fc
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
        raise InputError("pretrained", f"cannot read weights ({type(e).__name__}: {e})",
                         "a torchvision resnet18 state_dict saved with torch.save", pretrained) from None
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise InputError("pretrained", "file is not a torchvision resnet18 state_dict",
                         "a state_dict with keys conv1.weight, layer1.0..., fc.weight", pretrained)
    return state
