"""The power / seeds calculator (analysis/power.py) against known answers: at the null its power is
the test's size, power grows with seeds, and the design it reads from a sweep is the one the
aggregation tests."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from analysis import power


def test_power_at_chance_is_the_exact_size_of_the_consistency_test():
    """K = 3, S = 6: the size at 0.05 by enumerating all 3^6 outcomes of uniform absorbers, against
    the simulated power at q = 1/K (within 4 Monte Carlo SEs)."""
    k, s = 3, 6
    size = 0.0
    for outcome in itertools.product(range(k), repeat=s):
        counts = tuple(sorted(np.bincount(outcome, minlength=k).tolist(), reverse=True))
        size += (power._consistency_p(counts) <= power.ALPHA) / k**s
    est = power.consistency_power(k, s, 1 / k, sims=4000)
    assert abs(est.power - size) < 4 * est.se + 1e-9, (est, size)
    assert size <= power.ALPHA


def test_consistency_power_grows_with_seeds_and_matches_known_figures():
    figures = [power.consistency_power(10, s, 0.5, sims=2000) for s in (5, 8, 12, 20)]
    assert all(a.power < b.power for a, b in zip(figures, figures[1:]))
    # README: K = 10, q = 0.5 -> about 0.21/0.50/0.80/0.96 (each within 4 SE of the 4000-study figure there)
    for f, ref in zip(figures, (0.21, 0.50, 0.80, 0.96)):
        assert abs(f.power - ref) < 4 * f.se + 0.01


def test_paired_test_keeps_its_size_without_a_shift_and_gains_power_with_seeds():
    null = power.paired_power(10, 12, 0.5, 0.5, agree=0.5, sims=1000)
    assert null.power <= power.ALPHA + 3 * null.se
    # up to 16 seeds: the swap test is exact there (beyond, each study's Monte Carlo takes seconds)
    shifted = [power.paired_power(10, s, 0.75, 0.25, sims=500) for s in (8, 12, 16)]
    assert all(a.power < b.power for a, b in zip(shifted, shifted[1:])) and shifted[-1].power > 0.8
    three = power.paired_power(10, 12, 0.5, 0.5, conditions=3, sims=400)  # Cochran's Q at its null
    assert three.power <= power.ALPHA + 3 * three.se


def test_discordance_of_the_paired_model_matches_simulation():
    rng = np.random.default_rng(0)
    x = np.concatenate([power.paired_absorbers(10, 1000, 0.75, 0.25, 0.5, 2, rng) for _ in range(20)])
    assert np.mean(x[:, 0] != x[:, 1]) == pytest.approx(power.discordance(10, 0.75, 0.25, 0.5), abs=0.01)
    assert (np.mean(x[:, 0] == 0) == pytest.approx(0.75, abs=0.01)
            and np.mean(x[:, 1] == 0) == pytest.approx(0.25, abs=0.01))


def test_seeds_needed_finds_the_first_crossing():
    def linear(n):
        return power.Power(min(1.0, n / 100), 0.0, 1)
    assert power.seeds_needed(linear, start=2) == 80
    assert power.seeds_needed(linear, start=150) == 80
    assert power.seeds_needed(lambda n: power.Power(0.1, 0.0, 1)) is None


def test_design_is_read_as_the_aggregation_pairs_it():
    ten = [f"c{i}" for i in range(10)]
    points = [({"augmentation": a, "seed": s}, ten) for a in ("none", "flip") for s in range(8)]
    points += [({"augmentation": "none", "classes": "cat.dog", "seed": s}, ["cat", "dog"]) for s in range(3)]
    cells, paired = power.design(points)
    assert cells == [(2, 3), (10, 8)] and paired == [(10, 8, 2)]
    unpaired = [({"augmentation": a, "seed": s + (10 if a == "flip" else 0)}, ten)
                for a in ("none", "flip") for s in range(8)]
    assert power.design(unpaired)[1] == []
    text = power.design_block(points, sims=200)
    assert "absorber consistency, K = 10, 8 seeds per condition" in text
    assert "paired absorber test (marginal homogeneity), K = 10, 2 conditions on 8 seeds" in text
    assert "80% power at q = 0.75 needs" in text                       # K = 2: q = 0.5 is chance


def test_conditions_of_different_networks_get_the_unpaired_power():
    ten = [f"c{i}" for i in range(10)]
    points = [({"arm": a, "seed": s}, ten, a) for a in ("small", "big") for s in range(8)]
    assert power.unpaired_design(points) == [(10, 8, 2)]
    text = power.design_block(points, sims=100)
    assert "unpaired absorber test (permutation chi-square" in text and "paired absorber test (marginal" not in text
    same = [({"arm": a, "seed": s}, ten, "one") for a in ("small", "big") for s in range(8)]
    assert power.unpaired_design(same) == []
