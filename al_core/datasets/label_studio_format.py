"""Label Studio's formats that al_core reads: RectangleLabels regions <-> pixel boxes (the one
place that converts), and which annotation of a task counts.

Label Studio stores a rectangle as its top-left corner and size, each in percent of the
image's width or height (``original_width``/``original_height`` give the pixels).
"""

from __future__ import annotations

from collections.abc import Sequence


def box_to_percent(box: Sequence[float], width: int, height: int) -> dict[str, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return {
        "x": 100.0 * x0 / width,
        "y": 100.0 * y0 / height,
        "width": 100.0 * (x1 - x0) / width,
        "height": 100.0 * (y1 - y0) / height,
    }


def percent_to_box(value: dict, width: int, height: int) -> tuple[float, float, float, float]:
    x0 = float(value["x"]) * width / 100.0
    y0 = float(value["y"]) * height / 100.0
    return x0, y0, x0 + float(value["width"]) * width / 100.0, y0 + float(value["height"]) * height / 100.0


def choose_annotation(annotations: Sequence[dict]) -> dict | None:
    """The annotation that stands for a task: cancelled (skipped) ones never count; a
    ground-truth annotation wins; otherwise the latest by ``updated_at``, then ``created_at``,
    then id."""
    valid = [a for a in annotations if not a.get("was_cancelled")]
    if not valid:
        return None
    return max(
        valid,
        key=lambda a: (
            bool(a.get("ground_truth")),
            str(a.get("updated_at") or ""),
            str(a.get("created_at") or ""),
            a.get("id") or 0,
        ),
    )


def regions_to_boxes(
    result: Sequence[dict], from_name: str | None = None
) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(label value, pixel xyxy box) of each unrotated RectangleLabels region of an annotation;
    with ``from_name``, only the regions of that control tag."""
    boxes = []
    for region in result:
        if region.get("type") != "rectanglelabels" or (from_name and region.get("from_name") != from_name):
            continue
        value = region["value"]
        if abs(float(value.get("rotation") or 0)) > 1e-6 or not value.get("rectanglelabels"):
            continue  # rotated rectangles have no axis-aligned box to train on
        box = percent_to_box(value, region["original_width"], region["original_height"])
        boxes.append((value["rectanglelabels"][0], box))
    return boxes
