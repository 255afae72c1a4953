"""Data sets: generators of images with known objects, and readers of labeled data."""

from .shapes import SHAPE_CLASSES, generate_shapes

__all__ = ["SHAPE_CLASSES", "generate_shapes"]
