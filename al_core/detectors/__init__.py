"""Detectors: the registry of torchvision models and the loaded ``Detector``."""

from .detector import Detector
from .registry import DETECTORS, DetectorSpec, PretrainedWeightsUnavailable, build_model

__all__ = ["DETECTORS", "Detector", "DetectorSpec", "PretrainedWeightsUnavailable", "build_model"]
