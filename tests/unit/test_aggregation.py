"""Box -> image aggregations and the uncertainty family, with hand-computed values."""

import math

import pytest
import torch

from al_core.scoring import AGGREGATIONS, create_scorer
from al_core.scoring.aggregation import aggregate, inverse_frequency_weights
from al_core.scoring.base import PoolImage, ScoringContext
from al_core.scoring.class_quality import class_quality, difficulty_weights
from al_core.scoring.uncertainty import entropy, least_confidence, margin, two_state
from al_core.types import Detections, LabeledImage


def det(scores, labels=None, probs=None, kind="sigmoid", candidates=()):
    n = len(scores)
    return Detections(
        boxes=torch.tensor([[0.0, 0, 10, 10]] * n).reshape(-1, 4),
        labels=torch.tensor(labels if labels is not None else [0] * n, dtype=torch.long),
        scores=torch.tensor(scores, dtype=torch.float32),
        image_size=(20, 20),
        class_probs=None if probs is None else torch.tensor(probs),
        probs_kind=kind,
        candidate_scores=torch.tensor(candidates, dtype=torch.float32),
    )


def score(name, detections, **params):
    scorer = create_scorer(name, **params)
    batch = [PoolImage(str(i), None, d) for i, d in enumerate(detections)]
    context = ScoringContext()
    return scorer.finish(scorer.score_batch(batch, context), context)


UNIFORM = [0.25, 0.25, 0.25, 0.25]
PEAKED = [0.05, 0.85, 0.05, 0.05]


@pytest.mark.parametrize("fn", [entropy, least_confidence, margin])
def test_uniform_is_more_uncertain_than_peaked(fn):
    uniform, peaked = fn(torch.tensor([UNIFORM, PEAKED]))
    assert uniform == pytest.approx(1.0) and peaked < uniform


def test_least_confidence_and_margin_hand_computed():
    q = torch.tensor([PEAKED])
    assert least_confidence(q).item() == pytest.approx((1 - 0.85) * 4 / 3)
    assert margin(q).item() == pytest.approx(1 - (0.85 - 0.05))


def test_least_confidence_and_margin_are_one_ranking_for_sigmoid_boxes():
    """For a sigmoid head's two-state [s, 1 - s] both are 1 - |2s - 1|, so one benchmark run
    of either stands for both (README's strategy table)."""
    s = torch.linspace(0, 1, 101)
    q = two_state(s)
    assert torch.allclose(least_confidence(q), 1 - (2 * s - 1).abs(), atol=1e-6)
    assert torch.allclose(margin(q), least_confidence(q), atol=1e-6)


@pytest.mark.parametrize("name", ["entropy", "least_confidence", "margin"])
def test_softmax_boxes_rank_uniform_images_first(name):
    uniform, peaked = score(
        name, [det([0.25], probs=[UNIFORM], kind="softmax"), det([0.85], probs=[PEAKED], kind="softmax")]
    )
    assert uniform.normalized > peaked.normalized


def test_sum_favours_crowded_images_mean_does_not():
    crowded = det([0.7] * 8)  # eight fairly sure boxes
    sparse = det([0.5])  # one coin-flip box
    mean_crowded, mean_sparse = score("entropy", [crowded, sparse], aggregation="mean")
    sum_crowded, sum_sparse = score("entropy", [crowded, sparse], aggregation="sum")
    assert mean_sparse.value > mean_crowded.value
    assert sum_crowded.value > sum_sparse.value
    h07 = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3)) / math.log(2)
    assert sum_crowded.value == pytest.approx(8 * h07, abs=1e-5)
    assert sum_crowded.normalized == pytest.approx(8 * h07 / (1 + 8 * h07), abs=1e-5)


def test_weighted_and_hierarchical_hand_computed():
    values = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.9])
    labels = torch.tensor([0, 0, 0, 0, 1])
    top = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.5])
    assert aggregate(values, "weighted", top_probs=top)[0] == pytest.approx(4 * 0.09 + 0.45)
    # box -> class -> image: (mean(0.1 x 4) + 0.9) / 2, where the plain mean is only 0.26
    assert aggregate(values, "hierarchical", labels=labels) == pytest.approx((0.5, 0.5))
    assert aggregate(values, "mean")[0] == pytest.approx(0.26)


def test_class_balanced_weights_lie_in_1_to_1_2():
    weights = difficulty_weights(torch.tensor([0.0, 0.5, 1.0]))
    b = math.exp(1 / 0.3) - 1
    assert weights.tolist() == pytest.approx([1.2, 1 + 0.06 * math.log(b * 0.5 + 1), 1.0], abs=1e-6)
    assert torch.all((difficulty_weights(torch.rand(100)) >= 1) & (difficulty_weights(torch.rand(100)) <= 1.2))
    values, labels = torch.tensor([0.5, 0.5]), torch.tensor([0, 1])
    value, _ = aggregate(values, "class_balanced", labels=labels, class_quality=torch.tensor([1.0, 0.0]))
    assert value == pytest.approx(0.5 * 1.0 + 0.5 * 1.2)


def test_inverse_frequency_weighs_doubt_about_rare_classes_more():
    counts = torch.tensor([17, 1, 0])  # 18 labeled boxes over 3 classes
    weights = inverse_frequency_weights(counts, torch.tensor([0]))
    assert weights.tolist() == pytest.approx([21 / (3 * 18), 21 / (3 * 2), 21 / 3])
    values, labels = torch.tensor([0.5, 0.5]), torch.tensor([0, 2])
    value, normalized = aggregate(values, "inverse_frequency", labels=labels, class_counts=counts)
    assert value == pytest.approx((0.5 * 21 / 54 + 0.5 * 7) / 2)
    assert normalized == pytest.approx(value / (1 + value))
    even = aggregate(values, "inverse_frequency", labels=labels, class_counts=torch.tensor([5, 5, 5]))
    assert even[0] == pytest.approx(0.5)  # an even labeled set weighs every class 1


def test_inverse_frequency_ranks_the_rare_class_first_at_equal_doubt():
    context = ScoringContext(class_counts=torch.tensor([40, 2]))
    common, rare = det([0.5], labels=[0]), det([0.5], labels=[1])
    scorer = create_scorer("entropy", aggregation="inverse_frequency")
    first, second = scorer.score_batch([PoolImage(str(i), None, d) for i, d in enumerate((common, rare))], context)
    assert second.value > first.value
    unweighted = scorer.score_batch([PoolImage("0", None, common)], ScoringContext())[0]
    assert unweighted.value == pytest.approx(1.0)  # no labeled counts: the plain mean


def test_class_quality_is_the_mean_of_score_and_iou_over_positives():
    truths = [
        LabeledImage("a", torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]), torch.tensor([1, 1])),
        LabeledImage("b", torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([2])),
    ]
    found = det([0.64], labels=[1])
    found.boxes = torch.tensor([[0.0, 0, 10, 5]])  # IoU 0.5 with the first box, 0 with the second
    quality = class_quality([found, det([])], truths, num_classes=3)
    # class 1: (0.64^0.6 * 0.5^0.4 + 0) / 2; class 2: missed -> 0; class 0: never seen -> 0
    assert quality.tolist() == pytest.approx([0.0, 0.64**0.6 * 0.5**0.4 / 2, 0.0])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("name", ["entropy", "least_confidence", "margin"])
def test_every_image_gets_a_finite_score(name, aggregation):
    images = [det([]), det([], candidates=[0.4, 0.3]), det([0.9, 0.2], labels=[0, 1]), det([1.0]), det([0.0])]
    for s in score(name, images, aggregation=aggregation):
        assert math.isfinite(s.value) and 0.0 <= s.normalized <= 1.0
        assert s.scorer == name and s.aggregation == aggregation


def test_sl_al_ratio_hand_computed():
    mixed, sure, empty = score(
        "sl_al_ratio", [det([0.9, 0.5, 0.2]), det([0.95, 0.8]), det([0.1])], certain=0.7, uncertain=0.3
    )
    assert mixed.value == pytest.approx(0.5)  # one certain, one uncertain, one dropped
    assert mixed.parts["sl_score"] == pytest.approx(0.45) and mixed.parts["certain_image"] == 0.0
    assert sure.value == 0.0 and sure.parts["certain_image"] == 1.0 and sure.parts["certain_boxes"] == 2
    assert empty.value == 1.0 and empty.parts["certain_image"] == 0.0
    with pytest.raises(ValueError, match="uncertain < certain"):
        create_scorer("sl_al_ratio", certain=0.3, uncertain=0.5)
