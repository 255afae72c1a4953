"""Dense one-stage detectors (FCOS, RetinaNet) that also report what active learning needs.

torchvision's ``postprocess_detections`` keeps only each box's winning score. These subclasses
let torchvision do all of its post-processing, then recover each kept box's anchor from the
head outputs it was given, and attach that anchor's full per-class probability vector and the
image's top pre-NMS candidate scores. Boxes, labels and scores are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.ops import boxes as box_ops

NUM_CANDIDATES = 100


def _per_image(levels: list[Tensor], index: int) -> Tensor:
    return torch.cat([level[index] for level in levels])


class _DenseProbe:
    def _decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        raise NotImplementedError

    def _class_probs(self, head_outputs: dict[str, list[Tensor]], index: int) -> Tensor:
        """Per-anchor class probabilities, computed as the model computes its box scores."""
        raise NotImplementedError

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        detections = super().postprocess_detections(head_outputs, anchors, image_shapes)
        for index, det in enumerate(detections):
            probs = self._class_probs(head_outputs, index)  # (A, C)
            decoded = self._decode(_per_image(head_outputs["bbox_regression"], index), torch.cat(anchors[index]))
            decoded = box_ops.clip_boxes_to_image(decoded, image_shapes[index])
            # The kept box is the anchor whose decoded box and label score equal it exactly.
            box_gap = (det["boxes"][:, None, :] - decoded[None]).abs().sum(-1)
            score_gap = (probs[:, det["labels"]].T - det["scores"][:, None]).abs()
            anchor_index = (box_gap + score_gap).argmin(dim=1)
            det["class_probs"] = probs[anchor_index]
            flat = probs[:, 1:].flatten()  # index 0 is the background slot, never a real class
            det["candidate_scores"] = flat.topk(min(NUM_CANDIDATES, flat.numel())).values
        return detections


class ProbedFCOS(_DenseProbe, FCOS):
    """FCOS (Tian et al. 2019) whose detections carry class probabilities and candidates."""

    def _decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode(regression, anchors)

    def _class_probs(self, head_outputs, index):
        logits = _per_image(head_outputs["cls_logits"], index)
        centerness = _per_image(head_outputs["bbox_ctrness"], index)
        return torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centerness))


class ProbedRetinaNet(_DenseProbe, RetinaNet):
    """RetinaNet (Lin et al. 2017) whose detections carry class probabilities and candidates."""

    def _decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode_single(regression, anchors)

    def _class_probs(self, head_outputs, index):
        return torch.sigmoid(_per_image(head_outputs["cls_logits"], index))
