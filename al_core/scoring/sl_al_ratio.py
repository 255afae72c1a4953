"""Human-machine cooperation (ASM, Wang et al. 2018; CEAL, Wang et al. 2016).

Boxes scoring >= ``certain`` are self-labelable (the model can label them); boxes in
[``uncertain``, ``certain``) need a human; lower ones are dropped. Per image:
- AL ratio = uncertain boxes / kept boxes: the share of the image a person must label
  (the score; high = informative). An image with no kept box gets 1: a person must look.
- SL score = sum(certain box scores) / kept boxes.
- ``certain_image`` = 1 when every kept box is certain: a candidate to pre-accept.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..types import ImageScore
from .base import PoolImage, Scorer, ScoringContext, register


@register
class SlAlRatioScorer(Scorer):
    name = "sl_al_ratio"
    needs = frozenset({"trained_head"})

    def __init__(self, certain: float = 0.7, uncertain: float = 0.3):
        if not 0 <= uncertain < certain <= 1:
            raise ValueError(f"need 0 <= uncertain < certain <= 1, got uncertain={uncertain}, certain={certain}")
        self.certain, self.uncertain = certain, uncertain

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        scores = []
        for item in batch:
            s = item.detections.scores
            certain = s >= self.certain
            kept = s >= self.uncertain
            n_kept, n_certain = int(kept.sum()), int(certain.sum())
            n_uncertain = n_kept - n_certain
            al_ratio = n_uncertain / n_kept if n_kept else 1.0
            parts = {
                "certain_boxes": float(n_certain),
                "uncertain_boxes": float(n_uncertain),
                "al_ratio": al_ratio,
                "sl_score": float(s[certain].sum()) / n_kept if n_kept else 0.0,
                "certain_image": float(n_kept > 0 and n_uncertain == 0),
            }
            scores.append(ImageScore(al_ratio, al_ratio, self.name, None, parts))
        return scores
