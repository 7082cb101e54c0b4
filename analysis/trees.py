"""MST stability across runs: the class tree, where the noise node hangs, the consensus tree.

The noise node is not one more class: in real features its mean is far from every class, so it
is a leaf of the tree in nearly every run, and relabelling it together with the classes makes
chance rates wrong (class-class edges then occur at 2/K, not 2/(K+1)). So the tree over the K
class means (the class block of the distance matrix, the same for every noise family) is analysed
with the classes relabelled, and the class the noise node hangs on (its nearest class: the MST
always holds each node's shortest edge) is analysed on its own, per noise family.
"""
from __future__ import annotations

from itertools import combinations

import networkx as nx
import numpy as np
import pandas as pd

from .contract import NOISE_NODE
from .stats import adjust, edge_pvalue, relabel_chance, tree_overlap_test

ALL_FAMILIES = "(all)"   # the `noise` value of results that do not depend on the noise family
EDGE_COLUMNS = ["test", "condition", "noise", "u", "v", "n_runs", "count", "frequency", "null_frequency",
                "p_value", "p_min", "q_value"]


def class_tree(dist: np.ndarray) -> list[tuple[int, int]]:
    """The minimum spanning tree over the class block, as the trial computes the full one: Kruskal
    on the complete graph (a zero distance is an edge too), ties broken by (weight, i, j) (networkx
    sorts the edges stably, in the order they were added); pairs (i, j) with i < j."""
    k = len(dist)
    g = nx.Graph()
    g.add_nodes_from(range(k))
    g.add_weighted_edges_from((i, j, float(dist[i, j])) for i in range(k) for j in range(i + 1, k))
    return sorted(tuple(sorted(e)) for e in nx.minimum_spanning_edges(g, algorithm="kruskal", data=False))


def nearest_class(dist: np.ndarray) -> int:
    """The class the noise node (last row) hangs on: its nearest class (ties: the first)."""
    return int(np.argmin(dist[-1, :-1]))


def edge_frequency(class_trees: dict[str, tuple[list[str], list[list]]],
                   attachments: dict[tuple[str, str], tuple[list[str], list[int]]]) -> pd.DataFrame:
    """class_trees: condition -> (classes, [class-tree edges (i, j) per run]);
    attachments: (condition, noise family) -> (classes, [the class the noise node hangs on, per run]).

    Rows `mst_edge`: every one of the C(K, 2) class pairs (an edge never seen is information too),
    noise `(all)`; p: one-sided exact binomial against the relabelling chance 2/K. Rows
    `noise_edge`: per noise family, every class, v = noise; p against 1/K. q:
    Benjamini-Yekutieli over all rows of the study (one family, any dependence)."""
    rows = []
    for condition, (classes, trees) in class_trees.items():
        s, k = len(trees), len(classes)
        counts = {p: 0 for p in combinations(range(k), 2)}
        for tree in trees:
            for e in tree:
                counts[e] += 1
        chance = relabel_chance(k - 1, k)
        for (i, j), c in counts.items():
            u, v = sorted((classes[i], classes[j]))
            rows.append({"test": "mst_edge", "condition": condition, "noise": ALL_FAMILIES, "u": u, "v": v,
                         "n_runs": s, "count": c, "frequency": c / s, "null_frequency": chance,
                         "p_value": edge_pvalue(c, s, chance), "p_min": chance**s})
    for (condition, noise), (classes, nearest) in attachments.items():
        s, k = len(nearest), len(classes)
        counts = np.bincount(nearest, minlength=k)
        for c, name in enumerate(classes):
            rows.append({"test": "noise_edge", "condition": condition, "noise": noise, "u": name,
                         "v": NOISE_NODE, "n_runs": s, "count": int(counts[c]), "frequency": counts[c] / s,
                         "null_frequency": 1 / k, "p_value": edge_pvalue(int(counts[c]), s, 1 / k),
                         "p_min": (1 / k) ** s})
    df = pd.DataFrame(rows, columns=[c for c in EDGE_COLUMNS if c != "q_value"])
    df["q_value"] = adjust(df["p_value"].to_numpy(), "fdr_by") if len(df) else []
    return df


def consensus_trees(freq: pd.DataFrame) -> dict[tuple[str, str], list[tuple[str, str, float]]]:
    """(condition, noise family) -> the consensus tree: the maximum spanning tree of the class
    edges' frequencies, and the noise node on the class it hangs on most often; each edge carries
    its support (fraction of runs). Ties broken by the alphabetical order of (u, v)."""
    out = {}
    classes = freq[freq["test"] == "mst_edge"]
    for (condition, noise), att in freq[freq["test"] == "noise_edge"].groupby(["condition", "noise"], sort=False):
        tree = consensus_tree(classes[classes["condition"] == condition])
        top = att.sort_values(["frequency", "u"], ascending=[False, True]).iloc[0]
        out[(condition, noise)] = sorted(tree + [(top["u"], NOISE_NODE, float(top["frequency"]))],
                                         key=lambda e: (-e[2], e[0], e[1]))
    return out


def consensus_tree(freq: pd.DataFrame) -> list[tuple[str, str, float]]:
    """Maximum spanning tree of edge frequencies (one condition's class edges), ties broken by
    the alphabetical order of (u, v); each edge carries its support (fraction of runs)."""
    g = nx.Graph()
    for row in freq.sort_values(["u", "v"]).itertuples():
        g.add_edge(row.u, row.v, weight=row.frequency)
    tree = nx.maximum_spanning_tree(g, algorithm="kruskal")
    return sorted(((*sorted((u, v)), d["weight"]) for u, v, d in tree.edges(data=True)),
                  key=lambda e: (-e[2], e[0], e[1]))


def overlap(k: int, trees: list[list[tuple[int, int]]], seed: int = 0) -> dict:
    """Mean pairwise shared class edges of the runs' class trees against relabelled class trees."""
    return tree_overlap_test(np.array(trees).reshape(len(trees), k - 1, 2), k, seed=seed)
