"""An offline benchmark set from real handwriting: canvases of handwritten digits.

The digits are scikit-learn's bundled scans (1,797 real 8x8 digits; nothing is downloaded),
scaled and pasted as ink on noisy paper with exact boxes. The parameters give the pool the
properties real pools have and active learning exists for:
- ``canvas_size``: the square canvas side in pixels (128);
- ``digits_per_image``: the inclusive range of digits on one canvas (1-4);
- ``scale_range``: the inclusive range of a digit's side in pixels (16-40);
- ``noise``: Gaussian pixel-noise std, as a share of the full range (0.06);
- ``clutter``: up to this many stray strokes and blobs per canvas that are not digits (3);
- ``long_tail``: class frequency is proportional to 1 / rank ** long_tail, over a seeded
  order of the ten classes (1.0: the rarest class is ten times rarer than the commonest; 0: uniform);
- ``near_duplicates``: the share of canvases that are near copies of an earlier one (the same
  digits shifted by a pixel or two, fresh noise), as consecutive video frames are (0.2).
Everything follows from ``seed``. ``write_digit_canvases`` writes PNGs and a COCO JSON file,
so every other path reads the set like any user's data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..types import LabeledImage
from .coco import write_coco

DIGIT_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DigitCanvasConfig:
    canvas_size: int = 128
    digits_per_image: tuple[int, int] = (1, 4)
    scale_range: tuple[int, int] = (16, 40)
    noise: float = 0.06
    clutter: int = 3
    long_tail: float = 1.0
    near_duplicates: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _digits_by_class() -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images / 16.0  # ink in [0, 1]
    return [images[data.target == c] for c in range(10)]


def _overlaps(box, boxes, gap: int = 2) -> bool:
    return any(
        box[0] < b[2] + gap and b[0] < box[2] + gap and box[1] < b[3] + gap and b[1] < box[3] + gap for b in boxes
    )


class _Painter:
    def __init__(self, config: DigitCanvasConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.digits = _digits_by_class()
        ranks = self.rng.permutation(10)  # which class is commonest is part of the seed
        weights = 1.0 / (ranks + 1.0) ** config.long_tail
        self.class_probs = weights / weights.sum()

    def layout(self) -> list[tuple[int, int, int, int]]:
        """[(class, digit index, x0, y0, side)] of one new canvas, digits not overlapping."""
        size, (low, high) = self.config.canvas_size, self.config.digits_per_image
        placed, boxes = [], []
        for _ in range(int(self.rng.integers(low, high + 1))):
            for _attempt in range(30):
                side = int(self.rng.integers(self.config.scale_range[0], self.config.scale_range[1] + 1))
                x0, y0 = (int(v) for v in self.rng.integers(0, size - side, size=2))
                if not _overlaps((x0, y0, x0 + side, y0 + side), boxes):
                    break
            else:
                continue
            label = int(self.rng.choice(10, p=self.class_probs))
            placed.append((label, int(self.rng.integers(len(self.digits[label]))), x0, y0, side))
            boxes.append((x0, y0, x0 + side, y0 + side))
        return placed

    def jitter(self, layout):
        """The same digits moved by a pixel or two: the next frame of a video."""
        size, moved = self.config.canvas_size, []
        for label, index, x0, y0, side in layout:
            dx, dy = (int(v) for v in self.rng.integers(-2, 3, size=2))
            moved.append((label, index, min(max(x0 + dx, 0), size - side), min(max(y0 + dy, 0), size - side), side))
        return moved

    def paint(self, layout) -> tuple[Image.Image, list[list[float]], list[int]]:
        size = self.config.canvas_size
        paper = self.rng.uniform(0.75, 0.95)
        canvas = np.full((size, size), paper, dtype=np.float32)
        clutter = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(clutter)
        for _ in range(int(self.rng.integers(0, self.config.clutter + 1))):
            x0, y0, x1, y1 = (int(v) for v in self.rng.integers(0, size, size=4))
            if self.rng.random() < 0.5:
                draw.line([x0, y0, x1, y1], fill=int(self.rng.integers(60, 140)), width=int(self.rng.integers(1, 3)))
            else:
                r = int(self.rng.integers(2, 6))
                draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=int(self.rng.integers(40, 110)))
        canvas -= np.asarray(clutter, dtype=np.float32) / 255.0 * paper
        boxes, labels = [], []
        for label, index, x0, y0, side in layout:
            glyph = Image.fromarray((self.digits[label][index] * 255).astype(np.uint8)).resize(
                (side, side), Image.BILINEAR
            )
            ink = np.asarray(glyph, dtype=np.float32) / 255.0
            canvas[y0 : y0 + side, x0 : x0 + side] *= 1.0 - 0.9 * ink
            rows, cols = np.nonzero(ink > 0.1)
            boxes.append([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1])
            labels.append(label)
        canvas += self.rng.normal(0.0, self.config.noise, canvas.shape)
        tint = self.rng.uniform(0.85, 1.0, size=3)
        rgb = np.clip(canvas[..., None] * tint * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(rgb), [[float(v) for v in b] for b in boxes], labels


def generate_digit_canvases(
    out_dir: str | Path, count: int, config: DigitCanvasConfig | None = None
) -> list[LabeledImage]:
    """Write ``count`` PNG canvases to ``out_dir``; return them with their exact boxes."""
    config = config or DigitCanvasConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    painter = _Painter(config)
    layouts, samples = [], []
    for index in range(count):
        duplicate = layouts and painter.rng.random() < config.near_duplicates
        layout = painter.jitter(layouts[-1]) if duplicate else painter.layout()
        layouts.append(layout)
        image, boxes, labels = painter.paint(layout)
        path = out_dir / f"digits_{config.seed}_{index:05d}.png"
        image.save(path)
        samples.append(
            LabeledImage(str(path), torch.tensor(boxes).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64))
        )
    return samples


def write_digit_canvases(out_dir: str | Path, count: int, config: DigitCanvasConfig | None = None) -> Path:
    """PNGs plus ``digits.json`` (COCO) in ``out_dir``; returns the JSON's path."""
    samples = generate_digit_canvases(Path(out_dir) / "images", count, config)
    return write_coco(samples, DIGIT_CLASSES, Path(out_dir) / "digits.json")
