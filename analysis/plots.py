"""One function per figure; each writes a titled, labelled PNG and returns its file name.

Every figure is laid out by matplotlib's constrained layout, sized from what it shows (panels,
categories, label lengths), with its title wrapped to the figure's width; legends that would
cover data go outside the axes. `layout_problems` states what a figure must satisfy, and the tests
apply it to every figure the aggregation draws.

Text from the data (class names, condition labels) is drawn literally: mathtext is off, so a `$`
in a label can't turn into markup, and tick formatters that would emit mathtext are not used.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, NullLocator

from .contract import CIFAR10_CLASSES, COMPLETED, NOISE_NODE
from .stats import LEVEL, wilson_interval

STYLE = {"text.parse_math": False, "figure.dpi": 110, "axes.titlesize": 10, "axes.labelsize": 9,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8}
TITLE_SIZE = 12
MAX_PANELS = 12      # per-condition figures show the first 12 conditions (all are in the CSVs)
MAX_BAR_GROUPS = 6   # beyond this many conditions, absorber frequencies become a heatmap
MAX_GALLERY_CONDITIONS = 8   # rows of a mean-image gallery (two per condition)
MAX_STRIP_RUNS = 40          # runs shown per condition in the absorber-over-training strips
MAX_STRIP_CONDITIONS = 6     # conditions shown in the strips (a tall figure already)
MAX_RUN_LINES = 40           # runs drawn as thin lines per condition in the trajectory (the mean uses all)


def _first(items: list, what: str = "conditions", most: int = MAX_PANELS) -> tuple[list, str]:
    if len(items) <= most:
        return items, ""
    return items[:most], f" (first {most} of {len(items)} {what}; all are in the CSV tables)"


def _grid(n: int, width: float = 4.2, height: float = 3.4, cols: int = 4):
    cols = min(n, cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _save(fig, out: Path, name: str, title: str) -> str:
    fig.suptitle(_wrapped(title, fig.get_figwidth(), TITLE_SIZE), fontsize=TITLE_SIZE)
    # titles from the data (condition labels can be long) and x labels: wrapped to their panel
    for ax in fig.axes:
        width = 0.9 * ax.get_position().width * fig.get_figwidth()
        if ax.get_title():
            ax.set_title(_wrapped(ax.get_title(), width, ax.title.get_fontsize()))
        if ax.get_xlabel():
            ax.set_xlabel(_wrapped(ax.get_xlabel(), width, ax.xaxis.label.get_fontsize()))
    for sub in fig.subfigs:
        if sub._suptitle is not None:
            sub._suptitle.set_text(_wrapped(sub._suptitle.get_text(), fig.get_figwidth(), sub._suptitle.get_fontsize()))
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _wrapped(title: str, inches: float, points: float) -> str:
    """`title` wrapped to `inches` at about 0.6 em per character, so it is never cut off."""
    chars = max(12, int(inches * 72 / (points * 0.6)))
    return "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))


def _legend_outside(fig, handles, labels, title: str | None = None) -> None:
    """One legend for the whole figure, below the panels (constrained layout makes room; below,
    it can meet neither the title nor a panel)."""
    width = max((len(line) for x in labels for line in str(x).split("\n")), default=10) * 0.075 + 0.5
    ncols = max(1, min(len(labels), int(fig.get_figwidth() / width)))   # entries about `width` inches wide
    fig.legend(handles, labels, loc="outside lower center", title=title, frameon=False, ncols=ncols)
    # the figure grows by the legend's height, so the panels keep theirs
    lines = math.ceil(len(labels) / ncols) * max((str(x).count("\n") + 1 for x in labels), default=1) + bool(title)
    points = matplotlib.font_manager.FontProperties(size=plt.rcParams["legend.fontsize"]).get_size_in_points()
    fig.set_figheight(fig.get_figheight() + lines * points * 1.5 / 72 + 0.2)


def _class_order(classes) -> list[str]:
    found = list(dict.fromkeys(classes))
    return [c for c in CIFAR10_CLASSES if c in found] + sorted(c for c in found if c not in CIFAR10_CLASSES)


def class_colours(classes) -> dict[str, tuple]:
    """The same colour for a class in every figure: CIFAR-10 classes by their index in tab10."""
    others = [c for c in _class_order(classes) if c not in CIFAR10_CLASSES]
    colours = {c: plt.cm.tab10(i) for i, c in enumerate(CIFAR10_CLASSES)}
    colours.update({c: plt.cm.Set3(i % 12) for i, c in enumerate(others)})
    return {c: colours[c] for c in _class_order(classes)}


def _bounded_yerr(mean, spread, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Whiskers of mean +- spread cut at the bounds of a bounded quantity (a share, an AUROC)."""
    mean, spread = np.asarray(mean, dtype=float), np.nan_to_num(np.asarray(spread, dtype=float))
    return np.array([np.minimum(spread, mean - low), np.minimum(spread, high - mean)]).clip(0, None)


def _x_labels(ax, labels: list[str], size: int = 8) -> None:
    """Category labels on the x axis, slanted only when they would collide."""
    long = max((len(str(s)) for s in labels), default=0) * len(labels) > 60
    ax.set_xticks(range(len(labels)), labels, rotation=50 if long else 0, ha="right" if long else "center",
                  rotation_mode="anchor" if long else "default", fontsize=size)


# ---------------------------------------------------------------- what a figure must satisfy

def layout_problems(fig) -> list[str]:
    """What is wrong with a drawn figure's layout, in words (empty when nothing is):
    - something drawn outside the canvas (its tight bounding box leaves the figure);
    - a tick label that shows mathtext source ($...$ or \\mathdefault);
    - a legend that covers data (bars, points, line vertices) of an axes it overlaps."""
    if not isinstance(fig.canvas, FigureCanvasAgg):  # a closed figure: draw it again off screen
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    tight, canvas = fig.get_tightbbox(renderer), fig.bbox_inches
    slack = 1.0 / fig.dpi
    if (tight.x0 < canvas.x0 - slack or tight.y0 < canvas.y0 - slack or tight.x1 > canvas.x1 + slack
            or tight.y1 > canvas.y1 + slack):
        problems.append(f"drawn outside the canvas: content spans {tight.bounds}, canvas {canvas.bounds}")
    for ax in fig.axes:
        for label in ax.get_xticklabels() + ax.get_yticklabels():
            if "$" in label.get_text() or "\\mathdefault" in label.get_text():
                problems.append(f"mathtext source in a tick label: {label.get_text()!r}")
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None] + list(fig.legends)
    titles = [t for t in [fig._suptitle, *(f._suptitle for f in fig.subfigs)] + [a.title for a in fig.axes]
              if t is not None and t.get_text()]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for t in titles:
            if t.get_window_extent(renderer).overlaps(box):
                problems.append(f"legend {[x.get_text() for x in legend.get_texts()][:3]} covers the title "
                                f"{t.get_text()[:40]!r}")
        for ax in fig.axes:
            covered = _data_covered(ax, box, renderer)
            if covered:
                problems.append(f"legend {[t.get_text() for t in legend.get_texts()][:3]} covers {covered} "
                                f"in the axes titled {ax.get_title()!r}")
    return problems


def _data_covered(ax, box, renderer) -> str:
    """What of the axes' data lies under `box` (display coordinates): '' when nothing."""
    if not ax.get_visible() or not ax.bbox.overlaps(box):
        return ""
    for patch in ax.patches:
        if not patch.get_visible() or (isinstance(patch, Rectangle) and patch.get_height() == 0):
            continue
        if patch.get_window_extent(renderer).overlaps(box):
            return "a bar"
    for line in ax.lines:
        xy = line.get_transform().transform(np.column_stack(line.get_data()).astype(float))
        if line.get_visible() and len(xy) and _inside(xy, box).any() and not _is_reference_line(line):
            return "a line's data points"
    for coll in ax.collections:
        offsets = coll.get_offsets()
        if coll.get_visible() and len(offsets):
            xy = coll.get_offset_transform().transform(np.asarray(offsets, dtype=float))
            if _inside(xy, box).any():
                return "scatter points"
    return ""


def _is_reference_line(line) -> bool:
    """A chance line (axhline/axvline) spans the axes: crossing it is fine."""
    return line.get_gid() == "reference"


def _inside(xy: np.ndarray, box) -> np.ndarray:
    return (xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1) & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)


# ---------------------------------------------------------------- which class absorbs

def absorption_heatmap(absorption: pd.DataFrame, out: Path) -> str:
    with plt.rc_context(STYLE):
        families = list(dict.fromkeys(absorption["noise"]))
        classes = _class_order(absorption["class"])
        n_rows = absorption.groupby(["condition", "seed"], observed=True).ngroups
        fig, axes = _grid(len(families), max(3.2, 0.3 * len(classes) + 1.2), min(9, max(2.6, 0.14 * n_rows + 1.6)))
        for i, (ax, f) in enumerate(zip(axes, families)):
            table = (absorption[absorption["noise"] == f]
                     .pivot_table(index=["condition", "seed"], columns="class", values="share", observed=True)
                     .reindex(columns=classes))
            im = ax.imshow(table.to_numpy(dtype=float), aspect="auto", vmin=0, vmax=1, cmap="viridis",
                           interpolation="nearest")
            ax.set_title(f)
            ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", rotation_mode="anchor")
            if i % 4 == 0 and len(table) <= 40:
                ax.set_yticks(range(len(table)), [f"{c} | seed {s}" for c, s in table.index], fontsize=6)
            elif i % 4 == 0:
                ax.set_yticks([])
                ax.set_ylabel(f"{len(table)} runs (by condition, seed)")
            else:
                ax.set_yticks([])
        fig.colorbar(im, ax=axes[:len(families)], shrink=0.6, label="share of noise images")
        return _save(fig, out, "absorption_heatmap.png",
                     "Where noise goes: share of each noise family predicted as each class, one row per run "
                     "(blank: a class the run did not train)")


def absorber_frequency(absorbers: pd.DataFrame, class_sets: dict[str, list[str]], out: Path) -> str:
    """class_sets: condition -> its trained classes (a class a condition lacks gets no bar).
    Whiskers (95% Wilson) on the classes that absorbed in some run; a class that never did gets no
    bar and no whisker, and the legend states the upper bound such a zero has."""
    with plt.rc_context(STYLE):
        families = list(dict.fromkeys(absorbers["noise"]))
        conditions = list(dict.fromkeys(absorbers["condition"]))
        classes = _class_order([c for cs in class_sets.values() for c in cs])
        if len(conditions) > MAX_BAR_GROUPS:
            return _absorber_heatmap(absorbers, families, conditions, classes, class_sets, out)
        fig, axes = _grid(len(families), max(3.4, 0.22 * len(classes) * max(1, len(conditions) / 2) + 1.2), 3.0)
        width = 0.8 / max(len(conditions), 1)
        colours = plt.cm.tab10.colors
        labels = {}
        for ax, f in zip(axes, families):
            sub = absorbers[absorbers["noise"] == f]
            for j, cond in enumerate(conditions):
                runs = sub[sub["condition"] == cond]
                n = len(runs)
                trained = np.array([c in class_sets[cond] for c in classes])
                counts = np.array([(runs["absorber"] == c).sum() for c in classes])
                shown = trained & (counts > 0)
                if not n or not shown.any():
                    continue
                p = counts[shown] / n
                ci = np.array([wilson_interval(int(k), n) for k in counts[shown]]).T
                x = np.arange(len(classes))[shown] + (j - (len(conditions) - 1) / 2) * width
                ax.bar(x, p, width, color=colours[j % 10], yerr=np.clip([p - ci[0], ci[1] - p], 0, None),
                       capsize=2, error_kw={"lw": 0.8})
                labels[cond] = (f"{cond} (n = {n}; a class in 0 runs: upper bound "
                                f"{wilson_interval(0, n)[1]:.2f})")
            ax.set_title(f)
            ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", rotation_mode="anchor")
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("fraction of runs")
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[j % 10]) for j, c in enumerate(conditions) if c in labels]
        _legend_outside(fig, handles, [textwrap.fill(labels[c], 38) for c in conditions if c in labels])
        return _save(fig, out, "absorber_frequency.png", "Which class absorbs each noise family, per "
                     f"condition: fraction of runs (whiskers: {LEVEL} Wilson interval; no bar: never the absorber)")


def _absorber_heatmap(absorbers, families, conditions, classes, class_sets, out: Path) -> str:
    """Many conditions: the fraction of runs with each absorber as a condition x class heatmap."""
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(families), max(3.4, 0.3 * len(classes) + 1.2), max(3.4, 0.12 * len(conditions) + 1.5))
        for i, (ax, f) in enumerate(zip(axes, families)):
            sub = absorbers[absorbers["noise"] == f]
            table = pd.crosstab(sub["condition"].astype(str), sub["absorber"].astype(str), normalize="index")
            table = table.reindex(index=conditions, columns=classes).fillna(0.0)
            for r, cond in enumerate(conditions):  # classes a condition does not train: blank
                table.iloc[r, [j for j, c in enumerate(classes) if c not in class_sets[cond]]] = np.nan
            im = ax.imshow(table.to_numpy(dtype=float), aspect="auto", vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f)
            ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", rotation_mode="anchor")
            if i % 4 == 0 and len(conditions) <= 60:
                ax.set_yticks(range(len(conditions)), conditions, fontsize=5)
            else:
                ax.set_yticks([])
        fig.colorbar(im, ax=axes[:len(families)], shrink=0.6, label="fraction of runs")
        return _save(fig, out, "absorber_frequency.png",
                     "Which class absorbs each noise family: fraction of runs, per condition")


# ---------------------------------------------------------------- geometry

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
            ax.margins(0.12)  # room for the node markers at the edges of the layout
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
        size = max(len(nodes) for nodes, _ in mean_distances.values())
        fig, axes = _grid(len(items), max(3.4, 0.3 * size + 2), max(3.0, 0.3 * size + 1.2))
        for ax, (condition, (nodes, mat)) in zip(axes, items):
            im = ax.imshow(mat, cmap="magma_r")
            ax.set_xticks(range(len(nodes)), nodes, rotation=60, ha="right", rotation_mode="anchor")
            ax.set_yticks(range(len(nodes)), nodes)
            ax.set_title(condition)
            fig.colorbar(im, ax=ax, shrink=0.7, label="mean d = (1 - cos)/2")
        return _save(fig, out, f"distance_heatmap_{noise}.png",
                     f"Mean cosine distance between class means and the {noise}-noise mean" + note)


# ---------------------------------------------------------------- training

def trajectory(traj: pd.DataFrame, out: Path) -> str | None:
    """Per condition, the share of the trajectory's Gaussian images each class gets after every
    epoch: a thin line per run, a thick line for the mean over runs. With more than 4 classes,
    those that never lead in any run are drawn in grey, so the few that matter keep their colour."""
    if traj.empty:
        return None
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(traj["condition"])))
        fig, axes = _grid(len(conditions), 4.2, 3.2)
        traj = traj[traj["condition"].isin(conditions)].astype({"class": str, "trial_id": str})
        colours = class_colours(traj["class"])
        shown = set()
        for ax, cond in zip(axes, conditions):
            sub = traj[traj["condition"] == cond]
            by_run = sub.pivot_table(index=["trial_id", "epoch"], columns="class", values="share", observed=True)
            leaders = set(by_run.idxmax(axis=1)) if by_run.shape[1] > 4 else set(by_run.columns)
            runs = list(dict.fromkeys(by_run.index.get_level_values(0)))
            for c in _class_order(sub["class"]):
                colour = colours[c] if c in leaders else "0.75"
                per_run = by_run[c].unstack(level=1)            # runs x epochs (NaN after a divergence)
                lines = [np.column_stack([per_run.columns, row])[np.isfinite(row)]
                         for row in per_run.loc[runs[:MAX_RUN_LINES]].to_numpy(dtype=float)]
                ax.add_collection(LineCollection(lines, colors=[colour], linewidths=0.7, alpha=0.45))
                mean = per_run.mean(axis=0)
                ax.plot(mean.index, mean.to_numpy(), color=colour, lw=2.2 if c in leaders else 1.0, zorder=3)
                shown |= {c} if c in leaders else {"other"}
            ax.set_title(f"{cond} (n = {len(runs)} runs" + (f"; thin lines: the first {MAX_RUN_LINES})"
                                                            if len(runs) > MAX_RUN_LINES else ")"))
            ax.set_xlabel("epoch (0 = untrained)")
            ax.set_ylabel("share of gaussian noise")
            ax.set_ylim(-0.02, 1.02)
        names = [c for c in colours if c in shown] + (["other classes"] if "other" in shown else [])
        handles = [Line2D([], [], color=colours.get(c, "0.75"), lw=2.2) for c in names]
        handles += [Line2D([], [], color="0.3", lw=0.7, alpha=0.6), Line2D([], [], color="0.3", lw=2.2)]
        _legend_outside(fig, handles, names + ["one run", "mean over runs"], title="leading class")
        return _save(fig, out, "trajectory.png", "How the absorber emerges during training: share of "
                     "the trajectory's Gaussian images per class and epoch" + note)


def absorber_strips(traj: pd.DataFrame, out: Path) -> str | None:
    """Per condition, one row per run and one cell per epoch (0 = untrained): the class that takes
    most of the Gaussian images (colour) and its share (text), so initial guessing and the
    hand-over to the trained absorber show run by run."""
    if traj.empty:
        return None
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(traj["condition"])), most=MAX_STRIP_CONDITIONS)
        traj = traj[traj["condition"].isin(conditions)].astype({"class": str, "trial_id": str})
        colours = {**class_colours(traj["class"]), TIE: (0.82, 0.82, 0.82, 1.0)}
        order = list(colours)
        epochs = sorted(traj["epoch"].unique())
        rows = [min(MAX_STRIP_RUNS, traj[traj["condition"] == c]["trial_id"].nunique()) for c in conditions]
        width = max(6.0, 0.42 * len(epochs) + 2.0)
        row = 0.3 if max(rows) <= 20 else 0.15  # inches per run (thin rows, no text, for many runs)
        show_text = row >= 0.3 and max(rows) * len(epochs) <= 400
        fig, axes = plt.subplots(len(conditions), 1, squeeze=False, layout="constrained",
                                 figsize=(width, sum(row * r + 0.8 for r in rows) + 1.2),
                                 height_ratios=[row * r + 0.8 for r in rows])
        used = set()
        for ax, cond in zip(axes[:, 0], conditions):
            sub = traj[traj["condition"] == cond]
            wide = sub.pivot_table(index=["seed", "trial_id", "epoch"], columns="class", values="share", observed=True)
            runs = list(dict.fromkeys(wide.index.droplevel(2)))[:MAX_STRIP_RUNS]
            top = wide.idxmax(axis=1)
            share = wide.max(axis=1)
            tied = wide.eq(share, axis=0).sum(axis=1) > 1   # no single class leads: a grey cell
            colour_index = np.full((len(runs), len(epochs)), np.nan)
            for i, run in enumerate(runs):
                for j, e in enumerate(epochs):
                    if (*run, e) not in top.index:
                        continue
                    c = TIE if tied[(*run, e)] else top[(*run, e)]
                    used.add(c)
                    colour_index[i, j] = order.index(c)
                    if show_text:
                        ax.text(j, i, f"{share[(*run, e)]:.0%}".replace("%", ""), ha="center", va="center",
                                fontsize=6, color="white" if _dark(colours[c]) else "black")
            cmap = matplotlib.colors.ListedColormap([colours[c] for c in order])
            ax.imshow(np.ma.masked_invalid(colour_index), cmap=cmap, vmin=-0.5, vmax=len(order) - 0.5,
                      aspect="auto", interpolation="nearest")
            ax.set_yticks(range(len(runs)), [f"seed {s}" for s, _ in runs], fontsize=6)
            ax.set_xticks(range(len(epochs)), [str(e) for e in epochs], fontsize=7)
            total = sub["trial_id"].nunique()
            ax.set_title(f"{cond} (n = {total} runs" + (f", first {len(runs)} shown)" if total > len(runs) else ")"),
                         fontsize=9)
        axes[-1, 0].set_xlabel("epoch (0 = untrained)")
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c]) for c in order if c in used]
        _legend_outside(fig, handles, [c for c in order if c in used], title="absorbing class")
        share = ("its share of the Gaussian trajectory images in % (text)" if show_text else
                 "its share is in trajectory.csv (too many runs to print it)")
        return _save(fig, out, "absorber_over_training.png", "The absorbing class of each run after every "
                     f"epoch (colour); {share}" + note)


TIE = "tie (no single class leads)"


def _dark(colour) -> bool:
    r, g, b = colour[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b < 0.5


def accuracy_strip(runs: pd.DataFrame, out: Path) -> str | None:
    done = runs[runs["status"] == COMPLETED]
    if done.empty:
        return None
    with plt.rc_context(STYLE):
        conditions = list(dict.fromkeys(done["condition"]))
        # slanted labels need about 0.05 inch of height per character
        longest = max(len(str(c)) for c in conditions)
        fig, ax = plt.subplots(figsize=(min(24, max(4.5, 1.5 + 0.55 * len(conditions))), 3.8 + 0.05 * longest),
                               layout="constrained")
        rng = np.random.default_rng(0)
        for i, cond in enumerate(conditions):
            acc = done.loc[done["condition"] == cond, "test_accuracy"].to_numpy(dtype=float)
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(acc)), acc, s=16, alpha=0.8)
            ax.errorbar(i + 0.25, acc.mean(), yerr=acc.std(ddof=1) if len(acc) > 1 else 0, fmt="k_", capsize=4)
        _x_labels(ax, conditions)
        ax.set_xlim(-0.6, len(conditions) - 0.4)
        ax.set_ylabel("test accuracy (trained classes)")
        return _save(fig, out, "accuracy.png", "Test accuracy per condition (dots: runs; bar: mean +- sd)")


# ---------------------------------------------------------------- what the networks learned

def stretch(image: np.ndarray, low: float = 1, high: float = 99) -> np.ndarray:
    """Contrast-stretch one RGB image: its `low`..`high` percentile (all channels together, so
    hues keep their relation) to black..white."""
    lo, hi = np.percentile(image, [low, high])
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.full(image.shape, 0.5)


def mean_image_gallery(gallery: dict, family: str, out: Path) -> str | None:
    """gallery: condition -> tables.MeanImages. Per condition two rows of tiles: the mean `family`
    noise image each class received (how many images, in how many runs, under it) and the class's
    mean training image. Each condition is one mosaic in one axes (tens of axes per figure would
    make it the slowest figure of the report)."""
    cells = [(c, g) for c, g in gallery.items() if family in g.noise]
    if not cells:
        return None
    cells, note = _first(cells, most=MAX_GALLERY_CONDITIONS)
    with plt.rc_context(STYLE):
        cols = max(len(g.classes) for _, g in cells)
        fig, axes = plt.subplots(len(cells), 1, squeeze=False, layout="constrained",
                                 figsize=(max(5.0, 0.95 * cols + 1.4), 2.6 * len(cells) + 0.5))
        for ax, (cond, g) in zip(axes[:, 0], cells):
            images, counts, runs_with = g.noise[family]
            noise = [stretch(images[j]) if counts[j] else None for j in range(len(g.classes))]
            training = [stretch(g.class_images[c]) if c in g.class_images else None for c in g.classes]
            mosaic = _mosaic([noise, training], cols)   # the same tile size in every condition
            ax.imshow(mosaic, interpolation="nearest")
            ax.set_ylim(mosaic.shape[0] + 16, -14)       # room for the labels above and below
            for j, c in enumerate(g.classes):
                x = j * (TILE + GAP) + TILE / 2
                ax.text(x, -3, c, ha="center", va="bottom", fontsize=7)
                ax.text(x, TILE + 2, f"{int(counts[j])} img, {int(runs_with[j])}/{g.runs} runs", ha="center",
                        va="top", fontsize=6)
                for row, image, why in ((0, noise[j], "no image"), (1, training[j], "not stored")):
                    if image is None:
                        ax.text(x, row * (TILE + GAP) + TILE / 2, why.replace(" ", "\n"), ha="center",
                                va="center", fontsize=6, color="0.35")
            ax.set_yticks([TILE / 2, TILE + GAP + TILE / 2], [f"{family}\nnoise", "training\nimages"], fontsize=8)
            ax.set_xticks([])
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_title(f"{cond} (n = {g.runs} runs)", fontsize=9, loc="left")
        return _save(fig, out, f"mean_images_{family}.png",
                     f"The mean {family} noise image each class received (over all runs' images; under it, "
                     "how many and in how many runs) above the class's mean training image; each image "
                     "contrast-stretched on its own" + note)


TILE, GAP = 32, 12   # pixels of a gallery tile and of the white space between tiles


def _mosaic(rows: list[list], cols: int) -> np.ndarray:
    """Rows of 32x32 RGB tiles (None: a light grey tile) on white, GAP pixels apart, `cols` wide."""
    canvas = np.ones((len(rows) * (TILE + GAP) - GAP, cols * (TILE + GAP) - GAP, 3))
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = i * (TILE + GAP), j * (TILE + GAP)
            canvas[y:y + TILE, x:x + TILE] = 0.93 if tile is None else tile
    return canvas


# ---------------------------------------------------------------- why this class?

def clutter_scatter(clutter: pd.DataFrame, absorption: pd.DataFrame, class_sets: dict[str, list[str]],
                    out: Path, noise: str = "gaussian") -> str | None:
    """Each clutter measure against the share of `noise` a class absorbs (a dot per run and
    class), one block of panels per trained class set (a 2-class and a 10-class model do not
    share a scale). The noise bank's own value is marked on the x axis (see _mark_bank)."""
    cls = clutter[clutter["set"] == "class"].astype({"name": str, "trial_id": str, "condition": str})
    share = absorption[absorption["noise"] == noise].astype({"class": str, "trial_id": str})
    merged = cls.merge(share[["trial_id", "class", "share"]], left_on=["trial_id", "name"],
                       right_on=["trial_id", "class"])
    if merged.empty:
        return None
    measures = list(dict.fromkeys(merged["measure"]))
    bank = clutter[(clutter["set"] == "noise") & (clutter["name"].astype(str) == noise)].astype({"condition": str})
    sets: dict[tuple, list[str]] = {}
    for cond in dict.fromkeys(merged["condition"]):
        sets.setdefault(tuple(class_sets[cond]), []).append(cond)
    cols = min(len(measures), 5)
    rows_per_set = math.ceil(len(measures) / cols)
    with plt.rc_context(STYLE):
        colours = class_colours(merged["name"])
        fig = plt.figure(figsize=(2.9 * cols + 1.8, (2.4 * rows_per_set + 0.5) * len(sets)), layout="constrained")
        subfigs = fig.subfigures(len(sets), 1, squeeze=False)[:, 0]
        for sf, (classes, conds) in zip(subfigs, sets.items()):
            sub = merged[merged["condition"].isin(conds)]
            axes = sf.subplots(rows_per_set, cols, squeeze=False).ravel()
            for ax in axes[len(measures):]:
                ax.axis("off")
            for ax, m in zip(axes, measures):
                s = sub[sub["measure"] == m]
                ax.scatter(s["value"], s["share"], s=12, alpha=0.75, color=[colours[c] for c in s["name"]])
                b = bank[(bank["measure"] == m) & bank["condition"].isin(conds)]["value"]
                if len(b):
                    _mark_bank(ax, float(b.mean()), s["value"].to_numpy(dtype=float), m)
                else:
                    ax.set_xlabel(m)
                ax.set_ylim(-0.04, 1.04)
            for ax in axes[::cols]:
                ax.set_ylabel(f"share of {noise} noise")
            runs = sub["trial_id"].nunique()
            named = ", ".join(conds[:4]) + (f" and {len(conds) - 4} more" if len(conds) > 4 else "")
            sf.suptitle(f"{len(classes)} classes: {named} (n = {runs} runs)", fontsize=9)
        handles = [Line2D([], [], ls="", marker="o", color=colours[c]) for c in colours]
        handles.append(Line2D([], [], ls="", marker="^", color="k"))  # the bank, in range or off the scale
        _legend_outside(fig, handles, list(colours) + [f"the {noise} bank"])
        return _save(fig, out, "clutter_vs_absorption.png",
                     f"Clutter of each class vs the share of {noise} noise it absorbs, per class set "
                     f"(a dot per run and class; triangle on the axis: the {noise} noise bank's own value, or an "
                     "arrowhead where it lies off the scale)")


def _mark_bank(ax, value: float, class_values: np.ndarray, label: str) -> None:
    """The noise bank's value as a triangle on the x axis; when it lies far outside the classes'
    range (noise usually does), an arrowhead at that end of the axis and the value in the label,
    so the classes keep the whole width."""
    lo, hi = np.nanmin(class_values), np.nanmax(class_values)
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1e-3)
    ax.set_xlim(lo - pad, hi + pad)
    where = ax.get_xaxis_transform()  # x in data, y in axes units
    if lo - pad <= value <= hi + pad:
        ax.plot([value], [0.0], marker="^", color="k", ms=7, transform=where, clip_on=False, ls="")
        ax.set_xlabel(label)
        return
    right = value > hi
    ax.plot([1.0 if right else 0.0], [0.0], marker=">" if right else "<", color="k", ms=7,
            transform=ax.transAxes, clip_on=False, ls="")
    ax.set_xlabel(f"{label}\n(noise bank {value:.3g}, off the scale {'right' if right else 'left'})")


def _grouped_bars(ax, data: pd.DataFrame, x: str, group: str, value: str, label_size: int,
                  bounds: tuple[float, float] | None = None) -> list:
    """Mean +- sd of `value` over runs: a group of bars per `x`, a colour per `group`; whiskers cut
    at `bounds` when the value is bounded. Returns the bar containers (for a legend)."""
    xs, groups = list(dict.fromkeys(data[x].astype(str))), list(dict.fromkeys(data[group].astype(str)))
    summary = data.astype({x: str, group: str}).groupby([group, x])[value].agg(["mean", "std"])
    width = 0.8 / len(groups)
    bars = []
    for j, g in enumerate(groups):
        t = summary.loc[g].reindex(xs)
        err = _bounded_yerr(t["mean"], t["std"], *bounds) if bounds else t["std"].fillna(0)
        bars.append(ax.bar(np.arange(len(xs)) + (j - (len(groups) - 1) / 2) * width, t["mean"], width,
                           yerr=err, capsize=1.5, label=g, error_kw={"lw": 0.6}))
    ax.set_xticks(range(len(xs)), xs, rotation=60, ha="right", rotation_mode="anchor", fontsize=label_size)
    return bars


def _reference(ax, y: float) -> None:
    ax.axhline(y, color="k", lw=0.6, ls=":", gid="reference")


def ood_bars(ood: pd.DataFrame, out: Path) -> str:
    """AUROC (in-distribution positive) per detector and OOD set, mean +- sd over runs."""
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(ood["condition"])))
        n_sets = ood.groupby("condition", observed=True)["ood_set"].nunique().max()
        fig, axes = _grid(len(conditions), max(4.0, 0.42 * n_sets + 1.0), 3.4, cols=2)
        for ax, cond in zip(axes, conditions):
            bars = _grouped_bars(ax, ood[ood["condition"] == cond], x="ood_set", group="detector", value="auroc",
                                 label_size=7, bounds=(0.0, 1.0))
            _reference(ax, 0.5)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("AUROC (ID positive)")
            ax.set_title(cond)
        _legend_outside(fig, bars, [b.get_label() for b in bars], title="detector")
        return _save(fig, out, "ood_auroc.png", "OOD detectors: AUROC against each noise family and held-out "
                     "class (mean +- sd over runs, cut to [0, 1]; dotted: chance)" + note)


def frequency_curves(freq: pd.DataFrame, out: Path) -> str:
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(freq["condition"])))
        fig, axes = _grid(len(conditions), 3.8, 3.0)
        cutoffs = sorted(freq["cutoff"].unique())
        for ax, cond in zip(axes, conditions):
            sub = freq[freq["condition"] == cond]
            for kind, marker in (("lowpass", "o"), ("highpass", "s")):
                s = sub[sub["kind"] == kind].groupby("cutoff")["gaussian_absorber_share"].agg(["mean", "std"])
                ax.errorbar(s.index, s["mean"], yerr=_bounded_yerr(s["mean"], s["std"]), marker=marker,
                            capsize=3, label=kind)
            ax.set_xscale("log", base=2)
            # ticks at the probed cutoffs, written as plain numbers (the log formatter writes mathtext)
            ax.xaxis.set_major_locator(FixedLocator(cutoffs))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(min(cutoffs) / 1.4, max(cutoffs) * 1.4)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("cutoff (fraction of Nyquist)")
            ax.set_ylabel("share to the gaussian absorber")
            ax.set_title(cond)
        handles, labels = axes[0].get_legend_handles_labels()
        _legend_outside(fig, handles, labels)
        return _save(fig, out, "frequency_probes.png", "Band-limited Gaussian noise: does the same class "
                     "absorb it? (mean +- sd over runs, cut to [0, 1])" + note)


def intervention_bars(absorbers: pd.DataFrame, runs: pd.DataFrame, out: Path) -> str | None:
    merged = absorbers.astype({"trial_id": str}).merge(runs[["trial_id", "intervention"]].astype({"trial_id": str}),
                                                       on="trial_id")
    if merged.empty:
        return None
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * merged["noise"].nunique() + 1.5), 3.6), layout="constrained")
        bars = _grouped_bars(ax, merged, x="noise", group="intervention", value="top_share", label_size=8,
                             bounds=(0.0, 1.0))
        ax.set_ylabel("top share (mean +- sd over runs)")
        ax.set_ylim(0, 1.05)
        _legend_outside(fig, bars, [b.get_label() for b in bars], title="intervention")
        return _save(fig, out, "interventions.png", "Training interventions: how much noise the top class "
                     "takes, per noise family (trained on Gaussian noise only)")


# ---------------------------------------------------------------- the probe-time experiments (explanations)

def _condition_colours(conditions: list[str]) -> dict[str, tuple]:
    return {c: plt.cm.tab10(i % 10) for i, c in enumerate(conditions)}


def _log2_ticks(ax, values) -> None:
    """A log-2 axis ticked at `values`, written as plain numbers (the log formatter writes mathtext)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(values)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(values) / 1.3, max(values) * 1.3)


AMPLITUDE_PANELS = (("mean_max_softmax", "mean max-softmax", (0, 1.02)),
                    ("kl_label_frequencies", "KL(mean prediction || label freq.), nats", None),
                    ("top_share", "top share", (0, 1.02)),
                    ("feature_norm_ratio", "noise / test feature norm", None))


def amplitude_curves(amp: pd.DataFrame, out: Path) -> str | None:
    """The amplitude probe: per measure, one thin line per run against the amplitude (log 2),
    a colour per condition (the first MAX_PANELS conditions; MAX_RUN_LINES runs each)."""
    if amp.empty:
        return None
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(amp["condition"])))
        colours = _condition_colours(conditions)
        fig, axes = _grid(len(AMPLITUDE_PANELS), 3.6, 3.0, cols=4)
        amplitudes = sorted(amp["amplitude"].unique())
        for ax, (column, label, ylim) in zip(axes, AMPLITUDE_PANELS):
            for cond in conditions:
                sub = amp[amp["condition"] == cond]
                wide = sub.pivot_table(index="trial_id", columns="amplitude", values=column, observed=True)
                for _, row in wide.head(MAX_RUN_LINES).iterrows():
                    ok = np.isfinite(row.to_numpy(dtype=float))
                    ax.plot(np.asarray(wide.columns)[ok], row.to_numpy(dtype=float)[ok], color=colours[cond], lw=0.8,
                            alpha=0.6)
            _log2_ticks(ax, amplitudes)
            if ylim:
                ax.set_ylim(*ylim)
            ax.set_xlabel("amplitude (x the data's std)")
            ax.set_ylabel(label)
        _legend_outside(fig, [Line2D([], [], color=colours[c], lw=1.5) for c in conditions], conditions,
                        title="condition (one line per run)")
        return _save(fig, out, "amplitude_curves.png", "Gaussian noise around the data mean, scaled: reversion to "
                     "the label frequencies (MSP and KL falling) or far-field overconfidence (MSP rising)?" + note)


def batchnorm_modes(bn: pd.DataFrame, out: Path) -> str | None:
    """Per condition, the top share of Gaussian noise in each BatchNorm mode, a line per run."""
    if bn.empty:
        return None
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(bn["condition"])))
        modes = list(dict.fromkeys(bn["mode"]))
        fig, axes = _grid(len(conditions), max(3.0, 1.1 * len(modes) + 1.0), 3.2)
        for ax, cond in zip(axes, conditions):
            wide = bn[bn["condition"] == cond].pivot_table(index="trial_id", columns="mode", values="top_share",
                                                           observed=True).reindex(columns=modes)
            for _, row in wide.head(MAX_RUN_LINES).iterrows():
                ax.plot(range(len(modes)), row.to_numpy(dtype=float), color="C0", lw=0.8, alpha=0.6, marker="o", ms=3)
            ax.plot(range(len(modes)), wide.mean().to_numpy(dtype=float), color="k", lw=2.2)
            _x_labels(ax, modes)
            ax.set_xlim(-0.3, len(modes) - 0.7)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("top share of gaussian noise")
            ax.set_title(f"{cond} (n = {len(wide)} runs)")
        _legend_outside(fig, [Line2D([], [], color="C0", lw=0.8, marker="o", ms=3), Line2D([], [], color="k", lw=2.2)],
                        ["one run", "mean over runs"])
        return _save(fig, out, "batchnorm_modes.png", "BatchNorm on its running statistics (eval), the noise "
                     "batch's own (batch_stats), or statistics re-estimated on noise (noise_stats)" + note)


def handover_epochs(handover: pd.DataFrame, out: Path) -> str | None:
    """Per condition, each run's hand-over epoch, filled where the untrained network's favourite
    is the trained absorber."""
    if handover.empty:
        return None
    with plt.rc_context(STYLE):
        conditions, note = _first(list(dict.fromkeys(handover["condition"])))
        longest = max(len(str(c)) for c in conditions)   # the y labels take their width from the figure
        fig, ax = plt.subplots(figsize=(4.0 + 0.07 * longest, 0.45 * len(conditions) + 1.6), layout="constrained")
        rng = np.random.default_rng(0)  # vertical jitter only, so equal epochs stay readable
        for i, cond in enumerate(conditions):
            sub = handover[handover["condition"] == cond]
            y = i + rng.uniform(-0.18, 0.18, len(sub))
            same = sub["favourite_is_absorber"].to_numpy(dtype=bool)
            ax.scatter(sub["handover_epoch"].to_numpy()[same], y[same], color="C3", s=18, zorder=3)
            ax.scatter(sub["handover_epoch"].to_numpy()[~same], y[~same], facecolor="none", edgecolor="C0", s=18,
                       zorder=3)
        ax.set_yticks(range(len(conditions)), conditions)
        ax.set_ylim(len(conditions) - 0.5, -0.5)
        ax.set_xlim(-0.5, max(1, int(handover["epochs"].max())) + 0.5)
        ax.set_xlabel("hand-over epoch")
        _legend_outside(fig, [Line2D([], [], ls="", marker="o", color="C3"),
                              Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="C0")],
                        ["favourite at epoch 0 = trained absorber", "another class"])
        return _save(fig, out, "handover_epochs.png", "When the trained absorber takes over, per run (from the "
                     "hand-over epoch on, it leads at every epoch)" + note)
