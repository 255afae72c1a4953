import pytest
import torch
from PIL import Image
from torchvision.ops import MultiScaleRoIAlign

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


def test_checkpoint_round_trip_predicts_the_same(tmp_path):
    untrained_detector = Detector.create("cpu_preset", SHAPE_CLASSES)
    path = tmp_path / "model.pt"
    untrained_detector.save(path, "v-test")
    assert untrained_detector.version.name == "v-test" and untrained_detector.version.checkpoint == str(path)
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


def _keep_every_box(model):
    for owner in (model, getattr(model, "roi_heads", None)):
        if owner is not None and hasattr(owner, "score_thresh"):
            owner.score_thresh = 0.0


@pytest.fixture(scope="module")
def registry_detectors():
    torch.manual_seed(0)
    built = {}
    for name in DETECTORS:
        has_fpn = name != "ssdlite320_mobilenet_v3_large"
        detector = Detector.create(name, ["car", "person"], pretrained="none", image_size=128, loss_head=has_fpn)
        _keep_every_box(detector.model)
        built[name] = detector
    return built


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_registry_detector_reports_what_scorers_need(registry_detectors, name):
    detector = registry_detectors[name]
    images = [Image.new("RGB", (160, 120), (90, 90, 90)), Image.effect_noise((128, 128), 80).convert("RGB")]
    detections = detector.predict(images, box_features=True)
    assert [d.image_size for d in detections] == [(160, 120), (128, 128)]
    for det in detections:
        n = len(det)
        assert n > 0, "an untrained head with no score threshold still keeps boxes"
        assert det.boxes.shape == (n, 4) and det.labels.dtype == torch.int64 and det.labels.max() < 2
        assert det.probs_kind == DETECTORS[name].probs_kind
        assert det.class_probs.shape == (n, 3)  # background slot + 2 classes
        if det.probs_kind == "softmax":
            assert torch.allclose(det.class_probs.sum(1), torch.ones(n), atol=1e-5)
        # Each box's score is its own label's probability: the probe found the right source.
        assert torch.allclose(det.class_probs[torch.arange(n), det.labels + 1], det.scores, atol=1e-6)
        assert det.box_features.shape[0] == n and det.box_features.ndim == 2
        assert det.image_features.ndim == 1 and det.image_features.numel() > 0
        assert 0 < det.candidate_scores.numel() <= 100
        assert torch.isfinite(det.box_features).all()
        if name == "ssdlite320_mobilenet_v3_large":
            assert det.predicted_loss is None
        else:
            assert isinstance(det.predicted_loss, float)


def test_loss_head_needs_an_fpn():
    with pytest.raises(ValueError, match="FPN"):
        Detector.create("ssdlite320_mobilenet_v3_large", ["a"], pretrained="none", loss_head=True)


def test_box_features_are_pooled_where_the_model_saw_the_box(registry_detectors):
    """Boxes come back in original pixels; their features must be pooled at the resized place."""
    detector = registry_detectors["fcos_resnet50_fpn"]  # resizes 256 px images to 128
    [det] = detector.predict([Image.effect_noise((256, 256), 80).convert("RGB")], box_features=True)
    maps = detector.features
    pooler = MultiScaleRoIAlign(list(maps), output_size=1, sampling_ratio=2)
    expected = pooler(maps, [det.boxes[:5] * 0.5], [(128, 128)]).flatten(1)
    assert torch.allclose(det.box_features[:5], expected, atol=1e-5)
