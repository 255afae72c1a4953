import math

import pytest
import torch

from al_core.scoring import SCORERS, create_scorer
from al_core.scoring.aggregation import aggregate
from al_core.scoring.base import PoolImage, ScoringContext
from al_core.scoring.uncertainty import entropy, two_state
from al_core.types import Detections


def _detections(scores, probs=None, kind="sigmoid", candidates=()):
    n = len(scores)
    return Detections(
        boxes=torch.zeros(n, 4),
        labels=torch.zeros(n, dtype=torch.long),
        scores=torch.tensor(scores, dtype=torch.float32),
        image_size=(10, 10),
        class_probs=None if probs is None else torch.tensor(probs),
        probs_kind=kind,
        candidate_scores=torch.tensor(candidates, dtype=torch.float32),
    )


def test_binary_entropy_hand_computed():
    # H(0.5) = log 2 -> 1 after dividing by log 2; H(0.9) = 0.325083 nats -> 0.468996.
    values = entropy(two_state(torch.tensor([0.5, 0.9, 1.0])))
    assert values.tolist() == pytest.approx([1.0, 0.468996, 0.0], abs=1e-5)


def test_categorical_entropy_hand_computed():
    # Uniform over 4 -> 1; (0.7, 0.1, 0.1, 0.1): 0.940448 nats / log 4 = 0.678388.
    values = entropy(torch.tensor([[0.25] * 4, [0.7, 0.1, 0.1, 0.1]]))
    assert values.tolist() == pytest.approx([1.0, 0.678388], abs=1e-5)


def _score(scorer, *detections):
    return scorer.score_batch([PoolImage(str(i), None, d) for i, d in enumerate(detections)], ScoringContext())


def test_mean_entropy_of_sigmoid_boxes():
    [score] = _score(create_scorer("entropy"), _detections([0.5, 0.9]))
    assert score.value == pytest.approx((1.0 + 0.468996) / 2, abs=1e-5)
    assert score.normalized == score.value
    assert score.scorer == "entropy" and len(score.box_values) == 2


def test_softmax_heads_use_the_class_distribution():
    [score] = _score(create_scorer("entropy"), _detections([0.7], probs=[[0.1, 0.7, 0.1, 0.1]], kind="softmax"))
    assert score.value == pytest.approx(0.678388, abs=1e-5)


def test_aggregations_hand_computed():
    values = torch.tensor([0.2, 0.6])
    assert aggregate(values, "max") == pytest.approx((0.6, 0.6))
    assert aggregate(values, "mean") == pytest.approx((0.4, 0.4))
    assert aggregate(values, "sum") == pytest.approx((0.8, 0.8 / 1.8))
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(values, "median")


def test_image_without_boxes_is_scored_from_candidates_and_finite():
    scorer = create_scorer("entropy", fallback_candidates=2)
    with_candidates, nothing = _score(scorer, _detections([], candidates=[0.5, 0.5, 0.01]), _detections([]))
    assert with_candidates.value == pytest.approx(1.0)
    assert (nothing.value, nothing.normalized) == (0.0, 0.0)
    assert all(math.isfinite(s.value) for s in (with_candidates, nothing))


def test_registry_rejects_unknown_names():
    assert "entropy" in SCORERS
    with pytest.raises(ValueError, match="unknown scorer"):
        create_scorer("oracle")
