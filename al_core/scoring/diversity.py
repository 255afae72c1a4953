"""Scorers that judge an image against the whole pool: core-set diversity, a labeled-vs-
unlabeled discriminator, and PPAL's uncertainty-then-diversity."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..selection import combine, k_center_greedy
from ..types import ImageScore
from .base import PoolImage, Scorer, ScoringContext, create_scorer, register


def _unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=-1)


@register
class CoresetScorer(Scorer):
    """Core-set (Sener & Savarese, ICLR 2018): k-center greedy over L2-normalised image features,
    starting from the labeled images. The first ``budget`` picks get their distance to the
    selected set when picked (decreasing, so sorting by value gives the greedy order); the other
    images their final distance to the selected set. Also the cold-start rule: it needs no
    trained head."""

    name = "coreset"
    needs = frozenset({"image_features"})

    def __init__(self) -> None:
        self._features: list[torch.Tensor] = []

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        self._features += [_unit(item.detections.image_features) for item in batch]
        return [ImageScore(0.0, 0.0, self.name) for _ in batch]

    def finish(self, scores: list[ImageScore], context: ScoringContext) -> list[ImageScore]:
        if not self._features:
            return scores
        pool = torch.stack(self._features)
        initial = None
        if context.labeled_features is not None and len(context.labeled_features):
            initial = torch.cdist(pool, _unit(context.labeled_features)).min(dim=1).values
        picked, at_pick = k_center_greedy(
            len(pool), lambda i: torch.cdist(pool, pool[i : i + 1])[:, 0], context.budget, initial
        )
        # Only the very first pick without labeled images has an infinite distance: rank it first.
        at_pick = at_pick.nan_to_num(posinf=2.0)
        selected = set(picked)
        return [
            ImageScore(float(d), min(float(d) / 2.0, 1.0), self.name, None, {"picked": float(i in selected)})
            for i, d in enumerate(at_pick.tolist())
        ]


@register
class DiscriminativeScorer(Scorer):
    """Discriminative Active Learning (Gissin & Shalev-Shwartz, 2019): a small classifier on image
    features learns labeled (0) vs unlabeled (1); images most confidently "unlabeled" are the
    least like what the model has seen. Score = P(unlabeled | features). Training stops at 98%
    (class-balanced) training accuracy, as in DAL, so the classifier does not memorise the pool.

    DAL's sub-batches: the budget is chosen in ``rounds`` rounds; after each, the picked images
    count as labeled and the classifier is trained anew, so one round's picks do not all come
    from the same unexplored corner. The picks rank first, in order (``normalized`` in (0.5, 1]);
    the rest follow by the last round's P(unlabeled) (in [0, 0.5])."""

    name = "discriminative"
    needs = frozenset({"image_features", "labeled_set"})

    def __init__(self, steps: int = 300, hidden: int = 64, rounds: int = 4):
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        self.steps, self.hidden, self.rounds = steps, hidden, rounds
        self._features: list[torch.Tensor] = []

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        self._features += [item.detections.image_features.float() for item in batch]
        return [ImageScore(0.0, 0.0, self.name) for _ in batch]

    def finish(self, scores: list[ImageScore], context: ScoringContext) -> list[ImageScore]:
        if context.labeled_features is None or not len(context.labeled_features):
            raise ValueError("discriminative needs labeled images to tell apart from the pool")
        if not self._features:
            return scores
        pool, labeled = torch.stack(self._features), context.labeled_features.float()
        budget = min(context.budget, len(pool))
        picked: list[int] = []
        at_pick: dict[int, tuple[float, int]] = {}  # P(unlabeled) when picked, and the round
        for round_ in range(self.rounds):
            rest = torch.tensor([i for i in range(len(pool)) if i not in at_pick], dtype=torch.long)
            p = self._p_unlabeled(torch.cat([labeled, pool[picked]]), pool[rest], context.seed + round_)
            take = budget * (round_ + 1) // self.rounds - len(picked)
            for j in torch.argsort(p, descending=True, stable=True)[:take].tolist():
                at_pick[int(rest[j])] = (float(p[j]), round_)
                picked.append(int(rest[j]))
        last = dict(zip(rest.tolist(), p.tolist(), strict=True))
        result = [ImageScore(last.get(i, 0.0), 0.5 * last.get(i, 0.0), self.name) for i in range(len(pool))]
        for rank, i in enumerate(picked):
            value, round_ = at_pick[i]
            result[i] = ImageScore(value, 1 - 0.5 * rank / len(picked), self.name, None, {"round": float(round_)})
        return result

    def _p_unlabeled(self, labeled: torch.Tensor, unlabeled: torch.Tensor, seed: int) -> torch.Tensor:
        """P(unlabeled | features) of ``unlabeled`` from a classifier trained to tell the two apart."""
        x = torch.cat([labeled, unlabeled])
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = (x - mean) / std
        y = torch.cat([torch.zeros(len(labeled)), torch.ones(len(unlabeled))])
        # Balance the two sides so a large pool does not make "unlabeled" the easy answer.
        weight = torch.where(y == 1, len(x) / (2 * len(unlabeled)), len(x) / (2 * len(labeled)))
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            net = nn.Sequential(nn.Linear(x.shape[1], self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
            for _ in range(self.steps):
                logits = net(x).squeeze(1)
                # DAL stops at 98% training accuracy: past it the net memorises the pool itself.
                correct = ((logits > 0).float() == y).float()
                if float((correct * weight).sum() / weight.sum()) >= 0.98:
                    break
                loss = F.binary_cross_entropy_with_logits(logits, y, weight=weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            return torch.sigmoid(net(x[len(labeled) :]).squeeze(1))


@dataclass
class _BoxRecord:
    labels: torch.Tensor
    scores: torch.Tensor
    features: torch.Tensor  # L2-normalised


def ppal_distances(records: Sequence[_BoxRecord]) -> torch.Tensor:
    """PPAL's category-conditioned matching distance between every pair of images.

    d(A->B) = sum_a s_a * min_{b in B, same class} (1 - cos(f_a, f_b)) / sum_a s_a, where the
    min is 2 when B has no box of a's class; D = (d(A->B) + d(B->A)) / 2. d(A->B) = 0 when A
    has no box.
    """
    n = len(records)
    owners = torch.cat([torch.full((len(r.labels),), i) for i, r in enumerate(records)])
    if owners.numel() == 0:
        return torch.zeros(n, n)
    labels = torch.cat([r.labels for r in records])
    scores = torch.cat([r.scores for r in records])
    features = torch.cat([r.features for r in records])
    cost = (1 - features @ features.T).clamp(0, 2)
    cost = torch.where(labels[:, None] == labels[None, :], cost, torch.full_like(cost, 2.0))
    # nearest[a, B] = min over boxes b of image B of cost[a, b] (2 when B has no such box)
    nearest = torch.full((len(labels), n), 2.0).scatter_reduce(1, owners.expand(len(labels), -1), cost, "amin")
    weighted = torch.zeros(n, n).index_add_(0, owners, scores[:, None] * nearest)
    totals = torch.zeros(n).index_add_(0, owners, scores)
    one_way = torch.where(totals[:, None] > 0, weighted / totals.clamp_min(1e-12)[:, None], torch.zeros(n, n))
    return (one_way + one_way.T) / 2


@register
class UncertaintyDiversityScorer(Scorer):
    """PPAL (Yang et al., CVPR 2024): the top ``candidates_factor`` x budget images by an
    uncertainty scorer, then k-center greedy over them with the category-conditioned matching
    distance on box features, starting from the most uncertain. The picks come first (value
    2 - rank / budget, in (1, 2]); the other images keep their uncertainty (<= 1).
    normalized = value / 2.

    ``boxes`` is the uncertainty scorer's box set (see ``UncertaintyScorer``), and the distances
    use the same boxes: "all" candidates above 0.05 (PPAL's), or the "shown" ones (or the top k),
    so neither the ranking nor the diversity counts boxes a person never sees. Measured with a
    fitted model, "shown" with the mean ties the default and PPAL's own choice buys crowded
    images (BENCHMARKS.md, "PPAL's uncertainty-then-diversity ...")."""

    name = "uncertainty_diversity"
    needs = frozenset({"trained_head", "class_probs", "box_features"})

    def __init__(
        self,
        uncertainty: str = "entropy",
        aggregation: str = "class_balanced",
        candidates_factor: int = 4,
        boxes: str | int = "all",
    ):
        self.uncertainty = create_scorer(uncertainty, aggregation=aggregation, boxes=boxes)
        self.boxes = boxes
        self.needs = type(self).needs | self.uncertainty.needs
        self.candidates_factor = candidates_factor
        self._heap: list[tuple[float, int, _BoxRecord]] = []  # the most uncertain, bounded
        self._seen = 0

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        scores = self.uncertainty.score_batch(batch, context)
        keep = self.candidates_factor * context.budget
        for item, score in zip(batch, scores, strict=True):
            det = item.detections
            det = det.above(0.05) if self.boxes == "all" else self.uncertainty.boxes_of(det, context)
            record = _BoxRecord(det.labels, det.scores, _unit(det.box_features))
            entry = (score.normalized, -self._seen, record)  # earlier images win ties
            self._seen += 1
            if len(self._heap) < keep:
                heapq.heappush(self._heap, entry)
            elif entry[:2] > self._heap[0][:2]:
                heapq.heapreplace(self._heap, entry)
        return scores

    def finish(self, scores: list[ImageScore], context: ScoringContext) -> list[ImageScore]:
        if not self._heap:
            return scores
        candidates = sorted(self._heap, key=lambda e: (-e[0], -e[1]))
        positions = [-e[1] for e in candidates]
        distances = ppal_distances([e[2] for e in candidates])
        picked, _ = k_center_greedy(len(candidates), lambda i: distances[:, i], context.budget, first=0)
        final = [
            ImageScore(s.normalized, s.normalized / 2, self.name, s.aggregation, {"uncertainty": s.normalized})
            for s in scores
        ]
        for rank, index in enumerate(picked):
            position = positions[index]
            uncertainty = scores[position].normalized
            value = 2.0 - rank / max(context.budget, 1)
            parts = {"uncertainty": uncertainty, "diversity_rank": float(rank + 1)}
            final[position] = ImageScore(value, value / 2, self.name, scores[position].aggregation, parts)
        return final


@register
class WeightedScorer(Scorer):
    """A weighted combination of scorers: the weighted mean of their normalized scores, each
    scorer's normalized score kept as a part. ``weights`` maps scorer names to weights,
    ``params`` optionally maps scorer names to their parameters."""

    name = "weighted"

    def __init__(self, weights: dict[str, float], params: dict[str, dict] | None = None):
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be a non-empty mapping of scorer names to weights >= 0, got {weights!r}")
        self.parts = [create_scorer(name, **(params or {}).get(name, {})) for name in weights]
        self.weights = list(weights.values())
        self.needs = frozenset().union(*(p.needs for p in self.parts))
        self.uses_detections = any(p.uses_detections for p in self.parts)
        self._scores: list[list[ImageScore]] = [[] for _ in self.parts]

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        for part, scores in zip(self.parts, self._scores, strict=True):
            scores += part.score_batch(batch, context)
        return [ImageScore(0.0, 0.0, self.name) for _ in batch]

    def finish(self, scores: list[ImageScore], context: ScoringContext) -> list[ImageScore]:
        finished = [
            part.finish(part_scores, context) for part, part_scores in zip(self.parts, self._scores, strict=True)
        ]
        return combine(finished, self.weights)
