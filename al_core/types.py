"""The typed records that travel between al_core's modules (see DESIGN.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Detections:
    """What one forward pass of a detector says about one image.

    Boxes are xyxy in pixels of the image as it was given (after EXIF rotation),
    labels index into the detector's ``class_names``.
    """

    boxes: torch.Tensor  # (N, 4) float
    labels: torch.Tensor  # (N,) int64
    scores: torch.Tensor  # (N,) float, the score of each box's label
    image_size: tuple[int, int]  # (width, height)
    # (N, C) per-class probabilities of each box, where the head exposes them; column 0 is
    # background. "softmax": one distribution per box; "sigmoid": independent per class.
    class_probs: torch.Tensor | None = None
    probs_kind: str = "sigmoid"
    # Top pre-NMS candidate scores, so an image without final boxes still has a signal.
    candidate_scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    # Globally pooled backbone/FPN features of the whole image.
    image_features: torch.Tensor | None = None
    # (N, D) RoI-pooled backbone/FPN features of each box.
    box_features: torch.Tensor | None = None
    # The learning-loss head's prediction of the detector's loss on this image.
    predicted_loss: float | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def above(self, threshold: float) -> Detections:
        """The same detections, keeping only boxes whose score is >= threshold."""
        return self.select(self.scores >= threshold)

    def select(self, keep: torch.Tensor) -> Detections:
        """The same detections, keeping the boxes ``keep`` (a mask or indices) picks."""
        return Detections(
            boxes=self.boxes[keep],
            labels=self.labels[keep],
            scores=self.scores[keep],
            image_size=self.image_size,
            class_probs=None if self.class_probs is None else self.class_probs[keep],
            probs_kind=self.probs_kind,
            candidate_scores=self.candidate_scores,
            image_features=self.image_features,
            box_features=None if self.box_features is None else self.box_features[keep],
            predicted_loss=self.predicted_loss,
        )

    def scaled(self, size: tuple[int, int]) -> Detections:
        """The same detections on the image resized to ``size`` (width, height): boxes scaled."""
        x, y = size[0] / self.image_size[0], size[1] / self.image_size[1]
        return dataclasses.replace(self, boxes=self.boxes * torch.tensor([x, y, x, y]), image_size=size)


@dataclass(frozen=True)
class ImageScore:
    """The informativeness of one image according to one scorer.

    ``value`` is the scorer's raw number; ``normalized`` maps it to [0, 1] (1 = most
    informative) so that scores of different images and models compare. ``parts`` names the
    numbers the value was made of; ``box_values`` are the per-box values, where there are boxes.
    ``for_people`` False: the scorer's rule leaves the image to the model (ASM's threshold
    rule), and selection never hands it to a person, however few images are left.
    """

    value: float
    normalized: float
    scorer: str
    aggregation: str | None = None
    parts: dict[str, float] = field(default_factory=dict)
    box_values: tuple[float, ...] = ()
    for_people: bool = True


@dataclass(frozen=True)
class ModelVersion:
    """The one record of a model version: a detector's identity (which architecture, which
    classes, which weights); once saved (al_core.versions), what it was trained on and its
    figures; in the service's store, the project it serves and whether it is the active one."""

    name: str
    detector: str
    class_names: tuple[str, ...]
    checkpoint: str | None = None  # <version directory>/model.pt once saved
    trained: bool = False  # False: the head is still untrained (cold start)
    labeled_ids: tuple[int, ...] = ()  # the human-labeled items it trained on
    pseudo_ids: tuple[int, ...] = ()  # the items it trained on with its own labels (CEAL)
    metrics: dict = field(default_factory=dict, compare=False)
    train_config: dict = field(default_factory=dict, compare=False)
    project_id: int | None = None
    active: bool = False
    created_at: float = 0.0

    @property
    def path(self) -> Path | None:
        """The saved version's directory."""
        return Path(self.checkpoint).parent if self.checkpoint else None


@dataclass
class LabeledImage:
    """One image with its ground-truth boxes: xyxy pixels, labels indexing the class names."""

    path: str
    boxes: torch.Tensor  # (N, 4) float
    labels: torch.Tensor  # (N,) int64


@dataclass(frozen=True)
class Certainty:
    """Box-level human-machine cooperation (ASM, Wang et al. 2018; CEAL, Wang et al. 2016):
    a box scoring >= ``certain`` is the model's to label, one in [``uncertain``, ``certain``)
    needs a person, and lower ones are not shown at all. ``certain`` 1.0 means nothing is
    certain: even a saturated score proves nothing."""

    uncertain: float = 0.3
    certain: float = 0.7

    def __post_init__(self):
        if not 0 <= self.uncertain < self.certain <= 1:
            raise ValueError(
                f"need 0 <= uncertain < certain <= 1, got uncertain={self.uncertain}, certain={self.certain}"
            )

    def is_certain(self, scores: torch.Tensor) -> torch.Tensor:
        """Which of these box scores are certain (all False when ``certain`` is 1.0)."""
        return scores >= self.certain if self.certain < 1.0 else torch.zeros(scores.shape, dtype=torch.bool)

    def split(self, scores: torch.Tensor) -> tuple[int, int]:
        """(certain boxes, uncertain boxes) among these box scores."""
        certain = int(self.is_certain(scores).sum())
        return certain, int((scores >= self.uncertain).sum()) - certain

    def al_ratio(self, scores: torch.Tensor) -> float:
        """The share of the shown boxes a person must check; 1 when none is shown (a person
        must look at the image)."""
        certain, uncertain = self.split(scores)
        return uncertain / (certain + uncertain) if certain + uncertain else 1.0


@dataclass(frozen=True)
class ScoredTask:
    """One unlabeled task's place in a cycle: its image, its score, the boxes a person is shown."""

    task_id: int
    image: str  # as the task names it (a URL or a path)
    path: str  # the local file that was scored
    score: ImageScore
    shown: Detections
