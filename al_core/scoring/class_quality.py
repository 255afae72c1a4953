"""How well each class is learned, for PPAL's difficulty-calibrated weights (DCUS, CVPR 2024).

q_c is a running mean (EMA, momentum 0.99) of p^0.6 * IoU^0.4 over the positives of class c:
for each ground-truth box, the best-overlapping prediction of its class, p its score. A class
the model has not learned has q_c = 0 and weight 1 + u = 1.2; a perfectly learned one weight 1.
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


class ClassQuality:
    def __init__(self, num_classes: int, momentum: float = 0.99):
        self.momentum = momentum
        self.quality = torch.zeros(num_classes)

    def update(self, detections: Sequence[Detections], truths: Sequence[LabeledImage]) -> torch.Tensor:
        """Fold one evaluation of the labeled images into the running estimate."""
        for det, truth in zip(detections, truths, strict=True):
            for box, label in zip(truth.boxes, truth.labels.tolist(), strict=True):
                same = det.labels == label
                quality = 0.0
                if same.any():
                    ious = box_iou(box[None], det.boxes[same])[0]
                    best = int(ious.argmax())
                    quality = float(det.scores[same][best] ** 0.6 * ious[best] ** 0.4)
                m = self.momentum
                self.quality[label] = m * self.quality[label] + (1 - m) * quality
        return self.quality
