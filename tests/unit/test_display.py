"""The annotation cost model and the display calibration, on hand-built detections whose
seconds are counted by hand."""

import pytest
import torch

from al_core.annotation_cost import CostModel
from al_core.cooperation import BoxEdits
from al_core.display import Display, calibrate, wilson_lower_bound
from al_core.types import Detections, LabeledImage

COST = CostModel(open_image=2, draw=7, verify=1.6, delete=2, correct=4)


def dets(boxes, labels, scores) -> Detections:
    return Detections(
        torch.tensor(boxes, dtype=torch.float).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(scores, dtype=torch.float),
        (100, 100),
    )


def truth(boxes, labels, path="t") -> LabeledImage:
    return LabeledImage(path, torch.tensor(boxes, dtype=torch.float).reshape(-1, 4), torch.tensor(labels))


def test_cost_model_hand_counted():
    assert COST.seconds(BoxEdits(added=2, removed=3, corrected=1, checked=4, from_scratch=7)) == pytest.approx(
        2 + 14 + 6 + 4 + 6.4
    )
    assert COST.from_scratch(3) == pytest.approx(23)
    assert "7 s per box drawn" in COST.describe()
    with pytest.raises(ValueError, match="draw"):
        CostModel(draw=-1)


def test_one_object_one_box_then_thresholds_then_the_cap():
    # Two boxes on one object with different labels, and two apart.
    d = dets([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60], [70, 70, 80, 80]], [1, 2, 1, 3], [0.9, 0.8, 0.4, 0.6])
    shown = Display(threshold=0.3, nms_iou=0.7).shown(d)
    assert shown.labels.tolist() == [1, 1, 3]  # the 0.8 box of label 2 lost to the 0.9 one
    assert len(Display(threshold=0.3, nms_iou=1.0).shown(d)) == 4  # NMS off: today's display
    assert Display(threshold=0.3, class_thresholds={1: 0.5}).shown(d).scores.tolist() == pytest.approx([0.9, 0.6])
    assert Display(threshold=0.3, max_boxes=2).shown(d).scores.tolist() == pytest.approx([0.9, 0.6])
    assert len(Display(show=False).shown(d)) == 0
    with pytest.raises(ValueError, match="max_boxes"):
        Display(max_boxes=0)


def test_calibration_picks_the_middle_of_the_cheapest_thresholds():
    # Per image: two right boxes at 0.8 and one junk box far away at 0.2.
    truths = [truth([[0, 0, 20, 20], [40, 40, 60, 60]], [0, 1], f"i{i}") for i in range(4)]
    detections = [dets([[0, 0, 20, 20], [40, 40, 60, 60], [80, 80, 95, 95]], [0, 1, 2], [0.8, 0.8, 0.2])] * 4
    result = calibrate(detections, truths, COST, Display())
    # Thresholds 0.25 .. 0.80 all show the two right boxes only: 2 + 2 x 1.6 s per image.
    assert result.display.threshold == pytest.approx(0.5)  # GRID[(4 + 15) // 2]
    assert result.seconds_shown == pytest.approx(4 * (2 + 3.2))
    assert result.seconds_from_scratch == pytest.approx(4 * (2 + 14))
    assert result.display.show and result.display.calibrated and not result.display.note
    assert result.display.certain == 1.0  # 8 right boxes: under the 10 a precision needs


def test_a_model_that_only_makes_work_shows_nothing():
    truths = [truth([[0, 0, 20, 20]], [0], f"i{i}") for i in range(3)]
    junk = [dets([[50, 50, 70, 70], [80, 0, 99, 20]], [0, 0], [0.9, 0.5])] * 3  # never on the object
    result = calibrate(junk, truths, COST, Display())
    assert not result.display.show and "no threshold beats drawing from scratch" in result.display.note
    assert len(result.display.shown(junk[0])) == 0
    assert result.seconds_shown == pytest.approx(result.seconds_from_scratch)


def test_certain_is_where_held_out_precision_reaches_the_target():
    # Per image: object A found at 0.9; object B found at 0.6 in 45 of 60 images, missed with a
    # wrong 0.6 box elsewhere in the other 15. Showing the 0.6 boxes still saves time.
    truths, detections = [], []
    for i in range(60):
        truths.append(truth([[0, 0, 20, 20], [40, 40, 60, 60]], [0, 0], f"i{i}"))
        b = [40, 40, 60, 60] if i < 45 else [80, 80, 95, 95]
        detections.append(dets([[0, 0, 20, 20], b], [0, 0], [0.9, 0.6]))
    result = calibrate(detections, truths, COST, Display(), precision_target=0.95)
    assert result.display.threshold == pytest.approx(0.3)  # GRID[(0 + 11) // 2]: 0.05 .. 0.6 tie
    # 105/120 right from 0.3 up; 60/60 above 0.6, whose lower bound 60 / (60 + 1.645^2) passes 0.95
    assert result.display.certain == pytest.approx(0.65)
    assert calibrate(detections, truths, COST, Display(), 0.8).display.certain == pytest.approx(0.3)
    few = calibrate(detections[:50], truths[:50], COST, Display(), 0.95)  # 50/50: bound 0.948
    assert few.display.certain == 1.0


def test_wilson_lower_bound_hand_computed():
    assert wilson_lower_bound(60, 60) == pytest.approx(60 / (60 + 1.645**2))
    assert wilson_lower_bound(105, 120) == pytest.approx(0.817, abs=0.001)
    assert wilson_lower_bound(0, 0) == 0.0


def test_a_class_with_enough_held_out_boxes_gets_its_own_threshold():
    # Class 0: right boxes at 0.35 (worth showing); class 1: junk at 0.6 beside right boxes at 0.9.
    truths, detections = [], []
    for i in range(10):
        truths.append(truth([[0, 0, 20, 20], [40, 40, 60, 60], [0, 40, 20, 60]], [0, 1, 1], f"i{i}"))
        detections.append(
            dets(
                [[0, 0, 20, 20], [40, 40, 60, 60], [0, 40, 20, 60], [80, 80, 95, 95]],
                [0, 1, 1, 1],
                [0.35, 0.9, 0.9, 0.6],
            )
        )
    result = calibrate(detections, truths, COST, Display(), min_class_boxes=20)
    thresholds = result.display.class_thresholds
    assert set(thresholds) == {1}  # class 1 has 20 true boxes, class 0 only 10
    assert 0.6 < thresholds[1] <= 0.9 and result.display.threshold <= 0.35
    shown = result.display.shown(detections[0])
    assert sorted(shown.scores.tolist()) == pytest.approx([0.35, 0.9, 0.9])


def test_expected_seconds_saved_from_held_out_precision():
    display = Display(precision=(0.0,) * 9 + (0.5,))
    shown = dets([[0, 0, 5, 5], [10, 10, 20, 20]], [0, 0], [0.95, 0.05])
    # 0.95: half right (+5.4 s), half wrong (-2 s); 0.05: always wrong (-2 s)
    assert display.expected_seconds_saved(shown, COST) == pytest.approx(0.5 * 5.4 - 0.5 * 2 - 2)
    assert Display().expected_seconds_saved(shown, COST) == 0.0  # not calibrated: no estimate


def test_display_round_trips_through_json_shapes():
    display = Display(
        threshold=0.4, certain=0.8, class_thresholds={3: 0.55}, show=False, note="x", precision=(0.1,) * 10
    )
    assert Display.from_dict(display.to_dict()) == display
    assert Display.from_dict({**display.to_dict(), "unknown": 1}) == display
