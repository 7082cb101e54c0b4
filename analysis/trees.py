"""MST stability across runs: edge frequencies, the consensus tree, tree overlap."""
from __future__ import annotations

from itertools import combinations

import networkx as nx
import numpy as np
import pandas as pd

from .stats import adjust, edge_pvalue, tree_overlap_test


def edge_frequency(groups: dict[tuple[str, str], tuple[list[str], list[list]]]) -> pd.DataFrame:
    """groups: (condition, noise) -> (nodes, [tree edges per run]).

    Every one of the C(K+1, 2) possible edges gets a row, observed or not (an edge never seen is
    information too). p: one-sided exact binomial test against 2/(K+1); q: Benjamini-Yekutieli
    over all edges of all (condition, noise) cells, one family."""
    rows = []
    for (condition, noise), (nodes, trees) in groups.items():
        s = len(trees)
        counts = {tuple(sorted(p)): 0 for p in combinations(nodes, 2)}
        for tree in trees:
            for u, v, _ in tree:
                counts[tuple(sorted((u, v)))] += 1
        for (u, v), c in sorted(counts.items()):
            rows.append({"condition": condition, "noise": noise, "u": u, "v": v, "n_runs": s,
                         "count": c, "frequency": c / s, "null_frequency": 2 / len(nodes),
                         "p_value": edge_pvalue(c, s, len(nodes))})
    df = pd.DataFrame(rows, columns=["condition", "noise", "u", "v", "n_runs", "count", "frequency",
                                     "null_frequency", "p_value"])
    df["q_value"] = adjust(df["p_value"].to_numpy(), "fdr_by") if len(df) else []
    return df


def consensus_tree(freq: pd.DataFrame) -> list[tuple[str, str, float]]:
    """Maximum spanning tree of edge frequencies (one condition x noise cell), ties broken by
    the alphabetical order of (u, v); each edge carries its support (fraction of runs)."""
    g = nx.Graph()
    for row in freq.sort_values(["u", "v"]).itertuples():
        g.add_edge(row.u, row.v, weight=row.frequency)
    tree = nx.maximum_spanning_tree(g, algorithm="kruskal")
    return sorted(((*sorted((u, v)), d["weight"]) for u, v, d in tree.edges(data=True)),
                  key=lambda e: (-e[2], e[0], e[1]))


def overlap(nodes: list[str], trees: list[list], seed: int = 0) -> dict:
    """Mean pairwise shared edges of the runs' trees against relabelled trees (see stats)."""
    index = {n: i for i, n in enumerate(nodes)}
    edges = np.array([[(index[u], index[v]) for u, v, _ in tree] for tree in trees])
    return tree_overlap_test(edges, len(nodes), seed=seed)
