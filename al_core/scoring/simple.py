"""The random baseline and the learning-loss scorer."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from ..types import ImageScore
from .base import PoolImage, Scorer, ScoringContext, register


@register
class RandomScorer(Scorer):
    """Uniform random: the baseline every strategy is compared with. The value of an image
    depends only on the seed and the image's file name, not on batching, pool order or
    the folder the pool sits in."""

    name = "random"
    uses_detections = False

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        values = [random.Random(f"{context.seed}:{item.name}").random() for item in batch]
        return [ImageScore(v, v, self.name) for v in values]


@register
class LossPredictionScorer(Scorer):
    """Learning Loss for Active Learning (Yoo & Kweon, CVPR 2019): rank by the loss the
    loss-prediction head predicts for the image. normalized = sigmoid(predicted loss)."""

    name = "loss_prediction"
    needs = frozenset({"trained_head", "loss_head"})

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        scores = []
        for item in batch:
            loss = item.detections.predicted_loss
            if loss is None:
                raise ValueError(
                    "loss_prediction needs a detector with a loss-prediction head (train with --loss-head)"
                )
            scores.append(ImageScore(loss, 1.0 / (1.0 + math.exp(-loss)), self.name))
        return scores
