"""Simulated annotation cycles with the labels as the oracle (ALBench's idea).

For every strategy and seed, under one fixed protocol: a seeded random initial labeled set
(the same for every strategy of a seed), then cycles of train -> evaluate on a fixed test
split -> score the unlabeled pool -> select a batch -> reveal its labels. Each cycle's state
(labeled ids, metrics, timings) and the model are written to disk, so an interrupted run
resumes where it stopped. ``report`` turns the rows into a table, a plot and the two figures
users care about: mAP gained over random, and labels saved to reach random's final mAP.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, astuple, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from .cooperation import BoxEdits, correct_boxes, oracle_edits, pseudo_labels
from .datasets import DigitCanvasConfig, read_dataset, write_digit_canvases
from .detectors import Detector
from .evaluation import evaluate
from .pool import score_pool
from .scoring import SCORERS, ScoringContext
from .selection import ranking
from .training import TrainConfig, train_detector
from .types import Certainty, Detections, LabeledImage


@dataclass(frozen=True)
class StrategySpec:
    name: str
    params: dict = field(default_factory=dict)  # the scorer's parameters
    label: str = ""
    train: dict = field(default_factory=dict)  # TrainConfig fields this strategy changes
    # Human-machine cooperation (al_core.cooperation): {"box_level": true} makes the oracle
    # review only uncertain boxes and accept certain ones unseen; {"self_labeling": N} adds up
    # to N pseudo-labeled images per cycle (loss weight: train.pseudo_weight); "certain" and
    # "uncertain" set the box thresholds (default 0.7 and 0.3).
    cooperation: dict = field(default_factory=dict)

    def certainty(self) -> Certainty:
        return Certainty(self.cooperation.get("uncertain", 0.3), self.cooperation.get("certain", 0.7))

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
    budget_unit: str = "images"  # or "boxes": per_cycle counts boxes, as annotation cost does
    detector: str = "cpu_preset"
    pretrained: str = "backbone"
    image_size: int = 0
    epochs_first: int = 12
    epochs_per_cycle: int = 6
    fine_tune: bool = True
    batch_size: int = 4
    lr: float = 1e-3
    budget_for_diversity: int = 0  # 0: per_cycle
    device: str = "auto"

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
        if self.budget_unit not in ("images", "boxes"):
            raise ValueError("budget_unit is 'images' or 'boxes'")
        if len({s.key for s in self.strategies}) != len(self.strategies):
            raise ValueError("two strategies share a name: give them distinct 'label's")
        known = {f.name for f in fields(TrainConfig)}
        for spec in self.strategies:
            if set(spec.train) - known:
                raise ValueError(f"{spec.key}: unknown training fields {sorted(set(spec.train) - known)}")
            unknown = set(spec.cooperation) - {"box_level", "self_labeling", "certain", "uncertain"}
            if unknown:
                raise ValueError(f"{spec.key}: unknown cooperation options {sorted(unknown)}")
            spec.certainty()  # checks the thresholds


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


def select(order: list[int], pool: list[LabeledImage], amount: int, unit: str) -> list[int]:
    """The first images of ``order`` worth ``amount`` images, or ``amount`` boxes."""
    if unit == "images":
        return order[:amount]
    chosen, boxes = [], 0
    for index in order:
        if boxes >= amount:
            break
        chosen.append(index)
        boxes += len(pool[index].labels)
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


def run_one(config: SimulationConfig, strategy: StrategySpec, seed: int, pool, test, class_names) -> list[dict]:
    """All cycles of one strategy and seed; resumes from the cycle files it finds."""
    folder = Path(config.out_dir) / "runs" / f"{strategy.key}__seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "model.pt"
    rng = random.Random(seed)
    if config.budget_unit == "images":
        labeled = sorted(rng.sample(range(len(pool)), config.initial))
    else:
        labeled = sorted(select(rng.sample(range(len(pool)), len(pool)), pool, config.initial, "boxes"))
    certainty = strategy.certainty()
    box_level = bool(strategy.cooperation.get("box_level"))
    self_labeling = int(strategy.cooperation.get("self_labeling", 0))
    by_path = {image.path: image for image in pool}
    # The label each human-labeled image carries: the truth, or (box-level cooperation) the
    # pre-annotation with its certain boxes accepted unseen.
    labels: dict[int, LabeledImage] = {i: pool[i] for i in labeled}
    pseudo: list[LabeledImage] = []
    rows, detector = [], None
    needs_head = "loss_head" in SCORERS[strategy.name].needs
    for cycle in range(config.cycles + 1):
        state_file = folder / f"cycle_{cycle}.json"
        if state_file.exists():  # done before an interruption
            state = json.loads(state_file.read_text())
            rows.append(state["row"])
            labeled = state["labeled_next"]
            labels = {int(i): _from_json(item) for i, item in state.get("labels_next", {}).items()} or {
                i: pool[i] for i in labeled
            }
            pseudo = [_from_json(item) for item in state.get("pseudo_next", [])]
            detector = None
            continue
        if detector is None and checkpoint.exists() and config.fine_tune and cycle > 0:
            detector = Detector.load(checkpoint, device=config.device)
        if detector is None or not config.fine_tune:
            torch.manual_seed(seed)
            detector = Detector.create(
                config.detector, class_names, config.pretrained, config.image_size or None, config.device, needs_head
            )
        epochs = config.epochs_first if cycle == 0 or not config.fine_tune else config.epochs_per_cycle
        train_config = TrainConfig(
            epochs=epochs, batch_size=config.batch_size, lr=config.lr, seed=seed + cycle, **strategy.train
        )
        samples = [labels[i] for i in labeled]
        result = train_detector(detector, samples, train_config, pseudo=pseudo)
        metrics = evaluate(detector, test)
        detector.save(checkpoint, f"{strategy.key}-seed{seed}-cycle{cycle}")
        row = {
            "strategy": strategy.key,
            "seed": seed,
            "cycle": cycle,
            "labeled_images": len(labeled),
            "labeled_boxes": sum(len(pool[i].labels) for i in labeled),
            "map50": metrics["map50"],
            "map": metrics["map"],
            "train_seconds": round(result.seconds, 2),
            "scoring_seconds": 0.0,
            "rule": "",
            "pseudo_images": len(pseudo),
            "pseudo_boxes": sum(len(p.labels) for p in pseudo),
            "pseudo_precision": _pseudo_precision(pseudo, by_path),
        }
        next_labeled, next_labels, next_pseudo = labeled, labels, pseudo
        if cycle < config.cycles:
            unlabeled = [i for i in range(len(pool)) if i not in set(labeled)]
            budget = config.budget_for_diversity or config.per_cycle
            context = ScoringContext(labeled=samples, budget=budget, seed=seed * 1000 + cycle)
            detections: dict[str, Detections] = {}

            def keep(path: str, det: Detections, into: dict = detections) -> None:
                into[path] = det.above(certainty.uncertain)

            start = time.perf_counter()
            scored = score_pool(
                detector,
                [pool[i].path for i in unlabeled],
                strategy.name,
                strategy.params,
                context,
                on_detections=keep,
            )
            row["scoring_seconds"] = round(time.perf_counter() - start, 2)
            row["rule"] = scored.rule
            ranked = [unlabeled[i] for i in ranking(scored.keys, scored.scores) if scored.scores[i].for_people]
            chosen = select(ranked, pool, config.per_cycle, config.budget_unit)
            # What the oracle's work costs, both ways, on the images chosen for people.
            review, cooperative, noise = BoxEdits(0, 0, 0, 0, 0), BoxEdits(0, 0, 0, 0, 0), 0
            next_labels = dict(labels)
            for i in chosen:
                full, _ = oracle_edits(detections[pool[i].path], pool[i], certainty, cooperative=False)
                coop, label = oracle_edits(detections[pool[i].path], pool[i], certainty, cooperative=True)
                review, cooperative = _add(review, full), _add(cooperative, coop)
                noise += _noisy_boxes(label, pool[i])
                next_labels[i] = label if box_level else pool[i]
            row.update(
                chosen=len(chosen),
                boxes_from_scratch=review.from_scratch,
                edits_full_review=review.edits,
                edits_cooperative=cooperative.edits,
                cooperative_wrong_boxes_kept=noise,
            )
            next_labeled = sorted(labeled + chosen)
            left = {pool[i].path: detections[pool[i].path] for i in unlabeled if i not in set(chosen)}
            next_pseudo = pseudo_labels(left, certainty, self_labeling) if self_labeling else []
        state_file.write_text(
            json.dumps(
                {
                    "row": row,
                    "labeled": labeled,
                    "labeled_next": next_labeled,
                    "labels_next": {str(i): _as_json(label) for i, label in next_labels.items()},
                    "pseudo_next": [_as_json(p) for p in next_pseudo],
                }
            )
        )
        rows.append(row)
        labeled, labels, pseudo = next_labeled, next_labels, next_pseudo
    return rows


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
