"""Data sets: generators of images with known objects, and readers of labeled data."""

from .shapes import SHAPE_CLASSES, generate_shapes

__all__ = ["SHAPE_CLASSES", "generate_shapes"]
from .readers import Dataset, DatasetError, read_dataset  # noqa: E402

__all__ += ["Dataset", "DatasetError", "read_dataset"]
from .digits import DIGIT_CLASSES, DigitCanvasConfig, generate_digit_canvases, write_digit_canvases  # noqa: E402

__all__ += ["DIGIT_CLASSES", "DigitCanvasConfig", "generate_digit_canvases", "write_digit_canvases"]
