"""What people are shown, as the service serves it: each version calibrates its display after
training, /predict shows only what it chose (one box per object), a project's /setup
thresholds override it, and a weak model shows nothing and says why."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from al_core.detectors import Detector
from al_core.display import Display
from al_core.types import Certainty, Detections, ImageScore
from al_core.versions import read_version
from backend.api_models import parse_certainty
from backend.cycle import serving_display
from backend.predictor import prediction
from backend.settings import Settings
from exporters.label_config import parse_label_config

from ..conftest import make_settings
from .test_cycle_resources import CONFIG, FakeProject, backend, project, train  # noqa: F401

LABEL_CONFIG = parse_label_config(CONFIG)


def test_one_object_one_box_in_a_prediction():
    # The same square seen as a circle (0.6) and a square (0.9), and a triangle apart.
    boxes = torch.tensor([[10.0, 10, 50, 50], [11, 10, 50, 51], [80, 80, 120, 120]])
    detections = Detections(boxes, torch.tensor([0, 1, 2]), torch.tensor([0.6, 0.9, 0.5]), (128, 128))
    detector = SimpleNamespace(version=SimpleNamespace(name="v1"), class_names=("circle", "square", "triangle"))
    score = ImageScore(0.5, 0.5, "entropy")
    display = Display(threshold=0.3, nms_iou=0.7, precision=(0.5,) * 10)
    result = prediction(detector, LABEL_CONFIG, detections, score, display, Settings().cost)
    labels = sorted(region["value"]["rectanglelabels"][0] for region in result["result"])
    assert labels == ["square", "triangle"]
    assert result["expected_seconds_saved"] == pytest.approx(2 * (0.5 * 5.4 - 0.5 * 2))
    assert result["display"] == {"threshold": 0.3, "certain": 1.0, "calibrated": False}
    hidden = prediction(detector, LABEL_CONFIG, detections, score, Display(show=False, note="weak"), Settings().cost)
    assert hidden["result"] == [] and hidden["display"]["shown"] is False and hidden["display"]["note"] == "weak"


def test_which_display_serves_a_project(tmp_path):
    settings = make_settings(tmp_path, display_nms_iou=0.5, display_max_boxes=7)
    calibrated = Display(threshold=0.45, certain=0.8, calibrated=True, nms_iou=0.9)
    trained, base = SimpleNamespace(display=calibrated), SimpleNamespace(display=None)
    chosen = serving_display(settings, None, trained)
    assert (chosen.threshold, chosen.calibrated, chosen.nms_iou, chosen.max_boxes) == (0.45, True, 0.5, 7)
    assert serving_display(settings, None, base) == settings.display
    thresholds = parse_certainty({"uncertain_threshold": 0.2, "certain_threshold": 0.9}, Certainty())
    override = serving_display(settings, thresholds, trained)
    assert (override.threshold, override.certain, override.calibrated) == (0.2, 0.9, False)
    assert parse_certainty({"something_else": 1}, Certainty()) is None  # the version's display decides
    assert parse_certainty(None, Certainty()) is None


def test_no_box_is_marked_certain_before_a_threshold_is_measured_or_set(tmp_path):
    boxes = torch.tensor([[10.0, 10, 50, 50], [80, 80, 120, 120], [60, 0, 90, 30]])
    detections = Detections(boxes, torch.tensor([0, 1, 2]), torch.tensor([1.0, 0.95, 0.5]), (128, 128))
    detector = SimpleNamespace(version=SimpleNamespace(name="v1"), class_names=("circle", "square", "triangle"))
    score = ImageScore(0.5, 0.5, "entropy")
    stored = SimpleNamespace(display=Display(threshold=0.3, certain=0.7))  # an uncalibrated version's

    def marks(settings, thresholds=None, version=stored):
        display = serving_display(settings, thresholds, version)
        result = prediction(detector, LABEL_CONFIG, detections, score, display, settings.cost)
        return [r["meta"]["certainty"] for r in result["result"]], result["al_ratio"], result["uncertain_boxes"]

    # Unmeasured: every shown box is for a person, the saturated 1.0 too.
    assert marks(make_settings(tmp_path)) == (["uncertain"] * 3, 1.0, 3)
    assert make_settings(tmp_path).display.certainty() == Certainty(0.3, 1.0)  # /setup's defaults
    # Measured by the version's calibration, or set on purpose: the sure boxes are the model's.
    calibrated = SimpleNamespace(display=Display(threshold=0.3, certain=0.9, calibrated=True))
    expected = (["uncertain", "certain", "certain"], pytest.approx(1 / 3), 1)
    assert marks(make_settings(tmp_path), version=calibrated) == expected
    assert marks(make_settings(tmp_path), thresholds=Certainty(0.3, 0.9)) == expected
    assert marks(make_settings(tmp_path, certain_score_threshold=0.9)) == expected


@pytest.mark.parametrize(
    "environ, problem",
    [
        ({"DISPLAY_MAX_BOXES": "0"}, "max_boxes"),
        ({"DISPLAY_NMS_IOU": "1.5"}, "nms_iou"),
        ({"COST_DRAW_SECONDS": "-3"}, "draw"),
        ({"CERTAIN_PRECISION_TARGET": "2"}, "CERTAIN_PRECISION_TARGET"),
    ],
)
def test_bad_display_and_cost_settings_are_refused_at_start_up(environ, problem):
    with pytest.raises(ValueError, match=problem):
        Settings.load(environ)


def test_a_weak_version_shows_nothing_and_setup_thresholds_override(
    make_client, trained_checkpoint, shapes, image_server
):
    detector = Detector.load(trained_checkpoint)
    detector.display = Display(show=False, calibrated=True, note="no threshold beats drawing from scratch")
    client = make_client(detector=detector)
    task = {"id": 1, "data": {"image": f"{image_server.url}/test/{Path(shapes['test'][0].path).name}"}}
    answer = client.post("/predict", json={"tasks": [task], "label_config": CONFIG, "project": 3}).get_json()
    first = answer["results"][0]
    assert first["result"] == [] and first["display"]["shown"] is False
    assert "drawing from scratch" in first["display"]["note"] and first["expected_seconds_saved"] == 0.0
    setup = {"project": 3, "schema": CONFIG, "extra_params": {"uncertain_threshold": 0.05, "certain_threshold": 0.9}}
    assert client.post("/setup", json=setup).status_code == 200
    again = client.post("/predict", json={"tasks": [task], "project": 3}).get_json()["results"][0]
    assert again["display"] == {"threshold": 0.05, "certain": 0.9, "calibrated": False}
    assert len(again["result"]) >= 1  # the trained model finds something above 0.05 on a shapes canvas


def test_each_version_calibrates_its_display_on_held_out_images(backend, project, monkeypatch):  # noqa: F811
    pushed = []
    monkeypatch.setattr(FakeProject, "push_predictions", lambda self, items, version, chunk=5000: pushed.extend(items))
    client, ext = backend(calibration_min_images=2, train_epochs=2)
    job = train(client, ext)
    assert job.state == "done", job.error
    metrics = read_version(ext["store"].active_version(1).path).metrics
    about = metrics["calibration"]
    assert about["images"] == 2 and "7 s per box drawn" in about["cost_model"]
    display = Display.from_dict(metrics["display"])
    assert display.calibrated and display.threshold > 0
    # Shown only when it beats drawing from scratch on the held-out images.
    assert display.show == (about["seconds_shown"] < about["seconds_from_scratch"])
    assert len(pushed) == 12 and all(isinstance(item.seconds_saved, float) for item in pushed)
    if not display.show:
        assert all(item.regions == [] for item in pushed)
    served = ext["models"].for_project(1)
    assert served.display is not None and served.display.threshold == display.threshold
    task = {"id": 20, "data": {"image": FakeProject.tasks_list[19]["data"]["image"]}}
    answer = client.post("/predict", json={"tasks": [task], "label_config": CONFIG, "project": 1}).get_json()
    assert answer["results"][0]["display"]["calibrated"] is True
