"""A tiny generated data set: coloured circles, squares and triangles on noisy canvases.

Objects are known exactly, so tests can check that boxes land where they should. Everything
is drawn from one seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..types import LabeledImage

SHAPE_CLASSES = ("circle", "square", "triangle")


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + 4 and b[0] < x1 + 4 and y0 < b[3] + 4 and b[1] < y1 + 4 for b in boxes)


def draw_shape_image(
    rng: np.random.Generator, size: tuple[int, int], max_objects: int, object_size: tuple[int, int]
) -> tuple[Image.Image, list[tuple[int, int, int, int]], list[int]]:
    """One canvas of ``size`` (width, height) with 1..max_objects non-overlapping shapes."""
    width, height = size
    noise = rng.integers(90, 150, size=(height, width, 1)) + rng.integers(-12, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            side = int(rng.integers(object_size[0], object_size[1] + 1))
            x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            box = (x0, y0, x0 + side, y0 + side)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        label = int(rng.integers(len(SHAPE_CLASSES)))
        colour = tuple(int(c) for c in rng.choice([0, 255], size=3)) if rng.random() < 0.5 else (230, 40, 40)
        if SHAPE_CLASSES[label] == "circle":
            draw.ellipse(box, fill=colour)
        elif SHAPE_CLASSES[label] == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side / 2, y0)], fill=colour)
        boxes.append(box)
        labels.append(label)
    return image, boxes, labels


def generate_shapes(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    max_objects: int = 3,
    object_size: tuple[int, int] = (20, 44),
) -> list[LabeledImage]:
    """Write ``count`` PNG canvases to ``out_dir`` and return them with their exact boxes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        image, boxes, labels = draw_shape_image(rng, size, max_objects, object_size)
        path = out_dir / f"shapes_{seed}_{index:05d}.png"
        image.save(path)
        samples.append(
            LabeledImage(
                path=str(path),
                boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor(labels, dtype=torch.int64),
            )
        )
    return samples
