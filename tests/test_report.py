"""The report a person reads, from planted studies: every figure passes the layout checks (nothing
outside the canvas, no mathtext source in tick labels, no legend over data or titles) and the
checks catch each fault they name; report.md and report.html say the same; report.html is
self-contained and, opened in headless Chromium, loads, decodes every image and logs no error."""
from __future__ import annotations

import html
import io
import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import document, plots, report, stats, tables
from analysis.pipeline import TOPICS, aggregate
from analysis.synthetic import Condition, write_study
from browser import find_chromium, open_page

TREE = [("airplane", "ship"), ("automobile", "truck"), ("ship", "truck"), ("bird", "airplane"), ("cat", "dog"),
        ("deer", "horse"), ("dog", "horse"), ("frog", "bird"), ("cat", "frog"), ("bird", "noise")]
FAMILIES = ("gaussian", "uniform", "blobs")
BLUR = {"target": "cat", "kind": "blur", "strength": 1.0}


def _aggregate_checked(study, wanted) -> dict[str, list[str]]:
    """Aggregate `study`; each figure of `wanted` saved on the way is checked (a layout check
    redraws the figure: the others are only recorded as drawn): name -> its problems."""
    checked, save = {}, plots._save

    def save_and_check(fig, out, name, title):
        result = save(fig, out, name, title)
        checked[name] = plots.layout_problems(fig) if name in wanted else None
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", save_and_check)
        aggregate(str(study))
    return checked


@pytest.fixture(scope="module")
def planted_figures(tmp_path_factory):
    """Three planted studies that together draw every figure: 10-, 3- and 2-class conditions (one
    with a label too long for a panel) with the "why" measurements; training interventions;
    per-class interventions (these two without: their figures do not use them, and drawing the
    why figures twice more would double the fixture's time)."""
    root = tmp_path_factory.mktemp("figures")
    studies = [
        write_study(root, [Condition("flip", absorber="bird", tree=TREE), Condition("none", absorber="cat", tree=TREE),
                           Condition("catdog", classes=["cat", "dog"], absorber="cat"),
                           Condition("a_condition_label_long_enough_to_run_past_its_panel",
                                     classes=["cat", "dog", "ship"])],
                    seeds=4, families=FAMILIES, epochs=6, why=True, name="conditions"),
        write_study(root, [Condition("none", absorber="cat"), Condition("outlier_exposure")], seeds=3,
                    axis="intervention", families=FAMILIES[:1], why=False, name="interventions"),
        write_study(root, [Condition("none", classes=["cat", "dog", "ship"], absorber="dog"),
                           Condition(BLUR, classes=["cat", "dog", "ship"], absorber="cat"),
                           Condition({**BLUR, "strength": 2.0}, classes=["cat", "dog", "ship"], absorber="cat")],
                    seeds=3, axis="class_intervention", families=FAMILIES[:1], why=False, name="causal"),
    ]
    return studies, {s.name: _aggregate_checked(s, EXPECTED[s.name]) for s in studies}


EXPECTED = {
    "conditions": ["absorption_heatmap.png", "absorber_frequency.png", "consensus_mst_gaussian.png",
                   "distance_heatmap_gaussian.png", "trajectory.png", "absorber_over_training.png",
                   "accuracy.png", "clutter_vs_absorption.png", "ood_auroc.png", "frequency_probes.png",
                   "amplitude_curves.png", "batchnorm_modes.png", "handover_epochs.png",
                   *[f"mean_images_{f}.png" for f in FAMILIES]],
    "interventions": ["interventions.png"],
    "causal": ["causal_dose_response.png"],
}


@pytest.mark.slow
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
    assert (m.class_images["cat"].mean() == pytest.approx(102 / 255)
            and m.class_images["dog"].mean() == pytest.approx(0.4))


def test_contrast_stretch_maps_the_percentiles_to_black_and_white():
    img = np.linspace(0.45, 0.55, 32 * 32 * 3).reshape(32, 32, 3)
    out = plots.stretch(img)
    assert out.min() == 0 and out.max() == 1 and np.all(np.diff(out.ravel()) >= 0)
    assert np.all(plots.stretch(np.full((32, 32, 3), 0.3)) == 0.5)  # a flat image stays grey


# ---------------------------------------------------------------- report.md and report.html

def _report(planted_figures, study="conditions"):
    return next(s for s in planted_figures[0] if s.name == study) / "report"


def test_markdown_and_html_carry_the_same_sections_figures_and_tables(planted_figures):
    folder = _report(planted_figures)
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    assert titles[0] == "The answer first" and titles[-1] == "Methods"      # answer first, methods last
    for title in titles:
        assert f">{html.escape(title)}</h2>" in page, title
    figures_md = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    figures_html = re.findall(r'<figure id="fig-([^"]+)"', page)
    assert (sorted(figures_md) == sorted(f"{f}.png" for f in figures_html)
            == sorted(p.name for p in folder.glob("*.png")))
    assert page.count("<table") == md.count("\n|---|")                    # every table in both
    toc = re.findall(r'<nav class="toc">.*?</nav>', page, flags=re.S)[0]
    assert re.findall(r'href="#([^"]+)"', toc) == re.findall(r'<section id="([^"]+)"', page)
    from analysis.revision import AT_IMPORT
    assert json.loads((folder / "aggregation.json").read_text())["code_revision"] == AT_IMPORT


def test_every_number_of_the_answer_is_in_both_renderings(planted_figures):
    folder = _report(planted_figures)
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    answer = md.split("## The answer first")[1].split("\n## ")[0]
    numbers = re.findall(r"\d+/\d+|p = [\d.e-]+|\d+(?:\.\d+)?%", answer)
    assert len(numbers) > 20
    plain = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert all(n in plain for n in numbers)


def test_the_html_page_is_self_contained(planted_figures):
    page = (_report(planted_figures) / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<link" not in page
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def test_text_from_the_data_cannot_become_markup(tmp_path):
    name = '<script>alert(1)</script> *x* [l](http://e)'
    r = document.Report(title=name, intro=[document.Paragraph(document.text("from ", document.Strong(name)))],
                        answer=[], sections=[document.Section("S", [document.Table(
                            pd.DataFrame({"class": [name], "share": ["0.5"]}))])],
                        files=document.Section("Files", [document.Paragraph(document.text(name))]),
                        methods=document.Section("Methods", [document.Paragraph(document.text("m"))]))
    page, md = document.to_html(r, tmp_path), document.to_markdown(r)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"(?<!\\)<script", md) and not re.search(r"(?<!\\)\]\(http", md)  # only escaped


# ---------------------------------------------------------------- in a real browser

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (Debian: apt-get "
                                    "install chromium), so report.html was not opened in a browser")

SORT_CHECK = """(() => {
  const table = document.querySelector("table.sortable");
  const col = [...table.tHead.rows[0].cells].findIndex(th => th.textContent === "modal_share");
  const values = () => [...table.tBodies[0].rows].map(r => parseFloat(r.cells[col].textContent));
  table.tHead.rows[0].cells[col].click();
  const up = values();
  table.tHead.rows[0].cells[col].click();
  const down = values();
  return {up: up, down: down};
})()"""
TOC_CHECK = """[...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href'))
  .filter(h => !document.getElementById(h.slice(1)))"""


@pytest.mark.slow
@needs_chromium
def test_report_html_opens_in_chromium_with_every_image_and_no_error(planted_figures, tmp_path):
    folder = _report(planted_figures)
    page = open_page(folder / "report.html", {"sort": SORT_CHECK, "missing_anchors": TOC_CHECK,
                                              "sections": "document.querySelectorAll('section').length"})
    (tmp_path / "report.png").write_bytes(page.screenshot)
    assert page.ready_state == "complete" and page.title == "noisesink report: conditions"
    assert page.errors == []
    pngs = sorted(folder.glob("*.png"))
    assert len(page.images) == len(pngs)
    widths = sorted(int(plt.imread(p).shape[1]) for p in pngs)
    assert all(complete and w > 0 and h > 0 for _, complete, w, h in page.images)
    assert sorted(w for _, _, w, _ in page.images) == widths               # decoded at their true size
    assert page.evaluated["missing_anchors"] == [] and page.evaluated["sections"] >= 8
    up, down = page.evaluated["sort"]["up"], page.evaluated["sort"]["down"]
    assert up == sorted(up) and down == sorted(down, reverse=True) and up != down
    shot = plt.imread(io.BytesIO(page.screenshot))
    assert shot.shape[0] > 3000 and shot.std() > 0.05                      # the whole page, not blank


@needs_chromium
def test_the_browser_check_sees_broken_images_and_console_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><title>bad</title><img alt="x" src="data:image/png;base64,AAAA">'
                   '<script>console.error("boom"); undefined_function();</script>')
    page = open_page(bad)
    assert page.images[0][2] == 0
    assert any("boom" in e for e in page.errors) and any("undefined_function" in e for e in page.errors)


def test_methods_quote_the_codes_own_settings(monkeypatch):
    """Every count and level in Methods is read from the setting it describes: other settings,
    other text, and none of the shipped figures left behind."""
    changed = {"CONSISTENCY_DRAWS": 123_457, "PERMUTATIONS": 4_321, "CONDITION_LEAST_PERMUTATIONS": 777,
               "LEAST_PERMUTATIONS": 55, "EXACT_SIGN_FLIPS": 13, "LEVEL": "90%"}
    for name, value in changed.items():
        monkeypatch.setattr(stats, name, value)
    text = report.methods_text([topic.methods() for topic in TOPICS])
    for shown in ("123,457 simulated studies", "4,321 relabellings", "never under 777", "no fewer than 55",
                  "up to n = 13", "90% t interval"):
        assert shown in text, shown
    for shipped in ("100,000", "9,999", "999,", "199", "95% t interval"):
        assert shipped not in text, shipped
