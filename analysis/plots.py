"""One function per figure; each writes a titled, labelled PNG and returns its file name.

Text from the data (class names, condition labels) is drawn literally: mathtext is off, so a `$`
in a label can't turn into markup.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .stats import wilson_interval  # noqa: E402

STYLE = {"text.parse_math": False, "figure.dpi": 110, "axes.titlesize": 10, "axes.labelsize": 9,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8}
NOISE_NODE = "noise"
MAX_PANELS = 12      # per-condition figures show the first 12 conditions (all are in the CSVs)
MAX_BAR_GROUPS = 6   # beyond this many conditions, absorber frequencies become a heatmap


def _first(items: list, what: str = "conditions") -> tuple[list, str]:
    if len(items) <= MAX_PANELS:
        return items, ""
    return items[:MAX_PANELS], f" (first {MAX_PANELS} of {len(items)} {what}; all are in the CSV tables)"


def _grid(n: int, width: float = 4.2, height: float = 3.4):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _save(fig, out: Path, name: str, title: str) -> str:
    fig.suptitle(title, fontsize=12)
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _class_order(classes) -> list[str]:
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    found = list(dict.fromkeys(classes))
    return [c for c in cifar if c in found] + sorted(c for c in found if c not in cifar)


def absorption_heatmap(absorption: pd.DataFrame, out: Path) -> str:
    with plt.rc_context(STYLE):
        families = list(dict.fromkeys(absorption["noise"]))
        fig, axes = _grid(len(families))
        classes = _class_order(absorption["class"])
        for i, (ax, f) in enumerate(zip(axes, families)):
            table = (absorption[absorption["noise"] == f]
                     .pivot_table(index=["condition", "seed"], columns="class", values="share", observed=True)
                     .reindex(columns=classes))
            im = ax.imshow(table.to_numpy(dtype=float), aspect="auto", vmin=0, vmax=1, cmap="viridis",
                           interpolation="nearest")
            ax.set_title(f)
            ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
            if i % 4 == 0 and len(table) <= 40:
                ax.set_yticks(range(len(table)), [f"{c} | seed {s}" for c, s in table.index], fontsize=6)
            elif i % 4 == 0:
                ax.set_ylabel(f"{len(table)} runs (by condition, seed)")
            else:
                ax.set_yticks([])
        fig.colorbar(im, ax=axes[:len(families)], shrink=0.6, label="share of noise images")
        return _save(fig, out, "absorption_heatmap.png",
                     "Where noise goes: share of each noise family predicted as each class, one row per run")


def absorber_frequency(absorbers: pd.DataFrame, class_sets: dict[str, list[str]], out: Path) -> str:
    """class_sets: condition -> its trained classes (a class a condition lacks gets no bar)."""
    with plt.rc_context(STYLE):
        families = list(dict.fromkeys(absorbers["noise"]))
        fig, axes = _grid(len(families))
        conditions = list(dict.fromkeys(absorbers["condition"]))
        classes = _class_order([c for cs in class_sets.values() for c in cs])
        if len(conditions) > MAX_BAR_GROUPS:
            plt.close(fig)
            return _absorber_heatmap(absorbers, families, conditions, classes, class_sets, out)
        width = 0.8 / max(len(conditions), 1)
        for ax, f in zip(axes, families):
            sub = absorbers[absorbers["noise"] == f]
            for j, cond in enumerate(conditions):
                runs = sub[sub["condition"] == cond]
                n = len(runs)
                trained = np.array([c in class_sets[cond] for c in classes])
                freq = [(runs["absorber"] == c).sum() for c in classes]
                ci = np.array([wilson_interval(k, n) for k in freq]).T if n else np.zeros((2, len(classes)))
                p = np.where(trained, np.array(freq) / max(n, 1), np.nan)
                ci = np.where(trained, ci, np.nan)
                x = np.arange(len(classes)) + (j - (len(conditions) - 1) / 2) * width
                ax.bar(x, p, width, label=f"{cond} (n={n})",
                       yerr=np.clip([p - ci[0], ci[1] - p], 0, None) if n else None, capsize=2,
                       error_kw={"lw": 0.8})
            ax.set_title(f)
            ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("fraction of runs (95% Wilson CI)")
        axes[0].legend(loc="upper right")
        return _save(fig, out, "absorber_frequency.png", "Which class absorbs each noise family, per condition")


def _absorber_heatmap(absorbers, families, conditions, classes, class_sets, out: Path) -> str:
    """Many conditions: the fraction of runs with each absorber as a condition x class heatmap."""
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(families), 4.2, max(3.4, 0.12 * len(conditions) + 1.5))
        for i, (ax, f) in enumerate(zip(axes, families)):
            sub = absorbers[absorbers["noise"] == f]
            table = pd.crosstab(sub["condition"].astype(str), sub["absorber"].astype(str), normalize="index")
            table = table.reindex(index=conditions, columns=classes).fillna(0.0)
            for r, cond in enumerate(conditions):  # classes a condition does not train: blank
                table.iloc[r, [j for j, c in enumerate(classes) if c not in class_sets[cond]]] = np.nan
            im = ax.imshow(table.to_numpy(dtype=float), aspect="auto", vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f)
            ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
            if i % 4 == 0 and len(conditions) <= 60:
                ax.set_yticks(range(len(conditions)), conditions, fontsize=5)
            else:
                ax.set_yticks([])
        fig.colorbar(im, ax=axes[:len(families)], shrink=0.6, label="fraction of runs")
        return _save(fig, out, "absorber_frequency.png",
                     "Which class absorbs each noise family: fraction of runs, per condition")


def consensus_mst(consensus: dict, out: Path, noise: str = "gaussian") -> str | None:
    cells = [(c, tree) for (c, f), tree in consensus.items() if f == noise]
    if not cells:
        return None
    cells, note = _first(cells)
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(cells), 5, 4.4)
        for ax, (condition, tree) in zip(axes, cells):
            g = nx.Graph()
            for u, v, support in tree:
                g.add_edge(u, v, support=support)
            pos = nx.kamada_kawai_layout(g) if len(g) > 2 else nx.spring_layout(g, seed=0)
            colours = ["tab:red" if n == NOISE_NODE else "tab:blue" for n in g.nodes]
            shapes = [("s" if n == NOISE_NODE else "o") for n in g.nodes]
            for shape in set(shapes):
                nodes = [n for n, s in zip(g.nodes, shapes) if s == shape]
                nx.draw_networkx_nodes(g, pos, nodelist=nodes, node_shape=shape, ax=ax, node_size=420,
                                       node_color=[c for n, c in zip(g.nodes, colours) if n in nodes], alpha=0.85)
            widths = [1 + 5 * g.edges[e]["support"] for e in g.edges]
            nx.draw_networkx_edges(g, pos, width=widths, ax=ax, edge_color="0.35")
            nx.draw_networkx_labels(g, pos, font_size=7, ax=ax)
            nx.draw_networkx_edge_labels(g, pos, {e: f"{g.edges[e]['support']:.0%}" for e in g.edges},
                                         font_size=7, ax=ax)
            ax.set_title(condition)
            ax.axis("off")
        return _save(fig, out, f"consensus_mst_{noise}.png", f"Consensus MST ({noise} noise, red square): "
                     "edge width and label = share of runs whose MST has the edge" + note)


def distance_heatmap(mean_distances: dict[str, tuple[list[str], np.ndarray]], out: Path,
                     noise: str = "gaussian") -> str | None:
    if not mean_distances:
        return None
    items, note = _first(list(mean_distances.items()))
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(items), 4.6, 4.2)
        for ax, (condition, (nodes, mat)) in zip(axes, items):
            im = ax.imshow(mat, cmap="magma_r")
            ax.set_xticks(range(len(nodes)), nodes, rotation=60, ha="right")
            ax.set_yticks(range(len(nodes)), nodes)
            ax.set_title(condition)
            fig.colorbar(im, ax=ax, shrink=0.7, label="mean d = (1 - cos)/2")
        return _save(fig, out, f"distance_heatmap_{noise}.png",
                     f"Mean cosine distance between class means and the {noise}-noise mean" + note)


def trajectory(traj: pd.DataFrame, out: Path) -> str | None:
    if traj.empty:
        return None
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(traj["condition"])))
        fig, axes = _grid(len(conditions))
        summary = (traj[traj["condition"].isin(conditions)]
                   .groupby(["condition", "class", "epoch"], observed=True)["share"]
                   .agg(["mean", "std", "count"]).reset_index())
        runs = traj.groupby("condition", observed=True)["trial_id"].nunique()
        for ax, cond in zip(axes, conditions):
            stats = summary[summary["condition"] == cond]
            for c in _class_order(stats["class"]):
                s = stats[stats["class"] == c]
                ax.plot(s["epoch"], s["mean"], marker=".", label=c)
                sem = (s["std"] / np.sqrt(s["count"])).fillna(0)
                ax.fill_between(s["epoch"], s["mean"] - sem, s["mean"] + sem, alpha=0.15)
            ax.set_title(f"{cond} (n={runs[cond]})")
            ax.set_xlabel("epoch (0 = untrained)")
            ax.set_ylabel("share of gaussian noise (mean +- sem)")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=6, ncol=2)
        return _save(fig, out, "trajectory.png", "How the absorber emerges during training (gaussian noise subset)"
                     + note)


def accuracy_strip(runs: pd.DataFrame, out: Path) -> str | None:
    done = runs[runs["status"] == "completed"]
    if done.empty:
        return None
    with plt.rc_context(STYLE):
        conditions = list(dict.fromkeys(done["condition"]))
        fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(conditions)), 3.6))
        rng = np.random.default_rng(0)
        for i, cond in enumerate(conditions):
            acc = done.loc[done["condition"] == cond, "test_accuracy"].to_numpy(dtype=float)
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(acc)), acc, s=16, alpha=0.8)
            ax.errorbar(i + 0.25, acc.mean(), yerr=acc.std(ddof=1) if len(acc) > 1 else 0, fmt="k_", capsize=4)
        ax.set_xticks(range(len(conditions)), conditions, rotation=30, ha="right")
        ax.set_ylabel("test accuracy (trained classes)")
        return _save(fig, out, "accuracy.png", "Test accuracy per condition (dots: runs; bar: mean +- sd)")


# ---------------------------------------------------------------- why this class?

def clutter_scatter(clutter: pd.DataFrame, absorption: pd.DataFrame, out: Path, noise: str = "gaussian") -> str | None:
    """Each clutter measure against the share of Gaussian noise a class absorbs (a dot per run and
    class); the noise bank's own value as a dashed line."""
    cls = clutter[clutter["set"] == "class"].astype({"name": str, "trial_id": str})
    share = absorption[absorption["noise"] == noise].astype({"class": str, "trial_id": str})
    merged = cls.merge(share, left_on=["trial_id", "name"], right_on=["trial_id", "class"])
    if merged.empty:
        return None
    measures = list(dict.fromkeys(merged["measure"]))
    bank = clutter[(clutter["set"] == "noise") & (clutter["name"].astype(str) == noise)].groupby("measure")["value"].mean()
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(measures), 3.6, 3.0)
        classes = _class_order(merged["name"])
        colours = {c: plt.cm.tab10(i % 10) for i, c in enumerate(classes)}
        for ax, m in zip(axes, measures):
            sub = merged[merged["measure"] == m]
            for c in classes:
                s = sub[sub["name"] == c]
                ax.scatter(s["value"], s["share"], s=10, alpha=0.7, color=colours[c], label=c)
            if m in bank:
                ax.axvline(bank[m], ls="--", color="k", lw=0.8)
            ax.set_xlabel(m)
            ax.set_ylabel(f"share of {noise} noise")
            ax.set_ylim(-0.02, 1.02)
        axes[0].legend(fontsize=6, ncol=2)
        return _save(fig, out, "clutter_vs_absorption.png",
                     f"Clutter of each class vs the share of {noise} noise it absorbs (dashed: the noise bank)")


def _grouped_bars(ax, data: pd.DataFrame, x: str, group: str, value: str, label_size: int, rotation: int) -> None:
    """Mean +- sd of `value` over runs: a group of bars per `x`, a colour per `group`."""
    xs, groups = list(dict.fromkeys(data[x].astype(str))), list(dict.fromkeys(data[group].astype(str)))
    summary = data.astype({x: str, group: str}).groupby([group, x])[value].agg(["mean", "std"])
    width = 0.8 / len(groups)
    for j, g in enumerate(groups):
        t = summary.loc[g].reindex(xs)
        ax.bar(np.arange(len(xs)) + (j - (len(groups) - 1) / 2) * width, t["mean"], width,
               yerr=t["std"].fillna(0), capsize=1.5, label=g, error_kw={"lw": 0.6})
    ax.set_xticks(range(len(xs)), xs, rotation=rotation, ha="right", fontsize=label_size)


def ood_bars(ood: pd.DataFrame, out: Path) -> str:
    """AUROC (in-distribution positive) per detector and OOD set, mean +- sd over runs."""
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(ood["condition"])))
        fig, axes = _grid(len(conditions), 6.5, 3.4)
        for ax, cond in zip(axes, conditions):
            _grouped_bars(ax, ood[ood["condition"] == cond], x="ood_set", group="detector", value="auroc",
                          label_size=6, rotation=60)
            ax.axhline(0.5, color="k", lw=0.6, ls=":")
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("AUROC (ID positive)")
            ax.set_title(cond)
        axes[0].legend(fontsize=6, ncol=ood["detector"].nunique())
        return _save(fig, out, "ood_auroc.png", "OOD detectors: AUROC against each noise family and held-out "
                     "class (mean +- sd over runs; 0.5 = chance)" + note)


def frequency_curves(freq: pd.DataFrame, out: Path) -> str:
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(freq["condition"])))
        fig, axes = _grid(len(conditions), 4.2, 3.2)
        for ax, cond in zip(axes, conditions):
            sub = freq[freq["condition"] == cond]
            for kind, marker in (("lowpass", "o"), ("highpass", "s")):
                s = sub[sub["kind"] == kind].groupby("cutoff")["gaussian_absorber_share"].agg(["mean", "std"])
                ax.errorbar(s.index, s["mean"], yerr=s["std"].fillna(0), marker=marker, capsize=3, label=kind)
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("cutoff (fraction of Nyquist)")
            ax.set_ylabel("share to the gaussian absorber")
            ax.set_title(cond)
            ax.legend()
        return _save(fig, out, "frequency_probes.png", "Band-limited Gaussian noise: does the same class "
                     "absorb it? (mean +- sd over runs)" + note)


def intervention_bars(absorbers: pd.DataFrame, runs: pd.DataFrame, out: Path) -> str | None:
    merged = absorbers.astype({"trial_id": str}).merge(runs[["trial_id", "intervention"]].astype({"trial_id": str}),
                                                       on="trial_id")
    if merged.empty:
        return None
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
        _grouped_bars(ax, merged, x="noise", group="intervention", value="top_share", label_size=8, rotation=40)
        ax.set_ylabel("top share (mean +- sd over runs)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, ncol=merged["intervention"].nunique())
        return _save(fig, out, "interventions.png", "Training interventions: how much noise the top class "
                     "takes, per noise family (trained on Gaussian noise only)")
