"""Measurements with known answers: the MST against brute force, shares, entropy, distances."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from analysis.measures import (
    absorption_summary,
    cosine_distance_matrix,
    minimum_spanning_tree,
    noise_neighbour,
    normalized_entropy,
    shares,
)


def spanning_trees(n):
    """Every spanning tree of the complete graph on n nodes (brute force, n <= 6)."""
    edges = list(itertools.combinations(range(n), 2))
    for subset in itertools.combinations(edges, n - 1):
        parent = list(range(n))

        def root(a, parent=parent):
            while parent[a] != a:
                a = parent[a]
            return a
        ok = True
        for i, j in subset:
            ri, rj = root(i), root(j)
            if ri == rj:
                ok = False
                break
            parent[ri] = rj
        if ok:
            yield subset


def tree_weight(tree):
    return sum(w for _, _, w in tree)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("kind", ["random", "ties", "zeros"])
def test_mst_is_a_minimum_over_all_spanning_trees(n, kind):
    rng = np.random.default_rng(n * 10 + len(kind))
    for _ in range(15):
        d = rng.random((n, n))
        if kind == "ties":
            d = rng.integers(0, 3, (n, n)).astype(float)  # many equal weights
        if kind == "zeros":
            d = np.where(rng.random((n, n)) < 0.4, 0.0, d)  # zero distances are still edges
        d = np.triu(d, 1)
        d = d + d.T
        nodes = [f"n{i}" for i in range(n)]
        tree = minimum_spanning_tree(d, nodes)
        assert len(tree) == n - 1
        best = min(sum(d[i, j] for i, j in t) for t in spanning_trees(n))
        assert tree_weight(tree) == pytest.approx(best)
        # spans: every node reached
        assert {x for u, v, _ in tree for x in (u, v)} == set(nodes) or n == 1
        assert all(u < v for u, v, _ in tree)


def test_mst_all_zero_distances_is_still_a_tree_and_deterministic():
    nodes = ["cat", "dog", "bird", "noise"]
    d = np.zeros((4, 4))
    t1 = minimum_spanning_tree(d, nodes)
    t2 = minimum_spanning_tree(d.copy(), nodes)
    assert t1 == t2 and len(t1) == 3
    # ties broken by node order: node 0 joins 1, then 2, then 3
    assert t1 == [["cat", "dog", 0.0], ["bird", "cat", 0.0], ["cat", "noise", 0.0]]


def test_mst_tie_break_is_independent_of_float_noise_free_input_order():
    d = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float)
    assert minimum_spanning_tree(d, ["a", "b", "c"]) == [["a", "b", 1.0], ["a", "c", 1.0]]


def test_noise_neighbour():
    tree = [["bird", "noise", 0.1], ["bird", "cat", 0.2], ["cat", "noise", 0.3]]
    assert noise_neighbour(tree) == ["bird", "cat"]


def test_cosine_distance_known_values():
    v = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    d = cosine_distance_matrix(v)
    assert d[0, 1] == pytest.approx(0.5)        # orthogonal
    assert d[0, 2] == pytest.approx(1.0)        # opposite
    assert d[0, 3] == pytest.approx((1 - 2 ** -0.5) / 2)
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)


def test_shares_and_entropy():
    s = shares(np.array([0, 0, 1, 0]), ["a", "b", "c"])
    assert s == {"a": 0.75, "b": 0.25, "c": 0.0}
    assert normalized_entropy([1, 0, 0]) == 0
    assert normalized_entropy([0.25] * 4) == pytest.approx(1)
    assert 0 < normalized_entropy([0.75, 0.25, 0]) < 1


def test_absorption_summary_puts_the_softmax_mass_beside_the_argmax_share():
    """Every image's argmax is class 0, yet with mass 0.4 against 0.3 + 0.3: a top share of 1 at
    an absorber probability of 0.4 (and a mean max-softmax of 0.4); a sure network: 0.9."""
    classes = ["a", "b", "c"]
    leaning = np.tile([0.4, 0.3, 0.3], (5, 1))
    r = absorption_summary(leaning.argmax(1), leaning, classes)
    assert r["absorber"] == "a" and r["top_share"] == 1.0
    assert r["absorber_softmax"] == pytest.approx(0.4) and r["mean_max_softmax"] == pytest.approx(0.4)
    mixed = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    r = absorption_summary(mixed.argmax(1), mixed, classes)
    assert r["top_share"] == pytest.approx(2 / 3) and r["absorber_softmax"] == pytest.approx((0.9 + 0.9 + 0.1) / 3)
    assert r["mean_max_softmax"] == pytest.approx((0.9 + 0.9 + 0.8) / 3)
