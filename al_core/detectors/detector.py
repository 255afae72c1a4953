"""A loaded detector: built once, shared, turning images into ``Detections``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

from ..device import resolve_device
from ..types import Detections, ModelVersion
from .registry import DETECTORS, Pretrained, build_model, coco_class_names

CHECKPOINT_FORMAT = 1


class Detector:
    """One torchvision detector plus its class names and version.

    ``predict`` is thread-safe: concurrent callers take turns on the model.
    """

    def __init__(self, model: nn.Module, version: ModelVersion, image_size: int, device: torch.device):
        self.model = model.to(device).eval()
        self.version = version
        self.image_size = image_size
        self.device = device
        self.probs_kind = DETECTORS[version.detector].probs_kind
        self._lock = threading.Lock()
        self._pooled: list[torch.Tensor] = []
        self.model.backbone.register_forward_hook(self._pool_backbone_features)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.version.class_names

    @classmethod
    def create(
        cls,
        name: str,
        class_names: Sequence[str],
        pretrained: Pretrained = "backbone",
        image_size: int | None = None,
        device: str = "auto",
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
        version = ModelVersion(name=f"{name}-{pretrained}-untrained", detector=name, class_names=tuple(class_names))
        if pretrained == "coco":
            version = ModelVersion(name=f"{name}-coco", detector=name, class_names=tuple(class_names))
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
        model.load_state_dict(checkpoint["state_dict"])
        version = ModelVersion(
            name=checkpoint["version"], detector=checkpoint["detector"], class_names=class_names, checkpoint=str(path)
        )
        return cls(model, version, checkpoint["image_size"], resolve_device(device))

    def save(self, path: str | Path, version_name: str) -> None:
        """Write weights, classes and architecture to ``path`` (via a temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "detector": self.version.detector,
                "class_names": list(self.class_names),
                "image_size": self.image_size,
                "version": version_name,
                "state_dict": self.model.state_dict(),
            },
            tmp,
        )
        tmp.replace(path)

    def _pool_backbone_features(self, module, inputs, output) -> None:
        maps = output.values() if isinstance(output, dict) else [output]
        self._pooled.append(torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1))

    @torch.inference_mode()
    def predict(self, images: Sequence[Image.Image]) -> list[Detections]:
        """Detections for RGB images, in the given order, in one forward pass."""
        if not images:
            return []
        tensors = [pil_to_tensor(image).to(self.device, torch.float32) / 255.0 for image in images]
        with self._lock:
            self._pooled.clear()
            self.model.eval()
            outputs = self.model(tensors)
            pooled = torch.cat(self._pooled) if self._pooled else None
        return [self._to_detections(out, image, pooled, i) for i, (out, image) in enumerate(zip(outputs, images))]

    def _to_detections(self, out: dict, image: Image.Image, pooled: torch.Tensor | None, index: int) -> Detections:
        out = {
            key: value.detach().float().cpu() if value.is_floating_point() else value.cpu()
            for key, value in out.items()
        }
        labels = out["labels"].long()
        # Label 0 is the background slot; some heads can still emit it.
        keep = labels > 0
        return Detections(
            boxes=out["boxes"][keep],
            labels=labels[keep] - 1,
            scores=out["scores"][keep],
            image_size=image.size,
            class_probs=out["class_probs"][keep] if "class_probs" in out else None,
            probs_kind=self.probs_kind,
            candidate_scores=out.get("candidate_scores", torch.zeros(0)),
            image_features=None if pooled is None else pooled[index].cpu(),
        )
