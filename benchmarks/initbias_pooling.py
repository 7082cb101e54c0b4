"""Why tanh + max-pooling is so biased in small_cnn (mean max_f 0.88 on centred test images, head
bias zeroed; docs/results/initbias): which of its max-poolings carries the initial guessing bias.

small_cnn's `pool` is every pooling: three 2x2 poolings (before the activation) and the global
pooling of the last 4x4 map into the features (after it). A tanh layer alone keeps every feature's
mean at 0 (tanh is odd, the weights symmetric), so no class is strongly favoured (tanh + avg: 0.30,
against 0.15 without any bias). A max over k units of mean 0 has a mean above 0 shared by every input: a common
direction in feature space that the head turns into one favoured class (Francazi et al., ICML 2024:
max-pooling creates the bias, and more of it amplifies it). The global max is over 16 positions,
the 2x2 ones over 4: this measures each one's part, on the same networks (seed i, same weights; only
pooling modules are swapped, which have no parameters), the same images and the same noise as
`python -m study initbias`:

    NOISESINK_DATA=../shared/data/cifar10-jpg.tar python benchmarks/initbias_pooling.py [--nets 200] [--images 100]

Prints one line per variant: mean max_f on test images and on noise [95% t interval over networks]
and the share of strongly biased networks, with the head bias zeroed (the paper's convention) and
as initialised; ~30 s a variant on 2 idle cores at the defaults.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis.initbias_report import STRONG, mean_ci
from study.initbias import load_probe, measure, parse_setting


def global_pool(kind: str):
    """Replace the global pooling (the features' 4x4 -> 1x1) by `kind`."""
    def edit(net):
        i = next(i for i, m in enumerate(net.features) if isinstance(m, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)))
        net.features[i] = nn.AdaptiveMaxPool2d(1) if kind == "max" else nn.AdaptiveAvgPool2d(1)
    return edit


# (name, setting, edit): small_cnn's two tanh settings and the two mixed ones between them
VARIANTS = (
    ("2x2 max, global max (tanh-max)", "tanh-max-none-centered", None),
    ("2x2 max, global avg", "tanh-max-none-centered", global_pool("avg")),
    ("2x2 avg, global max", "tanh-avg-none-centered", global_pool("max")),
    ("2x2 avg, global avg (tanh-avg)", "tanh-avg-none-centered", None),
    ("2x2 max, global avg; ReLU", "relu-max-none-centered", global_pool("avg")),
    ("2x2 avg, global avg; ReLU (relu-avg)", "relu-avg-none-centered", None),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", type=int, default=200)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--out", help="also write the per-network rows as CSV here")
    args = ap.parse_args()
    probe = load_probe(args.images, 0, None)
    rows = []
    for name, setting, edit in VARIANTS:
        got = measure(parse_setting(setting), probe, args.nets, edit=edit, log=lambda _: None)
        rows += [{**r, "variant": name} for r in got]
        df = pd.DataFrame(got)
        cells = []
        for bias in ("zero", "initial"):
            for images in ("test", "noise"):
                x = df[(df["head_bias"] == bias) & (df["images"] == images)]["max_f"].to_numpy()
                mean, lo, hi = mean_ci(x)
                cells.append(f"{images} {mean:.2f} [{lo:.2f}, {hi:.2f}] strong {np.mean(x >= STRONG):.0%}")
        print(f"{name:34s} | bias zeroed: {'; '.join(cells[:2])} | bias as initialised: {'; '.join(cells[2:])}",
              flush=True)
    if args.out:
        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
