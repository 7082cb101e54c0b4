"""Realistic null studies (and planted effects) in the trial.json/arrays.npz contract.

The tests of analysis/ must keep their size under the nulls real studies meet, not only under
"everything is exchangeable". A study written here is what a sweep would leave in its storage
(study.json, one folder per grid point with trial.json + arrays.npz), with the structure real
trainings show but no effect of the kind each test looks for:

- **the noise node is a far leaf**: per run, class means are vectors (a shared component plus
  per-class variation, iid over classes, so the class labels carry no information about the
  class-class geometry); the noise mean is far from every class and closest to one class, so
  it hangs as a leaf on that class. Distances, the MST and the noise neighbour come from the
  trial's own code (study.probe.geometry);
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

`Effects` plants one effect at a time for power; `null_holds` says, per test id, whether a
study's truth is the test's null, so the calibration (analysis/calibration.py) counts a rejection
as a false positive only where it is one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import (CIFAR10_CLASSES, COMPLETED, DIVERGED, NOISE_NODE, SCHEMA_VERSION, STUDY_JSON,
                       TUNE_ERROR_TXT, trial_dirname)
from .stats import DISCORDANCE_MARGIN
from .synthetic import CLUTTER_MEASURES, _mst, write_trial
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


@dataclass(frozen=True)
class Design:
    """A study's layout: K classes, S seeds in every arm of one axis (seeds paired across arms)."""
    k: int = 10
    seeds: int = 12
    axis: str = "augmentation"      # augmentation | intervention | activation | class_intervention
    arms: int = 2                   # augmentation/intervention arms (none first); class_intervention: targets (x 2 strengths, + none)
    families: tuple[str, ...] = ("gaussian", "uniform")
    coupling: float = 0.5           # P(a seed's run in an arm keeps that seed's absorber / nearest class / shares)
    diverged: int = 1               # runs that diverged (trial.json with status diverged)
    missing: int = 1                # runs with no trial.json (the trial never finished)
    n_noise: int = 5000             # noise images per family (pred_<family>): a trial's default (study/config.py);
                                    # with a few hundred, shares step by 1/n and the paired tests on them tie
    epochs: int = 3


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
    causal: float = 0.0               # class_intervention arms: P(the absorber is the target) at the top strength, half that at the lower
    intervention: float = 0.0         # intervention arms: the top share shrinks by this fraction
    manipulation: float = 1.0         # blur lowers the target's pixel clutter by this many class sds per unit strength


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
        "head_absorption": True,
        "noise_lookalike": True,       # the noise bank's clutter is drawn apart from every class's
        "intervention_effect": effects.intervention == 0,
        "causal_effect": effects.causal == 0,
        "causal_absorber": effects.causal == 0,
        "causal_dose": effects.causal == 0,
        "manipulation_check": effects.manipulation == 0,
    }


def _equivalence_truth(design: Design, effects: Effects, same_arms: bool) -> bool | str | None:
    """The equivalence test's null is a discordance rate >= the margin: True at the margin (where its
    size is attained), INTERIOR above it (an effect of the condition only raises the rate), False
    below it with arms alike; None (unknown) for an effect on arms already below the margin."""
    rate = discordance(design, effects)
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
                  {f: {m: float(MEASURE_SCALE[m][0] + MEASURE_SCALE[m][1] * rng.standard_normal()) for m in CLUTTER_MEASURES}
                   for f in design.families}, tree)


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


def geometry(class_means: np.ndarray, noise_mean: np.ndarray, classes: list[str]):
    """What a trial computes from its feature means (study/probe.py's geometry; a test keeps the
    two equal): cosine distances d = (1 - cos)/2 over the K classes and the noise node, and their
    minimum spanning tree (networkx; distances drawn from continuous vectors never tie)."""
    nodes = list(classes) + [NOISE_NODE]
    v = np.vstack([class_means, noise_mean[None]])
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    dist = (1 - np.clip(unit @ unit.T, -1, 1)) / 2
    np.fill_diagonal(dist, 0)
    return nodes, dist, [[u, v, w] for u, v, w in _mst(dist, nodes)]


def absorption_summary(pred: np.ndarray, classes: list[str], rng) -> tuple[dict, dict]:
    """Shares of the noise images per class and the run's summary, as study/measure.py writes them."""
    k = len(classes)
    p = np.bincount(pred, minlength=k) / len(pred)
    top = int(np.argmax(p))
    nz = p[p > 0]
    return dict(zip(classes, p.tolist())), {
        "absorber": classes[top], "top_share": float(p[top]),
        "entropy_norm": float(-(nz * np.log(nz)).sum() / np.log(k)),
        "mean_max_softmax": float(rng.uniform(0.5, 0.95))}


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
    for f in design.families:
        a = _seeded(st, ("absorber", seed, f), design.coupling, lambda: int(rng.choice(k, p=st.absorber_p)), rng)
        if effects.favourite_link and rng.random() < effects.favourite_link:
            a = favourite
        if effects.condition and design.axis in AXIS_ARMS and arm_index == design.arms - 1 \
                and rng.random() < effects.condition:
            a = st.other
        if target is not None and rng.random() < effects.causal * arm["strength"] / max(BLUR_STRENGTHS):
            a = target
        p = _seeded(st, ("shares", seed, f, a), design.coupling, lambda: _shares_p(k, a, rng), rng)
        if effects.intervention and design.axis == "intervention" and arm_index > 0:
            p = p.copy()
            p[a] *= 1 - effects.intervention
            p /= p.sum()
        pred = rng.choice(k, size=design.n_noise, p=p)
        nearest = _seeded(st, ("nearest", seed, f), design.coupling, lambda: int(rng.choice(k, p=st.nearest_p)), rng)
        if effects.link and rng.random() < effects.link:
            nearest = a
        noise_mean = NOISE_SHARED * st.shared + NOISE_OWN * st.noise_dirs[f] + NOISE_PULL * (means[nearest] - st.shared)
        nodes, dist, tree = geometry(means, noise_mean, classes)
        absorption[f], summary[f] = absorption_summary(pred, classes, rng)
        distance[f] = {"nodes": nodes, "matrix": dist.tolist()}
        mst[f] = tree
        neighbour[f] = sorted(u if v == NOISE_NODE else v for u, v, _ in tree if NOISE_NODE in (u, v))
        bias = rng.normal(0, 0.1, k)
        decomposition[f] = {"absorber": summary[f]["absorber"], "n_images": int(np.sum(pred == classes.index(summary[f]["absorber"]))),
                            "mean_margin": float(rng.uniform(1, 4)), "mean_bias_part": float(rng.normal(0.2, 0.2)),
                            "mean_weight_part": float(rng.uniform(1, 3)), "bias_share_of_margin": float(rng.uniform(0, 0.5)),
                            "decided_by_bias": float(rng.uniform(0, 0.3)),
                            "bias": dict(zip(classes, bias.tolist())),
                            "weight_norm": dict(zip(classes, (1 + rng.normal(0, 0.05, k)).tolist())),
                            "noise_feature_norm": float(rng.uniform(2, 4)), "test_feature_norm": float(rng.uniform(5, 7))}
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
    trajectory = [{"epoch": e, "shares": dict(zip(classes, ((1 - e / design.epochs) * epoch0 + e / design.epochs * first).tolist()))}
                  for e in range(design.epochs + 1)]
    heldout = [c for c in CIFAR10 if c not in classes]
    trial = {"schema": SCHEMA_VERSION, "status": COMPLETED, "seed": seed, "noise_seed": 0, "classes": classes,
             "heldout_classes": heldout, "test_accuracy": float(rng.uniform(0.6, 0.9)),
             "noise_families": list(design.families), "absorption": absorption, "absorber": summary,
             "mst": mst, "distance": distance, "noise_neighbour": neighbour, "trajectory": trajectory,
             "heldout": {h: dict(zip(classes, rng.dirichlet(np.ones(k)).tolist())) for h in heldout},
             "clutter": clutter, "logit_decomposition": decomposition,
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
