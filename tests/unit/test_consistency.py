"""CALD as its official code computes it, and HUALE over the shown boxes: hand-computed values
on hand-built detections, and the augmentations' box maps checked on drawn images."""

import random

import pytest
import torch
from PIL import Image, ImageDraw

from al_core.display import Display
from al_core.scoring import create_scorer
from al_core.scoring.aggregation import aggregate
from al_core.scoring.base import PoolImage, ScoringContext
from al_core.scoring.consistency import AUGMENTATIONS, reference, view_consistency
from al_core.scoring.hierarchical import flip_agreement
from al_core.types import Detections, LabeledImage


def det(boxes, scores, labels, probs=None) -> Detections:
    return Detections(
        torch.tensor(boxes, dtype=torch.float).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(scores, dtype=torch.float),
        (100, 100),
        class_probs=None if probs is None else torch.tensor(probs, dtype=torch.float),
        probs_kind="softmax",
    )


class FixedDetector:
    """Answers every view with the same detections."""

    class_names = ("a", "b")

    def __init__(self, answer: Detections):
        self.answer = answer

    def predict(self, images, box_features=False):
        return [self.answer for _ in images]


def test_cald_box_consistency_hand_computed():
    ref = det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.2], [1, 2], [[0.1, 0.9, 0.0], [0.8, 0.0, 0.2]])
    same = det([[0, 0, 10, 10]], [0.9], [1], [[0.1, 0.9, 0.0]])
    # Box 1: IoU 1, JS 0 -> |1 + 0.9 - 1.3| = 0.6. Box 2: IoU 0 with the only view box and
    # different classes -> |0 + (1 - JS)(0.2 + 0.9)/2 - 1.3| > 0.8; the minimum is 0.6.
    assert view_consistency(ref, ref.boxes, same) == pytest.approx(0.6, abs=1e-5)
    # Far from the base point on every box: capped at 1.
    weak = det([[80, 80, 90, 90]], [0.05], [1], [[0.9, 0.05, 0.05]])
    assert view_consistency(ref.select([1]), ref.boxes[1:], weak) == pytest.approx(1.0)
    assert view_consistency(ref, ref.boxes, det([], [], [])) == 0.0  # a view without boxes


def test_reference_boxes_are_capped_as_cald_subsamples():
    many = det([[i, i, i + 5, i + 5] for i in range(45)], [i / 100 for i in range(45)], [1] * 45)
    kept = reference(many)
    assert len(kept) == 50 and float(kept.scores[0]) == pytest.approx(0.44) and float(kept.scores[-1]) == 0.0
    assert len(reference(many.select(torch.arange(40)))) == 40


def square_image(box) -> Image.Image:
    image = Image.new("RGB", (120, 90))
    ImageDraw.Draw(image).rectangle(box, fill=(255, 255, 255))
    return image


def bright_box(image: Image.Image) -> torch.Tensor:
    pixels = torch.tensor(list(image.convert("L").get_flattened_data())).reshape(image.height, image.width) > 128
    ys, xs = torch.nonzero(pixels, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float)


@pytest.mark.parametrize("name", ["flip", "downscale", "rotate", "cutout"])
def test_each_augmentation_maps_the_reference_boxes_onto_the_object(name):
    box = [30, 20, 70, 60]
    view = AUGMENTATIONS[name](square_image([30, 20, 69, 59]), torch.tensor([box], dtype=torch.float), random.Random(0))
    if name == "downscale":
        assert view.image.size == (96, 72)  # scored at the smaller size
    drawn = square_image([30, 20, 69, 59]) if name == "cutout" else view.image  # cutout hides parts, keeps the box
    assert torch.allclose(view.boxes[0], bright_box(drawn), atol=2.5)


def test_cutout_covers_between_a_tenth_and_two_fifths_of_a_box():
    image = square_image([30, 20, 69, 59])
    view = AUGMENTATIONS["cutout"](image, torch.tensor([[30.0, 20, 70, 60]]), random.Random(3))
    before = sum(p > 128 for p in image.convert("L").get_flattened_data())
    after = sum(p > 128 for p in view.image.convert("L").get_flattened_data())
    assert 0 < before - after <= 0.8 * before  # two patches at most, each at most 40% of the box


def test_cald_ranks_inconsistent_images_then_balances_classes():
    stable = det([[0, 0, 10, 10]], [0.9], [0], [[0.1, 0.9, 0.0]])
    scorer = create_scorer("consistency", augmentations=["flip"])
    labeled = [LabeledImage("l", torch.tensor([[0.0, 0, 5, 5]] * 3), torch.tensor([1, 1, 1]))]
    context = ScoringContext(detector=FixedDetector(stable), labeled=labeled, budget=1, seed=0)
    blank = Image.new("RGB", (100, 100))
    # "a" sees the object where its flipped view does (x in [0, 10] maps to [90, 100]); "b" does
    # not; "c" sees nothing (consistency 0, the most informative by the first stage).
    mirrored = det([[90, 0, 100, 10]], [0.9], [0], [[0.1, 0.9, 0.0]])
    batch = [PoolImage("a", blank, mirrored), PoolImage("b", blank, stable), PoolImage("c", blank, det([], [], []))]
    scores = scorer.finish(scorer.score_batch(batch, context), context)
    assert scores[0].parts["consistency"] == pytest.approx(0.6, abs=1e-4)  # IoU 1: |1 + 0.9 - 1.3|
    assert scores[1].parts["consistency"] == pytest.approx(0.4, abs=1e-4)  # IoU 0: |0 + 0.9 - 1.3|
    assert scores[2].parts["consistency"] == 0.0
    # 1.2 x budget -> b and c go to the second stage. The labeled set holds only class b; b's
    # class scores (class a at 0.9 in both views) differ more from it than c's (0.45 on average).
    assert scores[1].parts["class_js"] > scores[2].parts["class_js"]
    assert scores[1].normalized > scores[2].normalized > 0.5 >= scores[0].normalized


def test_hierarchical_weights_classes_by_their_mass():
    values = torch.tensor([0.2, 0.4, 0.9])
    labels = torch.tensor([1, 1, 2])
    scores = torch.tensor([0.8, 0.6, 0.1])
    # Class 1: mean 0.3, mass 1.4; class 2: 0.9, mass 0.1 -> (0.42 + 0.09) / 1.5.
    assert aggregate(values, "hierarchical", scores, labels)[0] == pytest.approx((0.3 * 1.4 + 0.9 * 0.1) / 1.5)


def test_huale_flip_term_does_not_flicker_at_the_threshold():
    shown = det([[0, 0, 10, 10]], [0.31], [1], [[0.6, 0.4, 0.0]])
    just_below = det([[90, 0, 100, 10]], [0.29], [1], [[0.6, 0.4, 0.0]])  # the same box, flipped, under 0.3
    assert flip_agreement(shown, torch.tensor([[90.0, 0, 100, 10]]), just_below) == pytest.approx(1.0, abs=1e-5)
    assert flip_agreement(det([], [], []), torch.zeros(0, 4), just_below) == 1.0  # nothing shown, nothing to flip
    scorer = create_scorer("hierarchical")
    context = ScoringContext(detector=FixedDetector(just_below), display=Display(threshold=0.3))
    image = PoolImage("a", Image.new("RGB", (100, 100)), shown)
    score = scorer.score_batch([image], context)[0]
    assert score.parts["flip_inconsistency"] == pytest.approx(0.0, abs=1e-5) and score.parts["boxes"] == 1


def test_tta_disagreement_per_box_aggregated_like_entropy():
    # One shown box; the flipped and downscaled views both answer with a box at [90, 0, 100, 10]:
    # the flip maps [0, 0, 10, 10] there (IoU 1), the downscale maps it to [0, 0, 8, 8] (IoU 0).
    shown = det([[0, 0, 10, 10], [50, 50, 55, 55]], [0.9, 0.1], [0, 0], [[0.1, 0.9, 0.0], [0.9, 0.1, 0.0]])
    answer = det([[90, 0, 100, 10]], [0.9], [0], [[0.1, 0.9, 0.0]])
    context = ScoringContext(detector=FixedDetector(answer), display=Display(threshold=0.3))
    image = PoolImage("a", Image.new("RGB", (100, 100)), shown)
    score = create_scorer("tta_disagreement").score_batch([image], context)[0]
    assert score.parts["boxes"] == 1  # the 0.1 box is not shown
    assert score.value == pytest.approx(0.5, abs=1e-5)  # flip agrees (0), downscale does not (1)
    flip_only = create_scorer("tta_disagreement", views=["flip"]).score_batch([image], context)[0]
    assert flip_only.value == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="views"):
        create_scorer("tta_disagreement", views=["rotate"])
