"""What `bias_deal` can and cannot see: simulated studies through the very functions a trial and the
aggregation use (analysis/decomposition.bias_deal per run, analysis/stats.uniform_rank_test over runs).

Two truths, K classes, noise logits = weight term + head bias per class, nothing else:
  biases decide: the weight terms carry no class effect (N(0, sd_w) per image and class) and the
      biases are spread wide (N(0, sd_b), sd_b >> sd_w), so whichever class holds the top bias takes
      the noise. The trained placement is then one random deal in law: the rank test cannot reject
      more often than its size, however strongly the biases decide;
  weights decide: one class's weight term is shifted up by `shift` for every image (a class effect of
      the weights) and the biases are as spread as in real heads relative to it.
For each: the rank test's rejection rate at 0.05 over `studies` studies of S runs, and the mean over
runs of `absorber_kept_by_deals` (the identity estimate reported beside the test: about 1/K where the
biases decide, near 1 where the weights do).

    python benchmarks/bias_deal_power.py [--studies 400] [--seeds 8 12 20]

Prints one line per (truth, S); torch-free, seconds on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis.decomposition import bias_deal
from analysis.stats import uniform_rank_test

K, IMAGES, DEALS = 10, 300, 99   # the trials' classes, a probe bank's order of size, BIAS_DEALS


def run(truth: str, rng: np.random.Generator, sd_w: float = 1.0, sd_b: float = 5.0, shift: float = 3.0) -> dict:
    """One run's bias_deal record under `truth` (see the module's docstring)."""
    weight = rng.normal(0.0, sd_w, (IMAGES, K))
    if truth == "biases decide":
        b = rng.normal(0.0, sd_b, K)
    else:
        weight[:, rng.integers(K)] += shift
        b = rng.normal(0.0, sd_w / 2, K)
    return bias_deal(weight, b, rng, DEALS)


def study(truth: str, seeds: int, rng: np.random.Generator) -> tuple[float, float]:
    """(p of the rank test over the study's runs, mean absorber_kept_by_deals)."""
    runs = [run(truth, rng) for _ in range(seeds)]
    p = uniform_rank_test(np.array([r["bias_deal_rank"] for r in runs]), DEALS)["p_value"]
    return p, float(np.mean([r["absorber_kept_by_deals"] for r in runs]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[8, 12, 20])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for truth in ("biases decide", "weights decide"):
        for s in args.seeds:
            res = np.array([study(truth, s, rng) for _ in range(args.studies)])
            rate = float((res[:, 0] <= 0.05).mean())
            se = (rate * (1 - rate) / args.studies) ** 0.5
            print(f"{truth:15s} S = {s:2d}: bias_deal rejects {rate:.3f} (+- {se:.3f}) of {args.studies} studies at "
                  f"0.05; absorber_kept_by_deals {res[:, 1].mean():.3f} (1/K = {1 / K:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
