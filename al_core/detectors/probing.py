"""torchvision detectors that also report what active learning needs.

torchvision's post-processing keeps only each box's winning score. The subclasses here let
torchvision do all of its post-processing, then find each kept box's source (anchor or
proposal) among the head outputs it was given, by the box and score it produced, and attach:
- ``class_probs``: that source's full class-probability vector (column 0 = background slot);
- ``candidate_scores``: the image's top pre-NMS class scores, for images with no final box.
Boxes, labels and scores are unchanged. A model gets these by a class swap (same modules and
parameters, only post-processing reports more): see ``probe``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.ssd import SSD
from torchvision.ops import boxes as box_ops

NUM_CANDIDATES = 100


def _per_image(outputs: list[Tensor] | Tensor, index: int) -> Tensor:
    """One image's rows of a head output: per-level lists (FCOS, RetinaNet) or one tensor (SSD)."""
    if isinstance(outputs, Tensor):
        return outputs[index]
    return torch.cat([level[index] for level in outputs])


def source_of_each_box(det: dict[str, Tensor], probs: Tensor, decoded: Tensor) -> Tensor:
    """Index of the anchor/proposal each kept box came from.

    ``probs`` is (A, C); ``decoded`` is (A, 4), or (A, C, 4) for per-class box regression. The
    kept box is the source whose decoded box for that label and label score equal it exactly.
    """
    if decoded.dim() == 3:
        decoded = decoded[:, det["labels"]].transpose(0, 1)  # (M, A, 4)
    else:
        decoded = decoded[None]
    box_gap = (det["boxes"][:, None, :] - decoded).abs().sum(-1)
    score_gap = (probs[:, det["labels"]].T - det["scores"][:, None]).abs()
    return (box_gap + score_gap).argmin(dim=1)


def report(det: dict[str, Tensor], probs: Tensor, decoded: Tensor) -> None:
    det["class_probs"] = probs[source_of_each_box(det, probs, decoded)]
    flat = probs[:, 1:].flatten()  # column 0 is the background slot, never a real class
    det["candidate_scores"] = flat.topk(min(NUM_CANDIDATES, flat.numel())).values


class _DenseProbe:
    """For one-stage heads whose ``postprocess_detections`` returns the detection dicts."""

    def _decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode_single(regression, anchors)

    def _class_probs(self, head_outputs, index: int) -> Tensor:
        raise NotImplementedError

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        detections = super().postprocess_detections(head_outputs, anchors, image_shapes)
        for index, det in enumerate(detections):
            image_anchors = anchors[index] if isinstance(anchors[index], Tensor) else torch.cat(anchors[index])
            decoded = self._decode(_per_image(head_outputs["bbox_regression"], index), image_anchors)
            report(
                det, self._class_probs(head_outputs, index), box_ops.clip_boxes_to_image(decoded, image_shapes[index])
            )
        return detections


class ProbedFCOS(_DenseProbe, FCOS):
    """FCOS (Tian et al. 2019): score = sqrt(sigmoid(class logit) * sigmoid(centerness))."""

    def _decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode(regression, anchors)

    def _class_probs(self, head_outputs, index):
        logits = _per_image(head_outputs["cls_logits"], index)
        centerness = _per_image(head_outputs["bbox_ctrness"], index)
        return torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centerness))


class ProbedRetinaNet(_DenseProbe, RetinaNet):
    """RetinaNet (Lin et al. 2017): one sigmoid per class."""

    def _class_probs(self, head_outputs, index):
        return torch.sigmoid(_per_image(head_outputs["cls_logits"], index))


class ProbedSSD(_DenseProbe, SSD):
    """SSD / SSDlite (Liu et al. 2016): softmax over classes + background."""

    def _class_probs(self, head_outputs, index):
        return F.softmax(_per_image(head_outputs["cls_logits"], index), dim=-1)


class ProbedRoIHeads(RoIHeads):
    """Faster R-CNN's box head (Ren et al. 2015): softmax over classes + background per proposal.

    ``RoIHeads.forward`` builds its result dicts itself, so the extra outputs are kept from
    ``postprocess_detections`` and added to those dicts after ``forward``.
    """

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        boxes, scores, labels = super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        counts = [len(p) for p in proposals]
        probs = F.softmax(class_logits, -1).split(counts)
        decoded = self.box_coder.decode(box_regression, proposals).split(counts)
        self._reports = []
        for index in range(len(proposals)):
            det = {"boxes": boxes[index], "scores": scores[index], "labels": labels[index]}
            report(det, probs[index], box_ops.clip_boxes_to_image(decoded[index], image_shapes[index]))
            self._reports.append(det)
        return boxes, scores, labels

    def forward(self, features, proposals, image_shapes, targets=None):
        result, losses = super().forward(features, proposals, image_shapes, targets)
        if not self.training:
            for det, extra in zip(result, self._reports):
                det["class_probs"] = extra["class_probs"]
                det["candidate_scores"] = extra["candidate_scores"]
        return result, losses


PROBES = {FCOS: ProbedFCOS, RetinaNet: ProbedRetinaNet, SSD: ProbedSSD}


def probe(model: torch.nn.Module) -> torch.nn.Module:
    """Swap a torchvision detector (or its RoI heads) to the reporting subclass, in place."""
    if type(model) in PROBES:
        model.__class__ = PROBES[type(model)]
    if isinstance(getattr(model, "roi_heads", None), RoIHeads):
        model.roi_heads.__class__ = ProbedRoIHeads
    return model


def unprobe(model: torch.nn.Module) -> torch.nn.Module:
    """Back to torchvision's own classes, in place (benchmarks compare against these)."""
    plain = {probed: base for base, probed in PROBES.items()}
    if type(model) in plain:
        model.__class__ = plain[type(model)]
    if isinstance(getattr(model, "roi_heads", None), ProbedRoIHeads):
        model.roi_heads.__class__ = RoIHeads
    return model
