"""Test-time-augmentation disagreement: an epistemic uncertainty per box (the spread of a
model's answers over transformed copies of the same image; Wang et al., "Aleatoric uncertainty
estimation with test-time augmentation", Neurocomputing 2019, applied to detection boxes).

Each box (the scorer's ``boxes``: by default the shown ones) is mapped into every view (flip,
downscale scored at the smaller size) and matched to the view's best-IoU box among all its
candidates; its disagreement is 1 - the mean over views of IoU * (1 - JS / log 2) of the class
distributions. Box values aggregate to the image like every uncertainty scorer's
(``aggregation``), and an image without boxes is scored from its top candidates' entropy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

from ..types import Detections, ImageScore
from .aggregation import aggregate
from .base import PoolImage, ScoringContext, register
from .consistency import AUGMENTATIONS, class_distribution, js_divergence
from .uncertainty import UncertaintyScorer, entropy


def box_disagreement(boxes: Detections, mapped: torch.Tensor, view: Detections) -> torch.Tensor:
    """(N,) 1 - IoU * (1 - JS / log 2) of each box with its best match in ``view`` (1 without any)."""
    if len(view) == 0:
        return torch.ones(len(boxes))
    best_iou, best = box_iou(mapped, view.boxes).max(dim=1)
    agreement = 1 - js_divergence(class_distribution(boxes), class_distribution(view)[best]) / math.log(2)
    return 1 - best_iou * agreement


@register
class TtaDisagreementScorer(UncertaintyScorer):
    name = "tta_disagreement"
    needs = frozenset({"trained_head", "class_probs", "augmented_pass"})
    box_values = staticmethod(entropy)  # only for images without boxes (their candidates)

    def __init__(
        self, aggregation: str = "mean", boxes: str | int = "shown", views: Sequence[str] = ("flip", "downscale")
    ):
        super().__init__(aggregation=aggregation, boxes=boxes)
        unknown = set(views) - {"flip", "downscale"}
        if unknown or not views:
            raise ValueError(f"views must be among ['downscale', 'flip'], got {list(views)}")
        self.views = tuple(views)

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        chosen = [self.boxes_of(item.detections, context) for item in batch]
        spread = [torch.zeros(len(c)) for c in chosen]
        for name in self.views:
            views = [
                AUGMENTATIONS[name](item.image, c.boxes, random.Random(0))
                for item, c in zip(batch, chosen, strict=True)
            ]
            for i, det in enumerate(context.detector.predict([view.image for view in views])):
                spread[i] += box_disagreement(chosen[i], views[i].boxes, det) / len(self.views)
        scores = []
        for det, values in zip(chosen, spread, strict=True):
            if not len(det):
                scores.append(self.score_detections(det))  # from the candidates
                continue
            value, normalized = aggregate(values, self.aggregation, det.scores, det.labels, context.class_quality)
            scores.append(
                ImageScore(
                    value, normalized, self.name, self.aggregation, {"boxes": float(len(det))}, tuple(values.tolist())
                )
            )
        return scores
