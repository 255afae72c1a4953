"""Set-level scorers, consistency, selection: toy problems with known answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from al_core.display import Display
from al_core.scoring import create_scorer
from al_core.scoring.base import PoolImage, ScoringContext
from al_core.scoring.consistency import js_divergence
from al_core.scoring.diversity import _BoxRecord, ppal_distances
from al_core.selection import combine, k_center_greedy, ranking, top_k
from al_core.types import Detections, ImageScore


def boxes_det(boxes, scores, labels, probs=None):
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.long),
        scores=torch.tensor(scores, dtype=torch.float32),
        image_size=(100, 100),
        class_probs=None if probs is None else torch.tensor(probs),
        probs_kind="softmax",
    )


def test_js_divergence_hand_computed():
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert js_divergence(p, q).item() == pytest.approx(math.log(2))
    assert js_divergence(p, p).item() == pytest.approx(0.0)


def test_k_center_greedy_spreads_over_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2) for c in centers])
    picked, at_pick = k_center_greedy(len(points), lambda i: torch.cdist(points, points[i : i + 1])[:, 0], budget=3)
    assert sorted(p // 20 for p in picked) == [0, 1, 2]
    assert at_pick[picked[1]] >= at_pick[picked[2]]  # distances at pick never grow


def test_coreset_starts_from_the_labeled_images():
    labeled = torch.tensor([[1.0, 0.0]] * 3)
    pool = torch.tensor([[1.0, 0.01], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    batch = [PoolImage(str(i), None, boxes_det([], [], [])) for i in range(4)]
    for item, feature in zip(batch, pool):
        item.detections.image_features = feature
    scorer = create_scorer("coreset")
    context = ScoringContext(labeled_features=labeled, budget=2)
    scores = scorer.finish(scorer.score_batch(batch, context), context)
    order = ranking([b.key for b in batch], scores)
    assert order[0] == 3  # farthest from the labeled point
    assert order[-1] == 0  # a near copy of a labeled image comes last
    assert sum(s.parts["picked"] for s in scores) == 2


def test_discriminative_prefers_what_the_labeled_set_lacks():
    torch.manual_seed(0)
    labeled = torch.randn(40, 8)
    familiar, novel = torch.randn(20, 8), torch.randn(20, 8) + 3.0
    batch = [PoolImage(str(i), None, boxes_det([], [], [])) for i in range(40)]
    for item, feature in zip(batch, torch.cat([familiar, novel])):
        item.detections.image_features = feature
    scorer = create_scorer("discriminative", rounds=1)
    context = ScoringContext(labeled_features=labeled, seed=1, budget=40)
    scores = [s.value for s in scorer.finish(scorer.score_batch(batch, context), context)]
    # Nearly every novel image outranks nearly every familiar one (AUC), and by a clear margin.
    auc = sum(n > f for n in scores[20:] for f in scores[:20]) / 400
    assert auc > 0.95
    assert sum(scores[20:]) / 20 > sum(scores[:20]) / 20 + 0.2
    with pytest.raises(ValueError, match="labeled"):
        create_scorer("discriminative").finish([], ScoringContext())


def test_discriminative_sub_batches_retrain_between_rounds():
    """Two unexplored groups, one far from the labeled set and one nearer: one round takes the
    whole budget from the far group; two rounds take the near group's turn once the far one's
    first picks count as labeled."""
    torch.manual_seed(0)
    labeled = torch.randn(40, 8)
    far, near = torch.randn(20, 8) + 6.0, torch.randn(20, 8) - 3.0
    batch = [PoolImage(str(i), None, boxes_det([], [], [])) for i in range(40)]
    for item, feature in zip(batch, torch.cat([far, near]), strict=True):
        item.detections.image_features = feature

    def picked(rounds):
        scorer = create_scorer("discriminative", rounds=rounds)
        context = ScoringContext(labeled_features=labeled, seed=1, budget=20)
        scores = scorer.finish(scorer.score_batch(batch, context), context)
        return [i for i in range(40) if scores[i].normalized > 0.5]

    assert len(picked(1)) == 20 and len(picked(4)) == 20
    assert sum(i >= 20 for i in picked(4)) > sum(i >= 20 for i in picked(1))


def _record(labels, scores, features):
    return _BoxRecord(torch.tensor(labels), torch.tensor(scores), F.normalize(torch.tensor(features), dim=1))


def test_ppal_distance_hand_computed():
    a = _record([0, 1], [1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])
    b = _record([0], [1.0], [[0.0, 1.0]])  # class 0, orthogonal to a's class-0 box
    empty = _BoxRecord(torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, 2))
    d = ppal_distances([a, b, empty])
    # d(A->B) = (1 * 1 + 1 * 2) / 2 = 1.5 (A's class-1 box has no match in B: 2);
    # d(B->A) = 1 (cos 0 against A's class-0 box); D = 1.25.
    assert d[0, 1].item() == pytest.approx(1.25)
    assert d[0, 0].item() == pytest.approx(0.0)
    # An image without boxes: d(empty->A) = 0, d(A->empty) = 2.
    assert d[0, 2].item() == pytest.approx(1.0)


def test_uncertainty_diversity_skips_near_duplicates():
    same_feature = [[1.0, 0.0]]
    pool = [
        boxes_det([[0, 0, 10, 10]], [0.5], [0]),  # uncertain, feature A
        boxes_det([[0, 0, 10, 10]], [0.5], [0]),  # its duplicate
        boxes_det([[0, 0, 10, 10]], [0.55], [1]),  # a bit less uncertain, another class
        boxes_det([[0, 0, 10, 10]], [0.99], [0]),  # sure
    ]
    for d in pool:
        d.box_features = torch.tensor(same_feature)
    batch = [PoolImage(str(i), None, d) for i, d in enumerate(pool)]
    scorer = create_scorer("uncertainty_diversity", aggregation="mean", candidates_factor=2)
    context = ScoringContext(budget=2)
    scores = scorer.finish(scorer.score_batch(batch, context), context)
    order = ranking([b.key for b in batch], scores)
    assert order[:2] == [0, 2]  # the duplicate of the first pick is passed over
    assert scores[0].parts["diversity_rank"] == 1.0


def test_uncertainty_diversity_over_the_shown_boxes_ignores_hidden_candidates():
    a, a_near = [1.0, 0.0, 0.0], [0.5, math.sqrt(0.75), 0.0]  # 1 - cos = 0.5
    hidden = [[10, 10, 20, 20], [30, 30, 40, 40], [50, 50, 60, 60]]
    pool = [
        boxes_det([[0, 0, 10, 10]], [0.5], [0]),
        # the first image's shown box again, plus three hidden junk boxes of another class
        boxes_det([[0, 0, 10, 10], *hidden], [0.5, 0.2, 0.2, 0.2], [0, 2, 2, 2]),
        boxes_det([[0, 0, 10, 10]], [0.5], [0]),
    ]
    pool[0].box_features = torch.tensor([a])
    pool[1].box_features = torch.tensor([a, [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    pool[2].box_features = torch.tensor([a_near])
    batch = [PoolImage(str(i), None, d) for i, d in enumerate(pool)]
    context = ScoringContext(budget=2, display=Display(threshold=0.3))

    def second_pick(boxes):
        scorer = create_scorer("uncertainty_diversity", aggregation="mean", candidates_factor=2, boxes=boxes)
        return ranking([b.key for b in batch], scorer.finish(scorer.score_batch(batch, context), context))[1]

    # PPAL's candidates: the hidden junk makes the second image look far (D = 0.55 > 0.5).
    assert second_pick("all") == 1
    # Over the boxes a person sees, it is the first image again (D = 0), so the third comes next.
    assert second_pick("shown") == 2


def test_random_is_seeded_and_independent_of_batching():
    batch = [PoolImage(f"img{i}.png", None, None) for i in range(10)]
    scorer = create_scorer("random")
    whole = scorer.score_batch(batch, ScoringContext(seed=3))
    split = scorer.score_batch(batch[:4], ScoringContext(seed=3)) + scorer.score_batch(
        batch[4:], ScoringContext(seed=3)
    )
    other = scorer.score_batch(batch, ScoringContext(seed=4))
    assert [s.value for s in whole] == [s.value for s in split]
    assert [s.value for s in whole] != [s.value for s in other]
    # The same images in another folder draw the same values: a simulation's random baseline
    # does not move with its out_dir.
    moved = [PoolImage(f"/elsewhere/run_b/img{i}.png", None, None) for i in range(10)]
    assert [s.value for s in scorer.score_batch(moved, ScoringContext(seed=3))] == [s.value for s in whole]


def test_top_k_breaks_ties_by_key_and_records_provenance():
    scores = [
        ImageScore(0.5, 0.5, "entropy", "mean"),
        ImageScore(0.5, 0.5, "entropy", "mean"),
        ImageScore(0.9, 0.9, "entropy", "mean"),
    ]
    selection = top_k(["b.png", "a.png", "c.png"], scores, 2, "entropy", "entropy", "v3", 0)
    assert [i.key for i in selection.images] == ["c.png", "a.png"]
    assert [i.rank for i in selection.images] == [1, 2]
    assert selection.model_version == "v3" and selection.images[0].score.aggregation == "mean"


def test_weighted_combination():
    a = [ImageScore(0.0, 1.0, "entropy"), ImageScore(0.0, 0.0, "entropy")]
    b = [ImageScore(0.0, 0.0, "coreset"), ImageScore(0.0, 1.0, "coreset")]
    first, second = combine([a, b], [3.0, 1.0])
    assert (first.value, second.value) == (0.75, 0.25)
    assert first.parts == {"entropy": 1.0, "coreset": 0.0} and first.scorer == "entropy+coreset"
    with pytest.raises(ValueError):
        combine([a], [1.0, 2.0])
