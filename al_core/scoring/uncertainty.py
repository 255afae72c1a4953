"""Uncertainty of the detector's class predictions, per box, aggregated to the image.

Each box is seen as a class distribution q: for softmax heads (Faster R-CNN, SSD) its row over
classes + background; for sigmoid heads (RetinaNet, FCOS) the two-state [s, 1 - s] of its score,
as PPAL and Brust et al. 2018 do. An image without boxes is scored from its top pre-NMS
candidate scores as two-state distributions, averaged (MI-AOD scores anchors), so every image
gets a finite score.

``boxes`` chooses which boxes are aggregated: "all" candidates above the detector's low score
threshold (about a hundred on a weak model, so a mean over them counts boxes more than it
measures doubt), the boxes a person is "shown" (the calibrated display), or the ``k`` highest
scoring ones (an integer).

``classes`` chooses, for sigmoid heads, whose doubt a box carries: its winning class's score
("top", the two-state above), or every class's one-vs-all decision, the box's value being the
most doubtful of them ("all"; Brust et al. 2018 score one-vs-all outputs class by class), so a
box torn between two classes counts even when its winning score is high. Softmax heads already
spread their distribution over every class; "all" changes nothing for them.

``weight="right"`` multiplies each box's doubt by the display's estimate that the box is right
(its score decile's held-out precision), so doubt a person will confirm in a glance weighs more
than doubt about a box that is probably wrong. Measured with a fitted model
(``bench/simulation/fitted_candidates_c.yaml``), it lowers the edits and loses to the plain
mean at equal seconds, so it is off by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..display import Display
from ..types import Detections, ImageScore
from .aggregation import aggregate, check_aggregation
from .base import PoolImage, Scorer, ScoringContext, register


def two_state(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([p, 1 - p], dim=-1)


def box_distributions(detections: Detections) -> torch.Tensor:
    """(N, K) class distribution of each box (see the module docstring)."""
    if detections.probs_kind == "softmax" and detections.class_probs is not None:
        return detections.class_probs
    return two_state(detections.scores)


def entropy(q: torch.Tensor) -> torch.Tensor:
    """-sum_k q_k log q_k / log K, in [0, 1]; xlogy(0, 0) = 0 keeps certain boxes at 0."""
    return -torch.special.xlogy(q, q).sum(dim=-1) / math.log(q.shape[-1])


def least_confidence(q: torch.Tensor) -> torch.Tensor:
    """(1 - max_k q_k) * K / (K - 1), in [0, 1]."""
    k = q.shape[-1]
    return (1 - q.max(dim=-1).values) * k / (k - 1)


def margin(q: torch.Tensor) -> torch.Tensor:
    """1 - (q_1 - q_2), the two largest probabilities: a small margin is informative."""
    top2 = q.topk(2, dim=-1).values
    return 1 - (top2[..., 0] - top2[..., 1])


class UncertaintyScorer(Scorer):
    needs = frozenset({"trained_head", "class_probs"})

    def __init__(
        self,
        aggregation: str = "mean",
        fallback_candidates: int = 10,
        boxes: str | int = "all",
        classes: str = "top",
        weight: str = "none",
    ):
        self.aggregation = check_aggregation(aggregation)
        if boxes not in ("all", "shown") and not (isinstance(boxes, int) and boxes > 0):
            raise ValueError(f"boxes is 'all', 'shown' or a positive number of boxes, got {boxes!r}")
        if classes not in ("top", "all"):
            raise ValueError(f"classes is 'top' or 'all', got {classes!r}")
        if weight not in ("none", "right"):
            raise ValueError(f"weight is 'none' or 'right', got {weight!r}")
        self.weight = weight
        self.boxes = boxes
        self.classes = classes
        self.fallback_candidates = fallback_candidates
        if aggregation == "class_balanced":
            self.needs = type(self).needs | {"class_quality"}
        if aggregation == "inverse_frequency":
            self.needs = type(self).needs | {"class_counts"}

    @staticmethod
    def box_values(q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        scores = []
        for item in batch:
            det = self.boxes_of(item.detections, context)
            weights = (context.display or Display()).right_probability(det.scores) if self.weight == "right" else None
            scores.append(self.score_detections(det, context.class_quality, context.class_counts, weights))
        return scores

    def boxes_of(self, det: Detections, context: ScoringContext) -> Detections:
        """The boxes this scorer aggregates (see the module docstring); candidates stay."""
        if self.boxes == "all":
            return det
        if self.boxes == "shown":
            return (context.display or Display()).shown(det)
        return det.select(torch.argsort(det.scores, descending=True)[: self.boxes])

    def values_of(self, det: Detections) -> torch.Tensor:
        """(N,) per-box values in [0, 1] (see the module docstring for ``classes``)."""
        if self.classes == "all" and det.probs_kind == "sigmoid" and det.class_probs is not None:
            per_class = det.class_probs[:, 1:]  # column 0 is the background slot
            return self.box_values(two_state(per_class)).max(dim=-1).values
        return self.box_values(box_distributions(det))

    def score_detections(
        self,
        det: Detections,
        class_quality: torch.Tensor | None = None,
        class_counts: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> ImageScore:
        if len(det):
            values = self.values_of(det)
            if weights is not None:
                values = values * weights
            value, normalized = aggregate(values, self.aggregation, det.scores, det.labels, class_quality, class_counts)
            return ImageScore(
                value, normalized, self.name, self.aggregation, {"boxes": float(len(det))}, tuple(values.tolist())
            )
        candidates = det.candidate_scores[: self.fallback_candidates]
        value = float(self.box_values(two_state(candidates)).mean()) if candidates.numel() else 0.0
        return ImageScore(value, value, self.name, self.aggregation, {"boxes": 0.0, "from_candidates": 1.0})


@register
class EntropyScorer(UncertaintyScorer):
    """Entropy of each box's class distribution (Brust et al. 2018; PPAL's baseline)."""

    name = "entropy"
    box_values = staticmethod(entropy)


@register
class LeastConfidenceScorer(UncertaintyScorer):
    """Least confidence, 1 - max_k q_k, rescaled to [0, 1] (Settles 2009's baseline)."""

    name = "least_confidence"
    box_values = staticmethod(least_confidence)


@register
class MarginScorer(UncertaintyScorer):
    """Margin sampling: 1 - (q_1 - q_2) of the two most likely classes (Scheffer et al. 2001)."""

    name = "margin"
    box_values = staticmethod(margin)
