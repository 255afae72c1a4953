from PIL import Image
from torchvision.ops import box_iou

from al_core.detectors import Detector


def test_trained_preset_finds_the_shapes(trained_checkpoint, shapes):
    """The test objects found with IoU > 0.5 at 80% or more, and with the right label too at 75%
    or more (an untrained model finds none). Margins, not the 88-100% a run gives: the test split
    holds about 26 objects, each one is 4% of the rate, and the weights differ between CPUs."""
    detector = Detector.load(trained_checkpoint)
    samples = shapes["test"]
    detections = detector.predict([Image.open(s.path).convert("RGB") for s in samples])
    located = labeled = total = 0
    for sample, det in zip(samples, detections):
        det = det.above(0.3)
        for box, label in zip(sample.boxes, sample.labels):
            total += 1
            if len(det):
                iou = box_iou(box[None], det.boxes)[0]
                best = int(iou.argmax())
                located += int(iou[best] > 0.5)
                labeled += int(iou[best] > 0.5 and det.labels[best] == label)
    assert total > 10
    assert located / total >= 0.8
    assert labeled / total >= 0.75


def test_a_box_without_area_is_left_out_of_the_training_target(tmp_path):
    """A model's own label (CEAL) can hold a box of zero height; torchvision's detectors refuse
    it, so the dataset drops boxes under a pixel wide or high and keeps the rest with their labels."""
    import torch

    from al_core.training import DetectionDataset
    from al_core.types import LabeledImage

    path = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(path)
    boxes = torch.tensor([[0.0, 16.0, 1.4, 16.0], [2.0, 2.0, 20.0, 12.0], [5.0, 5.0, 5.5, 9.0]])
    _, target = DetectionDataset([LabeledImage(str(path), boxes, torch.tensor([0, 1, 2]))])[0]
    assert target["boxes"].tolist() == [[2.0, 2.0, 20.0, 12.0]]
    assert target["labels"].tolist() == [2]  # past the background slot
