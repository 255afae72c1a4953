"""The scorer interface, what scorers may ask for, and the registry (name -> class)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, ClassVar

import torch
from PIL import Image

from ..types import Detections, ImageScore, LabeledImage

if TYPE_CHECKING:
    from ..detectors import Detector
    from ..display import Display

SCORERS: dict[str, type[Scorer]] = {}

# What a scorer may need beyond boxes and scores; the pool driver checks them before it starts.
NEEDS = frozenset(
    {
        "trained_head",  # meaningless before the head's first training (cold start)
        "class_probs",
        "box_features",
        "image_features",
        "loss_head",
        "augmented_pass",  # a second forward pass on transformed images
        "gradients",
        "labeled_set",
        "class_quality",  # how well each class is learned, from the labeled images
        "class_counts",  # the labeled images' boxes of each class
    }
)


@dataclass
class PoolImage:
    """One unlabeled image on its way through scoring."""

    key: str
    image: Image.Image
    detections: Detections | None  # None for scorers that do not use the model

    @property
    def name(self) -> str:
        """The key's last path segment: seeded draws use it, so a run's choices do not depend
        on the folder its images sit in."""
        return PurePath(self.key).name


@dataclass
class ScoringContext:
    """Everything beyond the batch itself that a scorer may use."""

    detector: Detector | None = None
    labeled: Sequence[LabeledImage] = ()
    labeled_features: torch.Tensor | None = None  # (M, D) image features of the labeled images
    class_quality: torch.Tensor | None = None  # (C,) how well each class is learned, in [0, 1]
    class_counts: torch.Tensor | None = None  # (C,) boxes of each class in the labeled images
    budget: int = 100  # images to select; set-level scorers rank this many carefully
    display: Display | None = None  # what a person is shown (scorers may aggregate over it)
    seed: int = 0


class Scorer(ABC):
    """Turns images of a pool, batch after batch, into one ``ImageScore`` each.

    Scorers that judge an image against the whole pool (diversity, discriminators) keep what
    they need from each batch and give their final scores in ``finish``.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    uses_detections: ClassVar[bool] = True

    @abstractmethod
    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]: ...

    def finish(self, scores: list[ImageScore], context: ScoringContext) -> list[ImageScore]:
        return scores


def register(cls: type[Scorer]) -> type[Scorer]:
    unknown = cls.needs - NEEDS
    if unknown:
        raise ValueError(f"{cls.__name__} needs unknown things: {sorted(unknown)}")
    SCORERS[cls.name] = cls
    return cls


def create_scorer(name: str, **params) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose one of {sorted(SCORERS)}")
    try:
        return SCORERS[name](**params)
    except TypeError as error:
        raise ValueError(f"bad parameters for scorer {name!r}: {error}") from None
