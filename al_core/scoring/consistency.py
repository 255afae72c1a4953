"""CALD: consistency-based active learning for object detection (Yu et al., CVPR workshops 2022),
as its official code (``cald_train.py``, ``get_uncertainty`` and ``cls_kldiv``) computes it.

1. The detector's boxes on the image are the reference (more than 40: 50 spread evenly over the
   score ranking, as the code subsamples). Each augmentation (flip, cutout, downscale scored at
   the smaller size, rotate by 5 degrees) maps the reference boxes into its view.
2. Per reference box r and the view's best-IoU box b:
   c = |IoU(r, b) + (1 - JS(p_r, p_b)) (s_r + s_b) / 2 - beta|, beta = 1.3 (their base point),
   p the class distributions, s the box scores, JS in nats. A view's consistency is the
   minimum over the reference boxes, at most 1; a view without boxes has 0. The image's
   consistency is the mean over the views; an image without boxes has 0. Low consistency is
   informative: the value is 1 - consistency.
3. Second stage (``finish``): of the 1.2 x budget least consistent images, those whose
   per-class maximum scores are all zero come first, then the others by decreasing JS divergence
   between softmax(the labeled set's mean box count per class) and softmax(the image's per-class
   maximum score, averaged over the views), so that the batch keeps the classes balanced. The
   remaining images follow by consistency. ``normalized`` follows that order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image, ImageDraw, ImageOps
from torchvision.ops import box_iou

from ..types import Detections, ImageScore
from .base import PoolImage, Scorer, ScoringContext, register

BETA = 1.3  # CALD's base point
REFERENCE_CAP, REFERENCE_SAMPLE = 40, 50  # more than 40 reference boxes: 50 evenly spread
SECOND_STAGE_RANGE = 1.2  # CALD's "mutual range": candidates for the class-balance stage


@dataclass
class View:
    """An augmented copy of an image, with the reference boxes mapped into it."""

    image: Image.Image
    boxes: torch.Tensor


def flip(image: Image.Image, boxes: torch.Tensor, rng: random.Random) -> View:
    mapped = torch.stack([image.width - boxes[:, 2], boxes[:, 1], image.width - boxes[:, 0], boxes[:, 3]], dim=1)
    return View(ImageOps.mirror(image), mapped)


def downscale(image: Image.Image, boxes: torch.Tensor, rng: random.Random, factor: float = 0.8) -> View:
    """The image at ``factor`` of its size, scored at that size (not resized back)."""
    size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
    return View(image.resize(size, Image.BILINEAR), boxes * factor)


def cutout(image: Image.Image, boxes: torch.Tensor, rng: random.Random, patches: int = 2, tries: int = 50) -> View:
    """Black patches of 5-20% of each side, each covering 10-40% of some reference box at most."""
    out, draw, done = image.copy(), None, 0
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(1e-6)
    for _ in range(tries):
        w, h = rng.uniform(0.05, 0.2) * image.width, rng.uniform(0.05, 0.2) * image.height
        left, top = rng.uniform(0, image.width - w), rng.uniform(0, image.height - h)
        patch = torch.tensor([[int(left), int(top), int(left + w), int(top + h)]], dtype=torch.float)
        low, high = torch.max(patch[:, :2], boxes[:, :2]), torch.min(patch[:, 2:], boxes[:, 2:])
        covered = float(((high - low).clamp_min(0).prod(dim=1) / areas).max()) if len(boxes) else 0.0
        if not 0.1 <= covered <= 0.4:
            continue
        draw = draw or ImageDraw.Draw(out)
        draw.rectangle([int(left), int(top), int(left + w) - 1, int(top + h) - 1], fill=(0, 0, 0))
        done += 1
        if done >= patches:
            break
    return View(out, boxes.clone())


def rotate(image: Image.Image, boxes: torch.Tensor, rng: random.Random, degrees: float = 5.0) -> View:
    """Rotated counter-clockwise on an expanded canvas, resized back to the image's size; each
    box becomes the bounding box of its rotated corners."""
    turned = image.rotate(degrees, resample=Image.BILINEAR, expand=True)
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = image.width / 2, image.height / 2
    corners = torch.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], dim=1)
    dx, dy = corners[..., 0] - cx, corners[..., 1] - cy
    x = (cos * dx + sin * dy + turned.width / 2) * image.width / turned.width
    y = (-sin * dx + cos * dy + turned.height / 2) * image.height / turned.height
    mapped = torch.stack([x.min(1).values, y.min(1).values, x.max(1).values, y.max(1).values], dim=1)
    mapped = mapped.clamp_min(0).minimum(torch.tensor([image.width, image.height] * 2, dtype=torch.float))
    return View(turned.resize(image.size, Image.BILINEAR), mapped)


AUGMENTATIONS: dict[str, Callable[..., View]] = {
    "flip": flip,
    "cutout": cutout,
    "downscale": downscale,
    "rotate": rotate,
}


def class_distribution(det: Detections) -> torch.Tensor:
    """Each box's distribution over classes (sigmoid heads: per-class scores, renormalised)."""
    if det.class_probs is None:
        return torch.ones(len(det), 1)
    probs = det.class_probs if det.probs_kind == "softmax" else det.class_probs[:, 1:]
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats, in [0, log 2]."""
    m = (p + q) / 2
    kl = lambda a, b: (torch.special.xlogy(a, a) - torch.special.xlogy(a, b)).sum(-1)  # noqa: E731
    return ((kl(p, m) + kl(q, m)) / 2).clamp_min(0)


def reference(det: Detections) -> Detections:
    """The reference boxes, by decreasing score; over REFERENCE_CAP, REFERENCE_SAMPLE spread evenly."""
    order = torch.argsort(det.scores, descending=True)
    if len(order) > REFERENCE_CAP:
        order = order[torch.linspace(0, len(order) - 1, REFERENCE_SAMPLE).round().long()]
    return det.select(order)


def view_consistency(ref: Detections, mapped: torch.Tensor, view: Detections, beta: float = BETA) -> float:
    """min over reference boxes of |IoU + (1 - JS)(s_r + s_b)/2 - beta|, at most 1; 0 without view boxes."""
    if len(view) == 0:
        return 0.0
    best_iou, best = box_iou(mapped, view.boxes).max(dim=1)
    js = js_divergence(class_distribution(ref), class_distribution(view)[best])
    values = (best_iou + (1 - js) * (ref.scores + view.scores[best]) / 2 - beta).abs()
    return min(1.0, float(values.min()))


def class_maxima(det: Detections, classes: int) -> torch.Tensor:
    """(classes,) the highest score of each class's boxes, 0 where it has none."""
    maxima = torch.zeros(classes)
    if len(det):
        maxima.scatter_reduce_(0, det.labels, det.scores, reduce="amax")
    return maxima


@register
class ConsistencyScorer(Scorer):
    """CALD (see the module docstring); ``second_stage`` False ranks by consistency alone."""

    name = "consistency"
    needs = frozenset({"trained_head", "class_probs", "augmented_pass"})

    def __init__(
        self,
        augmentations: Sequence[str] = ("flip", "cutout", "downscale", "rotate"),
        beta: float = BETA,
        second_stage: bool = True,
    ):
        unknown = set(augmentations) - set(AUGMENTATIONS)
        if unknown or not augmentations:
            raise ValueError(f"augmentations must be among {sorted(AUGMENTATIONS)}, got {list(augmentations)}")
        self.augmentations, self.beta, self.second_stage = tuple(augmentations), beta, second_stage
        self._classes: list[torch.Tensor] = []

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        classes = len(context.detector.class_names)
        refs = [reference(item.detections) for item in batch]
        per_view: list[list[float]] = [[] for _ in batch]
        maxima = [[class_maxima(ref, classes)] for ref in refs]
        for name in self.augmentations:
            rngs = [random.Random(f"{context.seed}:{name}:{item.name}") for item in batch]
            views = [
                AUGMENTATIONS[name](item.image, ref.boxes, rng)
                for item, ref, rng in zip(batch, refs, rngs, strict=True)
            ]
            for i, det in enumerate(context.detector.predict([view.image for view in views])):
                if len(refs[i]):
                    per_view[i].append(view_consistency(refs[i], views[i].boxes, det, self.beta))
                maxima[i].append(class_maxima(det, classes))
        scores = []
        for ref, values, image_maxima in zip(refs, per_view, maxima, strict=True):
            consistency = sum(values) / len(values) if len(ref) else 0.0
            self._classes.append(torch.stack(image_maxima).mean(dim=0))
            scores.append(ImageScore(1 - consistency, 1 - consistency, self.name, None, {"consistency": consistency}))
        return scores

    def finish(self, scores: list[ImageScore], context: ScoringContext) -> list[ImageScore]:
        if not self.second_stage or not scores:
            return scores
        order = sorted(range(len(scores)), key=lambda i: -scores[i].value)
        candidates = order[: math.ceil(SECOND_STAGE_RANGE * context.budget)]
        classes = self._classes[0].numel()
        counts = [torch.bincount(s.labels, minlength=classes).float() for s in context.labeled]
        labeled = torch.stack(counts).mean(dim=0) if counts else torch.zeros(classes)
        maxima = torch.stack([self._classes[i] for i in candidates])
        js = js_divergence(torch.softmax(labeled, 0).expand_as(maxima), torch.softmax(maxima, 1)).tolist()
        empty = (maxima.sum(dim=1) == 0).tolist()  # images without any class score come first (CALD)
        ranked = sorted(range(len(candidates)), key=lambda j: (not empty[j], -js[j]))
        result = list(scores)
        for rank, j in enumerate(ranked):
            i = candidates[j]
            normalized = 1 - 0.5 * rank / len(ranked)  # (0.5, 1], in the second stage's order
            result[i] = replace(scores[i], normalized=normalized, parts={**scores[i].parts, "class_js": js[j]})
        for i in order[len(candidates) :]:
            result[i] = replace(scores[i], normalized=0.5 * scores[i].value)
        return result
