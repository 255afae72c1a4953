"""Scoring a pool of unlabeled images: streamed in batches, so memory holds one batch of
images plus the score table (and, for set-level scorers, their compact per-image records)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .detectors import Detector
from .images import load_rgb
from .scoring import PoolImage, Scorer, ScoringContext, create_scorer
from .scoring.class_quality import class_quality
from .selection import Selection, top_k
from .types import Detections, ImageScore, LabeledImage

COLD_START_RULE = "cold start: coreset over the pretrained backbone's image features (the head is untrained)"


@dataclass
class ScoredPool:
    keys: list[str]
    scores: list[ImageScore]
    strategy: str
    rule: str
    model_version: str
    seed: int

    def select(self, k: int | None = None) -> Selection:
        return top_k(self.keys, self.scores, k, self.strategy, self.rule, self.model_version, self.seed)


def image_features(detector: Detector, paths: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """(N, D) pooled image features, e.g. of the labeled images for core-set or DAL."""
    rows = []
    for start in range(0, len(paths), batch_size):
        rows += [d.image_features for d in detector.predict([load_rgb(p) for p in paths[start : start + batch_size]])]
    return torch.stack(rows) if rows else torch.zeros(0)


def detect(detector: Detector, paths: Sequence[str], batch_size: int = 16) -> list[Detections]:
    """The detector's detections of each image, in order, in batches."""
    detections = []
    for start in range(0, len(paths), batch_size):
        detections += detector.predict([load_rgb(p) for p in paths[start : start + batch_size]])
    return detections


def labeled_class_quality(detector: Detector, labeled: Sequence[LabeledImage], batch_size: int = 16) -> torch.Tensor:
    """PPAL's per-class quality of the detector on the labeled images."""
    return class_quality(detect(detector, [s.path for s in labeled], batch_size), labeled, len(detector.class_names))


def labeled_class_counts(labeled: Sequence[LabeledImage], num_classes: int) -> torch.Tensor:
    """(C,) boxes of each class in the labeled images."""
    labels = torch.cat([sample.labels for sample in labeled] or [torch.zeros(0)]).long()
    return torch.bincount(labels, minlength=num_classes)[:num_classes]


def check_needs(scorer: Scorer, detector: Detector, context: ScoringContext) -> None:
    if "loss_head" in scorer.needs and not detector.has_loss_head:
        raise ValueError(f"{scorer.name} needs a detector trained with a loss-prediction head")
    if "labeled_set" in scorer.needs and not context.labeled and context.labeled_features is None:
        raise ValueError(f"{scorer.name} needs the labeled images (--labeled)")


def prepare_context(scorer: Scorer, detector: Detector, context: ScoringContext, batch_size: int = 16) -> None:
    """Checks what ``scorer`` needs and adds what it needs of the labeled images to ``context``:
    their image features, the detector's per-class quality on them, their boxes of each class."""
    check_needs(scorer, detector, context)
    if context.labeled and context.labeled_features is None and scorer.needs & {"labeled_set", "image_features"}:
        context.labeled_features = image_features(detector, [s.path for s in context.labeled], batch_size)
    if context.labeled and context.class_quality is None and "class_quality" in scorer.needs:
        context.class_quality = labeled_class_quality(detector, context.labeled, batch_size)
    if context.labeled and context.class_counts is None and "class_counts" in scorer.needs:
        context.class_counts = labeled_class_counts(context.labeled, len(detector.class_names))


def score_pool(
    detector: Detector,
    paths: Sequence[str],
    strategy: str = "entropy",
    params: dict | None = None,
    context: ScoringContext | None = None,
    batch_size: int = 16,
    progress: bool = False,
    on_detections: Callable[[str, Detections], None] | None = None,
) -> ScoredPool:
    """Score every image of ``paths`` with ``strategy``; keys are the paths.

    ``on_detections(path, detections)`` sees every image's detections as they stream past
    (to keep pre-annotations without a second pass). Before the head's first training,
    scorers that need a trained head would rank noise: the cold-start rule (core-set) runs
    instead, and ``rule`` says so.
    """
    context = context or ScoringContext()
    context.detector = detector
    scorer = create_scorer(strategy, **(params or {}))
    rule = strategy
    if "trained_head" in scorer.needs and not detector.version.trained:
        scorer, rule = create_scorer("coreset"), COLD_START_RULE
    prepare_context(scorer, detector, context, batch_size)
    scores: list[ImageScore] = []
    for start in tqdm(range(0, len(paths), batch_size), desc=f"scoring ({rule})", disable=not progress):
        chunk = paths[start : start + batch_size]
        images = [load_rgb(p) for p in chunk]
        if scorer.uses_detections or on_detections is not None:
            detections = detector.predict(images, box_features="box_features" in scorer.needs)
        else:
            detections = [None] * len(images)
        if on_detections is not None:
            for path, det in zip(chunk, detections, strict=True):
                on_detections(path, det)
        batch = [PoolImage(p, image, det) for p, image, det in zip(chunk, images, detections, strict=True)]
        scores += scorer.score_batch(batch, context)
    scores = scorer.finish(scores, context)
    return ScoredPool(list(paths), scores, strategy, rule, detector.version.name, context.seed)
