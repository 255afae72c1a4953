"""The scorer interface and its registry (name -> class)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from ..types import Detections, ImageScore

SCORERS: dict[str, type[Scorer]] = {}


class Scorer(ABC):
    """Turns the detections of a pool of images into one informativeness score per image."""

    name: ClassVar[str]
    # What the scorer needs from the model beyond boxes and scores, e.g. {"class_probs"}.
    needs: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def score(self, detections: Sequence[Detections]) -> list[ImageScore]: ...


def register(cls: type[Scorer]) -> type[Scorer]:
    SCORERS[cls.name] = cls
    return cls


def create_scorer(name: str, **params) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose one of {sorted(SCORERS)}")
    return SCORERS[name](**params)
