"""Published anchors: the MSP baselines of the papers whose noise families the study repeats, and
which of their orderings a study with other networks can be expected to repeat. Data, no code of
the analysis: the scoreboard (analysis/explanations.py), the report's methods (analysis/report.py)
and the null studies (analysis/nulls.py) read them from here."""
from __future__ import annotations

from dataclasses import dataclass

ORDER_GAP = 5.0   # published AUROCs this many points apart count as an ordering to test (closer: a tie)


@dataclass(frozen=True)
class Anchor:
    """A published MSP baseline (a network trained the ordinary way, max-softmax as the score) on
    CIFAR-10 against one noise family, as the paper's table gives it (in %)."""
    family: str       # our registry name for the paper's noise (study/noise.py)
    paper: str
    network: str
    auroc: float
    fpr95: float
    fpr95_ours: bool  # the paper's FPR95 is ours (share of OOD accepted when 95% of ID is)


ODIN = "ODIN (Liang et al., ICLR 2018)"
OE = "Outlier Exposure (Hendrycks et al., ICLR 2019)"
PUBLISHED = (
    Anchor("odin_gaussian", ODIN, "DenseNet-BC", 97.5, 12.3, True),
    Anchor("uniform", ODIN, "DenseNet-BC", 96.5, 23.5, True),
    # Outlier Exposure's FPR95 takes OOD as positive (the share of ID flagged when 95% of OOD is):
    # another quantity than ours; AUROC is the same under either convention
    Anchor("oe_gaussian", OE, "WRN-40-2", 94.7, 14.4, False),
    Anchor("rademacher", OE, "WRN-40-2", 79.9, 47.6, False),
    Anchor("oe_blobs", OE, "WRN-40-2", 94.5, 16.2, False),
)


def published_orderings(gap: float = ORDER_GAP) -> list[tuple[Anchor, Anchor]]:
    """(higher, lower) pairs of one paper whose published AUROCs differ by >= `gap` points: the
    pattern a study with other networks can be expected to repeat (closer pairs are ties)."""
    return [(a, b) for a in PUBLISHED for b in PUBLISHED if a.paper == b.paper and a.auroc - b.auroc >= gap]
