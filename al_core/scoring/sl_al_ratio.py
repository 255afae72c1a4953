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
"""

from __future__ import annotations

from collections.abc import Sequence

from ..types import Certainty, ImageScore
from .base import PoolImage, Scorer, ScoringContext, register

RULES = ("al_ratio", "threshold", "sl_score")


@register
class SlAlRatioScorer(Scorer):
    name = "sl_al_ratio"
    needs = frozenset({"trained_head"})

    def __init__(self, certain: float = 0.7, uncertain: float = 0.3, rule: str = "al_ratio", min_al_ratio: float = 0.5):
        if rule not in RULES:
            raise ValueError(f"unknown sl_al_ratio rule {rule!r}; choose one of {list(RULES)}")
        if not 0 <= min_al_ratio <= 1:
            raise ValueError(f"min_al_ratio must be in [0, 1], got {min_al_ratio}")
        self.certainty = Certainty(uncertain, certain)
        self.rule, self.min_al_ratio = rule, min_al_ratio

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        scores = []
        for item in batch:
            s = item.detections.scores
            n_certain, n_uncertain = self.certainty.split(s)
            n_kept = n_certain + n_uncertain
            al_ratio = self.certainty.al_ratio(s)
            sl_score = float(s[s >= self.certainty.certain].sum()) / n_kept if n_kept else 0.0
            parts = {
                "certain_boxes": float(n_certain),
                "uncertain_boxes": float(n_uncertain),
                "al_ratio": al_ratio,
                "sl_score": sl_score,
                "certain_image": float(n_kept > 0 and n_uncertain == 0),
            }
            value = 1.0 - sl_score if self.rule == "sl_score" else al_ratio
            for_people = self.rule != "threshold" or al_ratio >= self.min_al_ratio
            scores.append(ImageScore(value, value, self.name, None, parts, for_people=for_people))
        return scores
