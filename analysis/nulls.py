"""Realistic null studies (and planted effects) in the trial.json/arrays.npz contract.

The tests of analysis/ must keep their size under the nulls real studies meet, not only under
"everything is exchangeable". A study written here is what a sweep would leave in its storage
(study.json, one folder per grid point with trial.json + arrays.npz), with the structure real
trainings show but no effect of the kind each test looks for:

- **the noise node is a far leaf**: per run, class means are vectors (a shared component plus
  per-class variation, iid over classes, so the class labels carry no information about the
  class-class geometry); the noise mean is far from every class and closest to one class, so
  it hangs as a leaf on that class. Distances, the MST and the noise neighbour come from the
  trial's own code (analysis/measures.py, feature_geometry);
- **pixel clutter fixed per class**: the pixel measures of a class are the same numbers in every
  run (a sweep measures the same training images with the same noise_seed), drawn once per study
  independently of what absorbs, and so are the noise banks' (the same bank in every run);
  feature-space measures vary by run around a class value;
- **concentrated marginals**: the absorber and the class nearest the noise mean are each one
  class in ~75% of runs (the same class for both) but drawn independently within a run;
- **paired seeds**: every arm of the study's one axis runs the same seeds, and a seed's runs are
  alike across arms (same absorber and nearest class with probability `coupling`), with one run
  diverged and one missing (no trial.json) by default; the calibration sets the coupling of some
  studies so that the discordance rate sits exactly at the equivalence margin (the boundary of
  that test's null);
- **the untrained network's favourite class** (epoch 0 of the trajectory) concentrated on that
  class too, independent of the absorber;
- **arms without effect**: augmentation arms, training interventions against `none`, an
  architecture factor (activation: relu as the reference), and per-class interventions
  (class_intervention: blur on a target at two strengths) that change the target's pixel clutter
  (the manipulation works) but not where noise goes.
- **the explanation probes** (amplitude, BatchNorm modes: study/explanation_probes.py,
  analysis/explanations.py), each pair of levels a paired test compares alike in law within a run,
  so equal in expectation, with the values bounded and skewed as real ones are: the amplitude rows
  and the BatchNorm modes come from one softmax response per run (`v`, favouring the run's Gaussian
  absorber: the same network) to the same images, at a scale drawn per level around a run effect,
  so the mean max-softmax and the top share pile up near 1 and the KL to the label frequencies is
  >= 0 and right-skewed; the OOD
  rows (every detector against every family and held-out class) follow the binormal ROC model
  around a run effect, so the literature families' MSP AUROCs crowd the ceiling of 1; and the
  head's biases are exchangeable noise (one vector per run, `head_biases`) added to per-image
  weight terms (log p + Gumbel noise), the noise going where the sum is largest, so the absorber
  is picked with its bias: zeroing the biases lowers its share although they carry nothing (the
  selection that made the old bias_removal test invalid; bias_deal ranks the biases as given among
  random deals of them instead). Where the biases may overturn the weights' leader
  (`Design.overturn`) they are exchangeable with respect to the weights, bias_deal's null; drawn
  given that the planned absorbers still lead, they favour those classes a little. A run lacks one
  compared level with probability `lacking` (a missing pair: the paired tests must drop that run).

`Effects` plants one effect at a time for power; `null_holds` says, per test id, whether a
study's truth is the test's null, so the calibration (analysis/calibration.py) counts a rejection
as a false positive only where it is one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr, ndtri

from . import measures
from .anchors import published_orderings
from .contract import CIFAR10_CLASSES, COMPLETED, DIVERGED, SCHEMA_VERSION, STUDY_JSON, TUNE_ERROR_TXT, trial_dirname
from .decomposition import bias_deal, margin_split
from .explanations import BN_REFERENCE
from .stats import DISCORDANCE_MARGIN
from .synthetic import AMPLITUDES, BN_MODES, CLUTTER_MEASURES, DETECTORS, softmax_rows, write_trial
from .why import PIXEL_MEASURES

CIFAR10 = list(CIFAR10_CLASSES)
FEATURE_MEASURES = [m for m in CLUTTER_MEASURES if m not in PIXEL_MEASURES]
# (mean, sd) of each measure across classes, from the ranges synthetic.py plants
MEASURE_SCALE = {m: ((lo + hi) / 2, (hi - lo) / 4) for m, (lo, hi) in CLUTTER_MEASURES.items()}
# class_intervention: blur lowers these pixel measures of its target (as causal.INTENDED says)
BLURRED = ("png_bits_per_pixel", "gradient_energy", "spectral_slope")
AXIS_ARMS = {"augmentation": ["none", "flip", "flip_crop", "flip_crop_cutout", "trivialaugment"],
             "intervention": ["none", "outlier_exposure", "train_noise_aug"],
             "activation": ["relu", "gelu", "tanh"]}      # a factor axis (analysis/factors.py)
BLUR_STRENGTHS = (1.0, 2.0)

# geometry of the penultimate features (checked in tests/test_nulls.py): with these the noise
# node is a leaf in every run, hung on its designated nearest class in ~97%, and far: its nearest
# class is farther (d ~0.29) than the longest class-class tree edge in ~93% of runs (K = 10)
DIM = 32                  # feature dimension
SHARED = 6.0              # norm of the component all class means share (ReLU features: high cosines)
NOISE_SHARED = 0.1        # the noise mean: little of the shared component,
NOISE_OWN = 2.0           # a direction of its own (orthogonal to the shared one), and
NOISE_PULL = 1.5          # some of its nearest class's own variation

# the explanation probes (amplitude, BatchNorm modes): per-run responses (see the module docstring)
PREFERENCE = 2.5          # the response's pull to the run's Gaussian absorber (logit units; classes N(0, 1))
LEVEL_SD = 0.5            # each level's own shift of the response, per class (a BatchNorm mode, an amplitude
                          # changes the features: the absorber may change too)
IMAGE_SD = 0.5            # each image's own deviation from the response, per class
SCALE = (0.5, 0.6, 0.4)   # a level's logit scale: exp(mean + sd_run * run effect + sd_level * own draw)
# the head's biases: N(0, sd^2) per class, sd log-uniform over BIAS_SD per run (in units of the Gumbel(0, 1)
# image-to-image logit noise): the spread of sd(bias) / mean margin over the 16 networks of the CPU
# hypotheses study (0.04-2, median 0.15) is matched by the margins this gives (tests/test_nulls.py)
BIAS_SD = (0.07, 3.0)
OOD_SEPARATION = (0.5, 3.5)  # the study's binormal ID/OOD separation d (AUROC = Phi(d / sqrt 2): 0.64-0.99)
OOD_SD = (0.6, 0.4)       # d's spread: sd of the run effect (shared by every set and detector), of each set's own draw
Z95 = float(ndtri(0.95))
N_TEST_PER_CLASS = 1000   # CIFAR-10's test images per class: the in-distribution side of the OOD rows


@dataclass(frozen=True)
class Design:
    """A study's layout: K classes, S seeds in every arm of one axis (seeds paired across arms)."""
    k: int = 10
    seeds: int = 12
    axis: str = "augmentation"      # augmentation | intervention | activation | class_intervention
    arms: int = 2                   # augmentation/intervention arms (none first); class_intervention: targets
                                    # (x 2 strengths, + none)
    families: tuple[str, ...] = ("gaussian", "uniform")
    coupling: float = 0.5           # P(a seed's run in an arm keeps that seed's absorber / nearest class / shares)
    diverged: int = 1               # runs that diverged (trial.json with status diverged)
    missing: int = 1                # runs with no trial.json (the trial never finished)
    n_noise: int = 5000             # noise images per family (pred_<family>): a trial's default (study/config.py);
                                    # with a few hundred, shares step by 1/n and the paired tests on them tie
    epochs: int = 3
    n_probe: int = 200              # images per amplitude and per BatchNorm mode (a trial's default, n_trajectory,
                                    # is 500: fewer keeps the calibration cheap, the per-run values a little noisier)
    lacking: float = 0.05           # P(a run lacks one level a probe's paired test compares: a missing pair)
    deal_images: int = 500          # images the random deals of the head's biases are ranked on (the trial uses all
                                    # n_noise: 99 deals of 5000 images per family would triple the calibration's time;
                                    # the trained deal ranked on the same images keeps the rank uniform under H0)
    overturn: bool = False          # the head's biases may overturn the weights' leader (drawn unconditioned: the
                                    # absorber is the class leading weight part + bias, at times not the planned one);
                                    # else drawn given that the planned absorbers still lead


@dataclass(frozen=True)
class Effects:
    """What is planted. The defaults plant nothing: absorber and nearest class uniform."""
    absorber_q: float | None = None   # P(absorber = the study's modal class); None: 1/K (uniform)
    nearest_q: float | None = None    # P(class nearest the noise mean = the same modal class); None: 1/K
    favourite_q: float | None = None  # P(the untrained network's favourite class = the same modal class); None: 1/K
    link: float = 0.0                 # P(the nearest class is set to the run's absorber)
    favourite_link: float = 0.0       # P(the absorber is set to the untrained network's favourite)
    condition: float = 0.0            # last arm (augmentation, activation): P(absorber = another class m')
    clutter: bool = False             # the modal class is the class with the most PNG bits per pixel
    tree: float = 0.0                 # P(a run's class means follow the study's planted tree)
    causal: float = 0.0               # class_intervention arms: P(the absorber is the target) at the top strength,
                                      # half that at the lower
    intervention: float = 0.0         # intervention arms: the top share shrinks by this fraction
    manipulation: float = 1.0         # blur lowers the target's pixel clutter by this many class sds per unit strength
    probes: float = 0.0               # the probes' second levels move by this many level sds: the largest amplitude's
                                      # scale up, the other BatchNorm modes' scale and pull to the absorber down, the
                                      # higher published literature families' separation up, the absorber's head bias up
    kang: float = 0.0                 # the smallest amplitude's logit scale down by this many level sds: its features
                                      # shrink and its mean prediction reverts to the label frequencies (Kang et al.)


# the realistic null of the tests that link two per-run labels (noise neighbour, epoch-0 favourite)
CONCENTRATED = Effects(absorber_q=0.75, nearest_q=0.75, favourite_q=0.75)


# the truth of a composite null's interior: the null holds, but the test's size is attained only at
# its boundary, so these studies say nothing about the size (the calibration leaves them out of it)
INTERIOR = "interior"


def null_holds(effects: Effects, design: Design) -> dict[str, bool | str]:
    """Per test id: is the study's truth that test's null? (False: a rejection is not an error;
    INTERIOR: deep inside a composite null, where a valid test rejects less than its size.)"""
    k = design.k
    uniform_absorber = effects.absorber_q in (None, 1 / k) and not effects.clutter and effects.favourite_link == 0
    uniform_nearest = effects.nearest_q in (None, 1 / k) and effects.link == 0
    same_arms = effects.condition == 0 and effects.causal == 0 and effects.intervention == 0
    return {
        "absorber_consistency": uniform_absorber and effects.condition == 0 and effects.causal == 0,
        "absorber_vs_condition": same_arms,
        "absorber_vs_condition_chi2": same_arms,
        "share_vs_condition": same_arms,
        "absorber_equivalence": _equivalence_truth(design, effects, same_arms),
        "factor_absorber": same_arms,
        "factor_top_share": effects.intervention == 0 and effects.causal == 0,
        "factor_epoch0_bias": True,
        "epoch0_favourite_is_absorber": effects.favourite_link == 0,
        "mst_edge": effects.tree == 0,
        "mst_overlap": effects.tree == 0,
        "distance_agreement": effects.tree == 0,
        "noise_edge": uniform_nearest,
        "noise_attachment": uniform_nearest,
        "noise_distance_agreement": uniform_nearest,
        "noise_neighbour": effects.link == 0,
        "clutter_absorption": not effects.clutter,
        "noise_lookalike": True,       # the noise bank's clutter is drawn apart from every class's
        "intervention_effect": effects.intervention == 0,
        "causal_effect": effects.causal == 0,
        "causal_absorber": effects.causal == 0,
        "causal_dose": effects.causal == 0,
        "manipulation_check": effects.manipulation == 0,
        "amplitude_msp_trend": effects.probes == 0,
        "amplitude_kl_trend": effects.probes == 0 and effects.kang == 0,
        "amplitude_far_kl": effects.probes == 0,
        "bn_mode_effect": effects.probes == 0,
        "literature_order": effects.probes == 0,
        "accuracy_trend": True,        # each run's test accuracy is drawn apart from everything it measures
        # the head's biases exchangeable with respect to the weights (bias_deal's null) only where they are
        # drawn free (overturn); drawn given that the planned absorbers lead, they favour those classes
        "bias_deal": design.overturn and effects.probes == 0,
    }


def _equivalence_truth(design: Design, effects: Effects, same_arms: bool) -> bool | str | None:
    """The equivalence test's null is a discordance rate >= the margin: True at the margin (where its
    size is attained), INTERIOR above it (an effect of the condition only raises the rate), False
    below it with arms alike; None (unknown) for an effect on arms already below the margin."""
    rate = discordance(design, effects)
    if design.overturn:     # the biases hand some runs' noise to other classes: the rate is only known to rise
        return INTERIOR if rate >= DISCORDANCE_MARGIN else None
    if abs(rate - DISCORDANCE_MARGIN) < 1e-9:
        return True if same_arms else INTERIOR
    if rate > DISCORDANCE_MARGIN:
        return INTERIOR
    return False if same_arms else None


def _absorber_q(effects: Effects) -> float | None:
    return effects.absorber_q if effects.absorber_q is not None or not effects.clutter else 0.75


def discordance(design: Design, effects: Effects) -> float:
    """P(a seed's absorber differs between two arms) when the arms do not differ: each run keeps
    the seed's absorber with probability c (the coupling), else draws afresh from p, so
    P(equal) = c^2 + (1 - c^2) sum p^2."""
    p = _categorical(design.k, 0, _absorber_q(effects))
    return (1 - design.coupling**2) * (1 - float((p**2).sum()))


def coupling_at(k: int, effects: Effects, rate: float = DISCORDANCE_MARGIN) -> float:
    """The coupling that puts the discordance rate exactly at `rate` (the equivalence test's
    boundary, where its size is attained)."""
    p = _categorical(k, 0, _absorber_q(effects))
    return float(np.sqrt(max(0.0, 1 - rate / (1 - float((p**2).sum())))))


# ---------------------------------------------------------------- one study

@dataclass
class _Study:
    """Everything drawn once per study."""
    classes: list[str]
    modal: int
    other: int                      # the condition effect's class
    absorber_p: np.ndarray
    nearest_p: np.ndarray
    favourite_p: np.ndarray
    shared: np.ndarray              # the class means' shared component
    noise_dirs: dict[str, np.ndarray]
    clutter: dict[str, np.ndarray]  # measure -> (K,) class values
    noise_clutter: dict[str, dict]  # family -> measure -> the bank's value (the same bank in every run)
    tree: list[tuple[int, int]]     # planted tree over classes (parent, child)
    ood_separation: float           # the binormal separation of ID and noise scores around which runs vary
    seed_state: dict = field(default_factory=dict)


def _categorical(k: int, modal: int, q: float | None) -> np.ndarray:
    if q is None:
        return np.full(k, 1 / k)
    p = np.full(k, (1 - q) / (k - 1))
    p[modal] = q
    return p


def _draw_study(design: Design, effects: Effects, rng) -> _Study:
    k = design.k
    classes = CIFAR10 if k == 10 else [CIFAR10[i] for i in sorted(rng.choice(10, k, replace=False))]
    clutter = {m: MEASURE_SCALE[m][0] + MEASURE_SCALE[m][1] * rng.standard_normal(k) for m in CLUTTER_MEASURES}
    modal = int(np.argmax(clutter["png_bits_per_pixel"])) if effects.clutter else int(rng.integers(k))
    other = int((modal + rng.integers(1, k)) % k)
    q = _absorber_q(effects)
    shared = rng.standard_normal(DIM)
    shared *= SHARED / np.linalg.norm(shared)
    unit = shared / SHARED
    dirs = {}
    for f in design.families:
        w = rng.standard_normal(DIM)
        w -= (w @ unit) * unit
        dirs[f] = w * np.sqrt(DIM) / np.linalg.norm(w)
    order = rng.permutation(k)
    tree = [(int(order[rng.integers(i)]), int(order[i])) for i in range(1, k)]
    return _Study(classes, modal, other, _categorical(k, modal, q), _categorical(k, modal, effects.nearest_q),
                  _categorical(k, modal, effects.favourite_q), shared, dirs, clutter,
                  {f: {m: float(MEASURE_SCALE[m][0] + MEASURE_SCALE[m][1] * rng.standard_normal())
                       for m in CLUTTER_MEASURES}
                   for f in design.families}, tree, float(rng.uniform(*OOD_SEPARATION)))


def _class_means(st: _Study, design: Design, effects: Effects, seed: int, rng) -> np.ndarray:
    """(K, DIM): the seed's class means (alike across arms), each arm adding a little of its own.
    With a planted tree, a run's class variation is a random walk down the study's tree."""
    k = design.k
    base = st.seed_state.setdefault(("means", seed), rng.standard_normal((k, DIM)))
    own = base * np.sqrt(0.9) + np.sqrt(0.1) * rng.standard_normal((k, DIM))
    if effects.tree and rng.random() < effects.tree:
        walk = np.zeros((k, DIM))
        root = st.tree[0][0]
        walk[root] = rng.standard_normal(DIM)
        for parent, child in st.tree:
            walk[child] = walk[parent] + 0.35 * rng.standard_normal(DIM)
        own = walk
    return st.shared + own


def _seeded(st: _Study, key, coupling: float, draw, rng):
    """The seed's value of `key` with probability `coupling`, else a fresh draw (same marginal)."""
    if key not in st.seed_state:
        st.seed_state[key] = draw()
    return st.seed_state[key] if rng.random() < coupling else draw()


def _shares_p(k: int, absorber: int, rng, top: tuple[float, float] = (0.3, 0.98)) -> np.ndarray:
    """A run's class probabilities for noise: the absorber takes a share drawn from `top` (at
    least 1.5/K, so that it can lead), the rest a Dirichlet spread that stays below it."""
    share = rng.uniform(max(top[0], 1.5 / k), max(top[1], 1.5 / k))
    for _ in range(1000):
        rest = (1 - share) * rng.dirichlet(np.ones(k - 1))
        if rest.max() < share:
            return np.insert(rest, absorber, share)
    return np.insert(np.full(k - 1, (1 - share) / (k - 1)), absorber, share)


def absorption_summary(pred: np.ndarray, classes: list[str], rng) -> tuple[dict, dict]:
    """Shares of the noise images per class and the run's summary, measured as a trial measures them
    (analysis/measures.py) from softmax rows whose confidence is drawn per run."""
    k = len(classes)
    confidence = float(rng.uniform(0.5, 0.95))
    return measures.shares(pred, classes), measures.absorption_summary(pred, softmax_rows(pred, k, confidence), classes)


def head_biases(planned: list[tuple[int, np.ndarray]], k: int, shift: float, overturn: bool, rng,
                batch: int = 256) -> np.ndarray:
    """The run's head biases, exchangeable noise a priori: sd log-uniform over BIAS_SD, then
    N(0, sd^2) per class. `overturn`: as drawn, so the biases may hand the noise to another class
    than the weights' leader (the absorber a study then names is picked with its bias: zeroing
    the biases takes its noise away). Else drawn given that each family's planned absorber a
    still leads log p + b (p the family's weight-part shares), by rejection sampling of (sd, b)
    from the prior (exact): the milder selection of a study whose weights pick the absorber.
    `shift`: the planted head-bias effect (the first family's absorber's bias raised by `shift` sds)."""
    logp = np.log(np.array([p for _, p in planned]))                  # (families, K)
    wins = np.array([a for a, _ in planned])
    while True:
        sd = np.exp(rng.uniform(*np.log(BIAS_SD), 1 if overturn else batch))
        b = sd[:, None] * rng.standard_normal((len(sd), k))
        b[:, wins[0]] += shift * sd
        ok = np.ones(len(sd), bool) if overturn else ((logp[None] + b[:, None]).argmax(2) == wins[None]).all(1)
        if ok.any():
            return b[int(np.argmax(ok))]


def _response(v: np.ndarray, eps: np.ndarray, scale: float, classes: list[str]) -> tuple[dict, np.ndarray]:
    """Where images go whose logits are scale * (v + eps) (study/explanation_probes.py's `predictions`:
    absorber, top share, normalised entropy, mean max-softmax, shares), and their mean prediction."""
    z = scale * (v[None] + eps)
    e = np.exp(z - z.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    k = len(classes)
    share = np.bincount(probs.argmax(1), minlength=k) / len(probs)
    top, nz = int(share.argmax()), share[share > 0]
    return {"absorber": classes[top], "top_share": float(share[top]),
            "entropy_norm": float(-(nz * np.log(nz)).sum() / np.log(k)),
            "mean_max_softmax": float(probs.max(1).mean()), "absorber_softmax": float(probs[:, top].mean()),
            "shares": dict(zip(classes, share.tolist()))}, probs.mean(0)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats, 0 log 0 = 0 (q > 0 here: the label frequencies of all K classes)."""
    on = p > 0
    return float(np.sum(p[on] * np.log(p[on] / q[on])))


def _probes(st: _Study, design: Design, effects: Effects, absorber: int, rng) -> tuple[dict, dict]:
    """The run's amplitude and BatchNorm records (study/trial.py's hypothesis_probes): one
    response vector v for the run (its network; favouring its Gaussian absorber), the same white
    noise at every amplitude and other Gaussian images for the modes, a logit scale drawn per
    level around the run's own. Every level alike in law (the null of the probes' paired tests)
    but the planted shift's; with probability `lacking` a run lacks one compared level."""
    k, classes, n = design.k, st.classes, design.n_probe
    v = rng.standard_normal(k)
    v[absorber] += PREFERENCE
    run = rng.standard_normal()

    def scale(shift: float = 0.0) -> float:
        return float(np.exp(SCALE[0] + SCALE[1] * run + SCALE[2] * (rng.standard_normal() + shift)))

    freq = np.full(k, 1 / k)                  # no class intervention here changes the labels
    test_norm = float(rng.uniform(5, 8))
    z = IMAGE_SD * rng.standard_normal((n, k))    # the same draw at every amplitude
    rows = []
    for a in AMPLITUDES:
        s = scale((effects.probes if a == max(AMPLITUDES) else 0.0) - (effects.kang if a == min(AMPLITUDES) else 0.0))
        where, mean_prediction = _response(v + LEVEL_SD * rng.standard_normal(k), z, s, classes)
        norm = test_norm * s * float(rng.uniform(0.3, 0.6))
        rows.append({"amplitude": float(a), **where, "mean_prediction": dict(zip(classes, mean_prediction.tolist())),
                     "kl_uniform": _kl(mean_prediction, np.full(k, 1 / k)),
                     "kl_label_frequencies": _kl(mean_prediction, freq),
                     "noise_feature_norm": norm, "feature_norm_ratio": norm / test_norm})
    if rng.random() < design.lacking:         # a missing pair: the 1x row or the largest amplitude's
        lost = (1.0, max(AMPLITUDES))[int(rng.integers(2))]
        rows = [r for r in rows if r["amplitude"] != lost]
    amplitude = {"n_images": n, "label_frequencies": dict(zip(classes, freq.tolist())), "test_feature_norm": test_norm,
                 "not_piecewise_affine": [],   # the networks Hein et al.'s theorem is about
                 "rows": rows}
    others = [m for m in BN_MODES if m != BN_REFERENCE]
    lost = others[int(rng.integers(len(others)))] if rng.random() < design.lacking else None
    eps = IMAGE_SD * rng.standard_normal((n, k))
    pull = np.zeros(k)
    pull[absorber] = effects.probes        # planted: the other modes' response favours the absorber less
    modes = {m: _response(v + LEVEL_SD * (rng.standard_normal(k) - (0 if m == BN_REFERENCE else pull)), eps,
                          scale(0.0 if m == BN_REFERENCE else -effects.probes), classes)[0]
             for m in BN_MODES if m != lost}
    batchnorm = {"applicable": True, "n_images": n, "batch_size": n, "n_reestimate": n, "batchnorm_layers": 6,
                 "modes": modes}
    return amplitude, batchnorm


def binormal_metrics(d: np.ndarray, id_share: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC, AUPR-In, AUPR-Out and FPR95 with in-distribution as the positive class (study/ood.py's
    convention) when ID scores are N(d, 1), OOD scores N(0, 1) and ID is `id_share` of the images:
    AUROC = Phi(d / sqrt 2), FPR95 = 1 - Phi(d - z_0.95), the AUPRs by quadrature over thresholds."""
    d, pi = np.asarray(d, dtype=np.float64)[..., None], np.asarray(id_share, dtype=np.float64)[..., None]
    t = np.linspace(-8.0, 14.0, 221)
    tpr, fpr = ndtr(d - t), ndtr(-t)                      # ID, OOD above t
    low_ood, low_id = ndtr(t), ndtr(t - d)                # OOD, ID below t
    prec_in = pi * tpr / np.maximum(pi * tpr + (1 - pi) * fpr, 1e-300)
    prec_out = (1 - pi) * low_ood / np.maximum((1 - pi) * low_ood + pi * low_id, 1e-300)

    def area(y, x):
        return np.abs(((y[..., 1:] + y[..., :-1]) / 2 * np.diff(x, axis=-1)).sum(-1))
    return {"auroc": ndtr(d[..., 0] / np.sqrt(2)), "aupr_in": area(prec_in, tpr), "aupr_out": area(prec_out, low_ood),
            "fpr95": ndtr(Z95 - d[..., 0])}


def _ood(st: _Study, design: Design, effects: Effects, heldout: list[str], rng) -> dict:
    """The OOD rows (study/ood.py's evaluate): every detector against every noise family and
    held-out class, the binormal separation around the study's, shared by the run (a better
    detector network separates every set better), each set and detector its own draw; held-out
    classes (real images of other classes) a third as separated. The higher family of a published
    ordering moves up by `probes` draw sds; with probability `lacking` one literature family lacks
    its MSP row (a missing pair)."""
    sets = list(design.families) + [f"heldout:{h}" for h in heldout]
    higher = {hi.family for hi, _ in published_orderings()}
    lit = [f for f in design.families if f in {x.family for pair in published_orderings() for x in pair}]
    base = np.array([1 / 3 if s.startswith("heldout:") else 1.0 for s in sets]) * st.ood_separation
    shift = np.array([effects.probes if s in higher else 0.0 for s in sets])
    d = (base + OOD_SD[0] * rng.standard_normal())[:, None] + OOD_SD[1] * (
        rng.standard_normal((len(sets), len(DETECTORS))) + shift[:, None])
    n_test = design.k * N_TEST_PER_CLASS
    n_ood = np.array([N_TEST_PER_CLASS if s.startswith("heldout:") else design.n_noise for s in sets])
    m = binormal_metrics(d, np.broadcast_to((n_test / (n_test + n_ood))[:, None], d.shape))
    lost = lit[int(rng.integers(len(lit)))] if lit and rng.random() < design.lacking else None
    return {"rows": [{"detector": det, "ood_set": s, **{k: float(v[i, j]) for k, v in m.items()}}
                     for i, s in enumerate(sets) for j, det in enumerate(DETECTORS)
                     if not (s == lost and det == "msp")]}


def _arm_values(design: Design, classes: list[str], rng) -> list:
    if design.axis == "class_intervention":
        targets = [classes[i] for i in sorted(rng.choice(len(classes), design.arms, replace=False))]
        return ["none"] + [{"target": t, "kind": "blur", "strength": s} for t in targets for s in BLUR_STRENGTHS]
    return AXIS_ARMS[design.axis][:design.arms]


def _run(st: _Study, design: Design, effects: Effects, arm, arm_index: int, seed: int, rng) -> tuple[dict, dict]:
    k, classes = design.k, st.classes
    means = _class_means(st, design, effects, seed, rng)
    absorption, summary, mst, distance, neighbour, decomposition, arrays = {}, {}, {}, {}, {}, {}, {}
    target = classes.index(arm["target"]) if isinstance(arm, dict) else None
    # the untrained network (epoch 0 of the trajectory): its favourite class and how much of the
    # Gaussian noise it takes, alike for a seed across arms (same initial weights)
    favourite = _seeded(st, ("favourite", seed), design.coupling, lambda: int(rng.choice(k, p=st.favourite_p)), rng)
    epoch0 = _seeded(st, ("epoch0", seed, favourite), design.coupling,
                     lambda: _shares_p(k, favourite, rng, top=(0.15, 0.9)), rng)
    planned = []
    for f in design.families:
        a = _seeded(st, ("absorber", seed, f), design.coupling, lambda: int(rng.choice(k, p=st.absorber_p)), rng)
        if effects.favourite_link and rng.random() < effects.favourite_link:
            a = favourite
        if effects.condition and design.axis in AXIS_ARMS and arm_index == design.arms - 1 \
                and rng.random() < effects.condition:
            a = st.other
        if target is not None and rng.random() < effects.causal * arm["strength"] / max(BLUR_STRENGTHS):
            a = target
        p = _seeded(st, ("shares", seed, f, a), design.coupling, lambda: _shares_p(k, a, rng), rng)  # noqa: B023  (drawn at once)
        if effects.intervention and design.axis == "intervention" and arm_index > 0:
            p = p.copy()
            p[a] *= 1 - effects.intervention
            p /= p.sum()
        planned.append((a, p))
    bias = head_biases(planned, k, effects.probes, design.overturn, rng)
    for i, f in enumerate(design.families):
        a, p = planned[i]
        # each image's weight terms: log p + Gumbel noise, so that without biases the images go to
        # the classes with probabilities p (the Gumbel-max trick); the noise goes where weight term
        # + bias is largest
        weight_term = np.log(p) - np.log(rng.standard_exponential((design.n_noise, k)))
        decomposition[f], pred = margin_split(weight_term, bias, classes)
        decomposition[f].update(bias_deal(weight_term[:design.deal_images], bias, rng))
        nearest = _seeded(st, ("nearest", seed, f), design.coupling, lambda: int(rng.choice(k, p=st.nearest_p)), rng)
        if effects.link and rng.random() < effects.link:
            nearest = a
        noise_mean = NOISE_SHARED * st.shared + NOISE_OWN * st.noise_dirs[f] + NOISE_PULL * (means[nearest] - st.shared)
        nodes, dist, tree = measures.feature_geometry(means, noise_mean, classes)
        absorption[f], summary[f] = absorption_summary(pred, classes, rng)
        distance[f] = {"nodes": nodes, "matrix": dist.tolist()}
        mst[f] = tree
        neighbour[f] = measures.noise_neighbour(tree)
        decomposition[f].update({"cos_weight_noise_mean": dict(zip(classes, rng.uniform(-0.2, 0.4, k).tolist())),
                                 "weight_norm": dict(zip(classes, (1 + rng.normal(0, 0.05, k)).tolist())),
                                 "noise_feature_norm": float(rng.uniform(2, 4)),
                                 "test_feature_norm": float(rng.uniform(5, 7)), "reconstruction_error": 0.0})
        arrays[f"pred_{f}"] = pred.astype(np.uint8)
        arrays[f"distance_{f}"] = dist
    pixel = {m: st.clutter[m].copy() for m in PIXEL_MEASURES}
    if target is not None:  # the manipulation: blur lowers its target's pixel clutter, the same in every run
        for m in BLURRED:
            pixel[m][target] -= effects.manipulation * arm["strength"] * MEASURE_SCALE[m][1]
    feature = {m: st.clutter[m] + 0.5 * MEASURE_SCALE[m][1] * rng.standard_normal(k) for m in FEATURE_MEASURES}
    clutter = {"sample_per_class": 100,
               "classes": {m: dict(zip(classes, v.tolist())) for m, v in {**pixel, **feature}.items()},
               "noise": {f: {m: v if m in PIXEL_MEASURES else v + 0.5 * MEASURE_SCALE[m][1] * rng.standard_normal()
                             for m, v in st.noise_clutter[f].items()} for f in design.families}}
    first = np.array([absorption[design.families[0]][c] for c in classes])
    trajectory = [{"epoch": e, "shares": dict(zip(classes, ((1 - e / design.epochs) * epoch0
                                                            + e / design.epochs * first).tolist()))}
                  for e in range(design.epochs + 1)]
    heldout = [c for c in CIFAR10 if c not in classes]
    amplitude, batchnorm = _probes(st, design, effects, classes.index(summary[design.families[0]]["absorber"]), rng)
    trial = {"schema": SCHEMA_VERSION, "status": COMPLETED, "seed": seed, "noise_seed": 0, "classes": classes,
             "heldout_classes": heldout, "test_accuracy": float(rng.uniform(0.6, 0.9)),
             "noise_families": list(design.families), "absorption": absorption, "absorber": summary,
             "mst": mst, "distance": distance, "noise_neighbour": neighbour, "trajectory": trajectory,
             "heldout": {h: dict(zip(classes, rng.dirichlet(np.ones(k)).tolist())) for h in heldout},
             "clutter": clutter, "logit_decomposition": decomposition, "ood": _ood(st, design, effects, heldout, rng),
             "amplitude": amplitude, "batchnorm": batchnorm,
             "timing": {"train_seconds": 1.0}, "warnings": []}
    return trial, arrays


def write_null_study(root: Path, design: Design = Design(), effects: Effects = Effects(), seed: int = 0,
                     name: str = "null") -> Path:
    """Write <root>/<name>/ as a sweep would: study.json and one folder per (arm, seed)."""
    rng = np.random.default_rng(seed)
    st = _draw_study(design, effects, rng)
    arms = _arm_values(design, st.classes, rng)
    study = Path(root) / name
    study.mkdir(parents=True, exist_ok=True)
    points = [({design.axis: v, "seed": s}, i, s) for i, v in enumerate(arms) for s in range(design.seeds)]
    lost = rng.choice(len(points), design.diverged + design.missing, replace=False)
    diverged, missing = set(lost[:design.diverged].tolist()), set(lost[design.diverged:].tolist())
    for n, (axes, i, s) in enumerate(points):
        folder = study / trial_dirname(axes)
        trial, arrays = _run(st, design, effects, axes[design.axis], i, s, rng)
        trial["config"] = {**axes, "classes": st.classes, "n_noise": design.n_noise, "noise_seed": 0}
        if n in missing:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / TUNE_ERROR_TXT).write_text("Traceback (most recent call last):\nRuntimeError: worker died\n")
            continue
        if n in diverged:
            trial = {k: trial[k] for k in ("schema", "seed", "noise_seed", "classes", "config")}
            trial.update({"status": DIVERGED, "diverged_at_epoch": int(rng.integers(1, design.epochs + 1)),
                          "trajectory": []})
            arrays = {}
        write_trial(folder, trial, arrays)
    (study / STUDY_JSON).write_text(json.dumps(
        {"name": name, "axes": [design.axis, "seed"], "grid": {design.axis: arms, "seed": list(range(design.seeds))},
         "points": [{"dir": trial_dirname(a), "axes": a} for a, _, _ in points]}))
    return study
