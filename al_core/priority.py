"""The order people label in, from the scorers' informativeness: per expected second of a
person's time, and with near copies of a higher-ranked image pushed to the end.

- Cost-aware ranking: informativeness over the expected seconds of labeling the image
  (``Display.expected_seconds``: the model's own boxes above the calibrated threshold, checked
  or deleted, and the hidden candidates likely to be objects, drawn). Filling a cycle's budget
  down this order is the greedy knapsack by value/cost ratio (return on investment, Settles,
  Craven & Friedland, "Active learning with real annotation costs", NIPS workshop 2008).
- Near-duplicate suppression: an image closer (in image features) to an image ranked above it,
  or to a labeled one, than half the median distance between a pool image and its nearest
  neighbour adds little that its twin does not: it goes to the end of the order. The threshold
  comes from the pool's own distances, whatever the data.

Both rewrite the scores (``normalized`` stays in [0, 1] and follows the new order; the
scorer's number stays in ``parts["informativeness"]``), so pushing, CSV exports and budgets
downstream need no change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .selection import ranking
from .types import ImageScore

NEAREST_SAMPLE = 2000  # pool images whose nearest-neighbour distance estimates the threshold


@dataclass(frozen=True)
class PriorityRule:
    cost_aware: bool = False  # rank by informativeness per expected second
    near_duplicates: bool = False  # push near copies of a higher-ranked image to the end


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
    if rule.near_duplicates:
        if features is None:
            raise ValueError("near-duplicate suppression needs each image's features")
        scores = skip_near_duplicates(keys, scores, features, budget, seen, seed)
    return scores
