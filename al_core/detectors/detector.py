"""A loaded detector: built once, shared, turning images into ``Detections``."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.transforms.functional import pil_to_tensor

from ..device import flush_denormals, resolve_device
from ..types import Detections, ModelVersion
from .loss_head import attach_loss_head
from .registry import DETECTORS, Pretrained, build_model, coco_class_names

CHECKPOINT_FORMAT = 1


def to_tensor(image: Image.Image) -> torch.Tensor:
    return pil_to_tensor(image).float() / 255.0


class Detector:
    """One torchvision detector plus its class names and version.

    A forward hook on the backbone keeps the last batch's feature maps; from them come each
    image's pooled features, each box's RoI-pooled features and, with a ``loss_head``, the
    predicted loss. ``predict`` is thread-safe: concurrent callers take turns on the model.
    """

    def __init__(self, model: nn.Module, version: ModelVersion, image_size: int, device: torch.device):
        self.model = model.to(device).eval()
        self.version = version
        self.image_size = image_size
        self.device = device
        self.probs_kind = DETECTORS[version.detector].probs_kind
        self.lock = threading.Lock()
        # The boxes people are shown, as this version's calibration chose them (al_core.display);
        # None until a trained version's metrics provide it.
        self.display = None
        self.features: dict[str, torch.Tensor] = {}
        self.model.backbone.register_forward_hook(self._keep_features)
        self._resized_sizes: list[tuple[int, int]] = []
        self.model.transform.register_forward_hook(self._keep_resized_sizes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.version.class_names

    @property
    def has_loss_head(self) -> bool:
        return hasattr(self.model, "loss_head")

    @classmethod
    def create(
        cls,
        name: str,
        class_names: Sequence[str],
        pretrained: Pretrained = "backbone",
        image_size: int | None = None,
        device: str = "auto",
        loss_head: bool = False,
    ) -> Detector:
        """A fresh detector; with ``pretrained='coco'`` the classes are COCO's."""
        if pretrained not in ("none", "backbone", "coco"):
            raise ValueError(f"pretrained must be 'none', 'backbone' or 'coco', got {pretrained!r}")
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}")
        if pretrained == "coco":
            class_names = coco_class_names(name)
        if not class_names:
            raise ValueError("a detector needs at least one class name")
        size = image_size or DETECTORS[name].default_image_size
        model = build_model(name, tuple(class_names), size, pretrained)
        if loss_head:
            attach_loss_head(model)
        suffix = "coco" if pretrained == "coco" else f"{pretrained}-untrained"
        version = ModelVersion(f"{name}-{suffix}", name, tuple(class_names), trained=pretrained == "coco")
        return cls(model, version, size, resolve_device(device))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Detector:
        """A detector saved by ``save``; fails with a clear error on a foreign or broken file."""
        path = Path(path)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many kinds for a broken file
            raise ValueError(f"cannot read checkpoint {path}: {error}") from error
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a checkpoint of this backend (format {CHECKPOINT_FORMAT})")
        class_names = tuple(checkpoint["class_names"])
        model = build_model(checkpoint["detector"], class_names, checkpoint["image_size"], "none")
        if checkpoint.get("loss_head"):
            attach_loss_head(model)
        model.load_state_dict(checkpoint["state_dict"])
        version = ModelVersion(
            checkpoint["version"],
            checkpoint["detector"],
            class_names,
            str(path),
            trained=checkpoint.get("trained", True),
        )
        return cls(model, version, checkpoint["image_size"], resolve_device(device))

    def save(self, path: str | Path, version_name: str) -> None:
        """Write weights, classes and architecture to ``path`` (via a temp file, then rename);
        from then on this detector is that version."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "detector": self.version.detector,
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "version": version_name,
            "trained": self.version.trained,
            "loss_head": self.has_loss_head,
            "state_dict": self.model.state_dict(),
        }
        torch.save(checkpoint, tmp)
        tmp.replace(path)
        self.version = dataclasses.replace(self.version, name=version_name, checkpoint=str(path))

    def mark_trained(self) -> None:
        self.version = dataclasses.replace(self.version, trained=True)

    def _keep_features(self, module, inputs, output) -> None:
        self.features = output if isinstance(output, dict) else {"0": output}

    def _keep_resized_sizes(self, module, inputs, output) -> None:
        self._resized_sizes = list(output[0].image_sizes)

    def size_problem(self, width: int, height: int) -> str | None:
        """Why the model cannot take an image of this size, or None. torchvision scales the
        shorter side to ``min_size`` unless the longer would pass ``max_size``; a very elongated
        image's shorter side then shrinks to nothing and the forward pass fails."""
        transform = self.model.transform
        short, long = min(width, height), max(width, height)
        scale = min(transform.min_size[-1] / short, transform.max_size / long)
        if short * scale < 2:
            return f"the image is {width}x{height}: too elongated for the model (its shorter side would be under 2 px)"
        return None

    @torch.inference_mode()
    def predict(self, images: Sequence[Image.Image], box_features: bool = False) -> list[Detections]:
        """Detections for RGB images, in the given order, in one forward pass; with
        ``box_features``, each box's RoI-pooled features too (only diversity scorers use them)."""
        if not images:
            return []
        tensors = [to_tensor(image).to(self.device) for image in images]
        flush_denormals(self.device)
        with self.lock:
            self.model.eval()
            outputs = self.model(tensors)
            maps = list(self.features.values())
            pooled = torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
            predicted_loss = self.model.loss_head(maps).tolist() if self.has_loss_head else [None] * len(images)
            per_box = self._box_features(outputs, images) if box_features else [None] * len(images)
        return [
            self._to_detections(out, image, pooled[i], per_box[i], predicted_loss[i])
            for i, (out, image) in enumerate(zip(outputs, images, strict=True))
        ]

    def _box_features(self, outputs: list[dict], images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """(N, D) features of each image's boxes, pooled from the maps the model saw."""
        boxes = []
        for out, image, (height, width) in zip(outputs, images, self._resized_sizes, strict=True):
            scale = torch.tensor([width / image.width, height / image.height] * 2, device=out["boxes"].device)
            boxes.append(out["boxes"] * scale)
        maps = self.features
        if len({m.shape[1] for m in maps.values()}) == 1:
            pooler = MultiScaleRoIAlign(list(maps), output_size=1, sampling_ratio=2)
            pooled = pooler(maps, boxes, self._resized_sizes).flatten(1)
        else:  # SSD's maps differ in width: pool from the finest one
            finest = next(iter(maps.values()))
            stride = max(self._resized_sizes[0]) / max(finest.shape[-2:])
            pooled = roi_align(finest, boxes, output_size=1, spatial_scale=1 / stride, sampling_ratio=2).flatten(1)
        return list(pooled.split([len(b) for b in boxes]))

    def _to_detections(self, out: dict, image: Image.Image, pooled, box_features, predicted_loss) -> Detections:
        out = {key: value.detach().cpu() for key, value in out.items()}
        labels = out["labels"].long()
        keep = labels > 0  # label 0 is the background slot; some heads can still emit it
        return Detections(
            boxes=out["boxes"][keep].float(),
            labels=labels[keep] - 1,
            scores=out["scores"][keep].float(),
            image_size=image.size,
            class_probs=out["class_probs"][keep].float() if "class_probs" in out else None,
            probs_kind=self.probs_kind,
            candidate_scores=out.get("candidate_scores", torch.zeros(0)).float(),
            image_features=pooled.float().cpu(),
            box_features=None if box_features is None else box_features[keep.to(box_features.device)].float().cpu(),
            predicted_loss=predicted_loss,
        )
