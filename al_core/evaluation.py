"""COCO mAP of a detector on labeled images, computed by pycocotools."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .detectors import Detector
from .images import load_rgb
from .types import LabeledImage


def evaluate(detector: Detector, samples: Sequence[LabeledImage], batch_size: int = 8) -> dict:
    """{"map": AP@[.5:.95], "map50": AP@.5, "map75": AP@.75, "map50_per_class": [AP@.5 of each
    class, None where ``samples`` hold none of it]} over ``samples`` (all of the detector's boxes)."""
    images, annotations, results = [], [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        pictures = [load_rgb(s.path) for s in chunk]
        for offset, (sample, picture, det) in enumerate(zip(chunk, pictures, detector.predict(pictures), strict=True)):
            image_id = start + offset + 1
            images.append({"id": image_id, "width": picture.width, "height": picture.height})
            for box, label in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                     "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0}
                )  # fmt: skip
            for box, label, score in zip(det.boxes.tolist(), det.labels.tolist(), det.scores.tolist(), strict=True):
                results.append(
                    {"image_id": image_id, "category_id": label + 1, "score": score,
                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
                )  # fmt: skip
    nothing = {"map": 0.0, "map50": 0.0, "map75": 0.0, "map50_per_class": _present(annotations, detector)}
    if not annotations:
        return nothing
    truth = COCO()
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(detector.class_names)]
    truth.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth.createIndex()
        if not results:
            return nothing
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [max(float(value), 0.0) for value in evaluation.stats[:3]]  # pycocotools: -1 when undefined
    return {"map": stats[0], "map50": stats[1], "map75": stats[2], "map50_per_class": _ap50_per_class(evaluation)}


def _present(annotations: list[dict], detector: Detector) -> list[float | None]:
    """0.0 for each class the truth holds, None for the others (no AP is defined for them)."""
    present = {a["category_id"] for a in annotations}
    return [0.0 if i + 1 in present else None for i in range(len(detector.class_names))]


def _ap50_per_class(evaluation: COCOeval) -> list[float | None]:
    """AP@.5 of each category from pycocotools' precision table (IoU 0.5, all areas, 100
    detections), the mean over the recall points that are defined; None where it has no truth."""
    precision = evaluation.eval["precision"][0, :, :, 0, -1]  # [recall, class]
    per_class = []
    for column in precision.T:
        defined = column[column > -1]
        per_class.append(float(defined.mean()) if defined.size else None)
    return per_class
