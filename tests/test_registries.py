"""Every registry entry is tested for free: models, augmentations, noise families."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from study import augment, streams
from study.augment import AUGMENTATIONS
from study.errors import InputError
from study.models import FACTOR_MODELS, FACTORS, MODELS, WIDTH_MODELS, PatchWhitening, build_model
from study.noise import NOISE_FAMILIES, NoiseContext, make_bank, radial_frequency

MEAN = torch.tensor([0.49, 0.48, 0.45])
STD = torch.tensor([0.25, 0.24, 0.26])


# ---------------------------------------------------------------- models

# every registry entry as it is, every option of every architecture factor on each model that
# takes factors, and a few small timm models (a ResNet, a ConvNeXt, a ViT: timm's own test nets)
TIMM_MODELS = ["timm:test_resnet", "timm:test_convnext", "timm:test_vit"]
VARIANTS = ([(name, {}) for name in sorted(MODELS)]
            + [(name, {factor: option}) for name in sorted(FACTOR_MODELS) for factor in FACTORS
               for option in FACTORS[factor]]
            + [(name, {"width": 0.25}) for name in sorted(WIDTH_MODELS)]
            + [(name, {}) for name in TIMM_MODELS])
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for n, o in VARIANTS]


@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_model_exposes_features_and_head(name, options):
    model = build_model(name, num_classes=7, seed=0, **options).eval()
    x = torch.randn(4, 3, 32, 32)
    feats = model.features(x)
    assert feats.shape == (4, model.feature_dim)
    assert model.head.in_features == model.feature_dim and model.head.out_features == 7
    assert model.head.bias is not None  # the logit decomposition needs the bias
    torch.testing.assert_close(model(x), model.head(feats), rtol=0, atol=0)
    assert model.architecture["model"] == name
    assert model.architecture["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_model_init_is_a_function_of_the_seed(name, options):
    a, b, c = (build_model(name, 3, seed, **options) for seed in (1, 1, 2))
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


# ---------------------------------------------------------------- architecture factors

def _outputs_of(model, kind, x):
    """The outputs of every module of type `kind` in model.features for input x (train mode)."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0].detach().clone(), o.detach().clone())))
             for m in model.features.modules() if isinstance(m, kind)]
    model.train()
    model.features(x)
    for h in hooks:
        h.remove()
    return seen


def _check_activation(model, option, x):
    kind = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "tanh": torch.nn.Tanh}[option]
    others = [k for k in (torch.nn.ReLU, torch.nn.GELU, torch.nn.Tanh) if k is not kind]
    assert not any(isinstance(m, tuple(others)) for m in model.modules())
    outs = [o for _, o in _outputs_of(model, kind, x)]
    assert len(outs) >= 5
    low = torch.cat([o.flatten() for o in outs]).min().item()
    # ReLU >= 0; GELU's minimum is -0.17 (and it does go negative); tanh in (-1, 1)
    assert {"relu": low == 0, "gelu": -0.1701 < low < 0, "tanh": -1 < low < -0.5}[option]


def _check_pool(model, option, x):
    reduce = {"max": lambda t: t.amax(dim=(2, 3)), "avg": lambda t: t.mean(dim=(2, 3))}[option]
    globals_ = _outputs_of(model, (torch.nn.AdaptiveMaxPool2d, torch.nn.AdaptiveAvgPool2d), x)
    assert len(globals_) == 1
    i, o = globals_[0]
    torch.testing.assert_close(o.flatten(1), reduce(i))
    local = [m for m in model.features.modules() if isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d))]
    assert all(isinstance(m, {"max": torch.nn.MaxPool2d, "avg": torch.nn.AvgPool2d}[option]) for m in local)


def _check_norm(model, option, x):
    if option == "none":
        assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in model.modules())
        convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d)
                 and not isinstance(m, PatchWhitening)]   # fitted to the data, not initialised
        for m in convs:  # variance-preserving: std = gain / sqrt(fan_in)
            gain = torch.nn.init.calculate_gain("relu")
            assert m.weight.std().item() == pytest.approx(gain / m.weight[0].numel() ** 0.5, rel=1e-4)
        return
    kind = torch.nn.BatchNorm2d if option == "batch" else torch.nn.GroupNorm
    pairs = _outputs_of(model, kind, x)
    assert len(pairs) >= 5
    for _, o in pairs:  # the defining statistic: zero mean over what the norm normalizes over
        c = o.shape[1]
        if option == "batch":
            m = o.mean(dim=(0, 2, 3))
        elif option == "layer":
            m = o.mean(dim=(1, 2, 3))
        else:
            groups = [mod for mod in model.features.modules() if isinstance(mod, torch.nn.GroupNorm)
                      and mod.num_channels == c][0].num_groups
            assert 1 < groups <= 32 and c // groups >= 4
            m = o.reshape(len(o), groups, -1).mean(-1)
        assert m.abs().max().item() < 1e-4


DEFINING_FACTOR = {"activation": _check_activation, "pool": _check_pool, "norm": _check_norm}


def test_every_factor_has_a_defining_check():
    assert set(DEFINING_FACTOR) == set(FACTORS)


@pytest.mark.parametrize("name, factor, option", [(n, f, o) for n in sorted(FACTOR_MODELS) for f in FACTORS
                                                  for o in FACTORS[f]])
def test_factor_option_does_what_it_says(name, factor, option):
    model = build_model(name, 10, seed=0, **{factor: option})
    DEFINING_FACTOR[factor](model, option, torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_factor_variants_of_a_seed_start_from_the_same_draws():
    """Seed s of every variant draws the same numbers: the weights of a tanh or avg-pool variant
    equal the default's, and without normalization they are the same draws rescaled."""
    base = build_model("small_cnn", 10, 4)
    for options in ({"activation": "tanh"}, {"pool": "avg"}, {"norm": "group"}, {"norm": "none"}):
        other = build_model("small_cnn", 10, 4, **options)
        wa = [m.weight for m in base.features.modules() if isinstance(m, torch.nn.Conv2d)]
        wb = [m.weight for m in other.features.modules() if isinstance(m, torch.nn.Conv2d)]
        for a, b in zip(wa, wb):
            ratio = b / a
            torch.testing.assert_close(ratio, torch.full_like(ratio, ratio.flatten()[0].item()))
        torch.testing.assert_close(other.head.weight, base.head.weight, rtol=0, atol=0)


def test_the_default_factors_build_the_default_model():
    explicit = build_model("small_cnn", 10, 2, activation="relu", pool="max", norm="batch")
    default = build_model("small_cnn", 10, 2)
    assert str(explicit) == str(default)
    for a, b in zip(explicit.state_dict().values(), default.state_dict().values()):
        assert torch.equal(a, b)


def test_factors_on_a_model_without_them_are_a_clear_error():
    with pytest.raises(InputError, match="no architecture factors"):
        build_model("resnet18_imagenet", 10, 0, norm="group")


# ---------------------------------------------------------------- timm models

@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_model_is_timms_model_split_at_its_classifier(name):
    """Known answer: the same seed gives timm's own model, whose logits (its own forward) equal
    head(features) exactly, with features = the pooled pre-logits its classifier reads."""
    import timm

    from study import streams
    kwargs = {"img_size": 32} if timm.models.get_pretrained_cfg(name[5:]).fixed_input_size else {}
    with streams.global_torch("init", 3):  # the stream build_model initialises seed 3 from
        reference = timm.create_model(name[5:], num_classes=6, **kwargs).eval()
    model = build_model(name, 6, seed=3).eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        pre = reference.forward_head(reference.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model.features(x), pre, rtol=0, atol=0)
        torch.testing.assert_close(model.head(model.features(x)), reference(x), rtol=0, atol=0)
    assert model.head is model.features.net.get_classifier()
    assert model.architecture["timm"] == timm.__version__


def test_timm_pretrained_weights_come_from_a_local_file(tmp_path):
    import timm
    torch.manual_seed(9)
    source = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = build_model("timm:test_resnet", 10, 0, pretrained=str(path))
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    mine = model.features.net.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in backbone.items())
    assert model.head.out_features == 10  # a new classifier for the trained classes


@pytest.mark.parametrize("name, pretrained, message", [
    ("timm:no_such_model", None, "unknown timm model"),
    ("timm:test_resnet", "/no/such/weights.pth", "no such weights file"),
])
def test_timm_bad_input_is_a_clear_error(name, pretrained, message):
    with pytest.raises(InputError, match=message):
        build_model(name, 10, 0, pretrained=pretrained)


def test_timm_download_offline_is_a_clear_error(monkeypatch):
    import timm.models._builder as builder

    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", offline)
    with pytest.raises(InputError, match="pretrained: /path/to/weights"):
        build_model("timm:resnet18", 10, 0, pretrained="imagenet")


def test_resnet18_is_the_cifar_variant():
    model = build_model("resnet18", 10, 0)
    conv1 = model.features[0]
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert isinstance(model.features[3], torch.nn.Identity)  # no max-pool
    assert model.feature_dim == 512


def test_resnet18_imagenet_loads_a_local_weights_file(tmp_path):
    from torchvision.models import resnet18
    torch.manual_seed(5)
    reference = resnet18()
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18_imagenet", 10, 0, pretrained=str(path))
    torch.testing.assert_close(model.features[0].weight, reference.conv1.weight)
    assert model.head.out_features == 10


@pytest.mark.parametrize("bad, message", [("/no/such/file.pth", "no such weights file"),
                                          ("NOT_A_FILE", "no such weights file")])
def test_resnet18_imagenet_bad_weights_are_clear_errors(bad, message):
    with pytest.raises(InputError, match=message):
        build_model("resnet18_imagenet", 10, 0, pretrained=bad)


def test_resnet18_imagenet_offline_download_is_a_clear_error(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(InputError, match="local state_dict"):
        build_model("resnet18_imagenet", 10, 0, pretrained="imagenet")


# ---------------------------------------------------------------- augmentations

def _batch(n=16, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_augmentation_keeps_shape_range_and_is_seeded(name):
    x = _batch()
    out1 = AUGMENTATIONS[name](x.clone(), torch.Generator().manual_seed(3))
    out2 = AUGMENTATIONS[name](x.clone(), torch.Generator().manual_seed(3))
    assert out1.shape == x.shape and out1.dtype == x.dtype
    assert out1.min() >= 0 and out1.max() <= 1
    torch.testing.assert_close(out1, out2)
    if name != "none":
        out3 = AUGMENTATIONS[name](x.clone(), torch.Generator().manual_seed(4))
        assert not torch.equal(out1, out3)


def test_none_is_identity():
    x = _batch()
    assert torch.equal(AUGMENTATIONS["none"](x, torch.Generator()), x)


def test_flip_mirrors_about_half_the_images():
    x = _batch(400)
    out = augment.random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250


def test_crop_is_a_window_of_the_reflect_padded_image():
    x = _batch(32)
    out = augment.random_crop(x, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_cutout_blanks_one_square_of_at_most_16x16():
    x = _batch(64)
    out = augment.cutout(x, torch.Generator().manual_seed(2))
    changed = (out != x).any(1)
    for mask in changed:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            assert ys.max() - ys.min() < 16 and xs.max() - xs.min() < 16


@pytest.mark.parametrize("pil_op, ours", [
    ("equalize", lambda x: augment._equalize(x)),
    ("autocontrast", lambda x: augment._autocontrast(x)),
    ("solarize", lambda x: torch.where(x >= 128 / 255, 1 - x, x)),
])
def test_trivialaugment_ops_match_pil(pil_op, ours):
    """Known answers: our batched ops against PIL's ImageOps on real-looking uint8 images."""
    from PIL import Image, ImageOps
    rng = np.random.default_rng(0)
    imgs = (rng.beta(2, 5, size=(6, 32, 32, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    got = (ours(x) * 255).round().permute(0, 2, 3, 1).numpy().astype(int)
    for i in range(len(imgs)):
        im = Image.fromarray(imgs[i])
        ref = getattr(ImageOps, pil_op)(im, 128) if pil_op == "solarize" else getattr(ImageOps, pil_op)(im)
        assert np.abs(np.asarray(ref).astype(int) - got[i]).max() <= 1


# ---------------------------------------------------------------- noise families

def _ctx(natural=None):
    if natural is None:
        natural = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (50, 3, 32, 32), dtype=np.uint8))
    return NoiseContext(MEAN, STD, natural)


def _one_natural_image():
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([np.sin(xx / 3) * 90 + 128, np.cos(yy / 5) * 90 + 128, (xx + yy) * 3.5], 0)
    return torch.from_numpy(img.clip(0, 255).astype(np.uint8))[None]


def _check_gaussian(x):
    torch.testing.assert_close(x.mean((0, 2, 3)), MEAN, atol=0.005, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3)), STD, atol=0.005, rtol=0)
    assert x.min() < 0 and x.max() > 1  # unclipped, like the original question's noise


def _check_clipped(x):
    assert x.min() == 0 and x.max() == 1
    torch.testing.assert_close(x.mean((0, 2, 3)), MEAN, atol=0.01, rtol=0)


def _check_uniform(x):
    assert x.min() >= 0 and x.max() <= 1
    assert abs(x.mean() - 0.5) < 0.005 and abs(x.var() - 1 / 12) < 0.002


def _check_rademacher(x):
    for c in range(3):
        values = torch.unique(x[:, c])
        torch.testing.assert_close(values, torch.stack([MEAN[c] - STD[c], MEAN[c] + STD[c]]))


def _normalised(x):
    """What the network sees: the bank normalised like the data."""
    return (x - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)


def _check_odin_gaussian(x):
    """clamp(N(0.5, 1), 0, 1): P(0) = P(1) = Phi(-0.5) = 0.3085, mean 0.5 by symmetry, and inside
    (0, 1) the density of N(0.5, 1), whose interior mean is 0.5 too."""
    from scipy.stats import norm
    assert x.min() == 0 and x.max() == 1
    assert abs((x == 0).float().mean() - norm.cdf(-0.5)) < 0.005
    assert abs((x == 1).float().mean() - norm.cdf(-0.5)) < 0.005
    assert abs(x.mean() - 0.5) < 0.003


def _check_oe_gaussian(x):
    """Normalised: N(0, 0.5^2) clipped to [-1, 1]: 2.28% at each bound (Phi(-2)), sd of the
    clipped normal sqrt(0.25 * (1 - 2 * 2 phi(2) - 2 Phi(-2)) + 2 Phi(-2)) = 0.4882."""
    from scipy.stats import norm
    z = _normalised(x).double()
    assert z.min() >= -1 - 1e-5 and z.max() <= 1 + 1e-5
    at_bound = (z.abs() > 1 - 1e-5).double().mean() / 2
    assert abs(at_bound - norm.cdf(-2)) < 0.002
    var = 0.25 * (2 * norm.cdf(2) - 1 - 2 * 2 * norm.pdf(2)) + 2 * norm.cdf(-2)
    assert abs(z.std() - var ** 0.5) < 0.003 and abs(z.mean()) < 0.003


def _check_rademacher_is_outlier_exposures(x):
    """Normalised, exactly +-1 (Outlier Exposure's Rademacher noise), each sign half the time."""
    _check_rademacher(x)
    z = _normalised(x)
    torch.testing.assert_close(z.abs(), torch.ones_like(z), atol=1e-5, rtol=0)
    assert abs((z > 0).float().mean() - 0.5) < 0.005


def _reference_oe_blobs(on_hwc: np.ndarray) -> np.ndarray:
    """An independent reference for one image: the 3-d Gaussian filter (sigma 1.5 on every axis,
    the colour axis included, as skimage's gaussian(multichannel=False) does) written out as three
    1-d convolutions with scipy's kernel (radius int(4 * 1.5 + 0.5) = 6, edges repeated), then
    Outlier Exposure's threshold and map."""
    radius = int(4.0 * 1.5 + 0.5)
    t = np.arange(-radius, radius + 1)
    k = np.exp(-t**2 / (2 * 1.5**2))
    k /= k.sum()
    out = on_hwc.astype(np.float64)
    for axis in range(3):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge")
        out = sum(k[i] * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis) for i in range(len(k)))
    out[out < 0.75] = 0
    return out * 2 - 1


def _check_oe_blobs(x):
    """Matches the independent reference image by image (the Bernoulli draws recovered from the
    generator), and the published shape: -1 off a blob, 0.5..1 on it, blobs covering some pixels."""
    z = _normalised(x)
    gen = streams.torch_generator("noise_bank", 7, name="oe_blobs")
    on = (torch.rand(len(x), 32, 32, 3, generator=gen) < 0.7).numpy()
    for i in range(5):
        ref = _reference_oe_blobs(on[i]).transpose(2, 0, 1)
        np.testing.assert_allclose(z[i].numpy(), ref, atol=1e-5)
    off = (z + 1).abs() < 1e-5
    assert torch.all(off | ((z >= 0.5 - 1e-5) & (z <= 1 + 1e-5)))
    assert 0.05 < (~off).float().mean() < 0.95


def _check_blobs(x):
    assert x.min() >= 0 and x.max() <= 1
    # smooth: neighbouring pixels nearly equal, unlike white noise
    corr = torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1]
    assert corr > 0.95


def _check_salt_pepper(x):
    extreme = ((x == 0).all(1) | (x == 1).all(1)).float().mean((1, 2))
    assert extreme.min() > 0.02 and extreme.max() < 0.6
    rest = ~((x == 0).all(1) | (x == 1).all(1))
    torch.testing.assert_close(x.permute(0, 2, 3, 1)[rest][0], MEAN)


def power_slope(x):
    """Slope of the radially averaged power spectrum in log-log (DC excluded)."""
    power = (torch.fft.fft2(x - x.mean((2, 3), keepdim=True)).abs() ** 2).mean((0, 1))
    f = radial_frequency()
    bins = torch.round(f * 32).long()
    radii = torch.arange(1, 16)
    avg = torch.stack([power[bins == r].mean() for r in radii])
    return np.polyfit(np.log(radii.numpy()), np.log(avg.numpy()), 1)[0]


def _check_pink(x):
    assert abs(power_slope(x) + 2) < 0.25
    torch.testing.assert_close(x.mean((0, 2, 3)), MEAN, atol=0.01, rtol=0)


def _check_phase_scrambled(x, source):
    src = source.float() / 255
    torch.testing.assert_close(torch.fft.fft2(x).abs(), torch.fft.fft2(src).abs().expand_as(x),
                               atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(x.mean((2, 3)), src.mean((2, 3)).expand(len(x), 3), atol=1e-5, rtol=0)
    assert not torch.allclose(x[0], src[0], atol=0.05)  # the structure is gone


def _check_pixel_shuffled(x, source):
    src = source.float() / 255
    for img in x[:20]:
        torch.testing.assert_close(img.flatten(1).sort(1).values, src[0].flatten(1).sort(1).values)
        # the same permutation for all channels: RGB triples stay together
        triples = {tuple(v) for v in img.flatten(1).T.tolist()}
        assert triples == {tuple(v) for v in src[0].flatten(1).T.tolist()}


def _check_constant(x):
    assert (x == x[:, :, :1, :1]).all() and x.min() >= 0 and x.max() <= 1


DEFINING = {"gaussian": _check_gaussian, "gaussian_clipped": _check_clipped, "uniform": _check_uniform,
            "odin_gaussian": _check_odin_gaussian, "oe_gaussian": _check_oe_gaussian, "oe_blobs": _check_oe_blobs,
            "rademacher": _check_rademacher_is_outlier_exposures, "blobs": _check_blobs,
            "salt_pepper": _check_salt_pepper, "pink": _check_pink, "phase_scrambled": _check_phase_scrambled,
            "pixel_shuffled": _check_pixel_shuffled, "constant": _check_constant}


def test_every_noise_family_has_a_defining_check():
    assert set(DEFINING) == set(NOISE_FAMILIES)


@pytest.mark.parametrize("family", sorted(NOISE_FAMILIES))
def test_noise_bank_shape_seed_and_defining_statistic(family):
    source = _one_natural_image()
    ctx = _ctx(source if family in ("phase_scrambled", "pixel_shuffled") else None)
    x = make_bank(family, 2000, noise_seed=7, ctx=ctx)
    assert x.shape == (2000, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, make_bank(family, 2000, noise_seed=7, ctx=ctx))        # same seed, same bank
    assert not torch.equal(x, make_bank(family, 2000, noise_seed=8, ctx=ctx))    # new seed, new bank
    check = DEFINING[family]
    check(x, source) if family in ("phase_scrambled", "pixel_shuffled") else check(x)


def test_white_noise_is_not_pink():
    """The slope estimator itself can fail: white noise has a flat spectrum."""
    assert abs(power_slope(torch.randn(500, 3, 32, 32))) < 0.2
