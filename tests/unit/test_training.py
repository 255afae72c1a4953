from PIL import Image
from torchvision.ops import box_iou

from al_core.detectors import Detector


def test_trained_preset_finds_the_shapes(trained_checkpoint, shapes):
    """Every test object found with IoU > 0.5 and the right label, at 90% or more."""
    detector = Detector.load(trained_checkpoint)
    samples = shapes["test"]
    detections = detector.predict([Image.open(s.path).convert("RGB") for s in samples])
    found = total = 0
    for sample, det in zip(samples, detections):
        det = det.above(0.3)
        for box, label in zip(sample.boxes, sample.labels):
            total += 1
            if len(det):
                iou = box_iou(box[None], det.boxes)[0]
                best = int(iou.argmax())
                found += int(iou[best] > 0.5 and det.labels[best] == label)
    assert total > 10
    assert found / total >= 0.9
