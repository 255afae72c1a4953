"""COCO JSON from labeled images (pixel xyxy boxes -> COCO's [x, y, width, height])."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..types import LabeledImage


def write_coco(
    images: Sequence[LabeledImage],
    class_names: Sequence[str],
    path: str | Path,
    file_names: Sequence[str] | None = None,
) -> Path:
    """Write ``path``. File names are ``file_names`` when given (e.g. Label Studio image URLs),
    else relative to the file's folder when the images lie under it."""
    path = Path(path)
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
    }
    for image_id, sample in enumerate(images, start=1):
        with Image.open(sample.path) as image:
            width, height = image.size
        file = Path(sample.path).resolve()
        name = str(file.relative_to(path.parent.resolve())) if file.is_relative_to(path.parent.resolve()) else str(file)
        if file_names is not None:
            name = file_names[image_id - 1]
        coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
            x0, y0, x1, y1 = box
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))
    return path
