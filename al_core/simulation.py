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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from .datasets import DigitCanvasConfig, read_dataset, write_digit_canvases
from .detectors import Detector
from .evaluation import evaluate
from .pool import score_pool
from .scoring import SCORERS, ScoringContext
from .selection import ranking
from .training import TrainConfig, train_detector
from .types import LabeledImage


@dataclass(frozen=True)
class StrategySpec:
    name: str
    params: dict = field(default_factory=dict)  # the scorer's parameters
    label: str = ""
    train: dict = field(default_factory=dict)  # TrainConfig fields this strategy changes

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
    rows, detector = [], None
    needs_head = "loss_head" in SCORERS[strategy.name].needs
    for cycle in range(config.cycles + 1):
        state_file = folder / f"cycle_{cycle}.json"
        if state_file.exists():  # done before an interruption
            state = json.loads(state_file.read_text())
            rows.append(state["row"])
            labeled = state["labeled_next"]
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
        samples = [pool[i] for i in labeled]
        result = train_detector(detector, samples, train_config)
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
        }
        next_labeled = labeled
        if cycle < config.cycles:
            unlabeled = [i for i in range(len(pool)) if i not in set(labeled)]
            budget = config.budget_for_diversity or config.per_cycle
            context = ScoringContext(labeled=samples, budget=budget, seed=seed * 1000 + cycle)
            start = time.perf_counter()
            scored = score_pool(detector, [pool[i].path for i in unlabeled], strategy.name, strategy.params, context)
            row["scoring_seconds"] = round(time.perf_counter() - start, 2)
            row["rule"] = scored.rule
            ranked = [unlabeled[i] for i in ranking(scored.keys, scored.scores)]
            next_labeled = sorted(labeled + select(ranked, pool, config.per_cycle, config.budget_unit))
        state_file.write_text(json.dumps({"row": row, "labeled": labeled, "labeled_next": next_labeled}))
        rows.append(row)
        labeled = next_labeled
    return rows


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
