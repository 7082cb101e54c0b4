"""Is absorbing noise a failure of out-of-distribution detection? Five detectors, scored with
in-distribution (ID) as the POSITIVE class, a convention that peers disagree on:

- every detector gives an ID score (higher = more in-distribution);
- AUROC: P(ID score > OOD score), ties half;
- AUPR-In: area under precision-recall with ID as positive; AUPR-Out: with OOD as positive;
- FPR95: the share of OOD images accepted as ID at the threshold that accepts 95% of ID images.

The metrics are pytorch-ood's (which takes OOD as positive); the label and sign conversions
below are tested against known answers (tests/test_why.py).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import logsumexp, softmax

KNN_K = 50  # Sun et al. (2022) use k = 50 for CIFAR-10


class Detectors:
    """Fitted on training-image features: class means and a shared covariance (Mahalanobis) and
    a bank of unit-normalised features (KNN)."""

    def __init__(self, train_features: np.ndarray, train_labels: np.ndarray):
        from pytorch_ood.detector import Mahalanobis
        z = torch.from_numpy(np.asarray(train_features, dtype=np.float32))
        self.mahalanobis = Mahalanobis(None).fit_features(z, torch.from_numpy(np.asarray(train_labels)))
        self.bank = torch.nn.functional.normalize(z, dim=1)
        self.k = min(KNN_K, len(z))

    def _knn(self, feats: np.ndarray) -> np.ndarray:
        q = torch.nn.functional.normalize(torch.from_numpy(np.asarray(feats, dtype=np.float32)), dim=1)
        out = []
        for chunk in q.split(2048):
            # distance between unit vectors: sqrt(2 - 2 cos); the k-th largest cosine is the k-th NN
            cos_k = torch.topk(chunk @ self.bank.T, self.k, dim=1).values[:, -1]
            out.append(-torch.sqrt((2 - 2 * cos_k).clamp_min(0)))
        return torch.cat(out).numpy()

    def scores(self, logits: np.ndarray, feats: np.ndarray) -> dict[str, np.ndarray]:
        z = np.asarray(logits, dtype=np.float64)
        return {
            "msp": softmax(z, axis=1).max(axis=1),                 # Hendrycks & Gimpel 2017
            "max_logit": z.max(axis=1),                            # Hendrycks et al. 2022
            "energy": logsumexp(z, axis=1),                        # Liu et al. 2020 (-energy, T = 1)
            "mahalanobis": -self.mahalanobis.predict_features(
                torch.from_numpy(np.asarray(feats, dtype=np.float32))).numpy().astype(np.float64),
            "knn": self._knn(feats).astype(np.float64),            # Sun et al. 2022
        }


DETECTORS = ("msp", "max_logit", "energy", "mahalanobis", "knn")


def id_positive_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR95 with ID as the positive class (see module docstring)."""
    from pytorch_ood.metrics import functional as fm
    s_id = np.asarray(id_scores, dtype=np.float64)
    s_ood = np.asarray(ood_scores, dtype=np.float64)
    scores = torch.from_numpy(np.concatenate([s_id, s_ood]))
    # pytorch-ood: labels < 0 are OOD and positive, larger score = more OOD
    labels = torch.cat([torch.zeros(len(s_id)), -torch.ones(len(s_ood))]).long()
    # swapped roles, for the FPR at 95% TPR of the ID class: ID as "positive", its score as is
    swapped = torch.cat([-torch.ones(len(s_id)), torch.zeros(len(s_ood))]).long()
    return {"auroc": float(fm.auroc(-scores, labels)),
            "aupr_in": float(fm.aupr(-scores, labels, positive="id")),
            "aupr_out": float(fm.aupr(-scores, labels, positive="ood")),
            "fpr95": float(fm.fpr_at_tpr(scores, swapped, tpr=0.95))}


def evaluate(detectors: Detectors, id_set: tuple, ood_sets: dict[str, tuple]) -> list[dict]:
    """id_set, ood_sets[name]: (logits, feats). Rows of {detector, ood_set, metrics...}."""
    id_scores = detectors.scores(*id_set)
    rows = []
    for name, (logits, feats) in ood_sets.items():
        ood_scores = detectors.scores(logits, feats)
        for det in DETECTORS:
            rows.append({"detector": det, "ood_set": name,
                         **id_positive_metrics(id_scores[det], ood_scores[det])})
    return rows
