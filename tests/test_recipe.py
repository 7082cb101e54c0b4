"""The fast recipe's pieces, each against a known answer: the whitening layer whitens, the
alternating flip flips each image every other epoch, the triangle schedule and Lookahead follow
airbench's formulas, the norm shifts get their own learning rate, TTA's views are airbench's, and a
trial of the recipe runs end to end (TTA beside the single view, probes untouched)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from study import recipe
from study.config import validate_trial
from study.errors import InputError
from study.models import PatchWhitening, build_model, widths_at
from study.train import (
    TRIANGLE_END,
    TRIANGLE_START,
    Lookahead,
    Normalizer,
    Precision,
    Trainer,
    lr_multiplier,
    make_optimizer,
    tta_views,
)

AIRBENCH = {"model": "airbench", "width": 0.25, "batch_size": 50, "lr": 0.1, "momentum": 0.85,
            "bias_lr_scale": 64.0, "label_smoothing": 0.2, "schedule": "triangle", "warmup": 0.23,
            "lookahead": True, "augmentation": "altflip_translate", "tta": 2}


def _correlated_images(n=300, seed=0):
    """Images whose 2x2 patches are strongly correlated (smooth, with a shared grey level), the
    situation whitening is for."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1) * 2 + 0.8 * x.mean(1, keepdim=True) + 0.3


def test_whitening_layer_whitens_patches():
    """Known answer: on the images it was fitted to, the first 12 channels (the filters before
    their negations) have covariance I, up to the eps that damps the smallest eigenvalues."""
    x = _correlated_images()
    layer = PatchWhitening()
    layer.fit(x)
    with torch.no_grad():
        y = torch.nn.functional.conv2d(x, layer.weight)
    torch.testing.assert_close(y[:, 12:], -y[:, :12])  # the second half are the negated filters
    y = y[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    y = y - y.mean(0)
    cov = y.T @ y / len(y)
    # eigenvalue l of the patches comes out as l / (l + eps): within 3% of 1 for these images
    assert (cov.diagonal() - 1).abs().max() < 0.03
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 1e-6
    # and the patches were far from white before: their covariance spans orders of magnitude
    raw = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12).double()
    eig = torch.linalg.eigvalsh(torch.cov(raw.T))
    assert eig.max() / eig.min() > 30


def test_whitening_bias_trains_for_the_published_epochs_only():
    model = build_model("airbench", 10, 0, width=0.25)
    whiten = model.features[0]
    assert not whiten.weight.requires_grad
    for epoch in range(6):
        model.epoch_start(epoch)
        assert whiten.bias.requires_grad == (epoch < PatchWhitening.bias_epochs)


def test_airbench_is_the_published_network():
    model = build_model("airbench", 10, 0)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24, 64, 64, 256, 256, 256, 256]
    norms = [m for m in model.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not n.weight.requires_grad and n.eps == 1e-12 and n.momentum == pytest.approx(0.4) for n in norms)
    for c in convs[1:]:  # identity init: the first c_in filters pass their input channel through
        dirac = torch.zeros(c.in_channels, c.in_channels, 3, 3)
        dirac[:, :, 1, 1] = torch.eye(c.in_channels)
        torch.testing.assert_close(c.weight[:c.in_channels], dirac, rtol=0, atol=0)
    assert widths_at((64, 256, 256), 0.25) == (16, 64, 64)
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, 256)


def test_width_is_refused_where_a_model_has_none():
    with pytest.raises(InputError, match="width"):
        validate_trial({"model": "small_cnn", "width": 0.5})


def _trainer(tiny_config, **overrides):
    from study.trial import new_model, setup
    s = setup(tiny_config(**{**AIRBENCH, **overrides}))
    return Trainer(new_model(s), s.task.train_x, s.task.train_y, s.cfg, s.device, s.normalize, s.precision), s


def test_alternating_flip_flips_each_image_every_other_epoch(tiny_config):
    """Images whose left half is bright and right half dark: after a translation by <= 2 pixels,
    which side is bright says whether the image was mirrored. Each image must alternate, starting
    with about half of them mirrored."""
    trainer, s = _trainer(tiny_config)
    n = len(trainer.x)
    trainer.x = torch.zeros_like(trainer.x)
    trainer.x[..., :16] = 255
    idx = torch.arange(n)
    flipped = []
    for epoch in range(4):
        trainer.epoch = epoch
        x, _ = trainer.batch(idx)
        pixels = x * s.normalize.std + s.normalize.mean   # back to [0, 1]
        flipped.append(pixels[..., 20:].mean((1, 2, 3)) > pixels[..., :12].mean((1, 2, 3)))
    assert 0.35 * n < int(flipped[0].sum()) < 0.65 * n
    for a, b in zip(flipped, flipped[1:]):
        assert bool((a ^ b).all())


def test_triangle_schedule_is_airbenchs():
    total = 100
    lrs = [lr_multiplier(i, total, "triangle", 0.23) for i in range(total + 1)]
    assert lrs[0] == pytest.approx(TRIANGLE_START) and lrs[23] == pytest.approx(1.0)
    assert lrs[total] == pytest.approx(TRIANGLE_END)
    assert all(b > a for a, b in zip(lrs[:23], lrs[1:24])) and all(b < a for a, b in zip(lrs[23:], lrs[24:]))


@pytest.mark.parametrize("total", [12, 10])   # the last step an EVERY-th one or not
def test_lookahead_is_an_average_that_the_last_step_takes(total):
    """Known answer (airbench94): every 5th step avg <- decay avg + (1 - decay) w, w <- avg; after
    the last step w <- avg, its scheduled update first where it is a 5th step."""
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    look = Lookahead(model)
    avg = 0.0
    for step in range(1, total + 1):
        with torch.no_grad():
            model.weight.add_(1.0)   # an optimizer step
        live = model.weight[0, 0].item()
        look.step(step, total)
        if step % Lookahead.EVERY == 0:
            decay = 0.95 ** 5 * (step / total) ** 3
            avg = decay * avg + (1 - decay) * live
            assert model.weight[0, 0].item() == pytest.approx(avg)
        elif step == total:
            assert model.weight[0, 0].item() == pytest.approx(avg)   # the average as it is
        else:
            assert model.weight[0, 0].item() == live


def test_norm_shifts_get_their_own_learning_rate_and_decay():
    model = build_model("airbench", 10, 0, width=0.25)
    cfg = validate_trial({**AIRBENCH, "weight_decay": 0.002})
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    plain, scaled = opt.param_groups
    assert {id(p) for p in scaled["params"]} == shifts and scaled["lr_scale"] == 64
    assert scaled["weight_decay"] == pytest.approx(0.002 / 64) and plain["weight_decay"] == 0.002
    assert not shifts & {id(p) for p in plain["params"]}
    one = make_optimizer(model, validate_trial({**AIRBENCH, "bias_lr_scale": 1.0}), torch.device("cpu"))
    assert len(one.param_groups) == 1


def test_tta_views_are_airbenchs():
    x = torch.rand(2, 3, 32, 32)
    for level, n in ((1, 2), (2, 6)):
        views = tta_views(x, level)
        assert len(views) == n and math.isclose(sum(w for w, _ in views), 1.0)
        assert all(v.shape == x.shape for _, v in views)
    views = tta_views(x, 2)
    torch.testing.assert_close(views[1][1], x.flip(3))
    torch.testing.assert_close(views[2][1][..., 1:, 1:], x[..., :-1, :-1])   # shifted down-right by 1
    torch.testing.assert_close(views[4][1][..., :-1, :-1], x[..., 1:, 1:])   # shifted up-left by 1


def test_tta_of_a_mirror_symmetric_model_is_its_single_view():
    """Known answer: a model that cannot tell an image from its mirror gets the same logits from
    level-1 TTA as from one view."""
    from study.train import tta_logits
    model = build_model("small_cnn", 4, 0).eval()
    with torch.no_grad():
        for m in model.features.modules():
            if isinstance(m, torch.nn.Conv2d):  # symmetric kernels: the whole net commutes with mirroring
                m.weight.copy_((m.weight + m.weight.flip(3)) / 2)
    x = (torch.rand(8, 3, 32, 32) * 255).to(torch.uint8)
    norm = Normalizer([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    prec = Precision(torch.device("cpu"), "fp32", False)
    from study.train import predict
    single, _ = predict(model, x, norm, prec, 4, torch.device("cpu"))
    np.testing.assert_allclose(tta_logits(model, x, norm, prec, 4, torch.device("cpu"), 1), single, atol=1e-5)


def test_recipe_trial_runs_and_records_tta_beside_the_single_view(tiny_config, tmp_path):
    from study.trial import run_trial
    result = run_trial(tiny_config(**AIRBENCH, epochs=1, noise=["gaussian"]), str(tmp_path), log=lambda m: None)
    assert result["status"] == "completed"
    assert 0 <= result["tta_accuracy"] <= 1
    assert result["architecture"]["widths"] == [16, 64, 64]
    plain = run_trial(tiny_config(model="small_cnn", noise=["gaussian"], train_subset=50), str(tmp_path / "plain"),
                      log=lambda m: None)
    assert plain["tta_accuracy"] is None


def test_recipe_bench_writes_a_row_per_config_and_keeps_them(tiny_config, tmp_path, monkeypatch):
    import yaml
    monkeypatch.setattr(recipe, "baseline_img_s", lambda steps=30: 123.0)
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**AIRBENCH, epochs=1)))
    rows_file = tmp_path / "rows.yaml"
    rows_file.write_text(yaml.safe_dump({"rows": [{"config": str(path)},
                                                  {"config": str(path), "set": {"width": 0.5}}]}))
    rows = recipe.read_row_specs([str(rows_file)])
    assert [r.label for r in rows] == [str(path), f"{path} --set width=0.5"]
    out = tmp_path / "pareto.csv"
    recipe.run(rows, str(out), log=lambda m: None)
    written = recipe.read_rows(out)
    assert list(written[0]) == recipe.COLUMNS and [r["width"] for r in written] == ["0.25", "0.5"]
    assert all(float(r["baseline_img_s"]) == 123.0 and 0 <= float(r["test_accuracy"]) <= 1
               and r["tta_accuracy"] != "" for r in written)
    calls = []
    monkeypatch.setattr(recipe, "measure", lambda *a, **k: calls.append(a))
    recipe.run(rows, str(out), log=lambda m: None)   # the same configs: kept, not retrained
    assert calls == []
    assert recipe.plot(str(out)).endswith(".png")


@pytest.mark.parametrize("rows, message", [
    ({"rows": []}, "non-empty list"),
    ({"rows": [{"set": {"epochs": 2}}]}, "rows\\[0\\]"),
    ({"rows": [{"config": "a.yaml", "sets": {}}]}, "rows\\[0\\]"),
])
def test_recipe_rows_file_errors_name_the_row(tmp_path, rows, message):
    import yaml
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump(rows))
    with pytest.raises(InputError, match=message):
        recipe.read_row_specs([str(path)])


def test_shipped_recipe_rows_resolve():
    from conftest import ROOT
    from study.config import load_trial_config
    rows = recipe.read_row_specs([str(ROOT / recipe.DEFAULT_ROWS)])
    assert rows and all(load_trial_config(ROOT / r.config, list(r.sets)) for r in rows)


def test_shipped_trial_configs_are_valid_and_the_cat_dog_point_takes_the_recipe_from_its_base():
    from conftest import ROOT
    from study.config import load_trial_config, read_yaml
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if set(read_yaml(path)) != {"rows"}:   # configs/pareto.yaml is the Pareto's list of rows
            load_trial_config(path)
    catdog, ten = (load_trial_config(ROOT / "configs/fast_cpu_catdog.yaml"),
                   load_trial_config(ROOT / "configs/fast_cpu.yaml"))
    assert catdog["classes"] == ["cat", "dog"] and catdog["lookahead"] and catdog["schedule"] == ten["schedule"]


def test_a_base_chain_that_comes_back_is_refused(tmp_path):
    from study.config import load_trial_config
    (tmp_path / "a.yaml").write_text("base: b.yaml\nepochs: 2\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(InputError, match="comes back"):
        load_trial_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: 3\n")
    with pytest.raises(InputError, match="another trial config"):
        load_trial_config(tmp_path / "c.yaml")


def test_widths_are_multiples_of_4_so_group_norm_builds():
    assert widths_at((64, 128, 256, 512), 0.3) == (20, 40, 76, 152)
    build_model("resnet18", 10, 0, norm="group", width=0.3)   # GroupNorm needs channels in groups of 4


def test_triangle_needs_a_peak_inside_the_run():
    with pytest.raises(InputError, match="warmup"):
        validate_trial({**AIRBENCH, "warmup": 1.0})


def test_initbias_refuses_a_model_fitted_to_data():
    from study.initbias import run
    with pytest.raises(InputError, match="fits to the training data"):
        run(["relu-max-none-centered"], nets=2, n_images=10, out="unused", model="airbench")
