"""Large images: Pillow's decompression-bomb guard stays on, a 48 Mpx photo is decoded shrunk
towards the model's input size (JPEG draft mode, Image.reduce), and /predict still answers in
the full image's pixel frame."""

import io
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image, ImageDraw

from al_core.types import Detections
from backend.images import ImageLoader, decode_image, decode_reduced
from backend.predictor import reduction_factor

from ..conftest import ROOT, SHAPES_CONFIG, make_settings

WIDTH, HEIGHT = 8000, 6000
SQUARE = (2000, 1500, 5000, 4500)  # x0, y0, x1, y1 in the displayed image
FULL_FLOAT_TENSOR = WIDTH * HEIGHT * 3 * 4  # bytes of the float tensor of the full image


def big_image(format: str, orientation: int = 1) -> bytes:
    """A grey 8000x6000 picture (as displayed) with a white square; orientation 6 stores it
    turned, with the EXIF tag that turns it back."""
    shown = Image.new("RGB", (WIDTH, HEIGHT), (90, 90, 90))
    ImageDraw.Draw(shown).rectangle(SQUARE, fill=(255, 255, 255))
    stored = shown.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else shown
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    options = {"quality": 90, "exif": exif} if format == "JPEG" else {"compress_level": 1}
    stored.save(buffer, format=format, **options)
    return buffer.getvalue()


def test_pillow_keeps_its_decompression_bomb_guard(tmp_path):
    code = "import backend.app, PIL.Image; print(PIL.Image.MAX_IMAGE_PIXELS)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() != "None" and int(out.stdout) > 0
    ImageLoader(make_settings(tmp_path))
    assert PIL.Image.MAX_IMAGE_PIXELS is not None and PIL.Image.MAX_IMAGE_PIXELS >= 50_000_000


def test_a_setting_above_pillows_limit_still_loads_an_image_under_it(tmp_path):
    """MAX_IMAGE_PIXELS above Pillow's own limit raises Pillow's guard with it (never off)."""
    before = PIL.Image.MAX_IMAGE_PIXELS
    try:
        PIL.Image.MAX_IMAGE_PIXELS = 1000  # stands in for Pillow's 89 Mpx default
        ImageLoader(make_settings(tmp_path, max_image_pixels=5000))
        assert PIL.Image.MAX_IMAGE_PIXELS == 5000
        buffer = io.BytesIO()
        Image.new("RGB", (70, 70)).save(buffer, format="PNG")  # 4,900 px: over 2x the old limit
        assert decode_image(buffer.getvalue(), 5000).size == (70, 70)
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = before


@pytest.mark.parametrize(("format", "orientation"), [("JPEG", 1), ("PNG", 1), ("JPEG", 6)])
def test_a_48_megapixel_image_decodes_at_the_models_size(untrained_detector, format, orientation):
    data = big_image(format, orientation)
    decoded = decode_reduced(data, 50_000_000, lambda w, h: reduction_factor(untrained_detector, w, h))
    width, height = decoded.image.size
    assert decoded.original_size == (WIDTH, HEIGHT)
    # At least what the model resizes it to (128 px on the longer side), far below the full image.
    assert max(width, height) >= 128 and min(width, height) >= 96
    assert width <= WIDTH // 40 and height <= HEIGHT // 40
    assert width * height * 3 * 4 < FULL_FLOAT_TENSOR / 1000
    # The square is where it is shown: EXIF orientation applied after shrinking.
    pixels = np.asarray(decoded.image)
    assert pixels[int(height * 0.5), int(width * 0.45)].min() > 200  # inside the square
    assert pixels[int(height * 0.1), int(width * 0.1)].max() < 130  # background


def test_the_reduction_never_goes_below_the_models_input():
    class Transform:
        min_size, max_size, fixed_size = (800,), 1333, None

    class Model:
        transform = Transform()

    class Fake:
        model = Model()

    assert reduction_factor(Fake(), 8000, 6000) == 7  # 6000 / 800 = 7.5
    assert reduction_factor(Fake(), 640, 480) == 1  # the model enlarges it: no reduction
    Transform.fixed_size = (300, 300)  # SSD stretches to 300x300: the shorter side decides
    assert reduction_factor(Fake(), 8000, 600) == 2


def square_finder(seen: list[tuple[int, int]]):
    """A stand-in forward pass: one box around the bright pixels of the image it is given."""

    def predict(images, box_features=False):
        out = []
        for image in images:
            seen.append(image.size)
            ys, xs = np.nonzero(np.asarray(image.convert("L")) > 200)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            out.append(
                Detections(
                    boxes=box,
                    labels=torch.tensor([1]),
                    scores=torch.tensor([0.5]),
                    image_size=image.size,
                    class_probs=torch.tensor([[0.1, 0.2, 0.5, 0.2]]),
                    candidate_scores=torch.tensor([0.5]),
                    image_features=torch.zeros(8),
                )
            )
        return out

    return predict


@pytest.mark.parametrize(("format", "orientation"), [("JPEG", 1), ("PNG", 1), ("JPEG", 6)])
def test_predict_on_a_large_image_answers_in_the_full_images_frame(
    make_client, untrained_detector, tmp_path, monkeypatch, format, orientation
):
    (tmp_path / "big").write_bytes(big_image(format, orientation))
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(untrained_detector, "predict", square_finder(seen))
    client = make_client(local_files_root=str(tmp_path))
    answer = client.post("/predict", json={"tasks": [{"data": {"picture": "big"}}], "label_config": SHAPES_CONFIG})
    result = answer.get_json()["results"][0]
    assert "error" not in result, result
    assert len(seen) == 1 and max(seen[0]) < WIDTH // 40  # the model got the shrunk image
    (region,) = result["result"]
    assert (region["original_width"], region["original_height"]) == (WIDTH, HEIGHT)
    value = region["value"]
    expected = {"x": 25.0, "y": 25.0, "width": 37.5, "height": 50.0}  # SQUARE, in percent
    assert all(abs(value[key] - want) < 1.5 for key, want in expected.items()), value
