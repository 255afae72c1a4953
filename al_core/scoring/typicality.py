"""TypiClust: the most typical image of each uncovered cluster, for small budgets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from ..types import ImageScore
from .base import PoolImage, Scorer, ScoringContext, create_scorer, register


def typicality(features: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) inverse mean distance of each point to its ``k`` nearest other points (TypiClust's
    density); a lone point gets 0."""
    if len(features) < 2:
        return torch.zeros(len(features))
    distances = torch.cdist(features, features)
    distances.fill_diagonal_(float("inf"))
    nearest = distances.topk(min(k, len(features) - 1), largest=False).values
    return 1.0 / nearest.mean(dim=1).clamp_min(1e-12)


def cluster_order(clusters: torch.Tensor, covered: torch.Tensor, candidates: torch.Tensor, budget: int) -> list[int]:
    """The clusters to pick from, one pick each time: the one with the fewest labeled or picked
    images, the largest of those first; only clusters that still have a candidate."""
    sizes = torch.bincount(clusters, minlength=len(covered))
    left = torch.bincount(clusters[candidates], minlength=len(covered))
    covered = covered.clone()
    order = []
    for _ in range(min(budget, len(candidates))):
        open_ = left > 0
        # Fewest covered first, then the largest: covered * (n + 1) - size sorts both at once.
        key = torch.where(open_, covered * (len(clusters) + 1) - sizes, torch.iinfo(torch.long).max)
        chosen = int(torch.argmin(key))
        order.append(chosen)
        covered[chosen] += 1
        left[chosen] -= 1
    return order


@register
class TypiclustScorer(Scorer):
    """TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies
    Suit High and Low Budgets", ICML 2022): k-means with (labeled + budget) clusters over the
    L2-normalised image features of the labeled and the unlabeled images; then, budget times,
    the most typical unlabeled image (inverse mean distance to its ``k_neighbors`` nearest
    neighbours in its cluster) of the cluster with the fewest labeled or picked images, the
    largest first. At small budgets a model learns more from typical images than from the
    uncertain outliers that uncertainty sampling picks.

    ``within``: another scorer (e.g. entropy) picks inside each cluster instead of typicality,
    a cluster-then-uncertainty hybrid. Picks rank first in order (value 2 - rank / budget, in
    (1, 2]); the rest follow by their typicality or ``within`` score scaled into [0, 1].
    normalized = value / 2."""

    name = "typiclust"
    needs = frozenset({"image_features"})

    def __init__(self, k_neighbors: int = 20, within: str | None = None, within_params: dict | None = None):
        if k_neighbors < 1:
            raise ValueError(f"k_neighbors must be at least 1, got {k_neighbors}")
        self.k_neighbors = k_neighbors
        self.within = create_scorer(within, **(within_params or {})) if within else None
        if self.within is not None:
            self.needs = type(self).needs | self.within.needs
        self._features: list[torch.Tensor] = []

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        self._features += [F.normalize(item.detections.image_features.float(), dim=-1) for item in batch]
        if self.within is not None:
            return self.within.score_batch(batch, context)
        return [ImageScore(0.0, 0.0, self.name) for _ in batch]

    def finish(self, scores: list[ImageScore], context: ScoringContext) -> list[ImageScore]:
        if not self._features:
            return scores
        if self.within is not None:
            scores = self.within.finish(scores, context)
        pool = torch.stack(self._features)
        labeled = context.labeled_features
        labeled = torch.zeros(0, pool.shape[1]) if labeled is None else F.normalize(labeled.float(), dim=-1)
        points = torch.cat([labeled, pool])
        budget = max(1, min(context.budget, len(pool)))
        count = min(len(labeled) + budget, len(points))
        kmeans = KMeans(n_clusters=count, n_init="auto", random_state=context.seed % 2**32)
        clusters = torch.as_tensor(kmeans.fit_predict(points.double().numpy()), dtype=torch.long)
        merit = self._merit(points, clusters, scores, len(labeled))
        return self._ranked(clusters, merit, len(labeled), count, budget)

    def _merit(self, points: torch.Tensor, clusters: torch.Tensor, scores, n_labeled: int) -> torch.Tensor:
        """(pool,) what makes an image the one to take from its cluster, scaled into [0, 1]."""
        if self.within is not None:
            return torch.tensor([s.normalized for s in scores]).clamp(0, 1)
        merit = torch.zeros(len(points))
        for cluster in clusters.unique():
            members = (clusters == cluster).nonzero()[:, 0]
            merit[members] = typicality(points[members], self.k_neighbors)
        merit = merit[n_labeled:]
        return merit / merit.max().clamp_min(1e-12)

    def _ranked(self, clusters, merit: torch.Tensor, n_labeled: int, count: int, budget: int) -> list[ImageScore]:
        covered = torch.bincount(clusters[:n_labeled], minlength=count)
        pool_clusters = clusters[n_labeled:]
        taken = torch.zeros(len(merit), dtype=torch.bool)
        values = merit.clone()
        candidates = torch.arange(len(merit))
        for rank, cluster in enumerate(cluster_order(clusters, covered, candidates + n_labeled, budget)):
            members = ((pool_clusters == cluster) & ~taken).nonzero()[:, 0]
            best = int(members[torch.argmax(merit[members])])
            taken[best] = True
            values[best] = 2 - rank / budget
        return [
            ImageScore(float(v), float(v) / 2, self.name, None, {"picked": float(t)})
            for v, t in zip(values.tolist(), taken.tolist(), strict=True)
        ]
