"""The order people label in: per expected second, near copies last; and the expected seconds
a display makes, counted by hand."""

import math

import pytest
import torch

from al_core.annotation_cost import CostModel
from al_core.display import Display
from al_core.priority import PriorityRule, near_duplicate_threshold, per_second, power_sample, prioritize
from al_core.scoring import create_scorer
from al_core.scoring.base import PoolImage, ScoringContext
from al_core.selection import ranking
from al_core.training import TrainConfig, final_pass
from al_core.types import Detections, ImageScore

COST = CostModel(open_image=2, draw=7, verify=1.6, delete=2, correct=4)


def dets(boxes, scores, labels=None) -> Detections:
    return Detections(
        torch.tensor(boxes, dtype=torch.float).reshape(-1, 4),
        torch.tensor(labels or [1] * len(scores), dtype=torch.long),
        torch.tensor(scores, dtype=torch.float),
        (100, 100),
    )


def scores(values, for_people=None) -> list[ImageScore]:
    return [
        ImageScore(v, v, "x", for_people=True if for_people is None else for_people[i]) for i, v in enumerate(values)
    ]


def test_expected_seconds_counts_shown_boxes_checked_and_hidden_ones_drawn():
    # 0.9 shown; 0.5 overlaps it (NMS drops it); 0.2 is hidden, an object with q = 0.2.
    d = dets([[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30]], [0.9, 0.5, 0.2])
    assert Display(threshold=0.3).expected_seconds(d, COST) == pytest.approx(2 + 0.9 * 1.6 + 0.1 * 2 + 0.2 * 7)
    # With held-out precision per decile, q comes from it: decile 9 right half the time, decile 2 never.
    calibrated = Display(threshold=0.3, precision=(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.5))
    assert calibrated.expected_seconds(d, COST) == pytest.approx(2 + 0.5 * 1.6 + 0.5 * 2)
    # Nothing shown: every likely object is drawn.
    hidden = Display(threshold=0.3, show=False)
    assert hidden.expected_seconds(d, COST) == pytest.approx(2 + (0.9 + 0.2) * 7)


def test_per_second_ranks_by_ratio_and_keeps_the_informativeness():
    ranked = per_second(scores([0.8, 0.6, 0.1]), [8.0, 2.0, 1.0])
    assert [s.normalized for s in ranked] == pytest.approx([0.1 / 0.3, 1.0, 0.1 / 0.3])
    assert ranked[1].parts == {"informativeness": 0.6, "expected_seconds": 2.0}
    assert ranking(["a", "b", "c"], ranked)[0] == 1
    # An image left to the model does not set the scale.
    capped = per_second(scores([0.8, 0.6], for_people=[True, False]), [8.0, 0.1])
    assert capped[0].normalized == pytest.approx(1.0) and capped[1].normalized == pytest.approx(1.0)


def test_near_copies_of_a_higher_ranked_or_labeled_image_go_last():
    torch.manual_seed(0)
    features = torch.randn(30, 16)
    features[7] = features[2] + 0.001  # a copy of a better image
    features[9] = features[29] + 0.001  # a copy of a labeled one
    keys = [f"k{i:02d}" for i in range(30)]
    values = [1 - i / 30 for i in range(30)]
    out = prioritize(keys, scores(values), PriorityRule(near_duplicates=True), None, features, 30, features[29:])
    assert out[7].normalized == 0 and out[7].parts["near_duplicate"] < near_duplicate_threshold(features)
    assert out[9].normalized == 0
    assert out[29].normalized == 0  # itself labeled: distance 0
    assert [out[i].normalized for i in (0, 2, 8)] == pytest.approx([values[0], values[2], values[8]])
    # A pool without near copies keeps its order.
    spread = prioritize(keys, scores(values), PriorityRule(near_duplicates=True), None, torch.eye(30), 30)
    assert [s.normalized for s in spread] == pytest.approx(values)


def test_power_sampling_draws_the_first_image_in_proportion_to_its_score():
    keys, values = ["a", "b", "c", "d"], [0.6, 0.3, 0.1, 0.0]
    firsts = [
        max(range(4), key=lambda i: s[i].normalized)
        for s in (power_sample(keys, scores(values), seed) for seed in range(2000))
    ]
    shares = [firsts.count(i) / len(firsts) for i in range(4)]
    # 2,000 fixed draws: each share within 0.04 (over 3 standard errors) of its score's share.
    assert shares == pytest.approx([0.6, 0.3, 0.1, 0.0], abs=0.04)


def test_power_sampling_is_a_seeded_order_that_follows_the_keys_not_their_position():
    keys = [f"k{i:02d}" for i in range(40)]
    values = [(i % 7) / 7 for i in range(40)]  # six images with nothing to draw on
    drawn = prioritize(keys, scores(values), PriorityRule(sampling="power"), seed=5)
    order = [keys[i] for i in ranking(keys, drawn)]
    assert sorted(s.normalized for s in drawn if s.normalized > 0) == pytest.approx([k / 34 for k in range(1, 35)])
    assert {keys[i] for i, s in enumerate(drawn) if s.normalized == 0} == {keys[i] for i in range(0, 40, 7)}
    assert [s.parts["informativeness"] for s in drawn] == values
    assert order != [keys[i] for i in ranking(keys, scores(values))]  # not the sorted order
    reversed_keys, reversed_values = keys[::-1], values[::-1]
    again = power_sample(reversed_keys, scores(reversed_values), seed=5)
    assert [reversed_keys[i] for i in ranking(reversed_keys, again)] == order
    other = power_sample(keys, scores(values), seed=6)
    assert [keys[i] for i in ranking(keys, other)] != order
    # Per equal second, then drawn: the same draw, and the scorer's number is kept.
    per_second_drawn = prioritize(
        keys, scores(values), PriorityRule(cost_aware=True, sampling="power"), [2.0] * 40, seed=5
    )
    assert [keys[i] for i in ranking(keys, per_second_drawn)] == order
    assert [s.parts["informativeness"] for s in per_second_drawn] == values
    with pytest.raises(ValueError, match="unknown sampling"):
        PriorityRule(sampling="softmax")


def test_the_budget_bounds_the_walk_and_missing_inputs_are_errors():
    torch.manual_seed(0)
    features = torch.randn(10, 8)
    features[1] = features[0] + 0.001
    features[5] = features[0] + 0.001
    keys, values = list("abcdefghij"), [1 - i / 10 for i in range(10)]
    out = prioritize(keys, scores(values), PriorityRule(near_duplicates=True), None, features, 2)
    assert out[1].normalized == 0 and out[5].normalized == pytest.approx(values[5])  # stopped after 2 kept
    with pytest.raises(ValueError, match="expected seconds"):
        prioritize(["a"], scores([1.0]), PriorityRule(cost_aware=True))
    with pytest.raises(ValueError, match="features"):
        prioritize(["a"], scores([1.0]), PriorityRule(near_duplicates=True))


def test_uncertainty_over_the_shown_boxes_or_the_top_k():
    # One confident box and many junk candidates: the mean over all counts the junk.
    d = dets([[0, 0, 10, 10]] + [[i, i, i + 5, i + 5] for i in range(20, 40)], [0.95] + [0.1] * 20)
    d.candidate_scores = torch.tensor([0.95])
    context = ScoringContext(display=Display(threshold=0.3))
    image = PoolImage("a", None, d)
    every = create_scorer("entropy", aggregation="mean").score_batch([image], context)[0]
    shown = create_scorer("entropy", aggregation="mean", boxes="shown").score_batch([image], context)[0]
    top = create_scorer("entropy", aggregation="mean", boxes=1).score_batch([image], context)[0]
    assert shown.parts["boxes"] == 1 and top.parts["boxes"] == 1 and every.parts["boxes"] == 21
    assert shown.value == pytest.approx(top.value) and shown.value < every.value
    with pytest.raises(ValueError, match="boxes"):
        create_scorer("entropy", boxes="some")


def binary_entropy(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_one_vs_all_doubt_counts_a_box_torn_between_two_classes():
    # Both boxes win their class at 0.9; the second also gives another class 0.5.
    d = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.9], [1, 2])
    d.class_probs = torch.tensor([[0.0, 0.9, 0.02, 0.01], [0.0, 0.5, 0.9, 0.01]])
    context = ScoringContext(display=Display(threshold=0.3))

    def score(classes: str):
        scorer = create_scorer("entropy", boxes="shown", classes=classes)
        return scorer.score_batch([PoolImage("a", None, d)], context)[0]

    top, every = score("top"), score("all")
    assert top.box_values == pytest.approx((binary_entropy(0.9), binary_entropy(0.9)), abs=1e-5)
    assert every.box_values == pytest.approx((binary_entropy(0.9), 1.0), abs=1e-5)  # 0.5: the most doubt
    assert every.value > top.value
    # A softmax head's distribution already spans every class: nothing changes.
    d.probs_kind = "softmax"
    assert score("top").value == pytest.approx(score("all").value)
    with pytest.raises(ValueError, match="classes"):
        create_scorer("entropy", classes="some")


def test_doubt_weighted_by_the_chance_its_box_is_right():
    # Two shown boxes at 0.45 and 0.85; held-out precision 0.4 in the 0.4 decile, 0.9 in the 0.8 one.
    d = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.45, 0.85])
    precision = (0.0, 0.0, 0.0, 0.1, 0.4, 0.5, 0.6, 0.8, 0.9, 1.0)
    context = ScoringContext(display=Display(threshold=0.3, precision=precision))
    plain = create_scorer("entropy", boxes="shown").score_batch([PoolImage("a", None, d)], context)[0]
    right = create_scorer("entropy", boxes="shown", weight="right").score_batch([PoolImage("a", None, d)], context)[0]
    expected = (0.4 * binary_entropy(0.45) + 0.9 * binary_entropy(0.85)) / 2
    assert right.value == pytest.approx(expected, abs=1e-5)
    assert right.box_values == pytest.approx((0.4 * binary_entropy(0.45), 0.9 * binary_entropy(0.85)), abs=1e-5)
    assert plain.value == pytest.approx((binary_entropy(0.45) + binary_entropy(0.85)) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="weight"):
        create_scorer("entropy", weight="some")


def test_final_pass_is_short_and_slow():
    last = final_pass(TrainConfig(epochs=12, lr=1e-3, warmup_iters=50), 0.2)
    assert (last.epochs, last.lr, last.warmup_iters) == (2, pytest.approx(1e-4), 0)
    assert final_pass(TrainConfig(epochs=2), 0.2).epochs == 1
