"""al_core: detectors, scoring, training and data sets for active learning in object detection.

A library with no knowledge of HTTP or Label Studio; the backend and the CLI call into it.
"""

from .detectors import DETECTORS, Detector
from .scoring import SCORERS, create_scorer
from .types import Detections, ImageScore, LabeledImage, ModelVersion

__all__ = [
    "DETECTORS",
    "SCORERS",
    "Detections",
    "Detector",
    "ImageScore",
    "LabeledImage",
    "ModelVersion",
    "create_scorer",
]
