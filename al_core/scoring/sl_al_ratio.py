"""Human-machine cooperation (ASM, Wang et al. 2018; CEAL, Wang et al. 2016).

Boxes scoring >= ``certain`` are self-labelable (the model can label them); boxes in
[``uncertain``, ``certain``) need a human; lower ones are dropped (``al_core.types.Certainty``).
Per image:
- AL ratio = uncertain boxes / kept boxes: the share of the image a person must label. An
  image with no kept box gets 1: a person must look.
- SL score = sum(certain box scores) / kept boxes: how much of the image the model labels, and
  how surely.
- ``certain_image`` = 1 when every kept box is certain: a candidate for self-labeling.

ASM's selection rules, chosen by ``rule``:
- ``al_ratio`` (topK v1): the K images with the highest AL ratio go to people.
- ``threshold`` (topK v2): only images with an AL ratio >= ``min_al_ratio`` go to people, at
  most K, highest first; the others are left to the model. Every cycle's new model re-scores
  the whole pool, so an image that was uncertain before and is certain now leaves the queue,
  and one that became uncertain joins it. A cycle may therefore ask people for fewer than K.
- ``sl_score`` (topK v3): the K images with the lowest SL score: where the model labels least.

The thresholds, unless given: ``uncertain`` is the display's (what people are shown, the
calibrated threshold), ``certain`` the ``certain_quantile`` of the pool's box scores above it,
so that a weak model, whose scores all lie under a fixed 0.7, still splits its boxes instead
of scoring every image AL ratio 1. Ties of the rule's key break by the mean entropy of the
image's uncertain boxes (more doubt first), then by a seeded random draw, never by file name:
near-duplicate runs would otherwise be chosen together. ``normalized`` follows that order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import torch

from ..display import Display
from ..types import Certainty, ImageScore
from .base import PoolImage, Scorer, ScoringContext, register
from .uncertainty import entropy, two_state

RULES = ("al_ratio", "threshold", "sl_score")


@register
class SlAlRatioScorer(Scorer):
    name = "sl_al_ratio"
    needs = frozenset({"trained_head"})

    def __init__(
        self,
        certain: float | None = None,
        uncertain: float | None = None,
        rule: str = "al_ratio",
        min_al_ratio: float = 0.5,
        certain_quantile: float = 0.5,
    ):
        if rule not in RULES:
            raise ValueError(f"unknown sl_al_ratio rule {rule!r}; choose one of {list(RULES)}")
        if not 0 <= min_al_ratio <= 1 or not 0 <= certain_quantile <= 1:
            raise ValueError(
                f"min_al_ratio and certain_quantile must be in [0, 1], got {min_al_ratio}, {certain_quantile}"
            )
        if certain is not None and uncertain is not None:
            Certainty(uncertain, certain)  # checks them
        self.certain, self.uncertain, self.quantile = certain, uncertain, certain_quantile
        self.rule, self.min_al_ratio = rule, min_al_ratio
        self._box_scores: list[torch.Tensor] = []

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        display = context.display or Display()
        for item in batch:
            self._box_scores.append(
                display.shown(item.detections).scores if self.uncertain is None else item.detections.scores
            )
        return [ImageScore(0.0, 0.0, self.name) for _ in batch]

    def thresholds(self, context: ScoringContext) -> Certainty:
        uncertain = self.uncertain if self.uncertain is not None else (context.display or Display()).lowest()
        if self.certain is not None:
            return Certainty(uncertain, self.certain)
        above = torch.cat([s[s >= uncertain] for s in self._box_scores] + [torch.zeros(0)])
        certain = float(torch.quantile(above, self.quantile)) if len(above) else 1.0
        return Certainty(uncertain, min(1.0, max(certain, uncertain + 1e-6)))

    def finish(self, scores: list[ImageScore], context: ScoringContext) -> list[ImageScore]:
        certainty = self.thresholds(context)
        result = [self._score(s, certainty) for s in self._box_scores]
        rng = random.Random(context.seed)
        draws = [rng.random() for _ in result]
        order = sorted(
            range(len(result)), key=lambda i: (-result[i].value, -result[i].parts["uncertain_entropy"], draws[i])
        )
        for rank, i in enumerate(order):
            result[i] = replace(result[i], normalized=1 - rank / len(order))
        return result

    def _score(self, s: torch.Tensor, certainty: Certainty) -> ImageScore:
        n_certain, n_uncertain = certainty.split(s)
        n_kept = n_certain + n_uncertain
        al_ratio = certainty.al_ratio(s)
        uncertain_boxes = s[(s >= certainty.uncertain) & (s < certainty.certain)]
        parts = {
            "certain_boxes": float(n_certain),
            "uncertain_boxes": float(n_uncertain),
            "al_ratio": al_ratio,
            "sl_score": float(s[s >= certainty.certain].sum()) / n_kept if n_kept else 0.0,
            "certain_image": float(n_kept > 0 and n_uncertain == 0),
            "uncertain_entropy": float(entropy(two_state(uncertain_boxes)).mean()) if n_uncertain else 0.0,
            "certain_threshold": certainty.certain,
        }
        value = 1.0 - parts["sl_score"] if self.rule == "sl_score" else al_ratio
        for_people = self.rule != "threshold" or al_ratio >= self.min_al_ratio
        return ImageScore(value, value, self.name, None, parts, for_people=for_people)
