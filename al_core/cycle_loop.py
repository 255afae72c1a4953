"""One annotation cycle, the same steps for the service and the simulator (DESIGN.md):

    labels from a source -> train (a held-out share of the newest labels chooses the weights
    and calibrates what people are shown, then a last pass over every label) -> a version ->
    score the unlabeled pool -> order it for people -> hooks.

The service's source reads Label Studio, and its hooks save and serve a version, push to Label
Studio and write the exports (backend/cycle.py). The simulator's source is the labels bought so
far, and its hooks measure on the test split and buy the next labels from the oracle
(al_core/simulation.py). Training and scoring run in process or on Ray (``Execution``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .annotation_cost import CostModel
from .detectors import Detector
from .display import Display, calibrate
from .evaluation import evaluate
from .pool import ScoredPool, detect, image_features, score_pool
from .priority import PriorityRule, prioritize
from .ray_scoring import RayOptions, ray_can_score, score_pool_ray
from .ray_training import train_detector_ray
from .scoring import ScoringContext
from .selection import people_order
from .training import TrainConfig, TrainResult, final_pass, split_held_out, train_detector
from .types import Detections, ImageScore, LabeledImage

log = logging.getLogger(__name__)


@dataclass
class CycleLabels:
    """What a source gives one cycle: the human labels, which of them are new since the model
    the cycle starts from (by path), the unlabeled images to score (local paths, each once) and
    the images labeled by the model itself (CEAL's self-labeling), kept apart."""

    samples: list[LabeledImage]
    recent: set[str] = field(default_factory=set)
    pool: list[str] = field(default_factory=list)
    pseudo: list[LabeledImage] = field(default_factory=list)


@dataclass(frozen=True)
class Execution:
    """Where training and scoring run: ``local`` (in process) or ``ray`` (DDP training workers,
    scoring replicas); what Ray cannot run falls back to the process."""

    kind: str = "local"
    ray_address: str = ""
    train_workers: int = 1
    score_replicas: int = 2
    batch_size: int = 16


@dataclass(frozen=True)
class CyclePlan:
    """How one cycle trains, shows and scores."""

    strategy: str
    train: TrainConfig
    cost: CostModel
    display: Display  # NMS, the box cap, and the thresholds shown until calibration
    params: dict = field(default_factory=dict)  # the scorer's
    fixed_display: Display | None = None  # thresholds set by hand: calibration is not served
    held_out_fraction: float = 0.2
    calibration_min_images: int = 5
    precision_target: float = 0.95
    final_pass: bool = True
    priority: PriorityRule = field(default_factory=PriorityRule)
    budget: int = 100  # the images a person gets first (set-level scorers, near copies)
    seed: int = 0
    execution: Execution = field(default_factory=Execution)
    state_path: Path | None = None  # training state for resume
    log_dir: Path | None = None  # TensorBoard


@dataclass
class Trained:
    """One cycle's training: its result, the held-out labels, the display people get, and the
    figures a version records."""

    result: TrainResult
    held_out: list[LabeledImage]
    display: Display
    metrics: dict


@dataclass(frozen=True)
class ScoredImage:
    """One unlabeled image after scoring: every candidate box (without per-box features) and
    what the cycle's display shows a person."""

    path: str
    score: ImageScore
    detections: Detections
    shown: Detections


@dataclass
class CycleResult:
    detector: Detector
    trained: Trained
    scored: list[ScoredImage]  # in the priority rule's order
    order: list[int]  # indices into ``scored`` a person may be handed, most informative first
    rule: str
    scoring_seconds: float

    @property
    def for_people(self) -> list[ScoredImage]:
        return [self.scored[i] for i in self.order]


class CycleHooks:
    """What the service and the simulator add to the loop; each step does nothing by default."""

    def progress(self, fraction: float, stage: str) -> None:
        pass

    def after_train(self, detector: Detector, trained: Trained) -> Detector:
        """The model to score with (the service saves a version and serves it from its cache)."""
        return detector

    def after_score(self, result: CycleResult) -> None:
        pass


def run_cycle(labels: CycleLabels, detector: Detector, plan: CyclePlan, hooks: CycleHooks) -> CycleResult:
    """Train on ``labels``, hand the model to ``hooks.after_train``, score the pool and order it."""
    trained = train_cycle(detector, labels, plan, hooks)
    detector = hooks.after_train(detector, trained)
    result = score_cycle(detector, labels, plan, trained, hooks)
    hooks.after_score(result)
    return result


def train_cycle(detector: Detector, labels: CycleLabels, plan: CyclePlan, hooks: CycleHooks) -> Trained:
    """Train on the labels minus a held-out share of the newest (they choose the weights and set
    the display), then a last pass over every label: the served model learns from all of them,
    while its figures come from images it had not seen."""
    samples = labels.samples
    train, held_out = split_held_out(samples, plan.held_out_fraction, plan.train.seed, recent=labels.recent)
    result = _fit(detector, train, held_out, labels.pseudo, plan, hooks)
    metrics = dict(result.metrics)
    if not held_out:
        hooks.progress(0.66, "evaluating (on the training images: too few to hold any out)")
        metrics = {**evaluate(detector, train), "evaluated_on": "training images"}
    metrics.update(epochs=result.epochs, stopped_early=result.stopped_early, seconds=round(result.seconds, 1))
    metrics.update(labeled=len(samples), held_out=len(held_out), pseudo_labeled=len(labels.pseudo))
    hooks.progress(0.68, "calibrating what people are shown on the held-out images")
    display, about = calibration(detector, held_out, plan)
    metrics.update(about)
    if held_out and plan.final_pass:
        last = final_pass(plan.train, plan.held_out_fraction)
        hooks.progress(0.69, f"a last pass over every label, held-out images too ({last.epochs} epochs)")
        train_detector(detector, samples, last, pseudo=labels.pseudo)
        metrics.update(final_pass_epochs=last.epochs)
    return Trained(result, held_out, plan.fixed_display or display, metrics)


def calibration(detector: Detector, held_out: list[LabeledImage], plan: CyclePlan) -> tuple[Display, dict]:
    """The display calibrated on the held-out images (al_core.display) with what a version
    records of it, or the plan's thresholds and a note when too few images were held out."""
    if len(held_out) < plan.calibration_min_images:
        note = (f"{len(held_out)} held-out images, under CALIBRATION_MIN_IMAGES ({plan.calibration_min_images}): "
                "the fixed thresholds stay")  # fmt: skip
        return plan.display, {"calibration": {"images": len(held_out), "note": note}}
    detections = detect(detector, [image.path for image in held_out], plan.execution.batch_size)
    result = calibrate(detections, held_out, plan.cost, plan.display, plan.precision_target)
    about = {"images": result.images, "seconds_from_scratch": result.seconds_from_scratch}
    about.update(seconds_shown=result.seconds_shown, cost_model=plan.cost.describe())
    return result.display, {"display": result.display.to_dict(), "calibration": about}


def _fit(detector: Detector, train, held_out, pseudo, plan: CyclePlan, hooks: CycleHooks) -> TrainResult:
    """One training run, on Ray's DDP workers when asked and possible, else in process."""
    run = plan.execution
    if run.kind == "ray" and run.train_workers > 1 and not detector.has_loss_head and not pseudo:
        hooks.progress(0.05, f"training on Ray: {run.train_workers} DDP workers")
        log.info("training on Ray with %d DDP workers", run.train_workers)
        work = plan.state_path.parent if plan.state_path else None
        cuda = detector.device.type == "cuda"
        return train_detector_ray(detector, train, plan.train, held_out, run.train_workers, cuda, run.ray_address, work)
    return train_detector(
        detector,
        train,
        plan.train,
        held_out,
        on_progress=lambda fraction, stage: hooks.progress(0.05 + 0.6 * fraction, stage),
        state_path=plan.state_path,
        pseudo=pseudo,
        log_dir=plan.log_dir,
    )


def score_cycle(
    detector: Detector, labels: CycleLabels, plan: CyclePlan, trained: Trained, hooks: CycleHooks
) -> CycleResult:
    """Every pool image scored with the plan's strategy (on Ray when asked and possible), in the
    priority rule's order, with what a person is shown of it. An empty pool scores nothing."""
    if not labels.pool:
        return CycleResult(detector, trained, [], [], "", 0.0)
    hooks.progress(0.75, f"scoring {len(labels.pool)} unlabeled images with {plan.strategy}")
    display, kept = trained.display, {}

    def keep(path: str, det: Detections) -> None:
        kept[path] = replace(det, box_features=None, class_probs=None)

    start = time.perf_counter()
    context = ScoringContext(labeled=labels.samples, budget=plan.budget, seed=plan.seed, display=display)
    scored = _score(detector, labels.pool, plan, context, keep)
    scored.scores = _prioritized(detector, scored, labels.samples, kept, plan, display)
    pairs = zip(scored.keys, scored.scores, strict=True)
    images = [ScoredImage(path, score, kept[path], display.shown(kept[path])) for path, score in pairs]
    order = people_order(scored.keys, scored.scores)
    return CycleResult(detector, trained, images, order, scored.rule, time.perf_counter() - start)


def _score(detector: Detector, paths: list[str], plan: CyclePlan, context: ScoringContext, keep) -> ScoredPool:
    run = plan.execution
    checkpoint = detector.version.checkpoint
    if run.kind == "ray" and checkpoint and ray_can_score(plan.strategy, plan.params, detector):
        options = RayOptions(run.ray_address, run.score_replicas, 1.0 if detector.device.type == "cuda" else 0)
        log.info("scoring %d images on Ray (%d replicas)", len(paths), options.replicas)
        return score_pool_ray(
            checkpoint, paths, plan.strategy, plan.params, context, run.batch_size, options, on_detections=keep
        )
    return score_pool(detector, paths, plan.strategy, plan.params, context, run.batch_size, on_detections=keep)


def _prioritized(detector, scored: ScoredPool, samples, kept, plan: CyclePlan, display: Display) -> list[ImageScore]:
    """The scores in the priority rule's order (al_core.priority): per expected second, drawn,
    near copies of a chosen or labeled image last."""
    rule = plan.priority
    if not rule.reorders:
        return scored.scores
    seconds = [display.expected_seconds(kept[p], plan.cost) for p in scored.keys] if rule.cost_aware else None
    features = seen = None
    if rule.near_duplicates:
        features = torch.stack([kept[p].image_features for p in scored.keys])
        seen = image_features(detector, [s.path for s in samples], plan.execution.batch_size)
    return prioritize(scored.keys, scored.scores, rule, seconds, features, plan.budget, seen, plan.seed)
