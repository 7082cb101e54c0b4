"""The "why" measurements on inputs with known answers: clutter measures, OOD detectors and their
convention, the logit decomposition, band-limited noise, and the training interventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from study import clutter
from study.explain import band_limited_gaussian, logit_decomposition
from study.interventions import TrainingIntervention
from study.noise import NoiseContext, radial_frequency
from study.ood import DETECTORS, Detectors, id_positive_metrics

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- clutter measures

@pytest.mark.parametrize("name", sorted(clutter.PIXEL_MEASURES))
def test_every_pixel_measure_gives_a_finite_number(name):
    x = RNG.random((20, 3, 32, 32)).astype(np.float32)
    assert np.isfinite(clutter.PIXEL_MEASURES[name](x))


@pytest.mark.parametrize("name", sorted(clutter.FEATURE_MEASURES))
def test_every_feature_measure_gives_a_finite_number(name):
    assert np.isfinite(clutter.FEATURE_MEASURES[name](RNG.normal(size=(200, 16))))


@pytest.mark.parametrize("d", [2, 5])
def test_twonn_recovers_the_dimension_of_a_uniform_cube(d):
    x = np.random.default_rng(d).random((4000, d))
    embedded = np.hstack([x, np.zeros((4000, 10))])  # living in 10 more ambient dimensions
    assert clutter.twonn_dimension(embedded) == pytest.approx(d, rel=0.15)


def test_participation_ratio_isotropic_vs_rank_one():
    iso = np.random.default_rng(1).normal(size=(20000, 8))
    assert clutter.participation_ratio(iso) == pytest.approx(8, rel=0.05)
    line = np.outer(np.random.default_rng(2).normal(size=5000), np.ones(8))
    assert clutter.participation_ratio(line) == pytest.approx(1, abs=1e-6)


def test_png_size_of_constant_vs_random_images():
    flat = np.full((5, 3, 32, 32), 0.5, dtype=np.float32)
    noisy = np.random.default_rng(3).random((5, 3, 32, 32)).astype(np.float32)
    assert clutter.png_bits_per_pixel(flat) < 1.0 < 20 < clutter.png_bits_per_pixel(noisy)


def test_spectral_slope_white_vs_smooth():
    white = np.random.default_rng(4).random((50, 3, 32, 32))
    smooth = np.stack([np.stack([np.sin(np.linspace(0, 3, 32))[None, :] * np.ones((32, 1))] * 3)] * 50)
    smooth = smooth + 0.001 * np.random.default_rng(5).random(smooth.shape)
    assert abs(clutter.spectral_slope(white)) < 0.3
    assert clutter.spectral_slope(smooth) < -1.5
    assert clutter.gradient_energy(white) > 10 * clutter.gradient_energy(smooth)


# ---------------------------------------------------------------- OOD detectors and metrics

def test_metrics_on_separable_and_identical_scores():
    far = id_positive_metrics(np.linspace(10, 11, 500), np.linspace(0, 1, 500))
    assert far == {"auroc": 1.0, "aupr_in": pytest.approx(1.0), "aupr_out": pytest.approx(1.0), "fpr95": 0.0}
    same = np.random.default_rng(6).random(20000)
    tie = id_positive_metrics(same[:10000], same[10000:])
    assert tie["auroc"] == pytest.approx(0.5, abs=0.02)
    assert tie["fpr95"] == pytest.approx(0.95, abs=0.01)   # identical scores: 95% of OOD accepted


def test_fpr95_convention_in_distribution_is_positive():
    """ID scores 0..99: the threshold accepting 95% of them is 5. OOD scores 0..9 and 50..59:
    those >= 5 are accepted as in-distribution: 5 + 10 of 20."""
    ids = np.arange(100, dtype=float)
    ood = np.concatenate([np.arange(10), np.arange(50, 60)]).astype(float)
    m = id_positive_metrics(ids, ood)
    assert m["fpr95"] == pytest.approx(15 / 20)
    # swapping the roles of the two sets changes AUPR-In and AUPR-Out places, not the AUROC sum
    swapped = id_positive_metrics(-ood, -ids)
    assert swapped["auroc"] == pytest.approx(m["auroc"])
    assert swapped["aupr_in"] == pytest.approx(m["aupr_out"]) and swapped["aupr_out"] == pytest.approx(m["aupr_in"])


def test_every_detector_separates_training_like_from_far_away_features():
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 5, size=(3, 16))
    train_y = np.repeat(np.arange(3), 200)
    train = centres[train_y] + rng.normal(size=(600, 16))
    test_y = np.repeat(np.arange(3), 100)
    test = centres[test_y] + rng.normal(size=(300, 16))
    far = rng.normal(0, 1, size=(300, 16)) + 12 * rng.choice([-1, 1], size=(300, 16))
    head = centres / 5  # logits that favour the right centre, weakly for far-away points
    det = Detectors(train.astype(np.float32), train_y)
    s_id, s_ood = det.scores(test @ head.T, test), det.scores(far @ head.T * 0.01, far)
    for name in DETECTORS:
        assert id_positive_metrics(s_id[name], s_ood[name])["auroc"] > 0.9, name


# ---------------------------------------------------------------- logit decomposition

def test_decomposition_sums_back_to_the_logits():
    rng = np.random.default_rng(8)
    w, b = rng.normal(size=(4, 6)), np.array([3.0, 0.0, -1.0, 0.5])
    f = rng.normal(size=(500, 6))
    logits = f @ w.T + b
    d = logit_decomposition(logits, f, w, b, ["a", "b", "c", "d"], f, np.random.default_rng(0))
    assert d["reconstruction_error"] < 1e-9
    assert d["mean_bias_part"] + d["mean_weight_part"] == pytest.approx(d["mean_margin"])
    assert d["absorber"] == "a"  # the big bias wins most images
    assert 0 < d["decided_by_bias"] <= 1 and set(d["cos_weight_noise_mean"]) == {"a", "b", "c", "d"}
    # the head-bias counterfactual: with every bias zeroed, class a keeps the images its weights win
    assert d["absorber_share"] == pytest.approx(((f @ w.T + b).argmax(1) == 0).mean())
    assert d["absorber_share_without_bias"] == pytest.approx(((f @ w.T).argmax(1) == 0).mean())
    assert d["absorber_share_without_bias"] < d["absorber_share"]
    # the big bias dealt to another class moves its images there: the trained deal tops every deal
    # that moves it, and ties (about a quarter) with those that leave 3.0 on class a
    assert d["bias_deals"] == 99 and d["top_share_dealt_mean"] < d["absorber_share"]


def test_the_bias_deal_rank_is_uniform_when_the_biases_do_not_matter_and_top_when_they_do():
    from analysis.decomposition import bias_deal, top_share as _top_share
    rng = np.random.default_rng(3)
    # biases far smaller than the weight term's spread: every deal gives the same top share (ties),
    # and the random tie-break makes the rank uniform on 0..99 over trials
    ranks = []
    for i in range(400):
        weight_term = rng.normal(size=(300, 5)) * 10 + np.array([1.0, 0, 0, 0, 0])
        ranks.append(bias_deal(weight_term, rng.normal(0, 1e-6, 5), np.random.default_rng(i))["bias_deal_rank"])
    counts = np.bincount(np.array(ranks) // 10, minlength=10)
    assert counts.min() > 20 and counts.max() < 65, counts        # about 40 per decile
    # exchangeable biases of weight-term size: the rank is still uniform (mean 49.5, sd 28.9)
    ranks = [bias_deal(rng.normal(size=(300, 5)), rng.normal(0, 1, 5), np.random.default_rng(i))["bias_deal_rank"]
             for i in range(400)]
    assert abs(np.mean(ranks) - 49.5) < 4.5, np.mean(ranks)   # 3 standard errors of a mean of 400
    # a bias aligned with the weights' own favourite concentrates noise: every deal that moves it
    # elsewhere (about 4 in 5) ranks below the trained one, the rest tie with it
    weight_term = rng.normal(size=(300, 5)) + np.array([0.5, 0, 0, 0, 0])
    out = bias_deal(weight_term, np.array([2.0, 0, 0, 0, 0]), np.random.default_rng(0))
    assert (out["bias_deal_rank"] >= 70
            and out["top_share_dealt_mean"] < _top_share(weight_term + [2.0, 0, 0, 0, 0]) - 0.1)



def test_the_identity_question_says_whether_the_weights_or_the_biases_pick_the_absorber():
    """Known answers: weights that favour class 0 by far keep it the absorber in every deal of
    small biases (kept 1); weight terms that are pure noise, biases 3, 2, 1, 0, -1: whoever holds
    the 3 absorbs, so class 0 stays the absorber in about 1 deal in 5, while bias_deal's rank
    cannot see it (every deal concentrates alike: the trained deal is one of them in law)."""
    from analysis.decomposition import bias_deal
    rng = np.random.default_rng(5)
    weights_decide = rng.normal(size=(300, 5)) + np.array([5.0, 0, 0, 0, 0])
    assert bias_deal(weights_decide, rng.normal(0, 0.1, 5), np.random.default_rng(0))["absorber_kept_by_deals"] == 1.0
    kept, ranks = [], []
    for i in range(200):
        out = bias_deal(rng.normal(0, 0.01, (300, 5)), np.array([3.0, 2, 1, 0, -1]), np.random.default_rng(i))
        kept.append(out["absorber_kept_by_deals"])
        ranks.append(out["bias_deal_rank"])
    assert np.mean(kept) == pytest.approx(0.2, abs=0.02)
    assert abs(np.mean(ranks) - 49.5) < 4.5     # uniform: the rank test has no power here

# ---------------------------------------------------------------- frequency probes

@pytest.mark.parametrize("kind", ["lowpass", "highpass"])
def test_band_limited_noise_keeps_only_its_band(kind):
    ctx = NoiseContext(torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3]), torch.zeros(1, 3, 32, 32))
    x = band_limited_gaussian(400, 0, ctx, kind, 0.25)
    power = (torch.fft.fft2(x - x.mean(dim=(2, 3), keepdim=True)).abs() ** 2).mean(dim=(0, 1))
    f = radial_frequency()
    outside = (f > 0.125) if kind == "lowpass" else ((f < 0.125) & (f > 0))
    assert power[outside].sum() < 1e-6 * power.sum()
    torch.testing.assert_close(x.std(dim=(2, 3)).mean(0), ctx.std, atol=0.01, rtol=0)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), ctx.mean, atol=1e-3, rtol=0)


# ---------------------------------------------------------------- training interventions

MEAN, STD = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.2, 0.2, 0.2])


def test_outlier_exposure_adds_marked_noise_and_a_uniform_loss():
    iv = TrainingIntervention("outlier_exposure", None, 3, MEAN, STD)
    x, y = torch.rand(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x2, y2 = iv.batch(x, y, torch.Generator().manual_seed(0))
    assert len(x2) == 12 and (y2[8:] == -1).all() and torch.equal(x2[:8], x)
    logits = torch.zeros(12, 3)  # uniform predictions: the outlier term is log 3 per image
    logits[:8, :] = torch.nn.functional.one_hot(y, 3) * 50
    assert iv.loss(logits, y2, 0.0).item() == pytest.approx(0.5 * np.log(3), abs=1e-4)


def test_noise_class_labels_noise_as_the_extra_class():
    iv = TrainingIntervention("noise_class", None, 3, MEAN, STD)
    x2, y2 = iv.batch(torch.rand(16, 3, 32, 32), torch.zeros(16, dtype=torch.long), torch.Generator().manual_seed(0))
    assert len(x2) == 18 and (y2[16:] == 3).all()
    torch.testing.assert_close(x2[16:].mean(), torch.tensor(0.5), atol=0.02, rtol=0)


def test_train_noise_aug_perturbs_by_at_most_its_strength():
    iv = TrainingIntervention("train_noise_aug", 0.1, 3, MEAN, STD)
    x = torch.full((64, 3, 32, 32), 0.5)
    x2, _ = iv.batch(x, torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(0))
    per_image = (x2 - x).std(dim=(1, 2, 3))
    assert per_image.max() <= 0.1 * 1.1 and per_image.mean() == pytest.approx(0.05, abs=0.01)


def test_none_changes_nothing():
    iv = TrainingIntervention("none", None, 3, MEAN, STD)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4) % 3
    x2, y2 = iv.batch(x, y, torch.Generator())
    assert x2 is x and y2 is y
