import pytest
import torch
from PIL import Image

from al_core.datasets import SHAPE_CLASSES
from al_core.detectors import DETECTORS, Detector


def test_cpu_preset_reports_what_scorers_need(untrained_detector):
    images = [Image.new("RGB", (128, 128), (120, 120, 120)), Image.new("RGB", (200, 90), (10, 200, 30))]
    first, second = untrained_detector.predict(images)
    assert second.image_size == (200, 90)
    assert first.probs_kind == "sigmoid"
    assert first.candidate_scores.numel() == 100
    assert torch.all(first.candidate_scores[:-1] >= first.candidate_scores[1:])
    assert first.image_features is not None and first.image_features.ndim == 1
    for det in (first, second):
        assert det.class_probs.shape == (len(det), len(SHAPE_CLASSES) + 1)
        assert det.labels.min().item() >= 0 if len(det) else True
        assert det.boxes.shape == (len(det), 4)


def test_class_probs_belong_to_each_kept_box(untrained_detector):
    model = untrained_detector.model
    old = model.score_thresh
    model.score_thresh = 0.0  # keep many boxes of an untrained head
    try:
        [det] = untrained_detector.predict([Image.new("RGB", (128, 128), (200, 30, 30))])
    finally:
        model.score_thresh = old
    assert len(det) > 10
    # The box's score is the probability of its own label (label i is column i + 1).
    own = det.class_probs[torch.arange(len(det)), det.labels + 1]
    assert torch.allclose(own, det.scores)


def test_checkpoint_round_trip_predicts_the_same(untrained_detector, tmp_path):
    path = tmp_path / "model.pt"
    untrained_detector.save(path, "v-test")
    loaded = Detector.load(path)
    assert loaded.version.name == "v-test" and loaded.class_names == SHAPE_CLASSES
    image = Image.new("RGB", (128, 128), (50, 60, 70))
    [a], [b] = untrained_detector.predict([image]), loaded.predict([image])
    assert torch.allclose(a.candidate_scores, b.candidate_scores, atol=1e-6)


def test_broken_and_foreign_checkpoints_are_refused(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        Detector.load(broken)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="not a checkpoint of this backend"):
        Detector.load(foreign)


def test_unknown_detector_and_no_classes():
    with pytest.raises(ValueError, match="unknown detector"):
        Detector.create("yolo9000", ["a"])
    with pytest.raises(ValueError, match="at least one class"):
        Detector.create("cpu_preset", [])


@pytest.mark.parametrize("name", sorted(set(DETECTORS) - {"cpu_preset"}))
def test_every_registry_detector_builds_and_predicts(name):
    detector = Detector.create(name, ["car", "person"], pretrained="none", image_size=128)
    [det] = detector.predict([Image.new("RGB", (160, 120), (90, 90, 90))])
    assert det.image_size == (160, 120)
    assert det.boxes.shape[1] == 4 and det.labels.dtype == torch.int64
    assert det.probs_kind == DETECTORS[name].probs_kind
    if det.class_probs is not None:
        assert det.class_probs.shape[1] == 3
