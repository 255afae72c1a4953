"""From scores to a ranked batch: top-k, k-center greedy diversity, weighted combinations.

Ties are broken deterministically: by normalized score, then raw value, then the image key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .types import ImageScore


@dataclass(frozen=True)
class SelectedImage:
    key: str
    rank: int  # 1 = label first
    score: ImageScore


@dataclass(frozen=True)
class Selection:
    """A ranked batch, with how it was made."""

    images: tuple[SelectedImage, ...]
    strategy: str  # the scorer asked for
    rule: str  # what actually ran (e.g. the cold-start rule), in words
    model_version: str
    seed: int


def ranking(keys: Sequence[str], scores: Sequence[ImageScore]) -> list[int]:
    """Indices from most to least informative, ties broken by value, then key."""
    return sorted(range(len(keys)), key=lambda i: (-scores[i].normalized, -scores[i].value, keys[i]))


def people_order(keys: Sequence[str], scores: Sequence[ImageScore]) -> list[int]:
    """The images a person may be handed, most informative first: the one order the service's
    exports and the simulator's selection both take."""
    return [i for i in ranking(keys, scores) if scores[i].for_people]


def top_k(
    keys: Sequence[str],
    scores: Sequence[ImageScore],
    k: int | None,
    strategy: str,
    rule: str,
    model_version: str,
    seed: int,
) -> Selection:
    order = people_order(keys, scores)[: (len(keys) if k is None else k)]
    images = tuple(SelectedImage(keys[i], rank + 1, scores[i]) for rank, i in enumerate(order))
    return Selection(images, strategy, rule, model_version, seed)


def k_center_greedy(
    count: int,
    distances_to: Callable[[int], torch.Tensor],
    budget: int,
    initial_min_distance: torch.Tensor | None = None,
    first: int | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Core-set selection (Sener & Savarese, ICLR 2018): repeatedly pick argmax_u min_{s in S} d(u, s).

    ``distances_to(i)`` gives the (count,) distances of every point to point i. Without
    ``initial_min_distance`` (distances to already-labeled points) the first pick is ``first``
    (default 0). Returns the picks in order and, for each pick, its distance when picked, with
    the remaining points' final distance to the picks written in the same tensor.
    """
    min_distance = (
        initial_min_distance.clone() if initial_min_distance is not None else torch.full((count,), float("inf"))
    )
    at_pick = torch.empty(count)
    picked: list[int] = []
    chosen = torch.zeros(count, dtype=torch.bool)
    for step in range(min(budget, count)):
        if step == 0 and initial_min_distance is None:
            index = first or 0
        else:
            candidates = min_distance.masked_fill(chosen, -1.0)
            index = int(candidates.argmax())  # the lowest index wins ties
        at_pick[index] = min_distance[index] if torch.isfinite(min_distance[index]) else float("inf")
        picked.append(index)
        chosen[index] = True
        min_distance = torch.minimum(min_distance, distances_to(index))
    at_pick[~chosen] = min_distance[~chosen]
    return picked, at_pick


def combine(score_lists: Sequence[Sequence[ImageScore]], weights: Sequence[float]) -> list[ImageScore]:
    """Weighted mean of several scorers' normalized scores; each scorer's share is a part."""
    if len(score_lists) != len(weights) or not score_lists:
        raise ValueError("give one weight per scorer")
    total = float(sum(weights))
    combined = []
    for per_image in zip(*score_lists, strict=True):
        value = sum(w * s.normalized for w, s in zip(weights, per_image, strict=True)) / total
        parts = {s.scorer: s.normalized for s in per_image}
        combined.append(ImageScore(value, value, "+".join(s.scorer for s in per_image), None, parts))
    return combined
