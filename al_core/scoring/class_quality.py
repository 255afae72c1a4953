"""How well each class is learned, for PPAL's difficulty-calibrated weights (DCUS, CVPR 2024).

q_c is the mean of p^0.6 * IoU^0.4 over the positives of class c: for each ground-truth box,
the best-overlapping prediction of its class, p its score (0 when there is none). PPAL keeps an
EMA (momentum 0.99) of it, updated every training iteration, which tracks this mean; here it
is computed directly on the labeled images after each training run. A class the model has not
learned has q_c = 0 and weight 1 + u = 1.2; a perfectly learned one weight 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

from ..types import Detections, LabeledImage

ALPHA, U = 0.3, 0.2


def difficulty_weights(quality: torch.Tensor, alpha: float = ALPHA, u: float = U) -> torch.Tensor:
    """w_c = 1 + alpha * u * ln(b * (1 - q_c) + 1), b = e^(1/alpha) - 1; w in [1, 1 + u]."""
    b = math.exp(1.0 / alpha) - 1.0
    return 1.0 + alpha * u * torch.log(b * (1.0 - quality.clamp(0, 1)) + 1.0)


def class_quality(detections: Sequence[Detections], truths: Sequence[LabeledImage], num_classes: int) -> torch.Tensor:
    """(C,) mean p^0.6 * IoU^0.4 over each class's ground-truth boxes (0 for unseen classes)."""
    total, count = torch.zeros(num_classes), torch.zeros(num_classes)
    for det, truth in zip(detections, truths, strict=True):
        for box, label in zip(truth.boxes, truth.labels.tolist(), strict=True):
            same = det.labels == label
            if same.any():
                ious = box_iou(box[None], det.boxes[same])[0]
                best = int(ious.argmax())
                total[label] += float(det.scores[same][best] ** 0.6 * ious[best] ** 0.4)
            count[label] += 1
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros(num_classes))
