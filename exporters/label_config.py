"""Reading a Label Studio labeling config: which tags the boxes go to, and which labels exist."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


class LabelConfigError(ValueError):
    """The labeling config cannot take rectangle pre-annotations."""


@dataclass(frozen=True)
class LabelConfig:
    from_name: str  # the RectangleLabels tag's name
    to_name: str  # the Image tag's name
    image_key: str  # the task data key holding the image URL ("image" for value="$image")
    labels: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...]  # (model class name, label value)

    def label_for(self, class_name: str) -> str | None:
        """The config's label for a model class, or None when the config has no such class.

        An alias from ``predicted_values`` wins, then the label value itself, then a
        case-insensitive match of the value.
        """
        for alias, label in self.aliases:
            if alias == class_name:
                return label
        if class_name in self.labels:
            return class_name
        folded = {label.casefold(): label for label in self.labels}
        return folded.get(class_name.casefold())


def parse_label_config(xml: str) -> LabelConfig:
    if not xml or not xml.strip():
        raise LabelConfigError("the labeling config is empty")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as error:
        raise LabelConfigError(f"the labeling config is not valid XML: {error}") from None
    tags = list(root.iter())
    rectangles = [tag for tag in tags if tag.tag.lower() == "rectanglelabels"]
    if not rectangles:
        raise LabelConfigError("the labeling config has no <RectangleLabels> tag; this backend predicts boxes")
    images = {tag.get("name"): tag for tag in tags if tag.tag.lower() == "image"}
    for rect in rectangles:
        image = images.get(rect.get("toName", ""))
        if image is None or not rect.get("name"):
            continue
        value = image.get("value", "")
        if not value.startswith("$") or len(value) < 2:
            raise LabelConfigError(f'<Image name="{image.get("name")}"> needs value="$<data key>", got {value!r}')
        labels, aliases = [], []
        for label in rect:
            if label.tag.lower() != "label" or not label.get("value"):
                continue
            labels.append(label.get("value"))
            for alias in (label.get("predicted_values") or "").split(","):
                if alias.strip():
                    aliases.append((alias.strip(), label.get("value")))
        if not labels:
            raise LabelConfigError(f'<RectangleLabels name="{rect.get("name")}"> has no <Label> children')
        return LabelConfig(rect.get("name"), image.get("name"), value[1:], tuple(labels), tuple(aliases))
    raise LabelConfigError("no <RectangleLabels> tag points with toName to an <Image> tag of the config")
