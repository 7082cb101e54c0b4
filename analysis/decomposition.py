"""The logit decomposition's arithmetic, torch-free: shared by the trial (study/explain.py, on a
trained network's noise features) and the null studies (analysis/nulls.py, on simulated ones),
so both compute the same numbers from the same weight terms and biases.
"""
from __future__ import annotations

import numpy as np

from .contract import BIAS_DEALS


def top_share(z: np.ndarray) -> float:
    """The share of the images (rows of logits z) that the class winning most of them wins."""
    return float(np.bincount(z.argmax(1), minlength=z.shape[1]).max() / len(z))


def margin_split(weight_term: np.ndarray, bias: np.ndarray, classes: list[str]) -> tuple[dict, np.ndarray]:
    """(the record, each image's top class) for logits w_c . f + b_c given their weight terms (n, K)
    and the biases (K,). The absorber is the class winning most images; for the images it wins,
    its margin over the runner-up splits into a weight part (w_a - w_r) . f and a bias part
    b_a - b_r."""
    w, b = np.asarray(weight_term, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    z = w + b
    order = np.argsort(-z, axis=1)
    top, runner = order[:, 0], order[:, 1]
    absorber = int(np.bincount(top, minlength=len(classes)).argmax())
    won = top == absorber
    rows = np.flatnonzero(won)
    margin = z[rows, top[rows]] - z[rows, runner[rows]]
    bias_part = b[top[rows]] - b[runner[rows]]
    weight_part = margin - bias_part
    some = len(rows) > 0
    return {
        "absorber": classes[absorber], "n_images": int(len(rows)), "absorber_share": float(won.mean()),
        # every bias zeroed, how much does the absorber keep? (descriptive: the absorber was picked with
        # the biases, so any biases it loses favoured it; bias_deal is the counterfactual to test)
        "absorber_share_without_bias": float(np.mean(w.argmax(1) == absorber)),
        "mean_margin": float(margin.mean()) if some else None,
        "mean_bias_part": float(bias_part.mean()) if some else None,
        "mean_weight_part": float(weight_part.mean()) if some else None,
        # share of the margin the bias provides (can exceed 1 when the weights favour the runner-up)
        "bias_share_of_margin": float(bias_part.sum() / margin.sum()) if some and margin.sum() else None,
        # images the absorber wins only thanks to its bias: the weight term favours the runner-up
        "decided_by_bias": float((weight_part < 0).mean()) if some else None,
        "bias": dict(zip(classes, b.tolist())),
    }, top


def bias_deal(weight_term: np.ndarray, b: np.ndarray, rng: np.random.Generator, deals: int = BIAS_DEALS) -> dict:
    """The head-bias counterfactual without selecting a class: the top share (of whichever class
    wins most) with the biases as trained, against the same bias values dealt to the classes at
    random. H0 of the explanation's test: the trained deal is exchangeable with random ones, so its
    rank among them (ties broken at random) is uniform on 0..deals.

    The identity question beside it: in how many deals is the absorber the trained placement's
    (`absorber_kept_by_deals`)? Near 1 the weight terms decide which class absorbs, whatever
    class holds which bias; near the share a class would keep by chance (about 1/K when each deal
    hands the noise to whichever class holds the top bias), the biases decide it. An estimate per
    run, not a test: where the biases alone decide, the trained placement is itself one random
    deal in law, so no rank of it among deals can tell (bias_deal rejects at its size there:
    benchmarks/bias_deal_power.py)."""
    z = weight_term + b
    k = z.shape[1]
    counts = np.bincount(z.argmax(1), minlength=k)
    actual, absorber = float(counts.max() / len(z)), int(counts.argmax())
    shares, kept = np.empty(deals), 0
    for i in range(deals):
        dealt = np.bincount((weight_term + b[rng.permutation(len(b))]).argmax(1), minlength=k)
        shares[i] = dealt.max() / len(z)
        kept += int(dealt.argmax()) == absorber
    below, tied = int(np.sum(shares < actual)), int(np.sum(shares == actual))
    return {"top_share_dealt_mean": float(shares.mean()), "bias_deals": deals,
            "bias_deal_rank": below + int(rng.integers(0, tied + 1)),
            "absorber_kept_by_deals": kept / deals}
