"""Which of a detector's boxes a person is shown, and the calibration that chooses them.

Anchor: Konyushkova et al., "Learning Intelligent Dialogs for Bounding Box Annotation" (CVPR
2018): choosing per box between verifying a detector's box and drawing by hand beats either
alone, and the best choice shifts as the detector grows stronger. Here the choice is made once
per model version: after each training run, ``calibrate`` picks the score threshold (per class
where a class has enough held-out boxes) that minimises the cost model's seconds on the
held-out images against their true labels, and shows nothing when no threshold beats drawing
from scratch.

One object, one box: the detector's NMS is per class, so one object can carry two boxes with
different labels; ``Display.shown`` runs class-agnostic NMS first (the object's best guess
wins), then the thresholds, then keeps at most ``max_boxes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from torchvision.ops import nms

from .annotation_cost import CostModel
from .cooperation import match_boxes, oracle_edits
from .types import Certainty, Detections, LabeledImage

GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # the thresholds calibration tries
PRECISION_BINS = 10  # held-out precision per score decile, for the expected seconds saved


@dataclass(frozen=True)
class Display:
    """The boxes shown: score >= ``threshold`` (or the class's own, ``class_thresholds``) after
    class-agnostic NMS at ``nms_iou``, at most ``max_boxes``, none when ``show`` is False.
    Shown boxes scoring >= ``certain`` are the model's (box-level cooperation accepts them
    unseen); 1.0, the default, means none is: a certain threshold must be measured (calibration)
    or set on purpose, as an unmeasured 0.7 was wrong on a quarter of its boxes (BENCHMARKS.md,
    "CEAL self-labeling with a fitted model"). ``precision`` is the held-out share of right
    boxes per score decile."""

    threshold: float = 0.3
    certain: float = 1.0
    class_thresholds: dict[int, float] = field(default_factory=dict)
    nms_iou: float = 0.7
    max_boxes: int = 100
    show: bool = True
    calibrated: bool = False
    note: str = ""
    precision: tuple[float, ...] = ()

    def __post_init__(self):
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.max_boxes < 1:
            raise ValueError(f"max_boxes must be at least 1, got {self.max_boxes}")
        self.certainty()  # checks the thresholds

    def lowest(self) -> float:
        return min([self.threshold, *self.class_thresholds.values()])

    def certainty(self) -> Certainty:
        """The box split of box-level cooperation over the shown boxes."""
        lowest = self.lowest()
        return Certainty(lowest, max(self.certain, min(1.0, lowest + 1e-6)))

    def shown(self, detections: Detections) -> Detections:
        if not self.show:
            return detections.select(torch.zeros(len(detections), dtype=torch.bool))
        detections = _after_nms(detections, self)
        limits = torch.tensor([self.class_thresholds.get(int(c), self.threshold) for c in detections.labels.tolist()])
        keep = detections.scores >= limits
        if int(keep.sum()) > self.max_boxes:
            ranked = torch.argsort(torch.where(keep, detections.scores, -1.0), descending=True)
            keep[:] = False
            keep[ranked[: self.max_boxes]] = True
        return detections.select(keep)

    def expected_seconds_saved(self, shown: Detections, cost: CostModel) -> float:
        """What showing these boxes is expected to save against drawing from scratch: each box
        is right with its score decile's held-out precision q, saving draw - verify, or wrong,
        costing a delete. An estimate without the truth; corrections are not counted."""
        if not self.precision:
            return 0.0
        total = 0.0
        for score in shown.scores.tolist():
            q = self.precision[min(int(score * PRECISION_BINS), PRECISION_BINS - 1)]
            total += q * (cost.draw - cost.verify) - (1 - q) * cost.delete
        return round(total, 2)

    def expected_seconds(self, detections: Detections, cost: CostModel) -> float:
        """What labeling the image from this display is expected to cost a person, without the
        truth: each shown box is checked (right with its score decile's held-out precision q) or
        deleted, and each hidden candidate (after NMS) is an object to draw with its own q. The
        box's score stands in for q before calibration."""
        candidates = _after_nms(detections, self)
        shown = replace(self, nms_iou=1.0).shown(candidates)  # NMS once
        q = self.right_probability(shown.scores)
        hidden = float(self.right_probability(candidates.scores).sum() - q.sum())
        checked = float((q * cost.verify + (1 - q) * cost.delete).sum())
        return round(cost.open_image + checked + max(hidden, 0.0) * cost.draw, 2)

    def right_probability(self, scores: torch.Tensor) -> torch.Tensor:
        """Each score's chance that its box is right: its decile's held-out precision, or the
        score itself before calibration."""
        if not self.precision:
            return scores.clamp(0, 1)
        bins = (scores * PRECISION_BINS).long().clamp(0, PRECISION_BINS - 1)
        return torch.tensor(self.precision)[bins]

    def describe(self) -> dict:
        """What a prediction's metadata says about the display that chose its boxes."""
        about = {"threshold": self.threshold, "certain": self.certain, "calibrated": self.calibrated}
        if self.class_thresholds:
            about["class_thresholds"] = {str(k): v for k, v in self.class_thresholds.items()}
        if not self.show:
            about.update(shown=False, note=self.note)
        return about

    def to_dict(self) -> dict:
        values = asdict(self)
        values["class_thresholds"] = {str(k): v for k, v in self.class_thresholds.items()}
        values["precision"] = list(self.precision)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Display:
        values = dict(values)
        values["class_thresholds"] = {int(k): float(v) for k, v in values.get("class_thresholds", {}).items()}
        values["precision"] = tuple(values.get("precision", ()))
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` chose, with the held-out seconds it saw."""

    display: Display
    images: int
    seconds_from_scratch: float  # on the held-out images, every box drawn
    seconds_shown: float  # the same images from the chosen display, every shown box reviewed


def calibrate(
    detections: Sequence[Detections],
    truths: Sequence[LabeledImage],
    cost: CostModel,
    base: Display,
    precision_target: float = 0.95,
    min_class_boxes: int = 20,
    min_certain_boxes: int = 10,
) -> Calibration:
    """The display that minimises held-out seconds (``base`` gives NMS and the box cap).

    1. The global threshold of GRID with the fewest seconds, every shown box reviewed; ties
       take the middle of the best run of thresholds, as the held-out set is small.
    2. Each class with at least ``min_class_boxes`` true held-out boxes gets its own threshold,
       chosen the same way with the others fixed.
    3. No boxes at all when the best is not below drawing from scratch: a weak model must not
       make work.
    4. ``certain``: the lowest threshold above which the shown held-out boxes (at least
       ``min_certain_boxes``) are right at least ``precision_target`` of the time, by the
       Wilson score interval's one-sided 95% lower bound (Wilson, 1927), not the point
       estimate: on a few dozen held-out boxes the lowest threshold whose point estimate passes
       is chosen for its luck, and box-level review accepts certain boxes unseen. 1.0 (nothing
       certain) when none is.
    """
    if len(detections) != len(truths):
        raise ValueError("one detections per true label")
    candidates = [_after_nms(d, base) for d in detections]
    scratch = sum(cost.from_scratch(len(t.labels)) for t in truths)

    def seconds(threshold: float, per_class: dict[int, float]) -> float:
        display = replace(base, threshold=threshold, class_thresholds=per_class, show=True, nms_iou=1.0)
        return sum(_review_seconds(display.shown(d), t, cost) for d, t in zip(candidates, truths, strict=True))

    threshold = _best(GRID, lambda t: seconds(t, {}))
    counts = torch.bincount(torch.cat([t.labels for t in truths] + [torch.zeros(0, dtype=torch.long)]))
    per_class: dict[int, float] = {}
    for label in [c for c, n in enumerate(counts.tolist()) if n >= min_class_boxes]:
        per_class[label] = _best(GRID, lambda t, c=label: seconds(threshold, {**per_class, c: t}))
    best = seconds(threshold, per_class)
    display = replace(base, threshold=threshold, class_thresholds=per_class, show=best < scratch, calibrated=True)
    shown = [replace(display, nms_iou=1.0).shown(d) for d in candidates]
    certain = _certain_threshold(shown, truths, display.lowest(), precision_target, min_certain_boxes)
    note = "" if display.show else (
        f"no threshold beats drawing from scratch on {len(truths)} held-out images "
        f"({best:.0f} s at best against {scratch:.0f} s): no boxes are shown"
    )  # fmt: skip
    precision = _precision_by_decile(candidates, truths)
    display = replace(display, certain=certain, note=note, precision=precision)
    return Calibration(display, len(truths), round(scratch, 1), round(best, 1))


def annotator_seconds(
    detections: Sequence[Detections], truths: Sequence[LabeledImage], display: Display, cost: CostModel
) -> tuple[float, float]:
    """(seconds from scratch, seconds from what ``display`` shows, every shown box reviewed)
    for a person labeling these images, against their true labels."""
    scratch = sum(cost.from_scratch(len(t.labels)) for t in truths)
    shown = sum(_review_seconds(display.shown(d), t, cost) for d, t in zip(detections, truths, strict=True))
    return scratch, shown


def _after_nms(detections: Detections, base: Display) -> Detections:
    """The candidates every threshold filters: class-agnostic NMS over all boxes (a threshold
    applied afterwards keeps exactly what NMS over the boxes above it would, for one global
    threshold), capped at ``max_boxes`` per image only once a threshold is applied."""
    if base.nms_iou >= 1 or not len(detections):
        return detections
    keep = torch.zeros(len(detections), dtype=torch.bool)
    keep[nms(detections.boxes, detections.scores, base.nms_iou)] = True
    return detections.select(keep)


def _review_seconds(shown: Detections, truth: LabeledImage, cost: CostModel) -> float:
    edits, _ = oracle_edits(shown, truth, Certainty(0.0, 1.0), cooperative=False)
    return cost.seconds(edits)


def _best(grid: Sequence[float], seconds) -> float:
    values = [seconds(t) for t in grid]
    low = min(values)
    first = values.index(low)
    last = first
    while last + 1 < len(values) and values[last + 1] == low:
        last += 1
    return grid[(first + last) // 2]


def _right(shown: Detections, truth: LabeledImage) -> torch.Tensor:
    """Per shown box: is it a true object's (IoU >= 0.5, one to one, same class)?"""
    right = torch.zeros(len(shown), dtype=torch.bool)
    for p, t, _ in match_boxes(shown.boxes, truth.boxes):
        right[p] = int(shown.labels[p]) == int(truth.labels[t])
    return right


def _scored_flags(detections, truths) -> tuple[torch.Tensor, torch.Tensor]:
    """Every box's score and whether it is right, over all images."""
    scores = [d.scores for d in detections] + [torch.zeros(0)]
    right = [_right(d, t) for d, t in zip(detections, truths, strict=True)] + [torch.zeros(0, dtype=torch.bool)]
    return torch.cat(scores), torch.cat(right)


def _certain_threshold(shown, truths, lowest: float, target: float, minimum: int) -> float:
    scores, right = _scored_flags(shown, truths)
    for threshold in [t for t in GRID if t >= lowest]:
        above = scores >= threshold
        count = int(above.sum())
        if count >= minimum and wilson_lower_bound(int(right[above].sum()), count) >= target:
            return threshold
    return 1.0


def wilson_lower_bound(successes: int, trials: int, z: float = 1.645) -> float:
    """The one-sided lower bound of a proportion by the Wilson score interval (z = 1.645: 95%)."""
    if trials == 0:
        return 0.0
    p, n = successes / trials, trials
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n)


def _precision_by_decile(candidates, truths) -> tuple[float, ...]:
    """The held-out share of right boxes per score decile; a decile without boxes takes the
    share over all boxes, and 0 when there are none."""
    scores, right = _scored_flags(candidates, truths)
    overall = float(right.float().mean()) if len(right) else 0.0
    bins = (scores * PRECISION_BINS).long().clamp(max=PRECISION_BINS - 1)
    return tuple(
        round(float(right[bins == b].float().mean()), 4) if bool((bins == b).any()) else round(overall, 4)
        for b in range(PRECISION_BINS)
    )
