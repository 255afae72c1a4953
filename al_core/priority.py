"""The order people label in, from the scorers' informativeness: per expected second of a
person's time, sampled rather than sorted, and with near copies of a higher-ranked image pushed
to the end.

- Cost-aware ranking: informativeness over the expected seconds of labeling the image
  (``Display.expected_seconds``: the model's own boxes above the calibrated threshold, checked
  or deleted, and the hidden candidates likely to be objects, drawn). Filling a cycle's budget
  down this order is the greedy knapsack by value/cost ratio (return on investment, Settles,
  Craven & Friedland, "Active learning with real annotation costs", NIPS workshop 2008).
- Power sampling (stochastic batch acquisition, Kirsch et al., "Stochastic Batch Acquisition:
  A Simple Baseline for Deep Active Learning", TMLR 2023): the order is a draw without
  replacement with chance proportional to the normalized score (their power acquisition at its
  default beta = 1), by the Gumbel-top-k trick: sort by log(score) + Gumbel noise. A batch sorted by
  score takes the top of a noisy estimate and many near-equal images together; a draw keeps
  most of the top and spreads the rest.
- Near-duplicate suppression: an image closer (in image features) to an image ranked above it,
  or to a labeled one, than half the median distance between a pool image and its nearest
  neighbour adds little that its twin does not: it goes to the end of the order. The threshold
  comes from the pool's own distances, whatever the data.

All three rewrite the scores (``normalized`` stays in [0, 1] and follows the new order; the
scorer's number stays in ``parts["informativeness"]``), so pushing, CSV exports and budgets
downstream need no change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from .selection import ranking
from .types import ImageScore

NEAREST_SAMPLE = 2000  # pool images whose nearest-neighbour distance estimates the threshold


@dataclass(frozen=True)
class PriorityRule:
    cost_aware: bool = False  # rank by informativeness per expected second
    near_duplicates: bool = False  # push near copies of a higher-ranked image to the end
    sampling: Literal["top", "power"] = "top"  # sort by score, or draw in proportion to it

    def __post_init__(self):
        if self.sampling not in ("top", "power"):
            raise ValueError(f"unknown sampling {self.sampling!r}; choose top or power")

    @property
    def reorders(self) -> bool:
        return self.cost_aware or self.near_duplicates or self.sampling != "top"


def per_second(scores: Sequence[ImageScore], seconds: Sequence[float]) -> list[ImageScore]:
    """Each image's informativeness per expected second, rescaled so the best is 1."""
    ratios = [s.normalized / max(t, 1e-6) for s, t in zip(scores, seconds, strict=True)]
    top = max([r for r, s in zip(ratios, scores, strict=True) if s.for_people], default=0.0) or 1.0
    return [
        replace(
            s,
            value=r,
            normalized=min(r / top, 1.0),
            parts={**s.parts, "informativeness": s.normalized, "expected_seconds": t},
        )
        for s, r, t in zip(scores, ratios, seconds, strict=True)
    ]


def power_sample(keys: Sequence[str], scores: Sequence[ImageScore], seed: int) -> list[ImageScore]:
    """The scores reordered by one draw of power acquisition (beta = 1): ``normalized`` becomes
    the image's place in the draw (1 first, 0 for images with nothing to draw on), and
    ``parts["informativeness"]`` keeps the scorer's number (set already if the score drawn on is
    per second). The noise follows the keys, not their order."""
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(len(keys), generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    noise_of = dict(zip(sorted(keys), (-torch.log(-torch.log(uniform))).tolist(), strict=True))
    drawn = [i for i, s in enumerate(scores) if s.normalized > 0]
    drawn.sort(key=lambda i: -(math.log(scores[i].normalized) + noise_of[keys[i]]))
    place = {i: 1.0 - rank / len(drawn) for rank, i in enumerate(drawn)}
    return [
        replace(s, normalized=place.get(i, 0.0), parts={"informativeness": s.normalized, **s.parts})
        for i, s in enumerate(scores)
    ]


def near_duplicate_threshold(features: torch.Tensor, seed: int = 0) -> float:
    """Half the median distance from a pool image to its nearest other pool image (on a sample
    of at most NEAREST_SAMPLE images), unit-normalised features."""
    unit = F.normalize(features.float(), dim=-1)
    if len(unit) < 3:
        return 0.0
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randperm(len(unit), generator=generator)[:NEAREST_SAMPLE]
    nearest = []
    for start in range(0, len(sample), 256):
        rows = sample[start : start + 256]
        distances = torch.cdist(unit[rows], unit)
        distances[torch.arange(len(rows)), rows] = float("inf")  # not to itself
        nearest.append(distances.min(dim=1).values)
    return float(torch.cat(nearest).median()) / 2


def skip_near_duplicates(
    keys: Sequence[str],
    scores: Sequence[ImageScore],
    features: torch.Tensor,
    budget: int,
    seen: torch.Tensor | None = None,
    seed: int = 0,
) -> list[ImageScore]:
    """Walk the ranking; an image within the threshold of an image kept before it (or of
    ``seen``, the labeled images' features) scores 0 and keeps its distance in
    ``parts["near_duplicate"]``. The walk stops after ``budget`` kept images."""
    threshold = near_duplicate_threshold(features, seed)
    unit = F.normalize(features.float(), dim=-1)
    nearest = torch.full((len(unit),), float("inf"))  # each image's distance to the kept ones
    if seen is not None and len(seen):
        nearest = torch.cdist(unit, F.normalize(seen.float(), dim=-1)).min(dim=1).values
    result, count = list(scores), 0
    for i in ranking(keys, scores):
        if count >= budget:
            break
        if not scores[i].for_people:
            continue
        if nearest[i] < threshold:
            result[i] = replace(
                scores[i], normalized=0.0, parts={**scores[i].parts, "near_duplicate": float(nearest[i])}
            )
        else:
            nearest = torch.minimum(nearest, torch.cdist(unit, unit[i : i + 1]).squeeze(1))
            count += 1
    return result


def prioritize(
    keys: Sequence[str],
    scores: Sequence[ImageScore],
    rule: PriorityRule,
    seconds: Sequence[float] | None = None,
    features: torch.Tensor | None = None,
    budget: int = 100,
    seen: torch.Tensor | None = None,
    seed: int = 0,
) -> list[ImageScore]:
    """The scores in the order ``rule`` asks for (see the module docstring)."""
    scores = list(scores)
    if rule.cost_aware:
        if seconds is None:
            raise ValueError("cost-aware ranking needs each image's expected seconds")
        scores = per_second(scores, seconds)
    if rule.sampling == "power":
        scores = power_sample(keys, scores, seed)
    if rule.near_duplicates:
        if features is None:
            raise ValueError("near-duplicate suppression needs each image's features")
        scores = skip_near_duplicates(keys, scores, features, budget, seen, seed)
    return scores
