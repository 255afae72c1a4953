"""Reading a Label Studio labeling config: which tags the boxes go to, and which labels exist."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import RectangleLabelsTag
from label_studio_sdk.label_interface.object_tags import ImageTag


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


@lru_cache(maxsize=256)  # /predict reads the same few configs on every call
def parse_label_config(xml: str) -> LabelConfig:
    """The box tag of a labeling config, read with label-studio-sdk's LabelInterface (the
    parser Label Studio's own tools use)."""
    if not xml or not xml.strip():
        raise LabelConfigError("the labeling config is empty")
    try:
        interface = LabelInterface(xml)
    except Exception as error:  # the SDK's XML syntax error, or its refusal of a malformed tag
        raise LabelConfigError(f"the labeling config is not valid XML: {error}") from None
    rectangles = [tag for tag in interface.controls or () if isinstance(tag, RectangleLabelsTag)]
    if not rectangles:
        raise LabelConfigError("the labeling config has no <RectangleLabels> tag; this backend predicts boxes")
    images = {tag.name: tag for tag in interface.objects or () if isinstance(tag, ImageTag)}
    for rect in rectangles:
        image = next((images[name] for name in rect.to_name or () if name in images), None)
        if image is None:
            continue
        if not image.value_is_variable or len(image.value or "") < 2:
            raise LabelConfigError(f'<Image name="{image.name}"> needs value="$<data key>", got {image.value!r}')
        labels = tuple(rect.labels or ())
        if not labels:
            raise LabelConfigError(f'<RectangleLabels name="{rect.name}"> has no <Label> children')
        return LabelConfig(rect.name, image.name, image.value_name, labels, _aliases(rect))
    raise LabelConfigError("no <RectangleLabels> tag points with toName to an <Image> tag of the config")


def _aliases(rect: RectangleLabelsTag) -> tuple[tuple[str, str], ...]:
    """(model class, label value) from each label's ``predicted_values="car, truck"``."""
    return tuple(
        (alias.strip(), value)
        for value, label in (rect.labels_attrs or {}).items()
        for alias in str(label.attr.get("predicted_values") or "").split(",")
        if alias.strip()
    )
