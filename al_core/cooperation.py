"""Human-machine cooperation beyond image ranking (ASM, Wang et al. 2018; CEAL, Wang et al. 2016).

- Self-labeling (CEAL): unlabeled images whose shown boxes are all certain become pseudo-labels
  (their certain boxes), used in training with a lower loss weight. They are chosen afresh by
  each cycle's model (a pseudo-label is never frozen) and never count as human labels. Only a
  certain threshold that was measured (a calibrated display) or set on purpose (a project's
  thresholds) is trusted with them: at the fixed default, an uncalibrated first model chose
  64-100 images at 60-82% box precision, and the next model lost 4-9 mAP points (BENCHMARKS.md,
  "CEAL self-labeling with a fitted model").
- Box-level cooperation (ASM): a person reviews only the uncertain boxes of a pre-annotated
  image, adds what the model missed, and accepts the certain boxes unseen. ``oracle_edits``
  counts what that costs against the true boxes, and what label the image then carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

from .types import Certainty, Detections, LabeledImage

MATCH_IOU = 0.5  # a predicted box is the object's when IoU >= this and the class agrees
TIGHT_IOU = 0.8  # a matched box looser than this needs its corners dragged


def pseudo_labels(detections: Mapping[str, Detections], certainty: Certainty, max_images: int) -> list[LabeledImage]:
    """The images (keys of ``detections``) whose shown boxes are all certain, at least one,
    surest first (by their least sure box), at most ``max_images``; labeled with those boxes.
    No image when nothing is certain (``Certainty.is_certain``: at 1.0 not even a saturated score)."""
    candidates = []
    for key, det in detections.items():
        shown = det.above(certainty.uncertain)
        if len(shown) and bool(certainty.is_certain(shown.scores).all()):
            candidates.append((-float(shown.scores.min()), key, shown))
    candidates.sort(key=lambda item: item[:2])
    return [LabeledImage(key, det.boxes.clone(), det.labels.clone()) for _, key, det in candidates[:max_images]]


def correct_boxes(boxes: torch.Tensor, labels: torch.Tensor, truth: LabeledImage) -> int:
    """How many of these boxes are a true object's, one to one: IoU >= MATCH_IOU, same class."""
    return sum(int(labels[p]) == int(truth.labels[t]) for p, t, _ in match_boxes(boxes, truth.boxes))


@dataclass(frozen=True)
class BoxEdits:
    """What a person does to turn a pre-annotation into the label: boxes added (missed by the
    model), removed (wrong), corrected (right object, wrong class or loose box), and checked
    without change. ``from_scratch`` is the number of boxes drawn without any pre-annotation."""

    added: int
    removed: int
    corrected: int
    checked: int
    from_scratch: int

    @property
    def edits(self) -> int:
        return self.added + self.removed + self.corrected


def match_boxes(pred: torch.Tensor, truth: torch.Tensor) -> list[tuple[int, int, float]]:
    """Greedy one-to-one (prediction, truth, IoU) pairs with IoU >= MATCH_IOU, best first."""
    if not len(pred) or not len(truth):
        return []
    iou = box_iou(pred, truth)
    pairs, used_p, used_t = [], set(), set()
    for flat in torch.argsort(iou.flatten(), descending=True).tolist():
        p, t = divmod(flat, iou.shape[1])
        value = float(iou[p, t])
        if value < MATCH_IOU:
            break
        if p not in used_p and t not in used_t:
            pairs.append((p, t, value))
            used_p.add(p)
            used_t.add(t)
    return pairs


def oracle_edits(
    detections: Detections, truth: LabeledImage, certainty: Certainty, cooperative: bool
) -> tuple[BoxEdits, LabeledImage]:
    """(the edits, the label the image ends up with) when a person labels it from the shown
    pre-annotation. ``cooperative``: certain boxes are accepted unseen (ASM), so a wrong certain
    box stays in the label, and a missed object is still added. Otherwise every shown box is
    reviewed, and the label equals the truth."""
    shown = detections.above(certainty.uncertain)
    certain = certainty.is_certain(shown.scores)
    pairs = match_boxes(shown.boxes, truth.boxes)
    matched_truth = {t for _, t, _ in pairs}
    by_pred = {p: (t, iou) for p, t, iou in pairs}
    added = len(truth.labels) - len(matched_truth)
    removed = corrected = checked = 0
    keep_boxes, keep_labels = [], []
    for p in range(len(shown)):
        if cooperative and bool(certain[p]):
            keep_boxes.append(shown.boxes[p])  # accepted unseen, right or wrong
            keep_labels.append(shown.labels[p])
            continue
        if p not in by_pred:
            removed += 1
            continue
        t, iou = by_pred[p]
        if int(shown.labels[p]) != int(truth.labels[t]) or iou < TIGHT_IOU:
            corrected += 1
        else:
            checked += 1
        keep_boxes.append(truth.boxes[t])
        keep_labels.append(truth.labels[t])
    # the objects nobody's box covered, drawn by the person
    for t in range(len(truth.labels)):
        if t not in matched_truth:
            keep_boxes.append(truth.boxes[t])
            keep_labels.append(truth.labels[t])
    # A certain box matched to an object also covers it; one that matched nothing is noise.
    boxes = torch.stack(keep_boxes) if keep_boxes else torch.zeros(0, 4)
    labels = torch.stack([torch.as_tensor(label) for label in keep_labels]) if keep_labels else torch.zeros(0)
    label = LabeledImage(truth.path, boxes.float().reshape(-1, 4), labels.long())
    edits = BoxEdits(added, removed, corrected, checked, from_scratch=len(truth.labels))
    return edits, (label if cooperative else truth)
