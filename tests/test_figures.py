"""Every figure of the aggregation, drawn from planted studies, passes the layout checks (nothing
outside the canvas, no mathtext source in tick labels, no legend over data or titles), and the
checks themselves catch each fault they name."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from analysis import plots, tables  # noqa: E402
from analysis.pipeline import aggregate  # noqa: E402
from analysis.synthetic import Condition, write_study  # noqa: E402

TREE = [("airplane", "ship"), ("automobile", "truck"), ("ship", "truck"), ("bird", "airplane"), ("cat", "dog"),
        ("deer", "horse"), ("dog", "horse"), ("frog", "bird"), ("cat", "frog"), ("bird", "noise")]
FAMILIES = ("gaussian", "uniform", "blobs")
BLUR = {"target": "cat", "kind": "blur", "strength": 1.0}


def _aggregate_checked(study, monkeypatch) -> dict[str, list[str]]:
    """Aggregate `study`; every figure saved on the way is checked: name -> its problems."""
    checked, save = {}, plots._save

    def save_and_check(fig, out, name, title):
        result = save(fig, out, name, title)
        checked[name] = plots.layout_problems(fig)
        return result

    monkeypatch.setattr(plots, "_save", save_and_check)
    aggregate(str(study))
    return checked


@pytest.fixture(scope="module")
def planted_figures(tmp_path_factory):
    """Three planted studies (with the "why" measurements) that together draw every figure:
    10-, 3- and 2-class conditions (one with a label too long for a panel); training
    interventions; per-class interventions."""
    root = tmp_path_factory.mktemp("figures")
    studies = [
        write_study(root, [Condition("flip", absorber="bird", tree=TREE), Condition("none", absorber="cat", tree=TREE),
                           Condition("catdog", classes=["cat", "dog"], absorber="cat"),
                           Condition("a_condition_label_long_enough_to_run_past_its_panel", classes=["cat", "dog", "ship"])],
                    seeds=4, families=FAMILIES, epochs=6, why=True, name="conditions"),
        write_study(root, [Condition("none", absorber="cat"), Condition("outlier_exposure")], seeds=3,
                    axis="intervention", families=FAMILIES, why=True, name="interventions"),
        write_study(root, [Condition("none", classes=["cat", "dog", "ship"], absorber="dog"),
                           Condition(BLUR, classes=["cat", "dog", "ship"], absorber="cat"),
                           Condition({**BLUR, "strength": 2.0}, classes=["cat", "dog", "ship"], absorber="cat")],
                    seeds=3, axis="class_intervention", families=FAMILIES, why=True, name="causal"),
    ]
    with pytest.MonkeyPatch.context() as mp:
        return studies, {s.name: _aggregate_checked(s, mp) for s in studies}


EXPECTED = {
    "conditions": ["absorption_heatmap.png", "absorber_frequency.png", "consensus_mst_gaussian.png",
                   "distance_heatmap_gaussian.png", "trajectory.png", "absorber_over_training.png",
                   "accuracy.png", "clutter_vs_absorption.png", "ood_auroc.png", "frequency_probes.png",
                   *[f"mean_images_{f}.png" for f in FAMILIES]],
    "interventions": ["interventions.png"],
    "causal": ["causal_dose_response.png"],
}


@pytest.mark.parametrize("study,figure", [(s, f) for s, names in EXPECTED.items() for f in names])
def test_every_figure_is_drawn_and_passes_the_layout_checks(planted_figures, study, figure):
    studies, checked = planted_figures
    assert figure in checked[study], f"{figure} was not drawn"
    assert checked[study][figure] == []
    folder = next(s for s in studies if s.name == study) / "report"
    assert (folder / figure).stat().st_size > 5_000


# ---------------------------------------------------------------- the checks catch what they name

def _checked(draw) -> list[str]:
    with plt.rc_context(plots.STYLE):
        fig = draw()
        problems = plots.layout_problems(fig)
        plt.close(fig)
    return problems


def test_a_title_wider_than_the_canvas_is_caught():
    def draw():
        fig, ax = plt.subplots(figsize=(3, 2))  # no constrained layout, as accuracy.png had
        ax.plot([0, 1], [0, 1])
        fig.suptitle("Test accuracy per condition (dots: runs; bar: mean +- sd) " * 2)
        return fig
    assert any("outside the canvas" in p for p in _checked(draw))


def test_slanted_tick_labels_below_a_fixed_canvas_are_caught():
    def draw():
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.set_xticks([0, 1], ["classes=cat.dog.ship.truck", "classes=all"], rotation=30, ha="right")
        return fig
    assert any("outside the canvas" in p for p in _checked(draw))


def test_mathtext_tick_labels_of_a_log2_axis_are_caught():
    def draw():
        fig, ax = plt.subplots(layout="constrained")
        ax.plot([0.125, 0.25, 0.5], [0.1, 0.2, 0.3])
        ax.set_xscale("log", base=2)  # matplotlib's default formatter writes $\mathdefault{2^{-3}}$
        return fig
    assert any("mathtext" in p for p in _checked(draw))


def test_a_legend_over_bars_is_caught():
    def draw():
        fig, ax = plt.subplots(layout="constrained")
        ax.bar(range(5), [0.2, 0.3, 0.95, 0.97, 0.99], label="condition")
        ax.legend(loc="upper right")
        return fig
    assert any("covers a bar" in p for p in _checked(draw))


def test_a_legend_over_points_is_caught():
    def draw():
        fig, ax = plt.subplots(layout="constrained")
        x, y = np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 12))  # points everywhere
        ax.scatter(x.ravel(), y.ravel(), label="cat")
        ax.legend(loc="upper left")
        return fig
    assert any("scatter points" in p for p in _checked(draw))


def test_a_figure_legend_over_the_title_is_caught():
    def draw():
        fig, ax = plt.subplots(layout="constrained", figsize=(6, 3))
        ax.plot([0, 1], [0, 1], label="one")
        fig.suptitle("a long title that runs all the way across the top of the figure, edge to edge")
        fig.legend(loc="outside right upper")
        return fig
    assert any("covers the title" in p for p in _checked(draw))


def test_the_fixed_versions_pass():
    def draw():
        fig, ax = plt.subplots(layout="constrained")
        bars = ax.bar(range(5), [0.2, 0.3, 0.95, 0.97, 0.99])
        plots._legend_outside(fig, [bars], ["condition"])
        ax.set_xscale("linear")
        return fig
    assert _checked(draw) == []


# ---------------------------------------------------------------- what the pictures show

def test_bounded_whiskers_stop_at_the_bounds():
    err = plots._bounded_yerr([0.95, 0.5, 0.02], [0.2, 0.2, np.nan])
    assert np.allclose(err, [[0.2, 0.2, 0.0], [0.05, 0.2, 0.0]])


def test_mean_images_pool_the_runs_images_weighted_by_their_counts():
    run = {"classes": ["cat", "dog"], "families": ["gaussian"]}
    a = {"noise_mean_images_gaussian": np.stack([np.full((32, 32, 3), 100), np.zeros((32, 32, 3))]).astype(np.uint8),
         "noise_mean_counts_gaussian": np.array([3, 0]),
         "class_mean_images": np.stack([np.full((32, 32, 3), 51), np.full((32, 32, 3), 102)]).astype(np.uint8)}
    b = {"noise_mean_images_gaussian": np.stack([np.full((32, 32, 3), 200), np.full((32, 32, 3), 50)]).astype(np.uint8),
         "noise_mean_counts_gaussian": np.array([1, 4]),
         "class_mean_images": np.stack([np.full((32, 32, 3), 153), np.full((32, 32, 3), 102)]).astype(np.uint8)}
    m = tables.mean_images([run, run, run], [a, b, None])  # the third run's arrays were unreadable
    images, counts, runs_with = m.noise["gaussian"]
    assert m.runs == 2 and list(counts) == [4, 4] and list(runs_with) == [2, 1]
    assert images[0].mean() == pytest.approx((3 * 100 + 200) / 4 / 255)   # the images' mean, not the runs'
    assert images[1].mean() == pytest.approx(50 / 255)
    assert m.class_images["cat"].mean() == pytest.approx(102 / 255) and m.class_images["dog"].mean() == pytest.approx(0.4)


def test_contrast_stretch_maps_the_percentiles_to_black_and_white():
    img = np.linspace(0.45, 0.55, 32 * 32 * 3).reshape(32, 32, 3)
    out = plots.stretch(img)
    assert out.min() == 0 and out.max() == 1 and np.all(np.diff(out.ravel()) >= 0)
    assert np.all(plots.stretch(np.full((32, 32, 3), 0.3)) == 0.5)  # a flat image stays grey
