"""Detections -> Label Studio's RectangleLabels regions, for pre-annotations (the formats
themselves live in al_core.datasets.label_studio_format)."""

from __future__ import annotations

from collections.abc import Sequence

from al_core.datasets.label_studio_format import box_to_percent
from al_core.types import Certainty, Detections

from .label_config import LabelConfig


def detections_to_regions(
    detections: Detections, class_names: Sequence[str], config: LabelConfig, certainty: Certainty
) -> list[dict]:
    """RectangleLabels results for the boxes a person sees: those scoring >= ``certainty.uncertain``
    whose class the config has. Box-level cooperation (ASM, CEAL): the uncertain boxes come
    first, least sure first, then the certain ones, surest first; each region keeps its score and
    says which it is in its ``meta`` (Label Studio shows ``meta.text`` with the region)."""
    width, height = detections.image_size
    shown = []
    boxes, labels, scores = detections.boxes.tolist(), detections.labels.tolist(), detections.scores.tolist()
    certain = certainty.is_certain(detections.scores).tolist()
    for box, label, score, sure in zip(boxes, labels, scores, certain, strict=True):
        value = config.label_for(class_names[label])
        if score >= certainty.uncertain and value is not None:
            shown.append((sure, score, box, value))
    # uncertain before certain; uncertain ascending, certain descending by score
    shown.sort(key=lambda item: (item[0], item[1] if not item[0] else -item[1]))
    regions = []
    for certain, score, box, value in shown:
        note = f"model is sure ({score:.2f})" if certain else f"check this box: the model is unsure ({score:.2f})"
        regions.append(
            {
                "id": f"r{len(regions)}",
                "from_name": config.from_name,
                "to_name": config.to_name,
                "type": "rectanglelabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {**box_to_percent(box, width, height), "rotation": 0, "rectanglelabels": [value]},
                "score": round(score, 4),
                "meta": {"text": [note], "certainty": "certain" if certain else "uncertain"},
            }
        )
    return regions
