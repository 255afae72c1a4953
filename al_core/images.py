"""Reading images from disk the way Label Studio shows them."""

from __future__ import annotations

from PIL import Image, ImageOps


def load_rgb(path: str) -> Image.Image:
    """RGB, with EXIF orientation applied (browsers, and so Label Studio's boxes, use it)."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")
