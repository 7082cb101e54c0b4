"""Which explanation holds? The probe-time experiments (amplitude sweep, BatchNorm modes, literature
noise families; study/explanation_probes.py) across runs, and the scoreboard.

Each probe gets one tidy table (amplitude, batchnorm, handover, literature), its tests (tests.csv
rows, the trained network the unit, all exploratory: none was pre-registered), and a figure.
The report ends with the hypothesis scoreboard: each published explanation, what it predicts in
this design, what the study measured, the test and its n, and a verdict derived from the
tests.csv row by the rules in VERDICT_RULES, never written by hand. One topic of the analysis
(`TOPIC`, analysis/topic.py): the probes' section among the others, the scoreboard closing the report.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import stats
from .anchors import ORDER_GAP, PUBLISHED, published_orderings
from .contract import BIAS_DEALS
from .document import Bullets, Code, Link, Paragraph, Section, Strong, Table, fmt_p, text
from .inference import PAIRED_MEAN, PRIMARY_CLUTTER, PRIMARY_NOISE, result_row
from .report import ReportContext
from .stats import ALPHA
from .tables import completed, epoch0_favourite, run_ids
from .topic import Findings, Topic, measured

NOISE = PRIMARY_NOISE             # the probes use the question's noise (the `gaussian` family's definition)
REFERENCE_AMPLITUDE = 1.0         # the data's own spread: the far field is compared with it
BN_REFERENCE = "eval"             # the running statistics, as trained and as every other probe sees it


# ---------------------------------------------------------------- tables (one per probe)

def has(r: dict, key: str) -> bool:
    return key in r.get("extra", {})


AMPLITUDE_COLUMNS = ["amplitude", "absorber", "top_share", "entropy_norm", "mean_max_softmax", "kl_uniform",
                     "kl_label_frequencies", "noise_feature_norm", "feature_norm_ratio", "share_to_gaussian_absorber",
                     "not_piecewise_affine"]


def amplitude_table(data) -> pd.DataFrame:
    """Per run and amplitude; share_to_gaussian_absorber: the share going to the run's absorber of
    the `gaussian` bank (does the same class keep absorbing as the noise grows?);
    not_piecewise_affine: the network's module kinds outside Hein et al.'s theorem ("" for a ReLU
    network; missing where the trial did not record it)."""
    rows = []
    for r in completed(data):
        if not has(r, "amplitude"):
            continue
        probe = r["extra"]["amplitude"]
        # the run's Gaussian absorber; None where the trial did not probe that family
        g = r["absorber"][r["families"].index(NOISE)] if NOISE in r["families"] else None
        outside = ", ".join(probe["not_piecewise_affine"]) if "not_piecewise_affine" in probe else None
        # the columns as recorded, but the last two, computed here
        rows += [{**run_ids(r), **{k: x.get(k) for k in AMPLITUDE_COLUMNS[:-2]},
                  "share_to_gaussian_absorber": x["shares"].get(g) if g else np.nan, "not_piecewise_affine": outside}
                 for x in probe["rows"]]
    return pd.DataFrame(rows, columns=["trial_id", "condition", "seed", *AMPLITUDE_COLUMNS])


BN_COLUMNS = ["mode", "absorber", "top_share", "entropy_norm", "mean_max_softmax", "eval_absorber",
              "share_to_eval_absorber", "n_images", "batch_size"]


def batchnorm_table(data) -> pd.DataFrame:
    """Per run (with BatchNorm layers) and mode; share_to_eval_absorber: the share going to the
    class that absorbs with the running statistics."""
    rows = []
    for r in completed(data):
        bn = r.get("extra", {}).get("batchnorm")
        if not bn or not bn.get("applicable"):
            continue
        ev = bn["modes"][BN_REFERENCE]["absorber"]
        rows += [{**run_ids(r), "mode": mode, **{k: m[k] for k in ("absorber", "top_share", "entropy_norm",
                                                                   "mean_max_softmax")},
                  "eval_absorber": ev, "share_to_eval_absorber": m["shares"].get(ev, 0.0),
                  "n_images": bn["n_images"], "batch_size": bn["batch_size"]} for mode, m in bn["modes"].items()]
    return pd.DataFrame(rows, columns=["trial_id", "condition", "seed", *BN_COLUMNS])


def handover(epochs: np.ndarray, shares: np.ndarray, classes: list[str]) -> dict:
    """From a run's trajectory (the share of each class per epoch): the untrained network's
    favourite (epoch 0), the trained absorber (the last epoch's top class), the hand-over epoch
    (the first epoch from which the top class is the trained absorber at every later epoch; 0 when
    the favourite leads throughout) and the first epoch the favourite no longer leads (None if
    never). Ties go to the first class in label order, as everywhere."""
    tops = np.asarray(shares).argmax(1)
    final = tops[-1]
    other = np.flatnonzero(tops != final)
    lost = np.flatnonzero(tops != tops[0])
    return {"epoch0_favourite": classes[tops[0]], "epoch0_share": float(shares[0][tops[0]]),
            "trained_absorber": classes[final], "favourite_is_absorber": bool(tops[0] == final),
            "handover_epoch": int(epochs[other[-1] + 1]) if len(other) else int(epochs[0]),
            "favourite_lost_at": int(epochs[lost[0]]) if len(lost) else None, "epochs": int(epochs[-1])}


def handover_table(data) -> pd.DataFrame:
    """Per run whose trajectory starts at epoch 0 (the untrained network)."""
    rows = [{**run_ids(r), **handover(r["trajectory_epochs"], r["trajectory"], r["classes"])}
            # a hand-over needs at least two epochs
            for r in completed(data) if epoch0_favourite(r) is not None and len(r["trajectory"]) > 1]
    return pd.DataFrame(rows, columns=["trial_id", "condition", "seed", "epoch0_favourite", "epoch0_share",
                                       "trained_absorber", "favourite_is_absorber", "handover_epoch",
                                       "favourite_lost_at", "epochs"])


def literature_table(ood: pd.DataFrame) -> pd.DataFrame:
    """Per condition and literature family: our MSP AUROC and FPR95 (mean, sd, 95% t interval over
    runs; in %, like the papers) beside the published baseline."""
    rows = []
    msp = ood[(ood["detector"] == "msp")] if len(ood) else ood
    for a in PUBLISHED:
        for condition, sub in (msp[msp["ood_set"] == a.family].groupby("condition", observed=True, sort=True)
                               if len(msp) else []):
            # in %, as the papers report them
            auroc, fpr = 100 * sub["auroc"].to_numpy(dtype=float), 100 * sub["fpr95"].to_numpy(dtype=float)
            lo, hi = stats.t_interval(auroc)
            rows.append({"condition": condition, "family": a.family, "paper": a.paper, "network": a.network,
                         "n_runs": len(sub), "msp_auroc": auroc.mean(),
                         "msp_auroc_sd": auroc.std(ddof=1) if len(sub) > 1 else np.nan,  # sample sd: none for one run
                         "msp_auroc_ci_low": lo, "msp_auroc_ci_high": hi,
                         "published_auroc": a.auroc, "msp_fpr95": fpr.mean(), "published_fpr95": a.fpr95,
                         "fpr95_comparable": a.fpr95_ours})
    return pd.DataFrame(rows, columns=["condition", "family", "paper", "network", "n_runs", "msp_auroc", "msp_auroc_sd",
                                       "msp_auroc_ci_low", "msp_auroc_ci_high", "published_auroc", "msp_fpr95",
                                       "published_fpr95", "fpr95_comparable"])


# ---------------------------------------------------------------- tests across runs

def _paired_test(test_id: str, hypothesis: str, condition: str, diffs: pd.Series, method: str,
                 variable: str = "") -> dict | None:
    """Sign-flip over runs of per-run paired differences (H0: symmetric about 0), with the mean
    and its 95% t interval; None with fewer than 2 runs."""
    # runs without a finite difference drop out (and from n)
    d = diffs.replace([np.inf, -np.inf], np.nan).dropna().to_numpy(dtype=float)
    if len(d) < 2:
        return None
    res = stats.sign_flip(d)
    lo, hi = stats.t_interval(d)
    return result_row(test_id, hypothesis, condition, NOISE,
                      {**res, "statistic": float(d.mean()), "n_runs": len(d), "ci_low": lo, "ci_high": hi},
                      f"sign-flip over runs of the per-run difference; {stats.LEVEL} t interval "
                      f"[{lo:+.3g}, {hi:+.3g}]; standardised mean difference {res['effect']:+.2f}; {method}",
                      variable=variable, effect=float(d.mean()), effect_name=PAIRED_MEAN,
                      p_min_of_n=stats.sign_flip_p_min)


KANG_RATIO = 1.0   # Kang et al.'s premise: the OOD input's features are smaller than the data's


def kang_pairs(sub: pd.DataFrame) -> pd.DataFrame:
    """Per run (one condition's amplitude rows), the amplitudes in Kang et al.'s regime: those whose
    noise features are smaller than the test images' (feature_norm_ratio < KANG_RATIO). With two
    or more, the KL to the label frequencies at the smallest and at the largest of them
    (kl_low, kl_high at amp_low < amp_high). Which amplitudes qualify is read per run; comparing
    the two ends by amplitude, not by the measured ratio, keeps the pair exchangeable under a null
    where every level is alike."""
    rows = []
    for trial_id, run in sub.groupby("trial_id", observed=True, sort=True):
        q = run[run["feature_norm_ratio"].astype(float) < KANG_RATIO].sort_values("amplitude")
        if len(q) >= 2:
            lo, hi = q.iloc[0], q.iloc[-1]
            rows.append({"trial_id": trial_id, "amp_low": float(lo["amplitude"]), "amp_high": float(hi["amplitude"]),
                         "kl_low": float(lo["kl_label_frequencies"]), "kl_high": float(hi["kl_label_frequencies"])})
    return pd.DataFrame(rows, columns=["trial_id", "amp_low", "amp_high", "kl_low", "kl_high"])


def amplitude_tests(amp: pd.DataFrame) -> list[dict]:
    """Per condition, per run, paired differences tested by sign-flip over runs:
    - amplitude_msp_trend (Hein et al.'s theorem): the mean max-softmax at the largest amplitude
      minus at 1x, the data's own spread (predicted: a rise);
    - amplitude_far_kl: KL(mean prediction || training label frequencies), the same two amplitudes.
      There the noise features are far larger than the data's (25-72x at 16x in our CPU networks):
      the regime of Hein et al., whose piecewise-affine networks concentrate their predictions far
      out, not of Kang et al. A sanity check of the far field, not evidence between explanations;
    - amplitude_kl_trend (Kang et al.): only in Kang's regime, the amplitudes whose noise features
      are smaller than the test images' (kang_pairs): the KL at the smallest of them minus at the
      largest (predicted: a fall as the features shrink, i.e. negative). Runs with fewer than two
      such amplitudes drop out; the row's method says which amplitudes qualified in how many runs."""
    tests = []
    for condition, sub in amp.groupby("condition", observed=True, sort=True):
        top = float(sub["amplitude"].max())   # the far field: the largest amplitude probed
        ref = sub[sub["amplitude"] == REFERENCE_AMPLITUDE].set_index("trial_id")
        far = sub[sub["amplitude"] == top].set_index("trial_id")
        common = ref.index.intersection(far.index)
        # a paired test over runs: an amplitude beyond 1x, and two runs with both levels
        if top > REFERENCE_AMPLITUDE and len(common) >= 2:
            for test_id, column, what in (("amplitude_msp_trend", "mean_max_softmax", "the mean max-softmax"),
                                          ("amplitude_far_kl", "kl_label_frequencies",
                                           "KL(mean prediction || training label frequencies)")):
                a, b = ref.loc[common, column].astype(float), far.loc[common, column].astype(float)
                row = _paired_test(test_id, f"{what} changes from 1x to {top:g}x the data's std", condition, b - a,
                                   f"{what}: {a.mean():.3f} at 1x, {b.mean():.3f} at {top:g}x (mean over runs)")
                tests += [row] if row else []
        pairs = kang_pairs(sub)
        runs = sub["trial_id"].nunique()
        spans = ", ".join(f"{lo:g}x-{hi:g}x in {n}" for (lo, hi), n in
                          pairs.groupby(["amp_low", "amp_high"]).size().items())
        row = _paired_test("amplitude_kl_trend", "KL(mean prediction || training label frequencies) falls as the noise "
                           "features shrink, among amplitudes whose features are smaller than the test images'",
                           condition, pairs["kl_low"] - pairs["kl_high"],
                           f"KL {pairs['kl_high'].mean():.3f} at the largest and {pairs['kl_low'].mean():.3f} at the "
                           "smallest amplitude with noise features below the test images' "
                           f"(norm ratio < {KANG_RATIO:g}; qualifying span per run: {spans or 'none'}; "
                           f"{runs - len(pairs)} of {runs} runs had fewer than two such amplitudes and drop out)")
        tests += [row] if row else []
    return tests


def batchnorm_tests(bn: pd.DataFrame) -> list[dict]:
    """Per condition and BatchNorm mode: the top share of Gaussian noise in that mode minus with
    the running statistics, per run (the BN-mismatch explanation predicts a fall)."""
    tests = []
    for condition, sub in bn.groupby("condition", observed=True, sort=True):
        ref = sub[sub["mode"] == BN_REFERENCE].set_index("trial_id")
        # each mode once, in the order the trials recorded them, each against the reference
        for mode in [m for m in dict.fromkeys(sub["mode"]) if m != BN_REFERENCE]:
            m = sub[sub["mode"] == mode].set_index("trial_id")
            common = ref.index.intersection(m.index)
            a, b = ref.loc[common, "top_share"].astype(float), m.loc[common, "top_share"].astype(float)
            row = _paired_test("bn_mode_effect", f"BatchNorm on {mode} changes the top share of {NOISE} noise",
                               condition, b - a, f"top share {a.mean():.3f} on the running statistics, "
                               f"{b.mean():.3f} on {mode} (mean over runs)", variable=mode)
            tests += [row] if row else []
    return tests


def bias_deal_tests(decomposition: pd.DataFrame) -> list[dict]:
    """Per condition: does the placement of the head's biases among the classes, as trained,
    concentrate Gaussian noise on one class more (or less) than the same bias values placed at
    random? Each run ranks its top share among its random deals (analysis/decomposition.py bias_deal;
    uniform under H0); the ranks are tested with stats.uniform_rank_test. The row's statistic is
    that test's, the mean over runs of rank/deals - 1/2, with a t interval over runs, so the
    verdict's direction is the p's; the top shares (as trained, dealt) and their difference, with
    its own interval, are in `method`. (Zeroing the biases is no such test: the absorber is the
    class that wins with them, so losing any biases lowers its share.)"""
    tests = []
    d = decomposition[decomposition["noise"] == NOISE] if len(decomposition) else decomposition
    if d.empty or "bias_deal_rank" not in d:
        return tests
    for condition, sub in d.dropna(subset=["bias_deal_rank"]).groupby("condition", observed=True, sort=True):
        deals = int(sub["bias_deals"].mode().iloc[-1])  # one setting per code revision (BIAS_DEALS); ties: the finer
        # a run with another number of deals ranks on another scale: left out, and counted in `method`
        other = int((sub["bias_deals"] != deals).sum())
        sub = sub[sub["bias_deals"] == deals]
        if len(sub) < 2:
            continue
        ranks = sub["bias_deal_rank"].astype(int).to_numpy()
        res = stats.uniform_rank_test(ranks, deals)
        lo, hi = stats.t_interval(ranks / deals - 0.5)
        diff = (sub["absorber_share"] - sub["top_share_dealt_mean"]).astype(float).to_numpy()
        dlo, dhi = stats.t_interval(diff)
        # the identity question (an estimate, see decomposition.bias_deal): deals that keep the absorber
        kept = pd.to_numeric(sub.get("absorber_kept_by_deals", pd.Series(dtype=float)), errors="coerce").dropna()
        # a t interval needs two runs
        klo, khi = stats.t_interval(kept.to_numpy(dtype=float)) if len(kept) >= 2 else (np.nan, np.nan)
        identity = (f"; the absorber stays the trained placement's in {kept.mean():.3f} of random deals "
                    f"[{stats.LEVEL} t interval {klo:.3f}, {khi:.3f}] (near 1: the weights decide which class "
                    f"absorbs; near 1/K: the biases do)" if len(kept) >= 2 else "")
        tests.append(result_row("bias_deal", "the placement of the head's biases as trained changes the top share of "
                                f"{NOISE} noise against the same biases placed at random", condition, NOISE,
                                {**res, "n_runs": len(sub), "ci_low": lo, "ci_high": hi},
                                f"per-run rank of the trained placement among {deals} random deals (ties broken at "
                                "random), exact test of uniform ranks; top share "
                                f"{sub['absorber_share'].mean():.3f} as trained, "
                                f"{sub['top_share_dealt_mean'].mean():.3f} dealt (mean over runs), difference "
                                f"{diff.mean():+.3f} [{stats.LEVEL} t interval {dlo:+.3g}, {dhi:+.3g}]" + identity
                                + f"; standardised {res['effect']:+.2f}"
                                + (f"; {other} run(s) with another number of deals left out" if other else ""),
                                effect=res["statistic"], effect_name="mean rank/deals - 1/2",
                                p_min_of_n=lambda n, k=deals: stats.uniform_rank_p_min(n, k)))
    return tests


def literature_tests(ood: pd.DataFrame) -> list[dict]:
    """Per condition and published ordering (a paper's families whose MSP AUROCs differ by >=
    ORDER_GAP points): our MSP AUROC of the higher minus the lower, per run."""
    tests = []
    # the papers' baselines score by max-softmax (MSP)
    msp = ood[ood["detector"] == "msp"] if len(ood) else ood
    if msp.empty:
        return tests
    for condition, sub in msp.groupby("condition", observed=True, sort=True):
        wide = sub.pivot_table(index="trial_id", columns="ood_set", values="auroc", observed=True)
        for hi, lo in published_orderings():
            if hi.family not in wide or lo.family not in wide:
                continue
            row = _paired_test("literature_order", f"the MSP AUROC of {hi.family} exceeds that of {lo.family}, as "
                               f"{hi.paper} found ({hi.auroc:g} vs {lo.auroc:g})", condition,
                               wide[hi.family] - wide[lo.family], f"MSP AUROC {wide[hi.family].mean():.3f} vs "
                               f"{wide[lo.family].mean():.3f} (mean over runs)", variable=f"{hi.family} > {lo.family}")
            tests += [row] if row else []
    return tests


def tests_of_study(frames: dict) -> list[dict]:
    """Every test of this module, from the tables above (and the OOD and decomposition tables) the
    study has."""
    # a table the study lacks: no rows, but the columns the tests select on
    empty = pd.DataFrame(columns=["condition", "noise", "detector", "ood_set", "auroc", "trial_id"])
    return (amplitude_tests(frames.get("amplitude", empty)) + batchnorm_tests(frames.get("batchnorm", empty))
            + bias_deal_tests(frames.get("logit_decomposition", pd.DataFrame()))
            + literature_tests(frames.get("ood", empty)))


# ---------------------------------------------------------------- the scoreboard

SUPPORTED, CONTRADICTED, NOT_SHOWN, NOT_TESTABLE = ("supported", "contradicted", "not shown",
                                                    "not testable with this design")
VERDICT_RULES = {
    SUPPORTED: "the test can reach its family's level at its n, its adjusted p is below "
               f"{ALPHA}, and the effect goes the way the explanation predicts (for a one-sided test, "
               "a rejection is that direction)",
    CONTRADICTED: "the same, but the effect goes the other way (two-sided tests only): the data reject the "
                  "prediction's direction",
    NOT_SHOWN: f"the test could reach its level at its n but its adjusted p is {ALPHA} or more: the study neither "
               "supports nor contradicts the prediction (a bound on the effect is its interval)",
    NOT_TESTABLE: "the study has no tests.csv row for the prediction (its design lacks what the test needs), "
                  "or the row's smallest attainable p cannot reach the level its family's correction asks, or "
                  "the explanation does not apply to the condition's networks (Hein et al.: ReLU networks)",
}


@dataclass(frozen=True)
class Hypothesis:
    key: str
    name: str                          # a short name for the scoreboard's table
    explanation: str
    prediction: str
    test: str                          # the tests.csv id its verdict comes from
    direction: int                     # the sign of the statistic the explanation predicts
    needs: str                         # what the design must have for the test to exist
    one_sided: bool = False            # the test's p is one-sided in `direction` (it cannot contradict)
    variable: Callable[[str], bool] = lambda v: True   # which rows of the test id speak to it
    per_condition: bool = True         # its rows are per study condition (else per intervention group)
    noise: str | None = NOISE
    # (frames, condition) -> why the explanation does not speak to this condition's networks ("" if it does)
    outside: Callable[[dict, str], str] = lambda frames, condition: ""


def _outside_hein(frames: dict, condition: str) -> str:
    """Hein et al.'s theorem covers networks piecewise affine in their input: not a condition whose
    networks have GELU, tanh, GroupNorm or LayerNorm (study/explanation_probes.py PIECEWISE_AFFINE)."""
    amp = frames.get("amplitude")
    if amp is None or amp.empty or "not_piecewise_affine" not in amp:
        return ""
    kinds = sorted({k for v in amp.loc[amp["condition"] == condition, "not_piecewise_affine"].dropna()
                    for k in str(v).split(", ") if k})
    return (f"Hein et al.'s result is about networks piecewise affine in their input (ReLU); this condition's "
            f"networks have {', '.join(kinds)}: the test's row stands, the explanation does not apply") if kinds else ""


HYPOTHESES = (
    Hypothesis("literature", "literature noise", "Literature noise as published: our networks rank the papers' noise "
               "families as their MSP baselines did (ODIN; Outlier Exposure)",
               f"a paper's families whose MSP AUROCs differ by >= {ORDER_GAP:g} points keep that order (the "
               "published AUROCs of ODIN's two families are within 1 point: no order to test)", "literature_order",
               +1, "the oe_gaussian, oe_blobs and rademacher families probed, with the MSP detector, >= 2 runs"),
    Hypothesis("kang", "reversion to the label marginal", "Reversion to the label marginal (Kang et al., ICLR 2024): "
               "far from the data, predictions revert to the optimal constant solution",
               "where the noise features are smaller than the test images' (Kang's premise), the mean prediction "
               "nears the training label frequencies as the amplitude, and with it the features, shrinks: KL(mean "
               "prediction || label frequencies) at the smallest such amplitude minus at the largest is negative",
               "amplitude_kl_trend", -1, "the amplitude probe with >= 2 amplitudes whose noise feature norm is below "
               "the test images' (per run), >= 2 such runs"),
    Hypothesis("hein", "far-field overconfidence", "Far-field ReLU overconfidence (Hein et al., CVPR 2019): scaling an "
               "input up drives a ReLU network's max-softmax to 1",
               "the mean max-softmax rises from 1x to the largest amplitude",
               "amplitude_msp_trend", +1, "the amplitude probe (amplitudes with 1 and a larger one), >= 2 runs",
               outside=_outside_hein),
    Hypothesis("bn_batch", "BatchNorm: batch statistics", "BatchNorm statistics mismatch: normalising the noise by its "
               "own statistics (not the training images' running ones) removes concentration. Narrow: without a "
               "no-BatchNorm control in the same design this says what recentring the noise does, not that "
               "BatchNorm carries the absorption",
               "with BatchNorm on the noise batch's own statistics, the top share falls",
               "bn_mode_effect", -1, "a model with BatchNorm layers and the BatchNorm probe (n_bn > 0), >= 2 runs",
               variable=lambda v: v == "batch_stats"),
    Hypothesis("bn_noise", "BatchNorm: re-estimated on noise",
               "BatchNorm statistics mismatch (running statistics re-estimated on noise)",
               "with running statistics re-estimated on noise, the top share falls", "bn_mode_effect", -1,
               "a model with BatchNorm layers and the BatchNorm probe (n_bn > 0), >= 2 runs",
               variable=lambda v: v == "noise_stats"),
    Hypothesis("initial_bias", "initial guessing bias", "Initial guessing bias carried over (Francazi et al., "
               "ICML 2024): the class the untrained network favours becomes the absorber",
               "within runs, the untrained network's favourite (epoch 0) is the trained absorber more often than "
               "the two's distributions over runs imply", "epoch0_favourite_is_absorber", +1,
               "a trajectory from epoch 0 and >= 3 runs per condition", one_sided=True),
    Hypothesis("head_bias", "head bias", "Head bias: where the head's biases sit among the classes sends the noise to "
               "the absorber (a rejection says the placement adds to the concentration, not that the weights do not)",
               "the biases as trained rank above the same bias values placed at random: the top share of noise "
               "falls when they are dealt at random", "bias_deal", +1,
               "the logit decomposition (random deals of the biases), >= 2 runs"),
    Hypothesis("clutter", "clutter", "Clutter / input complexity (Serra et al., ICLR 2020): noise, maximally complex, "
               "goes to the most cluttered class",
               f"across classes, the more cluttered a class ({PRIMARY_CLUTTER}), the more noise it absorbs",
               "clutter_absorption", +1, ">= 3 classes (2 classes have 2 relabellings: no test), >= 2 runs",
               variable=lambda v: v == PRIMARY_CLUTTER),
    Hypothesis("clutter_causal_noise", "clutter, causal (noise added)", "Clutter causes absorption (per-class "
               "intervention: Gaussian noise added to one class's training images)",
               "the target's share of noise rises", "causal_effect", +1,
               "a class_intervention axis with kind gaussian_noise and paired seeds",
               variable=lambda v: v == "gaussian_noise", per_condition=False),
    Hypothesis("clutter_causal_blur", "clutter, causal (blur)", "Clutter causes absorption (per-class intervention: "
               "one class's training images blurred)", "the target's share of noise falls", "causal_effect", -1,
               "a class_intervention axis with kind blur and paired seeds", variable=lambda v: v == "blur",
               per_condition=False),
    Hypothesis("frequency_causal", "class prior, causal (majority)", "The prior decides (Kang et al.'s constant "
               "solution under a changed label marginal: one class made the majority)",
               "the target's share of noise rises", "causal_effect", +1,
               "a class_intervention axis with kind majority and paired seeds", variable=lambda v: v == "majority",
               per_condition=False),
)


def verdict_of(row, h: Hypothesis, outside: str = "") -> tuple[str, str]:
    """(verdict, why) for one tests.csv row (None: no row), by VERDICT_RULES; `outside`: why the
    explanation does not apply to the condition's networks."""
    if row is None:
        return NOT_TESTABLE, f"no test in this study: needs {h.needs}"
    if outside:
        return NOT_TESTABLE, outside
    if not np.isfinite(row["p_value"]) or not bool(row["can_reject"]):
        return NOT_TESTABLE, (f"smallest attainable p {fmt_p(row['p_min'])} > {fmt_p(row['p_needed'])} needed at "
                              f"n = {row['n_runs']}")
    if not (np.isfinite(row["p_adjusted"]) and row["p_adjusted"] < ALPHA):
        return NOT_SHOWN, f"adjusted p {fmt_p(row['p_adjusted'])} >= {ALPHA}"
    # a one-sided test rejects only in the predicted direction: it cannot contradict
    if h.one_sided or np.sign(row["statistic"]) == h.direction:
        return SUPPORTED, f"adjusted p {fmt_p(row['p_adjusted'])} < {ALPHA}, in the predicted direction"
    return CONTRADICTED, f"adjusted p {fmt_p(row['p_adjusted'])} < {ALPHA}, against the predicted direction"


# what each test's statistic is, for the scoreboard's "measured" column
STATISTIC = {"literature_order": "MSP AUROC, higher minus lower family",
             "amplitude_kl_trend": "KL to the label frequencies, smallest minus largest amplitude with noise features "
                                   "below the test images'",
             "amplitude_msp_trend": "mean max-softmax, largest amplitude minus 1x",
             "bn_mode_effect": "top share, this mode minus the running statistics",
             "epoch0_favourite_is_absorber": "runs whose epoch-0 favourite is the absorber",
             "bias_deal": "mean rank of the trained biases among random deals (/deals - 1/2)",
             "clutter_absorption": "mean Spearman rho across classes",
             "causal_effect": "the target's share, intervened minus the same seed without"}


def _levels(frames: dict, test: str, condition: str, variable: str) -> str:
    """The levels behind a paired difference, mean over the condition's runs."""
    def mean(table, column, **where):
        t = frames.get(table, pd.DataFrame())
        if t.empty:
            return np.nan
        t = t[t["condition"] == condition]
        for k, v in where.items():
            t = t[t[k] == v]
        return float(pd.to_numeric(t[column], errors="coerce").replace([np.inf, -np.inf], np.nan).mean())
    amp = frames.get("amplitude", pd.DataFrame())
    if test == "amplitude_kl_trend" and len(amp):
        pairs = kang_pairs(amp[amp["condition"] == condition])
        return (f"{pairs['kl_high'].mean():.3f} at the largest, {pairs['kl_low'].mean():.3f} at the smallest "
                "amplitude below the test images' feature norm") if len(pairs) else "no run has two such amplitudes"
    if test == "amplitude_msp_trend" and len(amp):
        column = "mean_max_softmax"
        top = float(amp.loc[amp["condition"] == condition, "amplitude"].max())
        return (f"{mean('amplitude', column, amplitude=REFERENCE_AMPLITUDE):.3f} at 1x, "
                f"{mean('amplitude', column, amplitude=top):.3f} at {top:g}x")
    if test == "bn_mode_effect":
        return (f"top share {mean('batchnorm', 'top_share', mode=BN_REFERENCE):.3f} on the running statistics, "
                f"{mean('batchnorm', 'top_share', mode=variable):.3f} on {variable}")
    if test == "bias_deal":
        return (f"top share {mean('logit_decomposition', 'absorber_share', noise=NOISE):.3f} with the biases as "
                f"trained, {mean('logit_decomposition', 'top_share_dealt_mean', noise=NOISE):.3f} dealt at random")
    if test == "literature_order":
        hi, lo = variable.split(" > ")
        return (f"MSP AUROC {mean('ood', 'auroc', detector='msp', ood_set=hi):.3f} ({hi}) vs "
                f"{mean('ood', 'auroc', detector='msp', ood_set=lo):.3f} ({lo})")
    return ""


def _measured(row, frames: dict) -> str:
    """The estimate with its interval, and the levels behind it."""
    ci = (f" [{stats.LEVEL} CI {row['ci_low']:+.3g}, {row['ci_high']:+.3g}]"
          if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]) else "")
    levels = _levels(frames, row["test"], row["condition"], row["variable"])
    return (f"{STATISTIC.get(row['test'], 'statistic')}: {row['statistic']:+.3g}{ci}"
            + (f" ({levels})" if levels else ""))


SCOREBOARD_COLUMNS = ["hypothesis", "name", "explanation", "prediction", "condition", "variable", "test", "n_runs",
                      "statistic", "ci_low", "ci_high", "p_value", "p_adjusted", "family", "p_min", "can_reject",
                      "measured", "verdict", "why"]


def scoreboard(tests: pd.DataFrame, conditions: list[str], frames: dict | None = None) -> pd.DataFrame:
    """One row per explanation and condition (or intervention group): its tests.csv row, what was
    measured, and the verdict by VERDICT_RULES; a row without a test says what the design lacks."""
    rows = []
    for h in HYPOTHESES:
        hit = tests[(tests["test"] == h.test) & tests["variable"].map(h.variable)] if len(tests) else tests
        if h.noise is not None and len(hit):
            hit = hit[hit["noise"] == h.noise]
        # intervention groups come from the rows themselves; none: one "all" row saying what is missing
        wanted = conditions if h.per_condition else list(dict.fromkeys(hit["condition"])) or ["all"]
        for condition in wanted:
            found = hit[hit["condition"] == condition] if len(hit) else hit
            # no row: one NOT_TESTABLE row that says what the design lacks
            for row in ([r for _, r in found.iterrows()] or [None]):
                verdict, why = verdict_of(row, h, h.outside(frames or {}, condition))
                base = {"hypothesis": h.key, "name": h.name, "explanation": h.explanation, "prediction": h.prediction,
                        "condition": condition, "test": h.test, "verdict": verdict, "why": why}
                if row is None:
                    rows.append({**base, "variable": "", "measured": "not measured"})
                    continue
                rows.append({**base, **{k: row[k] for k in ("variable", "n_runs", "statistic", "ci_low", "ci_high",
                                                            "p_value", "p_adjusted", "family", "p_min", "can_reject")},
                             "measured": _measured(row, frames or {})})
    return pd.DataFrame(rows, columns=SCOREBOARD_COLUMNS)


# ---------------------------------------------------------------- figures

def plots(frames: dict, out) -> list[str]:
    from . import plots as P
    figures = [P.amplitude_curves(frames["amplitude"], out) if "amplitude" in frames else None,
               P.batchnorm_modes(frames["batchnorm"], out) if "batchnorm" in frames else None,
               P.handover_epochs(frames["handover"], out) if "handover" in frames else None]
    return [f for f in figures if f]


# ---------------------------------------------------------------- report

TABLES = ("amplitude", "batchnorm", "handover", "literature", "scoreboard")


def probes_section(ctx: ReportContext) -> Section:
    """The probe-time experiments: what each measured, in numbers and figures (the verdicts are
    in the scoreboard)."""
    s = Section("Probe-time experiments: which explanation?", key="probes")
    for part in (_literature_part, _amplitude_part, _batchnorm_part, _handover_part):
        s.blocks += part(ctx)
    return s


def _literature_part(ctx: ReportContext) -> list:
    lit = ctx.table("literature")
    if lit.empty:
        return []
    show = lit.assign(ours=[f"{m:.1f} [{lo:.1f}, {hi:.1f}]" for m, lo, hi in
                            zip(lit["msp_auroc"], lit["msp_auroc_ci_low"], lit["msp_auroc_ci_high"])],
                      published=lit["published_auroc"].map(lambda v: f"{v:.1f}"),
                      # a paper's FPR95 with OOD as the positive class is another quantity: shown, not compared
                      fpr95=[f"{m:.1f} vs {p:.1f}" if ok else f"{m:.1f} (paper: OOD-positive FPR95 {p:.1f})"
                             for m, p, ok in zip(lit["msp_fpr95"], lit["published_fpr95"], lit["fpr95_comparable"])])
    return [Paragraph(text(Strong("Literature noise, as published."), " The families of ODIN and Outlier Exposure, "
                           "drawn as their reference code draws them (study/noise.py), scored by max-softmax as the "
                           f"papers' baselines were: our AUROC (in %, mean and {stats.LEVEL} t interval over runs) "
                           "beside the published one. Other networks and training, so compare the pattern, not the "
                           "numbers:")),
            Table(show[["condition", "family", "paper", "network", "n_runs", "ours", "published", "fpr95"]],
                  caption=text("MSP AUROC and FPR95 (ours: share of noise accepted when 95% of test images are)"),
                  numeric=("n_runs", "ours", "published"))]


def _amplitude_part(ctx: ReportContext) -> list:
    amp = ctx.table("amplitude")
    if amp.empty:
        return []
    m = amp.groupby(["condition", "amplitude"], observed=True)[["mean_max_softmax", "kl_label_frequencies",
                                                                "top_share", "feature_norm_ratio"]].mean()
    items = [text(Strong(str(c)), ": " + "; ".join(
        f"{a:g}x: MSP {r.mean_max_softmax:.2f}, KL {r.kl_label_frequencies:.2f}, top {r.top_share:.2f}, "
        f"norm ratio {r.feature_norm_ratio:.2f}" for (_, a), r in sub.iterrows()))
        for c, sub in m.groupby(level=0, sort=True)]
    return [Paragraph(text(Strong("Reversion to the label marginal or far-field overconfidence?"), " Gaussian noise "
                           "around the data mean at multiples of the data's std (the same draw scaled), mean over "
                           "runs: mean max-softmax (MSP), KL(mean prediction || training label frequencies) in nats, "
                           "the top share, and the noise/test feature-norm ratio. Kang et al.'s reversion to the label "
                           "marginal is about inputs whose features are smaller than the data's (norm ratio < 1): it "
                           "is tested only among those amplitudes (amplitude_kl_trend). Far out, where the noise "
                           "features dwarf the data's, Hein et al.'s theorem for piecewise-affine networks predicts "
                           "MSP rising to 1 (amplitude_msp_trend) and the prediction concentrating (amplitude_far_kl, "
                           "a sanity check of the far field). In a class-balanced design the label frequencies are "
                           "uniform, so the KL is also the distance from uniform.")),
            Bullets(items)] + ctx.figure("amplitude_curves.png", "The amplitude probe: one thin line per run")


def _batchnorm_part(ctx: ReportContext) -> list:
    bn = ctx.table("batchnorm")
    if bn.empty:
        return []
    m = bn.groupby(["condition", "mode"], observed=True, sort=False)[["top_share", "share_to_eval_absorber"]].mean()
    items = [text(Strong(str(c)), ": " + "; ".join(f"{mode}: top share {r.top_share:.2f}, to the eval absorber "
                                                   f"{r.share_to_eval_absorber:.2f}"
                                                   for (_, mode), r in sub.iterrows()))
             for c, sub in m.groupby(level=0, sort=True)]
    return [Paragraph(text(Strong("BatchNorm statistics."), " The same Gaussian images with BatchNorm on its running "
                           "statistics (eval), on each noise batch's own statistics (batch_stats) and on running "
                           "statistics re-estimated on other noise images (noise_stats), each on a copy of the "
                           "trained network; mean over runs:")), Bullets(items)] \
        + ctx.figure("batchnorm_modes.png", "The top share of Gaussian noise per BatchNorm mode, a line per run")


def _handover_part(ctx: ReportContext) -> list:
    h = ctx.table("handover")
    if h.empty:
        return []
    items = [text(Strong(str(c)), f" (n = {len(sub)} runs): the favourite at epoch 0 is the trained absorber in "
                  f"{int(sub['favourite_is_absorber'].sum())} runs; hand-over epoch median "
                  f"{sub['handover_epoch'].median():g} "
                  f"(range {sub['handover_epoch'].min()}-{sub['handover_epoch'].max()})")
             for c, sub in h.groupby("condition", observed=True, sort=True)]
    return [Paragraph(text(Strong("Initial guessing bias carried over?"), " Per run, the untrained network's favourite "
                           "class (epoch 0 of the trajectory) against the trained absorber, and the hand-over epoch "
                           "(from which the trained absorber leads at every later epoch; 0: the favourite led "
                           "throughout):")), Bullets(items)] \
        + ctx.figure("handover_epochs.png", "Hand-over epoch per run")


def scoreboard_section(ctx: ReportContext) -> Section:
    board = ctx.table("scoreboard")
    s = Section("Which explanation holds? The hypothesis scoreboard", key="scoreboard")
    if board.empty:
        return s
    s.blocks.append(Paragraph(text(
        "Each published explanation, what it predicts in this design, what the study measured (the estimate with "
        f"its {stats.LEVEL} interval where it has one), the test (its id in ", Link("tests.csv", "tests.csv"),
        ") and n, and the verdict. Every test here is exploratory (Benjamini-Hochberg over the exploratory family) "
        "except the clutter correlation and the causal share effect (confirmatory, Holm); the unit is the trained "
        "network (the class, for the clutter correlation). The verdict is derived from the tests.csv row by these "
        "rules:")))
    s.blocks.append(Bullets([text(Strong(v), f": {rule}") for v, rule in VERDICT_RULES.items()]))
    s.blocks.append(Paragraph(text("The explanations and what each predicts here:")))
    s.blocks.append(Bullets([text(Strong(h.name), f": {h.explanation}. Prediction: {h.prediction} (test ", Code(h.test),
                                  f"; needs {h.needs}).") for h in HYPOTHESES]))
    # a row without a test has no n
    show = board.assign(n=board["n_runs"].map(lambda v: "" if pd.isna(v) else str(int(v))),
                        p=board["p_value"].map(fmt_p), p_adj=board["p_adjusted"].map(fmt_p),
                        test_id=[f"{t} ({v})" if v else t for t, v in zip(board["test"], board["variable"])])
    s.blocks.append(Table(show[["name", "condition", "measured", "test_id", "n", "p", "p_adj", "verdict", "why"]],
                          caption=text("The scoreboard, one row per explanation and condition (",
                                       Link("scoreboard.csv", "scoreboard.csv"), " also has each row's family, "
                                       "interval and smallest attainable p)"), numeric=("n", "p", "p_adj")))
    links = [text(", " if i else "", Link(f"{t}.csv", f"{t}.csv")) for i, t in enumerate(TABLES)
             if not ctx.table(t).empty]
    s.blocks.append(Paragraph(text("Tables: ") + sum(links, ()) + text(". Verdict rules: ", Code("VERDICT_RULES"),
                                                                       " in analysis/explanations.py.")))
    return s


# ---------------------------------------------------------------- the topic

def study_tables(data, frames) -> dict[str, pd.DataFrame]:
    """One table per probe, each only where the trials ran it; literature from why's OOD table."""
    return measured({"amplitude": amplitude_table(data), "batchnorm": batchnorm_table(data),
                     "handover": handover_table(data),
                     "literature": literature_table(frames.get("ood", pd.DataFrame()))})


def methods_text() -> str:
    """This topic's bullets of the Methods (authored markdown; report.methods_text joins them)."""
    S = stats
    return f"""- **Probe-time experiments** (exploratory): per run a paired difference (the largest amplitude
  minus 1x the data's std, for the mean max-softmax and for KL(mean prediction || training label
  frequencies); a BatchNorm mode minus the running statistics, for the top share; the MSP AUROC of
  two literature families a paper found {ORDER_GAP:g} or more points apart). H0: the differences are
  symmetric about 0; sign-flip over runs, exact up to n = {S.EXACT_SIGN_FLIPS} (smallest attainable p
  2^(1-n)); the mean with a {S.LEVEL} t interval. The head bias: each run ranks its top share of
  Gaussian noise among {BIAS_DEALS} random deals of its biases to the classes (ties broken at random); H0: the
  trained deal is one more random one, so the ranks are independent and uniform; exact test of their
  sum (smallest attainable p 2/{BIAS_DEALS + 1}^n); the estimate is the mean of rank/{BIAS_DEALS} - 1/2
  with its {S.LEVEL} t interval, the top share as trained minus dealt beside it. The hypothesis
  scoreboard takes each explanation's verdict from its tests.csv row by the rules stated with it."""


# this topic's test ids -> (table, what a small p says); README's table of test ids is checked
# against every topic's (pipeline.catalog_of_test_ids)
TESTS = {
    "literature_order": ("tests", "two of a paper's noise families keep their published MSP AUROC order in our "
                         "networks (runs paired)"),
    "amplitude_msp_trend": ("tests", "the mean max-softmax changes from 1x the data's std to the largest amplitude "
                            "(Hein et al. predict a rise)"),
    "amplitude_far_kl": ("tests", "KL(mean prediction || training label frequencies) changes from 1x to the largest "
                         "amplitude, where noise features dwarf the data's: a sanity check of Hein et al.'s far field"),
    "amplitude_kl_trend": ("tests", "among amplitudes whose noise features are smaller than the test images' (Kang et "
                           "al.'s premise), KL(mean prediction || training label frequencies) falls as they shrink"),
    "bn_mode_effect": ("tests", "BatchNorm on the noise batch's own, or on re-estimated, statistics changes the top "
                       "share against the running statistics"),
    "bias_deal": ("tests", "the head's biases as trained concentrate noise on one class more (or less) than the same "
                  "biases dealt to the classes at random (per-run ranks among random deals)"),
}

TOPIC = Topic("explanations", tables=lambda inputs, frames: study_tables(inputs.data, frames),
              tests=lambda inputs, frames: Findings(tests_of_study(frames)),
              summaries=lambda inputs, frames: {"scoreboard": scoreboard(frames["tests"], list(inputs.groups), frames)},
              figures=lambda inputs, frames, folder: plots(frames, folder),
              sections=(probes_section,), closing=(scoreboard_section,), methods=methods_text,
              test_ids=TESTS)
