"""TypiClust: toy pools whose clusters, typical members and coverage are known."""

import pytest
import torch

from al_core.scoring import create_scorer
from al_core.scoring.base import PoolImage, ScoringContext
from al_core.scoring.typicality import cluster_order, typicality
from al_core.selection import ranking
from al_core.types import Detections


def image(feature, probs=()):
    det = Detections(
        boxes=torch.tensor([[10.0, 10.0, 40.0, 40.0]] * len(probs)).reshape(-1, 4),
        labels=torch.zeros(len(probs), dtype=torch.long),
        scores=torch.tensor([max(p) for p in probs], dtype=torch.float32),
        image_size=(100, 100),
        class_probs=torch.tensor(probs, dtype=torch.float32).reshape(-1, 2),
        probs_kind="softmax",
        image_features=torch.as_tensor(feature, dtype=torch.float32),
    )
    return det


def blob(center, count, spread, generator):
    return torch.tensor(center) + spread * torch.randn(count, len(center), generator=generator)


def run(scorer, features, context, probs=None):
    batch = [PoolImage(str(i), None, image(f, probs[i] if probs else ())) for i, f in enumerate(features)]
    scores = scorer.finish(scorer.score_batch(batch, context), context)
    return scores, ranking([b.key for b in batch], scores)


def test_typicality_is_highest_in_the_dense_middle():
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [-0.1, 0.0], [0.0, 0.1], [3.0, 3.0]])
    values = typicality(points, k=2)
    assert int(values.argmax()) == 0
    assert int(values.argmin()) == 4
    assert typicality(points[:1], k=2).tolist() == [0.0]


def test_clusters_are_taken_fewest_covered_then_largest_first():
    clusters = torch.tensor([0] * 5 + [1] * 3 + [2] * 8)
    covered = torch.tensor([0, 0, 1])
    assert cluster_order(clusters, covered, torch.arange(16), budget=4) == [0, 1, 2, 0]


def test_one_typical_image_from_each_uncovered_cluster():
    """Three directions on the unit sphere; the labeled image covers the first. With a budget of
    two, the picks are one image of each other direction, each near its direction's middle,
    the larger group's first."""
    g = torch.Generator().manual_seed(0)
    a, b, c = blob([1.0, 0, 0], 10, 0.05, g), blob([0, 1.0, 0], 14, 0.05, g), blob([0, 0, 1.0], 8, 0.05, g)
    outlier = torch.tensor([[0.0, 0.8, 0.6]])
    features = torch.cat([a, b, c, outlier])
    context = ScoringContext(labeled_features=torch.tensor([[1.0, 0.0, 0.0]]), budget=2, seed=3)
    scores, order = run(create_scorer("typiclust", k_neighbors=5), features, context)
    first, second = order[:2]
    assert 10 <= first < 24 and 24 <= second < 32  # the larger uncovered group first
    assert sum(s.parts["picked"] for s in scores) == 2
    middle = features[10:24].mean(0)
    distances = (features[10:24] - middle).norm(dim=1)
    assert (features[first] - middle).norm() <= distances.quantile(0.5)  # a typical member
    assert scores[32].parts["picked"] == 0  # the outlier is never a pick
    assert all(0 <= s.normalized <= 1 for s in scores)


def test_within_picks_the_most_uncertain_image_of_each_cluster():
    g = torch.Generator().manual_seed(1)
    features = torch.cat([blob([1.0, 0], 6, 0.02, g), blob([0, 1.0], 6, 0.02, g)])
    probs = [[[0.99, 0.01]]] * 12
    probs[4] = [[0.55, 0.45]]  # the doubtful image of the first cluster
    probs[7] = [[0.6, 0.4]]  # and of the second
    scorer = create_scorer("typiclust", within="entropy", within_params={"aggregation": "mean"})
    assert "trained_head" in scorer.needs
    _, order = run(scorer, features, ScoringContext(budget=2, seed=0), probs)
    assert sorted(order[:2]) == [4, 7]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="k_neighbors"):
        create_scorer("typiclust", k_neighbors=0)
    with pytest.raises(ValueError, match="unknown scorer"):
        create_scorer("typiclust", within="nonsense")
