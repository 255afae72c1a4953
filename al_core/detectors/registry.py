"""Detector registry: a name -> how to build that torchvision model.

Every model reserves label 0 for background (torchvision's convention), so a detector for
``class_names`` has ``len(class_names) + 1`` classes and label ``i`` means ``class_names[i - 1]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torchvision
from torch import nn

from .cpu_preset import build_cpu_preset
from .probing import probe

Pretrained = Literal["none", "backbone", "coco"]
ProbsKind = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    probs_kind: ProbsKind  # softmax over classes + background, or one sigmoid per class
    default_image_size: int
    build: Callable[[int, int, Pretrained], nn.Module]  # (num_classes, image_size, pretrained)
    # Parameter-name prefixes of the final prediction layers (influence uses their gradients).
    last_layers: tuple[str, ...]


class PretrainedWeightsUnavailable(RuntimeError):
    """torchvision could not find or download the requested weights."""


def _torchvision_builder(model_name: str):
    def build(num_classes: int, image_size: int, pretrained: Pretrained) -> nn.Module:
        kwargs: dict = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if pretrained == "coco":
            kwargs.update(weights="DEFAULT", num_classes=None)
        elif pretrained == "backbone":
            kwargs["weights_backbone"] = "DEFAULT"
        if model_name.startswith(("fasterrcnn", "retinanet", "fcos")):
            kwargs.update(min_size=image_size, max_size=int(image_size * 1333 / 800))
        return probe(torchvision.models.get_model(model_name, **kwargs))

    return build


def _cpu_preset(num_classes: int, image_size: int, pretrained: Pretrained) -> nn.Module:
    if pretrained == "coco":
        raise ValueError("cpu_preset has no COCO weights; use pretrained 'backbone' or 'none'")
    return build_cpu_preset(num_classes, image_size, pretrained_backbone=pretrained == "backbone")


DENSE_LAST = ("head.classification_head.cls_logits", "head.regression_head.bbox_reg")
RCNN_LAST = ("roi_heads.box_predictor",)
SSD_LAST = ("head.classification_head", "head.regression_head")

DETECTORS: dict[str, DetectorSpec] = {
    spec.name: spec
    for spec in [
        DetectorSpec("cpu_preset", "sigmoid", 128, _cpu_preset, DENSE_LAST),
        DetectorSpec(
            "fasterrcnn_resnet50_fpn", "softmax", 800, _torchvision_builder("fasterrcnn_resnet50_fpn"), RCNN_LAST
        ),
        DetectorSpec(
            "fasterrcnn_mobilenet_v3_large_fpn",
            "softmax",
            800,
            _torchvision_builder("fasterrcnn_mobilenet_v3_large_fpn"),
            RCNN_LAST,
        ),
        DetectorSpec(
            "retinanet_resnet50_fpn", "sigmoid", 800, _torchvision_builder("retinanet_resnet50_fpn"), DENSE_LAST
        ),
        DetectorSpec("fcos_resnet50_fpn", "sigmoid", 800, _torchvision_builder("fcos_resnet50_fpn"), DENSE_LAST),
        DetectorSpec(
            "ssdlite320_mobilenet_v3_large",
            "softmax",
            320,
            _torchvision_builder("ssdlite320_mobilenet_v3_large"),
            SSD_LAST,
        ),
    ]
}


def coco_class_names(name: str) -> tuple[str, ...]:
    """The COCO categories of a registry model's pretrained weights, background slot removed."""
    categories = torchvision.models.get_model_weights(name).DEFAULT.meta["categories"]
    return tuple(categories[1:])


def build_model(name: str, class_names: tuple[str, ...], image_size: int, pretrained: Pretrained) -> nn.Module:
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}")
    try:
        return DETECTORS[name].build(len(class_names) + 1, image_size, pretrained)
    except (OSError, RuntimeError) as error:  # urllib errors are OSErrors
        if pretrained == "none":
            raise
        raise PretrainedWeightsUnavailable(
            f"could not load {pretrained} weights for {name}: {error}. Offline, place torchvision's weight "
            "file in $TORCH_HOME/hub/checkpoints/ (see README), or set MODEL_PRETRAINED=none."
        ) from error
