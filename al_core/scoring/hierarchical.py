"""HUALE (hierarchical uncertainty aggregation and learning, IEEE BigData 2023), over the boxes a
person would see.

Informativeness = (1 - w) * hierarchical entropy + w * flip inconsistency, w = 0.5:
- hierarchical entropy: the shown boxes' entropies (the display; without shown boxes, the top
  candidates as every uncertainty scorer does), box -> class (mean) -> image (the mean over
  classes weighted by each class's mass, the sum of its box scores), so a class made only of a
  few junk boxes weighs what its scores say;
- flip inconsistency: each shown box, mapped into the horizontally flipped view, is matched to
  that view's best-IoU box among all its candidates, not only those above the threshold (a box
  crossing the threshold does not flicker); 1 - the score-weighted mean of
  IoU * (1 - JS / log 2). Nothing shown: 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

from ..display import Display
from ..types import Detections, ImageScore
from .base import PoolImage, Scorer, ScoringContext, register
from .consistency import class_distribution, flip, js_divergence
from .uncertainty import EntropyScorer


def flip_agreement(shown: Detections, mapped: torch.Tensor, view: Detections) -> float:
    """Score-weighted mean over the shown boxes of IoU * (1 - JS / log 2) with the view's best match."""
    if len(shown) == 0:
        return 1.0
    if len(view) == 0:
        return 0.0
    best_iou, best = box_iou(mapped, view.boxes).max(dim=1)
    agreement = 1 - js_divergence(class_distribution(shown), class_distribution(view)[best]) / math.log(2)
    weights = shown.scores / shown.scores.sum().clamp_min(1e-12)
    return float((weights * best_iou * agreement).sum())


@register
class HierarchicalScorer(Scorer):
    name = "hierarchical"
    needs = frozenset({"trained_head", "class_probs", "augmented_pass"})

    def __init__(self, flip_weight: float = 0.5):
        self.entropy = EntropyScorer(aggregation="hierarchical", boxes="shown")
        self.flip_weight = flip_weight

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        display = context.display or Display()
        shown = [display.shown(item.detections) for item in batch]
        views = [flip(item.image, s.boxes, random.Random(0)) for item, s in zip(batch, shown, strict=True)]
        flipped = context.detector.predict([view.image for view in views])
        scores = []
        for boxes, view, det in zip(shown, views, flipped, strict=True):
            uncertainty = self.entropy.score_detections(boxes).normalized  # candidates when none is shown
            inconsistency = 1.0 - flip_agreement(boxes, view.boxes, det)
            value = (1 - self.flip_weight) * uncertainty + self.flip_weight * inconsistency
            parts = {
                "hierarchical_entropy": uncertainty,
                "flip_inconsistency": inconsistency,
                "boxes": float(len(boxes)),
            }
            scores.append(ImageScore(value, value, self.name, "hierarchical", parts))
        return scores
