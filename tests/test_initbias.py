"""Initial guessing bias: settings, the measurement, the analysis, and one of the paper's
predictions pinned by a test that could fail."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import initbias_report as A
from conftest import ROOT, class_images
from study.errors import InputError
from study.initbias import DEFAULT_SETTINGS, Probe, measure, parse_setting

MEAN, STD = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])


def probe(n: int) -> Probe:
    """Natural-looking class images (the fixture's) and Gaussian noise with their mean and std."""
    rng = np.random.default_rng(0)
    test = np.concatenate([class_images(c, n // 10, rng) for c in range(10)])
    test = torch.from_numpy(test).permute(0, 3, 1, 2).float() / 255
    noise = MEAN.view(1, 3, 1, 1) + STD.view(1, 3, 1, 1) * torch.randn(n, 3, 32, 32,
                                                                       generator=torch.Generator().manual_seed(1))
    return Probe(test, noise, MEAN, STD, {})


@pytest.mark.parametrize("text", DEFAULT_SETTINGS)
def test_default_settings_parse_and_name_themselves(text):
    assert parse_setting(text).name == text


@pytest.mark.parametrize("bad", ["relu-max-none", "swish-max-none-centered", "relu-max-batch-centered",
                                 "relu-max-none.train-centered", "relu-max-batch.test-centered",
                                 "relu-sum-none-centered"])
def test_a_bad_setting_is_a_clear_error(bad):
    with pytest.raises(InputError, match="--settings"):
        parse_setting(bad)


@pytest.mark.parametrize("args, message", [
    (["--settings", "relu-max-none-centred"], "--settings: unknown option in setting"),
    (["--settings", "relu-max-none-centered", "relu-max-none-centered"], "--settings: a setting is given twice"),
    (["--nets", "1"], "--nets: too few networks"),
    (["--images", "5"], "--images: too few images"),
    (["--model", "resnet18_imagenet"], "--model: has no architecture factors"),
])
def test_bad_initbias_arguments_exit_2_before_any_work(args, message, tmp_path, capsys):
    from study.__main__ import main
    assert main(["initbias", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_centering_is_the_only_difference_between_the_two_inputs():
    p = probe(20)
    c, u = p.inputs(p.noise, "centered"), p.inputs(p.noise, "uncentered")
    torch.testing.assert_close(u - c, (MEAN / STD).view(1, 3, 1, 1).expand_as(c))
    assert abs(c.mean().item()) < 0.02 and abs(c.std().item() - 1) < 0.02


def test_measure_rows_are_one_per_network_image_set_and_head_bias():
    rows = pd.DataFrame(measure(parse_setting("relu-max-batch.train-centered"), probe(20), nets=3, log=lambda m: None))
    assert len(rows) == 3 * 2 * 2 and set(rows["head_bias"]) == {"initial", "zero"}
    assert rows["max_f"].between(0.1, 1).all() and (rows["n_images"] == 20).all()
    assert rows["top_class"].isin(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                   "ship", "truck"]).all()
    again = pd.DataFrame(measure(parse_setting("relu-max-batch.train-centered"), probe(20), nets=3, log=lambda m: None))
    pd.testing.assert_frame_equal(rows, again)  # network i is seed i: the same every time


def test_the_pooling_benchmarks_edit_swaps_only_the_global_pooling():
    """benchmarks/initbias_pooling.py's variants: the edit replaces the global pooling and nothing
    else (same weights, so network i stays paired), and an edit that changes nothing measures what
    the setting itself measures."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("initbias_pooling", ROOT / "benchmarks" / "initbias_pooling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from study.models import build_model
    net = build_model("small_cnn", 10, 0, activation="tanh", pool="max", norm="none")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bench.global_pool("avg")(net)
    kinds = [type(m).__name__ for m in net.features if "Pool" in type(m).__name__]
    assert kinds == ["MaxPool2d"] * 3 + ["AdaptiveAvgPool2d"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    setting, p = parse_setting("tanh-max-none-centered"), probe(20)
    same = pd.DataFrame(measure(setting, p, nets=2, log=lambda m: None, edit=bench.global_pool("max")))
    pd.testing.assert_frame_equal(same, pd.DataFrame(measure(setting, p, nets=2, log=lambda m: None)))
    swapped = pd.DataFrame(measure(setting, p, nets=2, log=lambda m: None, edit=bench.global_pool("avg")))
    assert not swapped["max_f"].equals(same["max_f"]) or not swapped["top_class"].equals(same["top_class"])


def test_relu_biases_untrained_networks_more_than_tanh():
    """One of the paper's predictions (Francazi et al. 2024: ReLU's non-zero mean biases an untrained
    network, tanh's zero mean does not), on Gaussian noise with average pooling: 16 networks per
    setting paired by seed, exact two-sided sign-flip over networks (smallest attainable p 3e-5).
    Could fail: under H0 the p-value is uniform."""
    p = probe(32)
    rows = pd.DataFrame(measure(parse_setting("relu-avg-none-centered"), p, nets=16, log=lambda m: None)
                        + measure(parse_setting("tanh-avg-none-centered"), p, nets=16, log=lambda m: None))
    tests = A.paired_tests(rows)
    row = tests[tests["images"] == "noise"].iloc[0]
    assert (row["factor"], row["setting_a"], row["n_nets"]) == ("activation", "relu-avg-none-centered", 16)
    assert row["mean_diff"] < 0 and row["p_value"] < 0.01


# ---------------------------------------------------------------- the analysis, on planted data

def planted(values: dict[str, np.ndarray], n_images: int = 100) -> pd.DataFrame:
    rows = []
    for name, max_f in values.items():
        s = parse_setting(name)
        for images in ("test", "noise"):
            for bias in ("initial", "zero"):
                for net, v in enumerate(max_f):
                    rows.append({"setting": name, "activation": s.activation, "pool": s.pool, "norm": s.norm,
                                 "bn_mode": s.bn_mode, "inputs": s.inputs, "net": net, "images": images,
                                 "head_bias": bias, "top_class": ["cat", "dog"][net % 2], "max_f": float(v),
                                 "n_images": n_images})
    return pd.DataFrame(rows)


def test_neutral_max_f_known_answers():
    assert A.neutral_max_f(1, 10)[0] == 1.0
    assert A.neutral_max_f(2, 2, draws=200_000)[0] == pytest.approx(0.75, abs=0.005)  # 1 w.p. 1/2, else 1/2


def test_contrasts_pair_settings_that_differ_in_one_factor():
    df = planted({s: np.full(4, 0.5) for s in ("relu-max-none-centered", "tanh-max-none-centered",
                                               "tanh-avg-none-centered", "relu-max-batch.eval-centered",
                                               "relu-max-batch.train-centered")})
    assert A.contrasts(df) == [("activation", "relu-max-none-centered", "tanh-max-none-centered"),
                               ("norm", "relu-max-none-centered", "relu-max-batch.eval-centered"),
                               ("norm", "relu-max-none-centered", "relu-max-batch.train-centered"),
                               ("pool", "tanh-max-none-centered", "tanh-avg-none-centered"),
                               ("bn_mode", "relu-max-batch.eval-centered", "relu-max-batch.train-centered")]


def test_predictions_read_the_planted_answer():
    rng = np.random.default_rng(0)
    strong = np.clip(rng.normal(0.9, 0.05, 200), 0, 1)
    weak = np.clip(rng.normal(0.2, 0.03, 200), 0, 1)
    df = planted({"relu-max-none-centered": strong, "tanh-max-none-centered": strong,
                  "tanh-avg-none-centered": weak, "tanh-avg-none-uncentered": strong})
    summ = A.summary(df, 10)
    preds = A.predictions(summ, A.paired_tests(df)).set_index("prediction")["verdict"]
    assert preds["ReLU + max-pooling: strong bias"] == "holds"
    assert preds["tanh (centered inputs, no max-pooling): no strong bias"] == "holds"
    assert preds["max-pooling biases more than average pooling"] == "holds"
    assert preds["centering the inputs reduces the bias"] == "holds"
    assert preds["ReLU biases more than tanh"] == "not shown"   # planted equal
    cell = summ[(summ["setting"] == "tanh-avg-none-centered") & (summ["images"] == "test")
                & (summ["head_bias"] == "zero")].iloc[0]
    assert cell["share_strong"] == 0 and cell["ci_low"] <= 0.2 <= cell["ci_high"]
    flipped = planted({"relu-max-none-centered": weak, "tanh-avg-none-centered": strong})
    preds = A.predictions(A.summary(flipped, 10), A.paired_tests(flipped)).set_index("prediction")["verdict"]
    assert preds["ReLU + max-pooling: strong bias"] == "fails"
    assert preds["tanh (centered inputs, no max-pooling): no strong bias"] == "fails"


def test_paired_tests_pair_each_network_with_itself():
    """Known answer: the test is the sign-flip test of the per-network differences (net i - net i),
    whatever order the rows come in."""
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.2, 0.9, 12), rng.uniform(0.2, 0.9, 12)
    df = planted({"relu-max-none-centered": a, "relu-avg-none-centered": b}).sample(frac=1, random_state=0)
    row = A.paired_tests(df).iloc[0]
    expected = A.stats.sign_flip(b - a)
    assert row["mean_diff"] == pytest.approx(float(np.mean(b - a)))
    assert row["p_value"] == pytest.approx(expected["p_value"]) and row["min_attainable_p"] == 2.0 ** -11


def test_analyse_writes_every_file():
    df = planted({"relu-max-none-centered": np.full(6, 0.9), "relu-avg-none-centered": np.full(6, 0.3)})
    files = A.analyse(df)
    assert {"initbias.csv", "initbias_summary.csv", "initbias_tests.csv", "initbias_predictions.csv",
            "initbias_max_f.png", "initbias_max_f_initial_bias.png", "initbias.md"} == set(files)
    assert files["initbias_max_f.png"][:4] == b"\x89PNG"
    md = files["initbias.md"].decode()
    assert "## The paper's predictions" in md
    # both conventions side by side, one row per setting and image set
    header = next(ln for ln in md.splitlines() if ln.startswith("| setting | images | n_nets | mean"))
    assert "| initial bias: mean | initial bias: strong |" in header
