"""Selectable box-regression losses for the dense heads (FCOS, RetinaNet), for one training run.

- ``giou``, ``diou``, ``ciou``: torchvision's GIoU (Rezatofighi et al. 2019), DIoU and CIoU
  (Zheng et al. 2020) losses.
- ``eiou``: EIoU (Zhang et al., "Focal and Efficient IOU Loss for Accurate Bounding Box
  Regression", 2022): DIoU plus the width and height gaps, each over the enclosing box's side.
- ``emphasis`` (gamma > 0): HUALE's Emphasis loss (IEEE BigData 2023) as we read its name; the
  paper's formula is not in our references. Each foreground location's box loss is weighted by
  (1 - IoU)^gamma, normalised to mean 1, so training leans on the boxes the model localises worst
  without changing the loss's scale. gamma = 0 is the plain loss.

``default`` keeps the head's own loss (GIoU for FCOS, smooth L1 for RetinaNet). The losses are
installed on the head only while ``training_losses`` is active; a saved model carries none of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import box_iou, complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

BOX_LOSSES = ("default", "giou", "diou", "ciou", "eiou")


def eiou_loss(boxes: Tensor, targets: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-box EIoU loss of (N, 4) xyxy boxes against their targets."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    target_width, target_height = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    enclosing_width = torch.max(boxes[:, 2], targets[:, 2]) - torch.min(boxes[:, 0], targets[:, 0])
    enclosing_height = torch.max(boxes[:, 3], targets[:, 3]) - torch.min(boxes[:, 1], targets[:, 1])
    diou = distance_box_iou_loss(boxes, targets, reduction="none", eps=eps)
    return (
        diou
        + (width - target_width) ** 2 / (enclosing_width**2 + eps)
        + (height - target_height) ** 2 / (enclosing_height**2 + eps)
    )


_LOSSES = {
    "giou": lambda b, t: generalized_box_iou_loss(b, t, reduction="none"),
    "diou": lambda b, t: distance_box_iou_loss(b, t, reduction="none"),
    "ciou": lambda b, t: complete_box_iou_loss(b, t, reduction="none"),
    "eiou": eiou_loss,
}


def emphasis_weights(boxes: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """(1 - IoU)^gamma per box, normalised to mean 1 and detached (no gradient through weights)."""
    if gamma == 0 or len(boxes) == 0:
        return boxes.new_ones(len(boxes))
    iou = box_iou(boxes.detach().float(), targets.float()).diagonal()
    weights = (1 - iou).clamp(min=0) ** gamma
    return weights / weights.mean().clamp(min=1e-7)


def box_loss_sum(name: str, gamma: float, boxes: Tensor, targets: Tensor) -> Tensor:
    """The summed loss ``name`` over matched (box, target) pairs, each weighted by its emphasis.

    Predicted boxes get a side of at least 1e-3 px: FCOS's distances pass through a ReLU, so an
    untrained head predicts empty boxes, where CIoU's aspect term is 0/0."""
    boxes, targets = boxes.float(), targets.float()  # IoU terms in half precision lose too much
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1e-3)], dim=1)
    return (emphasis_weights(boxes, targets, gamma) * _LOSSES[name](boxes, targets)).sum()


def check(model: nn.Module, name: str, gamma: float) -> None:
    if name not in BOX_LOSSES:
        raise ValueError(f"unknown box loss {name!r}; choose one of {list(BOX_LOSSES)}")
    if gamma < 0:
        raise ValueError("the emphasis gamma must be >= 0")
    if (name != "default" or gamma) and not isinstance(getattr(model, "head", None), (FCOSHead, RetinaNetHead)):
        raise ValueError(
            f"box_loss {name!r} and emphasis need a dense head (FCOS, RetinaNet, the CPU preset); "
            f"{type(model).__name__} computes its box loss inside torchvision"
        )


@contextmanager
def training_losses(model: nn.Module, name: str = "default", gamma: float = 0.0) -> Iterator[None]:
    """Train ``model`` with box loss ``name`` and emphasis ``gamma`` inside the block."""
    check(model, name, gamma)
    if name == "default" and gamma == 0:
        yield
        return
    head = model.head
    if isinstance(head, FCOSHead):
        owner, replacement = head, _fcos_loss(head, name, gamma)
    else:
        owner, replacement = head.regression_head, _retinanet_loss(head.regression_head, name, gamma)
    owner.compute_loss = replacement  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        del owner.compute_loss


def _fcos_loss(head: FCOSHead, name: str, gamma: float):
    original = type(head).compute_loss.__get__(head)
    chosen = "giou" if name == "default" else name  # FCOS's own loss is GIoU

    def compute_loss(targets, head_outputs, anchors, matched_idxs) -> dict[str, Tensor]:
        losses = original(targets, head_outputs, anchors, matched_idxs)
        foreground = torch.stack([m >= 0 for m in matched_idxs])
        matched = torch.stack(
            [t["boxes"][m.clip(min=0)] if len(t["boxes"]) else t["boxes"].new_zeros((len(m), 4))
             for t, m in zip(targets, matched_idxs, strict=True)]
        )  # fmt: skip
        boxes = head.box_coder.decode(head_outputs["bbox_regression"], torch.stack(anchors))
        total = box_loss_sum(chosen, gamma, boxes[foreground], matched[foreground])
        losses["bbox_regression"] = total / max(1, int(foreground.sum()))
        return losses

    return compute_loss


def _retinanet_loss(regression_head, name: str, gamma: float):
    chosen = "giou" if name == "default" else name  # emphasis needs an IoU loss to weight

    def compute_loss(targets, head_outputs, anchors, matched_idxs) -> Tensor:
        losses = []
        for target, regression, anchors_of_image, matched in zip(
            targets, head_outputs["bbox_regression"], anchors, matched_idxs, strict=True
        ):
            foreground = torch.where(matched >= 0)[0]
            boxes = regression_head.box_coder.decode_single(regression[foreground], anchors_of_image[foreground])
            total = box_loss_sum(chosen, gamma, boxes, target["boxes"][matched[foreground]])
            losses.append(total / max(1, foreground.numel()))
        return sum(losses) / max(1, len(targets))

    return compute_loss
