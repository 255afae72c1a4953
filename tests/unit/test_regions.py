import pytest
import torch

from al_core.datasets.label_studio_format import box_to_percent, percent_to_box
from al_core.types import Certainty, Detections
from exporters.label_config import parse_label_config
from exporters.label_studio_regions import detections_to_regions

from ..conftest import SHAPES_CONFIG


def test_box_to_percent_hand_computed():
    # The example Label Studio accepted: a 640x480 image, box (100, 80)-(300, 260).
    assert box_to_percent([100, 80, 300, 260], 640, 480) == pytest.approx(
        {"x": 15.625, "y": 16.6667, "width": 31.25, "height": 37.5}, abs=1e-4
    )


def test_percent_round_trip():
    box = (12.5, 7.0, 99.25, 64.0)
    assert percent_to_box(box_to_percent(box, 320, 240), 320, 240) == pytest.approx(box)


def test_regions_keep_known_classes_above_threshold_in_label_studio_shape():
    config = parse_label_config(SHAPES_CONFIG)
    detections = Detections(
        boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 9.0, 9.0]]),
        labels=torch.tensor([0, 1, 2]),
        scores=torch.tensor([0.9, 0.1, 0.8]),
        image_size=(200, 100),
    )
    regions = detections_to_regions(detections, ("circle", "square", "hexagon"), config, Certainty(0.3, 0.7))
    assert len(regions) == 1  # square is under the threshold, hexagon is not in the config
    region = regions[0]
    assert region["from_name"] == "boxes" and region["to_name"] == "img" and region["type"] == "rectanglelabels"
    assert (region["original_width"], region["original_height"]) == (200, 100)
    value = dict(region["value"])
    assert value.pop("rectanglelabels") == ["Circle"]
    assert value == pytest.approx({"x": 5.0, "y": 20.0, "width": 20.0, "height": 40.0, "rotation": 0})
    assert region["score"] == pytest.approx(0.9)
