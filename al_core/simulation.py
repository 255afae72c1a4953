"""Simulated annotation cycles with the labels as the oracle (ALBench's idea).

For every strategy and seed, under one fixed protocol: a seeded random initial labeled set
(the same for every strategy of a seed), then cycles of the service's own loop
(al_core.cycle_loop: train, calibrate, a last pass, score, order for people) with the oracle
as the label source: evaluate on a fixed test split, then buy the next labels. Each cycle's state
(labeled ids, metrics, timings) and the model are written to disk, so an interrupted run
resumes where it stopped. ``report`` turns the rows into a table, a plot and the two figures
users care about: mAP gained over random, and labels saved to reach random's final mAP.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass, field, fields, replace
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from .annotation_cost import CostModel
from .cooperation import BoxEdits, correct_boxes, oracle_edits, pseudo_labels
from .cycle_loop import CycleHooks, CycleLabels, CyclePlan, CycleResult, Trained, run_cycle
from .datasets import DigitCanvasConfig, read_dataset, write_digit_canvases
from .detectors import Detector
from .display import Display
from .evaluation import evaluate
from .priority import PriorityRule
from .scoring import SCORERS
from .training import TrainConfig, loss_spearman
from .types import LabeledImage

ORACLE_RANKINGS = ("edit_rate", "edits_per_second")  # StrategySpec.oracle: see oracle_order
# Today's display before calibration, the reference the calibrated one is measured against:
# boxes from 0.3, certain from 0.7, the detector's per-class NMS only.
FIXED_DISPLAY = Display(threshold=0.3, certain=0.7, nms_iou=1.0)
SPEARMAN_SAMPLE = 64  # unlabeled images on which the loss head's ranking is checked each cycle


@dataclass(frozen=True)
class StrategySpec:
    name: str
    params: dict = field(default_factory=dict)  # the scorer's parameters
    label: str = ""
    train: dict = field(default_factory=dict)  # TrainConfig fields this strategy changes
    # Human-machine cooperation (al_core.cooperation): {"box_level": true} makes the oracle
    # review only uncertain boxes and accept certain ones unseen; {"self_labeling": N} adds up
    # to N pseudo-labeled images per cycle (loss weight: train.pseudo_weight); "certain" and
    # "uncertain" fix the box thresholds (otherwise each cycle's calibration chooses them).
    cooperation: dict = field(default_factory=dict)
    # al_core.priority's rule: {"cost_aware": true} ranks per expected second, and
    # {"near_duplicates": true} pushes near copies of a chosen or labeled image to the end,
    # {"sampling": "power"} draws the order in proportion to the score.
    priority: dict = field(default_factory=dict)
    # A diagnostic, not a strategy a service can run: rank by the model's true errors on each
    # image (ORACLE_RANKINGS), the scorer's ranking breaking ties. "": the scorer ranks.
    oracle: str = ""

    def fixed_display(self, base: Display) -> Display | None:
        """The display this strategy fixes with "certain"/"uncertain", or None (calibrated)."""
        if not {"certain", "uncertain"} & set(self.cooperation):
            return None
        given = self.cooperation
        return replace(base, threshold=given.get("uncertain", 0.3), certain=given.get("certain", base.certain))

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass
class SimulationConfig:
    out_dir: str
    dataset: dict  # {"generate": {count, DigitCanvasConfig fields}} or {"path": ..., "image_root": ...}
    strategies: list[StrategySpec]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    test_fraction: float = 0.2
    initial: int = 20
    per_cycle: int = 20
    cycles: int = 5
    # "images", "boxes" or "seconds": what initial and per_cycle count; seconds are a person's
    # time by the cost model, from scratch for the first set, from the shown boxes after.
    budget_unit: str = "images"
    detector: str = "cpu_preset"
    pretrained: str = "backbone"
    image_size: int = 0
    epochs_first: int = 12
    epochs_per_cycle: int = 6
    min_steps: int = 0  # TrainConfig.min_steps: each training takes at least this many steps
    fine_tune: bool = True
    batch_size: int = 4
    lr: float = 1e-3
    budget_for_diversity: int = 0  # 0: per_cycle
    device: str = "auto"
    # Labeled images held out of training each cycle, as the service does (none under 5 labeled
    # images): they choose the weights and calibrate what people are shown; 0: none.
    held_out_fraction: float = 0.2
    # The service's CALIBRATION_MIN_IMAGES: under it, the fixed thresholds are shown.
    calibration_min_images: int = 5
    # The service's rule: after calibration, a short pass over every label, held-out ones too
    # (al_core.training.final_pass); False: the held-out images never train.
    final_pass: bool = True
    cost: dict = field(default_factory=dict)  # CostModel fields (seconds per action)
    # Display fields (nms_iou, max_boxes) and calibration's precision_target for certain boxes.
    display: dict = field(default_factory=dict)

    def cost_model(self) -> CostModel:
        return CostModel(**self.cost)

    def base_display(self) -> Display:
        return Display(**{k: v for k, v in self.display.items() if k != "precision_target"})

    @classmethod
    def load(cls, path: str | Path, **overrides) -> SimulationConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        specs = []
        for item in raw.pop("strategies"):
            specs.append(StrategySpec(item) if isinstance(item, str) else StrategySpec(**item))
        config = cls(strategies=specs, **raw)
        config.check()
        return config

    def check(self) -> None:
        unknown = [s.name for s in self.strategies if s.name not in SCORERS]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose among {sorted(SCORERS)}")
        if self.budget_unit not in ("images", "boxes", "seconds"):
            raise ValueError("budget_unit is 'images', 'boxes' or 'seconds'")
        if len({s.key for s in self.strategies}) != len(self.strategies):
            raise ValueError("two strategies share a name: give them distinct 'label's")
        known = {f.name for f in fields(TrainConfig)}
        for spec in self.strategies:
            if set(spec.train) - known:
                raise ValueError(f"{spec.key}: unknown training fields {sorted(set(spec.train) - known)}")
            unknown = set(spec.cooperation) - {"box_level", "self_labeling", "certain", "uncertain"}
            if unknown:
                raise ValueError(f"{spec.key}: unknown cooperation options {sorted(unknown)}")
            spec.fixed_display(self.base_display())  # checks the thresholds
            PriorityRule(**spec.priority)
            if spec.oracle and spec.oracle not in ORACLE_RANKINGS:
                raise ValueError(f"{spec.key}: oracle is one of {ORACLE_RANKINGS}, got {spec.oracle!r}")
        self.cost_model()
        unknown = set(self.display) - {"nms_iou", "max_boxes", "precision_target"}
        if unknown:
            raise ValueError(f"unknown display options {sorted(unknown)}")


def load_data(config: SimulationConfig) -> tuple[list[LabeledImage], list[LabeledImage], tuple[str, ...]]:
    """(pool, test, class names): the test split is fixed by the dataset, not by the run's seed."""
    if "generate" in config.dataset:
        options = dict(config.dataset["generate"])
        count = options.pop("count")
        for key in ("digits_per_image", "scale_range"):
            if key in options:
                options[key] = tuple(options[key])
        folder = Path(config.out_dir) / "data"
        coco = folder / "digits.json"
        if not coco.exists():
            write_digit_canvases(folder, count, DigitCanvasConfig(**options))
        data = read_dataset(coco)
    else:
        data = read_dataset(config.dataset["path"], config.dataset.get("image_root"))
    order = list(range(len(data.images)))
    random.Random(12345).shuffle(order)
    cut = round(config.test_fraction * len(order))
    test = [data.images[i] for i in sorted(order[:cut])]
    pool = [data.images[i] for i in sorted(order[cut:])]
    return pool, test, data.class_names


def select(
    order: list[int], pool: list[LabeledImage], amount: float, unit: str, seconds: Callable[[int], float] | None = None
) -> list[int]:
    """The first images of ``order`` worth ``amount`` images, boxes, or seconds of a person's
    time (``seconds(index)``: what labeling that image costs)."""
    if unit == "images":
        return order[: int(amount)]
    price = (lambda index: len(pool[index].labels)) if unit == "boxes" else seconds
    chosen, spent = [], 0.0
    for index in order:
        if spent >= amount:
            break
        chosen.append(index)
        spent += price(index)
    return chosen


def _as_json(image: LabeledImage) -> dict:
    return {"path": image.path, "boxes": image.boxes.tolist(), "labels": image.labels.tolist()}


def _from_json(item: dict) -> LabeledImage:
    return LabeledImage(item["path"], torch.tensor(item["boxes"]).reshape(-1, 4), torch.tensor(item["labels"]).long())


def _pseudo_precision(pseudo: list[LabeledImage], truth: dict[str, LabeledImage]) -> float | None:
    """The share of pseudo-label boxes that are a true object's (IoU >= 0.5, same class)."""
    boxes = sum(len(p.labels) for p in pseudo)
    right = sum(correct_boxes(p.boxes, p.labels, truth[p.path]) for p in pseudo)
    return right / boxes if boxes else None


@dataclass
class _Labels:
    """What a run has bought so far: the labeled pool indices, the label each carries (the
    truth, or with box-level cooperation the pre-annotation with its certain boxes accepted
    unseen), the self-labeled images, the labeled set one cycle before (the rest is "recent")
    and the person-seconds spent."""

    labeled: list[int]
    labels: dict[int, LabeledImage]
    pseudo: list[LabeledImage] = field(default_factory=list)
    previous: list[int] = field(default_factory=list)
    spent: float = 0.0

    def to_json(self) -> dict:
        return {
            "labeled_next": self.labeled,
            "labels_next": {str(i): _as_json(label) for i, label in self.labels.items()},
            "pseudo_next": [_as_json(p) for p in self.pseudo],
            "labeled_seconds_next": self.spent,
        }

    @classmethod
    def from_json(cls, state: dict, pool: list[LabeledImage], spent: float) -> _Labels:
        labeled = state["labeled_next"]
        labels = {int(i): _from_json(item) for i, item in state.get("labels_next", {}).items()}
        pseudo = [_from_json(item) for item in state.get("pseudo_next", [])]
        spent = state.get("labeled_seconds_next", spent)
        return cls(labeled, labels or {i: pool[i] for i in labeled}, pseudo, state["labeled"], spent)


def _initial(config: SimulationConfig, pool: list[LabeledImage], seed: int) -> _Labels:
    """The same first set for every strategy of a seed, bought at the budget's unit, from scratch."""
    rng, cost = random.Random(seed), config.cost_model()
    if config.budget_unit == "images":
        labeled = sorted(rng.sample(range(len(pool)), config.initial))
    else:
        order = rng.sample(range(len(pool)), len(pool))
        from_scratch = lambda index: cost.from_scratch(len(pool[index].labels))  # noqa: E731
        labeled = sorted(select(order, pool, config.initial, config.budget_unit, from_scratch))
    spent = sum(cost.from_scratch(len(pool[i].labels)) for i in labeled)
    return _Labels(labeled, {i: pool[i] for i in labeled}, spent=spent)


def run_one(config: SimulationConfig, strategy: StrategySpec, seed: int, pool, test, class_names) -> list[dict]:
    """All cycles of one strategy and seed, each the service's cycle (al_core.cycle_loop) with
    the oracle as its label source; resumes from the cycle files it finds."""
    folder = Path(config.out_dir) / "runs" / f"{strategy.key}__seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    state, rows, detector = _initial(config, pool, seed), [], None
    for cycle in range(config.cycles + 1):
        state_file = folder / f"cycle_{cycle}.json"
        if state_file.exists():  # done before an interruption
            saved = json.loads(state_file.read_text())
            rows.append(saved["row"])
            state, detector = _Labels.from_json(saved, pool, state.spent), None
            continue
        detector = _cycle_detector(config, strategy, seed, cycle, detector, folder / "model.pt", class_names)
        oracle = _Oracle(config, strategy, seed, cycle, pool, test, state, folder / "model.pt")
        labels, plan = _cycle_labels(config, cycle, pool, state), _plan(config, strategy, seed, cycle, pool, state)
        run_cycle(labels, detector, plan, oracle)
        oracle.following.previous = state.labeled
        state_file.write_text(json.dumps({"row": oracle.row, "labeled": state.labeled, **oracle.following.to_json()}))
        rows.append(oracle.row)
        state = oracle.following
    return rows


def _cycle_detector(config, strategy: StrategySpec, seed: int, cycle: int, detector, checkpoint: Path, class_names):
    """The model this cycle trains: the last one fine-tuned (read back after a resume), or a
    fresh one."""
    if detector is None and checkpoint.exists() and config.fine_tune and cycle > 0:
        detector = Detector.load(checkpoint, device=config.device)
    if detector is None or not config.fine_tune:
        torch.manual_seed(seed)
        needs_head = "loss_head" in SCORERS[strategy.name].needs
        detector = Detector.create(
            config.detector, class_names, config.pretrained, config.image_size or None, config.device, needs_head
        )
    return detector


def _cycle_labels(config: SimulationConfig, cycle: int, pool: list[LabeledImage], state: _Labels) -> CycleLabels:
    """The labels bought so far, the new ones since the last cycle, and the pool left to score
    (none in the last cycle: nothing is bought after it)."""
    labeled = set(state.labeled)
    recent = {pool[i].path for i in labeled - set(state.previous)} if state.previous else set()
    unlabeled = [pool[i].path for i in range(len(pool)) if i not in labeled] if cycle < config.cycles else []
    return CycleLabels([state.labels[i] for i in state.labeled], recent, unlabeled, state.pseudo)


def _plan(config: SimulationConfig, strategy: StrategySpec, seed: int, cycle: int, pool, state: _Labels) -> CyclePlan:
    """The service's cycle under the simulation's protocol and this strategy."""
    epochs = config.epochs_first if cycle == 0 or not config.fine_tune else config.epochs_per_cycle
    protocol = {"epochs": epochs, "batch_size": config.batch_size, "lr": config.lr, "min_steps": config.min_steps}
    train = TrainConfig(**(protocol | strategy.train), seed=seed + cycle)  # a strategy's own fields win
    base = config.base_display()
    return CyclePlan(
        strategy.name,
        train,
        config.cost_model(),
        base,
        params=strategy.params,
        fixed_display=strategy.fixed_display(base),
        held_out_fraction=config.held_out_fraction,
        calibration_min_images=config.calibration_min_images,
        precision_target=config.display.get("precision_target", 0.95),
        final_pass=config.final_pass,
        priority=PriorityRule(**strategy.priority),
        budget=config.budget_for_diversity or _images_per_cycle(config, pool, state.labeled, state.spent),
        seed=seed * 1000 + cycle,
    )


@dataclass
class _Oracle(CycleHooks):
    """The simulator's hooks: measure the trained model on the test split and keep it for the
    next cycle, then buy the next labels from the oracle (the cycle's row and labels)."""

    config: SimulationConfig
    strategy: StrategySpec
    seed: int
    cycle: int
    pool: list[LabeledImage]
    test: list[LabeledImage]
    state: _Labels
    checkpoint: Path
    row: dict = field(default_factory=dict)
    following: _Labels | None = None

    def after_train(self, detector: Detector, trained: Trained) -> Detector:
        self.row = _measure(self, detector, trained)
        detector.save(self.checkpoint, f"{self.strategy.key}-seed{self.seed}-cycle{self.cycle}")
        return detector

    def after_score(self, result: CycleResult) -> None:
        self.row.update(scoring_seconds=round(result.scoring_seconds, 2), rule=result.rule)
        if self.cycle == self.config.cycles:
            state = self.state
            self.following = _Labels(state.labeled, state.labels, state.pseudo, spent=state.spent)
            return
        self.following = _buy_labels(self, result)


def _measure(oracle: _Oracle, detector: Detector, trained: Trained) -> dict:
    """The cycle's row: what was bought so far, the test split's mAP, the display chosen."""
    state, pool, display = oracle.state, oracle.pool, trained.display
    metrics = evaluate(detector, oracle.test)
    return {
        "strategy": oracle.strategy.key,
        "seed": oracle.seed,
        "cycle": oracle.cycle,
        "labeled_images": len(state.labeled),
        "labeled_boxes": sum(len(pool[i].labels) for i in state.labeled),
        "labeled_seconds": round(state.spent, 1),
        "held_out_images": len(trained.held_out),
        "map50": metrics["map50"],
        "map": metrics["map"],
        "map50_per_class": metrics["map50_per_class"],  # where a strategy's mAP goes (bench/class_balance.py)
        "train_seconds": round(trained.result.seconds, 2),
        "epochs": trained.result.epochs,  # fewer than asked: stopped early on the held-out split
        "stopped_early": trained.result.stopped_early,
        "scoring_seconds": 0.0,
        "rule": "",
        "display_threshold": display.threshold if display.show else None,
        "certain_threshold": display.certain,
        "pseudo_images": len(state.pseudo),
        "pseudo_boxes": sum(len(p.labels) for p in state.pseudo),
        "pseudo_precision": _pseudo_precision(state.pseudo, {image.path: image for image in pool}),
    }


def _buy_labels(oracle: _Oracle, result: CycleResult) -> _Labels:
    """Hand the images in people's order to the oracle until the cycle's budget is spent, and
    self-label the rest if asked; the labels for the next cycle. Its figures go into the row."""
    config, strategy, pool, state, row = oracle.config, oracle.strategy, oracle.pool, oracle.state, oracle.row
    cost, display = config.cost_model(), result.trained.display
    index = {image.path: i for i, image in enumerate(pool)}
    detections = {image.path: image.detections for image in result.scored}
    if result.detector.has_loss_head:  # can the loss head rank at all? (the oracle knows the losses)
        rng = random.Random(oracle.seed * 1000 + oracle.cycle)
        sample = rng.sample(result.scored, min(SPEARMAN_SAMPLE, len(result.scored)))
        predicted = [image.detections.predicted_loss for image in sample]
        row["loss_spearman"] = loss_spearman(result.detector, [pool[index[s.path]] for s in sample], predicted)
    ranked = [index[image.path] for image in result.for_people]
    if strategy.oracle:
        ranked = oracle_order(ranked, pool, detections, display, cost, strategy.oracle)
    box_level = bool(strategy.cooperation.get("box_level"))
    price = _price(pool, detections, display, cost, box_level)
    chosen = select(ranked, pool, config.per_cycle, config.budget_unit, price)
    work, labels = _label_chosen(chosen, pool, detections, display, cost, strategy, state.labels)
    row.update(work)
    spent = state.spent + work["seconds_cooperative" if box_level else "seconds_with_preannotations"]
    bought = set(chosen)
    left = {image.path: image.shown for image in result.scored if index[image.path] not in bought}
    self_labeling = int(strategy.cooperation.get("self_labeling", 0))
    pseudo = pseudo_labels(left, display.certainty(), self_labeling) if self_labeling else []
    return _Labels(sorted(state.labeled + chosen), labels, pseudo, spent=spent)


def oracle_order(ranked: list[int], pool, detections, display: Display, cost: CostModel, key: str) -> list[int]:
    """``ranked`` re-ordered by the model's true errors on each image, most first; ties keep
    their order. "edit_rate": the share of the image's box actions (every shown box reviewed)
    that are edits, the truth behind a mean doubt over the shown boxes; "edits_per_second":
    edits per second of labeling, the truth behind ranking doubt per expected second."""

    def errors(index: int) -> float:
        shown = display.shown(detections[pool[index].path])
        edits, _ = oracle_edits(shown, pool[index], display.certainty(), cooperative=False)
        if key == "edits_per_second":
            return edits.edits / cost.seconds(edits)
        return edits.edits / max(1, edits.edits + edits.checked)

    return sorted(ranked, key=errors, reverse=True)  # a stable sort: ties keep the scorer's order


def _images_per_cycle(config: SimulationConfig, pool, labeled: list[int], spent: float) -> int:
    """The images a cycle's budget buys, for set-level scorers: per_cycle itself, or per_cycle
    boxes or seconds at what a labeled image has cost so far."""
    if config.budget_unit == "images":
        return config.per_cycle
    per_image = (
        spent / len(labeled)
        if config.budget_unit == "seconds"
        else sum(len(pool[i].labels) for i in labeled) / len(labeled)
    )
    return max(1, round(config.per_cycle / max(per_image, 1e-6)))


def _price(pool, detections, display: Display, cost: CostModel, box_level: bool) -> Callable[[int], float]:
    """What labeling pool image ``index`` from its shown boxes costs the oracle, in seconds."""

    def seconds(index: int) -> float:
        shown = display.shown(detections[pool[index].path])
        return cost.seconds(oracle_edits(shown, pool[index], display.certainty(), cooperative=box_level)[0])

    return seconds


def _label_chosen(chosen, pool, detections, display, cost, strategy, labels) -> tuple[dict, dict]:
    """The oracle labels the chosen images; (its work counted four ways, the labels after).

    From scratch; from the shown pre-annotation with every shown box reviewed; with box-level
    review (certain boxes accepted unseen); and from today's fixed display (FIXED_DISPLAY),
    every box reviewed, as the reference calibration is measured against."""
    review, cooperative, fixed = BoxEdits(0, 0, 0, 0, 0), BoxEdits(0, 0, 0, 0, 0), BoxEdits(0, 0, 0, 0, 0)
    seconds = {"seconds_from_scratch": 0.0, "seconds_with_preannotations": 0.0, "seconds_cooperative": 0.0,
               "seconds_fixed_threshold": 0.0}  # fmt: skip
    accepted = noise = 0
    certainty, next_labels = display.certainty(), dict(labels)
    for i in chosen:
        truth, shown = pool[i], display.shown(detections[pool[i].path])
        full, _ = oracle_edits(shown, truth, certainty, cooperative=False)
        coop, label = oracle_edits(shown, truth, certainty, cooperative=True)
        old, _ = oracle_edits(FIXED_DISPLAY.shown(detections[truth.path]), truth, FIXED_DISPLAY.certainty(), False)
        review, cooperative, fixed = _add(review, full), _add(cooperative, coop), _add(fixed, old)
        seconds["seconds_from_scratch"] += cost.from_scratch(len(truth.labels))
        seconds["seconds_with_preannotations"] += cost.seconds(full)
        seconds["seconds_cooperative"] += cost.seconds(coop)
        seconds["seconds_fixed_threshold"] += cost.seconds(old)
        accepted += int(certainty.is_certain(shown.scores).sum())
        noise += _noisy_boxes(label, truth)
        next_labels[i] = label if strategy.cooperation.get("box_level") else truth
    work = {
        "chosen": len(chosen),
        "boxes_from_scratch": review.from_scratch,
        "edits_full_review": review.edits,
        "edits_added": review.added,  # its kinds: objects the model missed, drawn
        "edits_removed": review.removed,  # wrong boxes deleted
        "edits_corrected": review.corrected,  # right object, wrong class or loose box
        "edits_cooperative": cooperative.edits,
        "edits_fixed_threshold": fixed.edits,
        "cooperative_accepted_boxes": accepted,
        "cooperative_wrong_boxes_kept": noise,
        **{key: round(value, 1) for key, value in seconds.items()},
    }
    return work, next_labels


def _add(a: BoxEdits, b: BoxEdits) -> BoxEdits:
    return BoxEdits(*(x + y for x, y in zip(astuple(a), astuple(b), strict=True)))


def _noisy_boxes(label: LabeledImage, truth: LabeledImage) -> int:
    """Boxes of ``label`` that are no true object's (wrong boxes accepted unseen)."""
    return len(label.labels) - correct_boxes(label.boxes, label.labels, truth)


def simulate(config: SimulationConfig, progress: bool = True) -> list[dict]:
    pool, test, class_names = load_data(config)
    out = Path(config.out_dir)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    rows = []
    runs = [(s, seed) for seed in config.seeds for s in config.strategies]
    for strategy, seed in tqdm(runs, desc="simulation", disable=not progress):
        rows += run_one(config, strategy, seed, pool, test, class_names)
        (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows
