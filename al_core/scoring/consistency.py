"""Consistency of predictions under augmentation (CALD, Yu et al. 2022; HUALE's flip term).

The image and an augmented copy (horizontal flip, downscale) go through the detector; the
copy's boxes are mapped back. Agreement of view A with view B: the score-weighted mean over A's
boxes of IoU(a, b) * (1 - JS(q_a, q_b) / log 2), b the best-overlapping box of B, q the class
distributions. Symmetric agreement = the mean of both directions; two empty views agree (1),
one empty view does not (0). Informativeness = 1 - mean agreement over the augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageOps
from torchvision.ops import box_iou

from ..types import Detections, ImageScore
from .base import PoolImage, Scorer, ScoringContext, register

Augmentation = Callable[[Image.Image], tuple[Image.Image, Callable[[torch.Tensor], torch.Tensor]]]


def hflip(image: Image.Image):
    width = image.width

    def back(boxes: torch.Tensor) -> torch.Tensor:
        return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)

    return ImageOps.mirror(image), back


def downscale(image: Image.Image, factor: float = 0.8):
    small = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.BILINEAR)
    sx, sy = image.width / small.width, image.height / small.height

    def back(boxes: torch.Tensor) -> torch.Tensor:
        return boxes * torch.tensor([sx, sy, sx, sy])

    return small, back


AUGMENTATIONS: dict[str, Augmentation] = {"hflip": hflip, "downscale": downscale}


def class_distribution(det: Detections) -> torch.Tensor:
    """Each box's distribution over classes (sigmoid heads: per-class scores, renormalised)."""
    if det.class_probs is None:
        return torch.ones(len(det), 1)
    probs = det.class_probs if det.probs_kind == "softmax" else det.class_probs[:, 1:]
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    m = (p + q) / 2
    kl = lambda a, b: (torch.special.xlogy(a, a) - torch.special.xlogy(a, b)).sum(-1)  # noqa: E731
    return (kl(p, m) + kl(q, m)) / 2


def one_way_agreement(a: Detections, b: Detections) -> float:
    if len(a) == 0:
        return 1.0 if len(b) == 0 else 0.0
    if len(b) == 0:
        return 0.0
    ious = box_iou(a.boxes, b.boxes)
    best_iou, best = ious.max(dim=1)
    class_agreement = 1 - js_divergence(class_distribution(a), class_distribution(b)[best]) / math.log(2)
    weights = a.scores / a.scores.sum().clamp_min(1e-12)
    return float((weights * best_iou * class_agreement).sum())


def agreement(a: Detections, b: Detections) -> float:
    return (one_way_agreement(a, b) + one_way_agreement(b, a)) / 2


def mapped_back(det: Detections, back: Callable[[torch.Tensor], torch.Tensor], size: tuple[int, int]) -> Detections:
    return Detections(
        boxes=back(det.boxes),
        labels=det.labels,
        scores=det.scores,
        image_size=size,
        class_probs=det.class_probs,
        probs_kind=det.probs_kind,
    )


def augmented_agreements(
    batch: Sequence[PoolImage], context: ScoringContext, augmentations: Sequence[str], min_score: float
) -> list[dict[str, float]]:
    """Per image, {augmentation: symmetric agreement} between its view and the augmented one."""
    results: list[dict[str, float]] = [{} for _ in batch]
    for name in augmentations:
        views = [AUGMENTATIONS[name](item.image) for item in batch]
        augmented = context.detector.predict([view for view, _back in views])
        for result, item, det, (_view, back) in zip(results, batch, augmented, views, strict=True):
            theirs = mapped_back(det.above(min_score), back, item.image.size)
            result[name] = agreement(item.detections.above(min_score), theirs)
    return results


@register
class ConsistencyScorer(Scorer):
    """CALD-style consistency: 1 - agreement of predictions on the image and augmented copies."""

    name = "consistency"
    needs = frozenset({"trained_head", "class_probs", "augmented_pass"})

    def __init__(self, augmentations: Sequence[str] = ("hflip", "downscale"), min_score: float = 0.3):
        unknown = set(augmentations) - set(AUGMENTATIONS)
        if unknown or not augmentations:
            raise ValueError(f"augmentations must be among {sorted(AUGMENTATIONS)}, got {list(augmentations)}")
        self.augmentations, self.min_score = tuple(augmentations), min_score

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        scores = []
        for parts in augmented_agreements(batch, context, self.augmentations, self.min_score):
            value = 1.0 - sum(parts.values()) / len(parts)
            scores.append(ImageScore(value, value, self.name, None, {f"agreement_{k}": v for k, v in parts.items()}))
        return scores
