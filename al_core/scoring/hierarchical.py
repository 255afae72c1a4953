"""HUALE (hierarchical uncertainty aggregation and learning, IEEE BigData 2023).

Informativeness = the mean of two terms in [0, 1]:
- box entropies aggregated bottom-up, box -> class (mean) -> image (mean over classes);
- flip inconsistency, 1 - agreement of predictions on the image and its horizontal flip.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..types import ImageScore
from .base import PoolImage, Scorer, ScoringContext, register
from .consistency import augmented_agreements
from .uncertainty import EntropyScorer


@register
class HierarchicalScorer(Scorer):
    name = "hierarchical"
    needs = frozenset({"trained_head", "class_probs", "augmented_pass"})

    def __init__(self, min_score: float = 0.3, flip_weight: float = 0.5):
        self.entropy = EntropyScorer(aggregation="hierarchical")
        self.min_score, self.flip_weight = min_score, flip_weight

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        agreements = augmented_agreements(batch, context, ("hflip",), self.min_score)
        scores = []
        for item, parts in zip(batch, agreements, strict=True):
            uncertainty = self.entropy.score_detections(item.detections).normalized
            inconsistency = 1.0 - parts["hflip"]
            value = (1 - self.flip_weight) * uncertainty + self.flip_weight * inconsistency
            parts = {"hierarchical_entropy": uncertainty, "flip_inconsistency": inconsistency}
            scores.append(ImageScore(value, value, self.name, "hierarchical", parts))
        return scores
