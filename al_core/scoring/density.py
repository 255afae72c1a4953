"""Information density: another scorer's doubt, weighted by how typical of the pool an image is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..types import ImageScore
from .base import PoolImage, Scorer, ScoringContext, create_scorer, register


def mean_similarity(features: torch.Tensor) -> torch.Tensor:
    """(N,) each point's mean similarity to the other points, in [0, 1]: the cosine mapped by
    (1 + cos) / 2, since pooled detector features can point in opposite directions (flatter
    than the paper's plain cosine: 0.5 where it is 0); a lone point gets 1."""
    if len(features) < 2:
        return torch.ones(len(features))
    unit = F.normalize(features.double(), dim=-1)
    # The sum of cosines to the others is u_i . (sum of all u) - u_i . u_i: memory grows with
    # the pool, not with its square.
    to_others = unit @ unit.sum(dim=0) - (unit * unit).sum(dim=1)
    return ((1 + to_others / (len(features) - 1)) / 2).clamp(0, 1).float()


@register
class InformationDensityScorer(Scorer):
    """Information density (Settles & Craven, "An Analysis of Active Learning Strategies for
    Sequence Labeling Tasks", EMNLP 2008, eq. 4): score = doubt * density ** beta, where doubt
    is another scorer's (``within`` with ``within_params``) and density is the
    image's mean similarity to the unlabeled pool's images (``mean_similarity``). An uncertain
    image that looks like many others outranks an uncertain outlier, whose label teaches the
    model about few images. beta = 1 is the paper's setting. The same formula gives value (from
    the doubt's value) and normalized (from its normalized score)."""

    name = "information_density"
    needs = frozenset({"image_features"})

    def __init__(self, within: str = "entropy", within_params: dict | None = None, beta: float = 1.0):
        if beta < 0:
            raise ValueError(f"beta must be at least 0, got {beta}")
        if within == self.name:
            raise ValueError("information_density cannot weigh its own score")
        self.within = create_scorer(within, **(within_params or {}))
        self.needs = type(self).needs | self.within.needs
        self.beta = beta
        self._features: list[torch.Tensor] = []

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        self._features += [item.detections.image_features for item in batch]
        return self.within.score_batch(batch, context)

    def finish(self, scores: list[ImageScore], context: ScoringContext) -> list[ImageScore]:
        scores = self.within.finish(scores, context)
        if not self._features:
            return scores
        weights = mean_similarity(torch.stack(self._features)).pow(self.beta).tolist()
        return [
            replace(
                s,
                value=s.value * w,
                normalized=s.normalized * w,
                scorer=self.name,
                parts={**s.parts, "doubt": s.value, "density": w},
            )
            for s, w in zip(scores, weights, strict=True)
        ]
