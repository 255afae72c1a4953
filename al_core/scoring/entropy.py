"""Entropy of the detector's class predictions (Brust et al. 2018; PPAL's baseline)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..types import Detections, ImageScore
from .aggregation import AGGREGATIONS, aggregate
from .base import Scorer, register


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """-p log p - (1-p) log(1-p), divided by log 2 so that it lies in [0, 1]."""
    # xlogy(0, 0) = 0, so certain boxes give exactly 0 instead of NaN.
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / math.log(2)


def categorical_entropy(probs: torch.Tensor) -> torch.Tensor:
    """-sum_c p_c log p_c per row, divided by log C so that it lies in [0, 1]."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1) / math.log(probs.shape[-1])


def box_entropies(detections: Detections) -> torch.Tensor:
    """Per-box normalised entropy: over classes + background for softmax heads; the binary
    entropy of each box's score for sigmoid heads (RetinaNet, FCOS)."""
    if detections.probs_kind == "softmax" and detections.class_probs is not None:
        return categorical_entropy(detections.class_probs)
    return binary_entropy(detections.scores)


@register
class EntropyScorer(Scorer):
    """Image informativeness from box class entropies, aggregated over boxes.

    An image without boxes is scored from its top ``fallback_candidates`` pre-NMS candidate
    scores (as MI-AOD scores anchors), so every image gets a finite score.
    """

    name = "entropy"

    def __init__(self, aggregation: str = "mean", fallback_candidates: int = 10):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
        self.aggregation = aggregation
        self.fallback_candidates = fallback_candidates

    def score(self, detections: Sequence[Detections]) -> list[ImageScore]:
        return [self._score_one(d) for d in detections]

    def _score_one(self, detections: Detections) -> ImageScore:
        if len(detections):
            values = box_entropies(detections)
        else:
            values = binary_entropy(detections.candidate_scores[: self.fallback_candidates])
        if values.numel() == 0:
            return ImageScore(0.0, 0.0, self.name)
        value, normalized = aggregate(values, self.aggregation)
        return ImageScore(value, normalized, self.name, tuple(values.tolist()) if len(detections) else ())
