"""The measurement core: absorption, distances, the MST, from a model's outputs. Pure numpy, no torch:
the trial (study/probe.py, study/explanation_probes.py, study/explain.py) measures with these functions, and
the simulated studies (analysis/synthetic.py, analysis/nulls.py) build their records with the very
same ones, so a simulated trial.json is measured as a real one is and no copy has to be kept equal."""
from __future__ import annotations

import numpy as np

from .contract import NOISE_NODE


def shares(pred: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Share of images predicted as each class (every class present, zeros included)."""
    counts = np.bincount(pred, minlength=len(classes))
    return {c: float(counts[i] / max(len(pred), 1)) for i, c in enumerate(classes)}


def normalized_entropy(p: np.ndarray) -> float:
    """Entropy of a distribution over K classes divided by log K: 0 = one class, 1 = uniform."""
    p = np.asarray(p, dtype=np.float64)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(len(p))) if len(p) > 1 else 0.0


def absorption_summary(pred: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Where a set of images goes, from its argmax labels and softmax rows (N, K): the absorber
    and its top share (the argmax count), and beside them the softmax mass: the mean max-softmax
    and the absorber's own mean probability. A top share of 0.99 at a mass of 0.5 is a network
    that leans to one class; at 0.99, one that is sure of it."""
    s = shares(pred, classes)
    p = np.array([s[c] for c in classes])
    top = int(np.argmax(p))  # ties: the first class in label order
    return {"absorber": classes[top], "top_share": float(p[top]),
            "entropy_norm": normalized_entropy(p), "mean_max_softmax": float(np.mean(probs.max(1))),
            "absorber_softmax": float(np.mean(probs[:, top])) if len(probs) else float("nan")}


def cosine_distance_matrix(vectors: np.ndarray) -> np.ndarray:
    """d = (1 - cos) / 2 between rows, in [0, 1]; exactly 0 on the diagonal."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = v / np.where(norms > 0, norms, 1)
    d = (1 - np.clip(unit @ unit.T, -1, 1)) / 2
    np.fill_diagonal(d, 0)
    return d


def minimum_spanning_tree(dist: np.ndarray, nodes: list[str]) -> list[list]:
    """Kruskal on the complete graph over `nodes`: every pair is an edge, a zero distance too.

    Ties are broken by (weight, i, j) with i < j in node order, so the tree is a pure function of
    the matrix. Returns [[u, v, weight], ...] with u < v alphabetically, sorted by weight.
    """
    n = len(nodes)
    parent = list(range(n))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    edges = sorted((float(dist[i, j]), i, j) for i in range(n) for j in range(i + 1, n))
    tree = []
    for w, i, j in edges:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[ri] = rj
            u, v = sorted((nodes[i], nodes[j]))
            tree.append([u, v, w])
            if len(tree) == n - 1:
                break
    return tree


def feature_geometry(class_means: np.ndarray, noise_mean: np.ndarray, classes: list[str]):
    """The nodes (the K classes, then the noise node), their cosine distances d = (1 - cos)/2 between
    the class means and the noise mean, and the distances' minimum spanning tree."""
    nodes = list(classes) + [NOISE_NODE]
    dist = cosine_distance_matrix(np.vstack([class_means, noise_mean[None]]))
    return nodes, dist, minimum_spanning_tree(dist, nodes)


def noise_neighbour(tree: list[list]) -> list[str]:
    """The classes joined to the noise node in the tree."""
    return sorted(u if v == NOISE_NODE else v for u, v, _ in tree if NOISE_NODE in (u, v))


def confusion_matrix(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)
