"""Initial guessing bias: the summary per setting, the paired tests between settings, the paper's
predictions beside what was measured, the histograms and initbias.md, from initbias.csv alone.

The unit of replication is the network (each independently initialised from its own seed); images
are never counted as replicates. Network i has seed i in every setting, so two settings are
compared by the per-network paired difference in max_f.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats
from .report import fmt_p, md

STRONG = 0.5           # a network is strongly biased when one class gets >= half the images (5x 1/K for K = 10)
PAPER = "Francazi, Lucchi & Baity-Jesi, ICML 2024"
FACTORS = ("activation", "pool", "norm", "bn_mode", "inputs")
TESTED_BIAS = "zero"   # the paper's networks have no explicit biases: the tests use the head without its bias


def neutral_max_f(n_images: int, k: int, draws: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """Mean and 95th percentile of max_f when every image goes to a class uniformly at random
    and independently (no bias at all): the floor any real network sits on or above."""
    counts = np.random.default_rng(seed).multinomial(n_images, np.full(k, 1 / k), size=draws)
    top = counts.max(1) / n_images
    return float(top.mean()), float(np.quantile(top, 0.95))


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and the t interval over networks, cut to [0, 1] where a fraction can lie."""
    m = float(np.mean(x))
    if len(x) < 2:
        return m, np.nan, np.nan
    half = stats.t_half_width(x)
    return m, max(0.0, m - half), min(1.0, m + half)


def summary(df: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    rows = []
    same = _same_top(df)
    for (setting, images, bias), sub in df.groupby(["setting", "images", "head_bias"], sort=False):
        x = sub["max_f"].to_numpy()
        n_img = int(sub["n_images"].iloc[0])
        mean, lo, hi = mean_ci(x)
        strong = int((x >= STRONG).sum())
        s_lo, s_hi = stats.wilson_interval(strong, len(x))
        counts = sub["top_class"].value_counts().reindex(sorted(df["top_class"].unique()), fill_value=0)
        counts = np.concatenate([counts.to_numpy(), np.zeros(max(0, n_classes - len(counts)), dtype=int)])
        ref_mean, ref_q95 = neutral_max_f(n_img, n_classes)
        rows.append({"setting": setting, **{f: sub[f].iloc[0] for f in FACTORS}, "images": images,
                     "head_bias": bias, "n_nets": len(x), "n_images": n_img,
                     "mean_max_f": mean, "ci_low": lo, "ci_high": hi, "median_max_f": float(np.median(x)),
                     "share_strong": strong / len(x), "strong_ci_low": s_lo, "strong_ci_high": s_hi,
                     "neutral_mean_max_f": ref_mean, "neutral_q95_max_f": ref_q95,
                     # by symmetry of the init every class should be the favourite equally often
                     "top_class_uniform_p": float(sps.chisquare(counts).pvalue),
                     "modal_top_class": sub["top_class"].mode().iloc[0],
                     "same_top_test_noise": same.get((setting, bias), np.nan)})
    return pd.DataFrame(rows)


def _same_top(df: pd.DataFrame) -> dict:
    """Per (setting, head bias): the share of networks whose favourite class is the same for the
    test images and for the noise."""
    wide = df.pivot_table(index=["setting", "head_bias", "net"], columns="images", values="top_class",
                          aggfunc="first")
    if not {"test", "noise"} <= set(wide.columns):
        return {}
    agree = (wide["test"] == wide["noise"]).groupby(level=[0, 1]).mean()
    return agree.to_dict()


def contrasts(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(factor, setting A, setting B) for every two settings that differ in one factor only, A the
    one listed first (BatchNorm's mode counts as a factor of its own)."""
    settings = df.drop_duplicates("setting")[["setting", *FACTORS]].to_dict("records")
    out = []
    for i, a in enumerate(settings):
        for b in settings[i + 1:]:
            differ = [f for f in FACTORS if a[f] != b[f]]
            if differ == ["norm", "bn_mode"]:
                differ = ["norm"]
            if len(differ) == 1:
                out.append((differ[0], a["setting"], b["setting"]))
    return out


def paired_tests(df: pd.DataFrame, perms: int = 10_000) -> pd.DataFrame:
    """Per contrast and image set (head without bias): H0 the per-network difference in max_f
    between the two settings is symmetric about 0 (the network's seed fixes its draws in both).
    Statistic: the mean difference B - A over networks; p by sign-flip (exact up to 16 networks,
    else Monte Carlo with `perms` patterns: smallest attainable p 1/(perms + 1)); Holm over every
    row. Effect: the mean difference with its t interval over networks."""
    rows = []
    tested = df[df["head_bias"] == TESTED_BIAS]
    for factor, a, b in contrasts(df):
        for images in ("test", "noise"):
            sa = tested[(tested["setting"] == a) & (tested["images"] == images)].set_index("net")["max_f"]
            sb = tested[(tested["setting"] == b) & (tested["images"] == images)].set_index("net")["max_f"]
            common = sa.index.intersection(sb.index)
            if len(common) < 2:
                continue
            d = (sb[common] - sa[common]).to_numpy()
            res = stats.sign_flip(d, perms=perms)
            half = stats.t_half_width(d) if d.std() > 0 else 0.0
            rows.append({"test": "initbias_paired_max_f", "factor": factor, "setting_a": a, "setting_b": b,
                         "images": images, "n_nets": len(d), "mean_diff": float(d.mean()),
                         "ci_low": float(d.mean()) - half, "ci_high": float(d.mean()) + half,
                         "p_value": res["p_value"], "min_attainable_p": stats.sign_flip_p_min(len(d), perms)})
    out = pd.DataFrame(rows, columns=["test", "factor", "setting_a", "setting_b", "images", "n_nets", "mean_diff",
                                      "ci_low", "ci_high", "p_value", "min_attainable_p"])
    out["p_holm"] = stats.adjust(out["p_value"].to_numpy(), "holm") if len(out) else []
    return out


# ---------------------------------------------------------------- the paper's predictions

def _cell(summ: pd.DataFrame, setting: str, images: str = "test"):
    hit = summ[(summ["setting"] == setting) & (summ["images"] == images) & (summ["head_bias"] == TESTED_BIAS)]
    return hit.iloc[0] if len(hit) else None


def _level_prediction(summ, setting, claim, strong: bool) -> dict:
    row = _cell(summ, setting)
    if row is None:
        return {"prediction": claim, "source": PAPER, "setting": setting, "measured": "not measured",
                "verdict": "not measured"}
    measured = (f"{row.share_strong:.0%} of {row.n_nets} nets have max_f >= {STRONG} "
                f"[{row.strong_ci_low:.0%}, {row.strong_ci_high:.0%}]; mean max_f {row.mean_max_f:.2f} "
                f"[{row.ci_low:.2f}, {row.ci_high:.2f}] (no bias: {row.neutral_mean_max_f:.2f})")
    if strong:  # most networks strongly biased
        verdict = ("holds" if row.strong_ci_low > 0.5 else "fails" if row.strong_ci_high < 0.5 else "unclear")
    else:       # hardly any network strongly biased
        verdict = ("holds" if row.strong_ci_high < 0.1 else "fails" if row.strong_ci_low > 0.1 else "unclear")
    return {"prediction": claim, "source": PAPER, "setting": setting, "measured": measured, "verdict": verdict}


def _direction_prediction(summ, tests, factor, more, less, claim, source=PAPER) -> dict:
    """Setting with `factor` = `more` should give a larger max_f than with `less`, on the test images."""
    level = summ.drop_duplicates("setting").set_index("setting")[factor]
    rows = []
    for r in tests[(tests["factor"] == factor) & (tests["images"] == "test")].itertuples():
        pair = (level[r.setting_a], level[r.setting_b])
        if pair in ((less, more), (more, less)):
            rows.append((r, 1 if pair == (less, more) else -1))
    if not rows:
        return {"prediction": claim, "source": source, "setting": "-", "measured": "not measured",
                "verdict": "not measured"}
    parts, verdicts = [], []
    for r, sign in rows:
        diff = sign * r.mean_diff
        lo, hi = sorted((sign * r.ci_low, sign * r.ci_high))
        low_set, high_set = (r.setting_a, r.setting_b) if sign > 0 else (r.setting_b, r.setting_a)
        parts.append(f"{low_set} -> {high_set}: {diff:+.2f} [{lo:+.2f}, {hi:+.2f}] "
                     f"(n = {r.n_nets}, Holm p = {fmt_p(r.p_holm)})")
        verdicts.append("holds" if r.p_holm < stats.ALPHA and diff > 0
                        else "fails" if r.p_holm < stats.ALPHA else "not shown")
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "mixed: " + ", ".join(verdicts)
    return {"prediction": claim, "source": source,
            "setting": "; ".join(f"{r.setting_a} vs {r.setting_b}" for r, _ in rows),
            "measured": "; ".join(parts), "verdict": verdict}


def predictions(summ: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """The paper's qualitative claims (and one mechanism it implies, marked as such), each beside
    the measurement that checks it, on the test images with the head's bias zeroed."""
    rows = [
        _level_prediction(summ, "relu-max-none-centered", "ReLU + max-pooling: strong bias", strong=True),
        _level_prediction(summ, "tanh-avg-none-centered", "tanh (centered inputs, no max-pooling): no strong bias",
                          strong=False),
        _direction_prediction(summ, tests, "activation", "relu", "tanh", "ReLU biases more than tanh"),
        _direction_prediction(summ, tests, "pool", "max", "avg", "max-pooling biases more than average pooling"),
        _direction_prediction(summ, tests, "inputs", "uncentered", "centered", "centering the inputs reduces the bias"),
        _direction_prediction(summ, tests, "bn_mode", "eval", "train",
                              "BatchNorm with batch statistics (train mode) reduces the bias against eval mode "
                              "(at init the identity)",
                              source="mechanism (not a claim of the paper): batch statistics centre every "
                                     "channel, removing the shared offset ReLU and max-pooling add"),
    ]
    return pd.DataFrame(rows, columns=["prediction", "source", "setting", "measured", "verdict"])


# ---------------------------------------------------------------- figure and report

def histogram(df: pd.DataFrame, summ: pd.DataFrame, head_bias: str) -> bytes:
    from . import plots as P
    plt = P.plt
    settings = list(dict.fromkeys(df["setting"]))
    with plt.rc_context(P.STYLE):
        fig, axes = P._grid(len(settings), 3.2, 2.4)
        bins = np.linspace(0, 1, 21)
        for ax, s in zip(axes, settings):
            for images, colour in (("test", "tab:blue"), ("noise", "tab:orange")):
                x = df[(df["setting"] == s) & (df["images"] == images) & (df["head_bias"] == head_bias)]["max_f"]
                ax.hist(x, bins=bins, alpha=0.6, color=colour, label=f"{images} images")
            ref = summ[(summ["setting"] == s) & (summ["head_bias"] == head_bias)]["neutral_mean_max_f"]
            if len(ref):
                ax.axvline(float(ref.iloc[0]), color="k", lw=0.8, ls="--")
            ax.set_title(s, fontsize=8)
            ax.set_xlabel("max_f (share to the top class)")
            ax.set_ylabel("networks")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Untrained networks: max_f per network (head bias {head_bias}; dashed: no bias)", fontsize=9)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return buf.getvalue()


def report(summ: pd.DataFrame, tests: pd.DataFrame, preds: pd.DataFrame, figures: list[str]) -> str:
    t = summ[summ["head_bias"] == TESTED_BIAS]
    n_nets, n_img = int(t["n_nets"].min()), int(t["n_images"].iloc[0])
    lines = ["# Initial guessing bias of untrained networks", "",
             f"{n_nets} independently initialised networks per setting (seeds 0..{n_nets - 1}, the seeds of "
             f"the trials), no training; each sees {n_img} class-balanced CIFAR-10 test images and {n_img} "
             f"Gaussian noise images. max_f: the share of a set's images sent to the network's top class; "
             f"strongly biased: max_f >= {STRONG}. As in {PAPER}, the head's bias is zeroed for the tests "
             "(the per-setting table also has the head as initialised, which is what a trial sees at epoch 0).", "",
             "## The paper's predictions beside the measurement (test images)", ""]
    lines += _md_table(preds[["prediction", "verdict", "measured", "source"]])
    # both conventions side by side: the paper's (bias zeroed, tested) and a trial's epoch 0 (as initialised)
    lines += ["", "## Per setting: head bias zeroed (the paper's convention) and as initialised "
              "(a trial's epoch 0)", ""]
    init = summ[summ["head_bias"] == "initial"].set_index(["setting", "images"])

    def cells(r, prefix=""):
        return {f"{prefix}mean": f"{r.mean_max_f:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]",
                f"{prefix}strong": f"{r.share_strong:.0%} [{r.strong_ci_low:.0%}, {r.strong_ci_high:.0%}]"}
    show = pd.DataFrame([{"setting": r.setting, "images": r.images, "n_nets": r.n_nets, **cells(r),
                          **cells(init.loc[(r.setting, r.images)], "initial bias: "),
                          "neutral": f"{r.neutral_mean_max_f:.2f}", "uniform_p": fmt_p(r.top_class_uniform_p),
                          "same_top": f"{r.same_top_test_noise:.0%}"} for r in t.itertuples()])
    lines += _md_table(show)
    lines += ["", f"mean: mean max_f [{stats.LEVEL} t interval over networks]; strong: share of networks with "
              f"max_f >= {STRONG} [Wilson {stats.LEVEL}]; neutral: mean max_f if every image picked a class uniformly "
              "at random; uniform_p: chi-square test that every class is the favourite equally often (the init is "
              "symmetric in the classes, so this should not reject); same_top: networks whose favourite "
              "class is the same for test images and noise.", "",
              "## Paired tests between settings that differ in one factor", "",
              f"H0: the per-network difference in max_f (seed i in both settings) is symmetric about 0; "
              f"sign-flip over networks, Holm over all {len(tests)} rows; smallest attainable p "
              f"{tests['min_attainable_p'].min() if len(tests) else float('nan'):.1g}.", ""]
    show = tests.assign(diff=tests.apply(lambda r: f"{r.mean_diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]", axis=1),
                        p=tests["p_value"].map(fmt_p), holm=tests["p_holm"].map(fmt_p))
    lines += _md_table(show[["factor", "setting_a", "setting_b", "images", "n_nets", "diff", "p", "holm"]])
    lines += ["", "Figures:", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _md_table(df: pd.DataFrame) -> list[str]:
    head = "| " + " | ".join(df.columns) + " |"
    return [head, "|" + "---|" * len(df.columns)] + [
        "| " + " | ".join(md(v) if not isinstance(v, (int, np.integer)) else str(v) for v in row) + " |"
        for row in df.itertuples(index=False)]


def analyse(df: pd.DataFrame, n_classes: int = 10) -> dict[str, bytes]:
    """initbias.csv -> {file name: contents}: the CSV itself, summary, tests, predictions, the
    histograms and initbias.md."""
    summ = summary(df, n_classes)
    tests = paired_tests(df)
    preds = predictions(summ, tests)
    files = {"initbias.csv": df.to_csv(index=False).encode(),
             "initbias_summary.csv": summ.to_csv(index=False).encode(),
             "initbias_tests.csv": tests.to_csv(index=False).encode(),
             "initbias_predictions.csv": preds.to_csv(index=False).encode(),
             "initbias_max_f.png": histogram(df, summ, TESTED_BIAS),
             "initbias_max_f_initial_bias.png": histogram(df, summ, "initial")}
    files["initbias.md"] = report(summ, tests, preds,
                                  ["initbias_max_f.png", "initbias_max_f_initial_bias.png"]).encode()
    return files
