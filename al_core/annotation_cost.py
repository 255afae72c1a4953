"""What a person spends labeling an image, in seconds: a small cost model over the oracle's
box edits (al_core.cooperation.BoxEdits).

The figures come from the annotation-cost literature where it has one, and are stated
assumptions where it has none; every one is a setting, and every report prints the model used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .cooperation import BoxEdits


@dataclass(frozen=True)
class CostModel:
    """Seconds per action of a person labeling boxes.

    - ``draw``: 7 s per box drawn, extreme clicking's time for a box of the same quality as a
      traditionally drawn one (Papadopoulos et al., "Extreme clicking for efficient object
      annotation", ICCV 2017). The same paper cites about 35 s for a high-quality box drawn the
      traditional way (ILSVRC's protocol, with its quality checks); 7 s is the conservative
      choice here: the cheaper drawing is, the harder pre-annotations must work to save time.
    - ``verify``: 1.6 s to check a shown box and keep it (Papadopoulos et al., "We don't need
      no bounding-boxes", CVPR 2016, box verification by a yes/no answer).
    - ``delete``: 2.0 s to delete a wrong box. Assumption: a verification plus a click and a key.
    - ``correct``: 4.0 s to fix a box of the right object (drag its corners or change its
      label). Assumption: more than deleting, less than drawing anew.
    - ``open_image``: 2.0 s per image to open it and look it over. Assumption; it is paid the
      same way from scratch and with pre-annotations, so it only dilutes their ratio.
    """

    open_image: float = 2.0
    draw: float = 7.0
    verify: float = 1.6
    delete: float = 2.0
    correct: float = 4.0

    def __post_init__(self):
        negative = [name for name, value in asdict(self).items() if not value >= 0]
        if negative:
            raise ValueError(f"annotation costs must be seconds >= 0: {negative}")

    def seconds(self, edits: BoxEdits) -> float:
        """One image labeled from its pre-annotation with these edits (boxes accepted unseen,
        box-level cooperation's certain ones, cost nothing)."""
        return (
            self.open_image
            + self.draw * edits.added
            + self.delete * edits.removed
            + self.correct * edits.corrected
            + self.verify * edits.checked
        )

    def from_scratch(self, boxes: int) -> float:
        """One image with ``boxes`` objects, every box drawn by hand."""
        return self.open_image + self.draw * boxes

    def describe(self) -> str:
        return (
            f"{self.open_image:g} s per image opened, {self.draw:g} s per box drawn, {self.verify:g} s per "
            f"shown box verified, {self.delete:g} s per wrong box deleted, {self.correct:g} s per box corrected"
        )
