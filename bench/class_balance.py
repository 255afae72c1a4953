"""Where a strategy's mAP goes: the boxes it bought and the AP@0.5 it reached, class by class.

A diagnostic for simulation runs (``python -m al_core simulate``) that lose to random. mAP
is a mean over classes, so a strategy that starves the rare classes of labels can lose mAP
while buying as many boxes as random. For each strategy and seed of a finished run, from its
``runs/<strategy>__seed<N>/`` folder:

- the labeled boxes of each class after the last cycle (what the served model trained on);
- the AP@0.5 of each class of the last model (``model.pt``) on the run's test split.

Classes are split in two by their share of the pool's boxes (below the median share: "rare";
the rest: "common"; no constant tied to a dataset). The table gives each half's labeled boxes
and mean AP@0.5, per strategy against random on the same seeds, and the JSON every class.

    python bench/class_balance.py --config bench/simulation/equal_cost_candidates.yaml \
        [--out bench/results/class_balance-equal-cost-candidates.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

import torch

from al_core.detectors import Detector
from al_core.evaluation import evaluate
from al_core.simulation import SimulationConfig, load_data


def pool_shares(pool, classes: int) -> list[float]:
    counts = Counter(int(label) for image in pool for label in image.labels)
    total = sum(counts.values())
    return [counts[c] / total for c in range(classes)]


def rare_classes(shares: list[float]) -> set[int]:
    """The classes whose share of the pool's boxes is below the median share."""
    median = statistics.median(shares)
    return {c for c, share in enumerate(shares) if share < median}


def one_run(folder: Path, test, classes: int, device: str) -> dict | None:
    """Labeled boxes per class after the last cycle and the last model's AP@0.5 per class."""
    cycles = sorted(folder.glob("cycle_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    if not cycles or not (folder / "model.pt").exists():
        return None
    last = json.loads(cycles[-1].read_text())
    counts = Counter(label for item in last["labels_next"].values() for label in item["labels"])
    metrics = evaluate(Detector.load(folder / "model.pt", device=device), test)
    return {
        "cycle": len(cycles) - 1,
        "map50": metrics["map50"],
        "boxes_per_class": [counts[c] for c in range(classes)],
        "ap50_per_class": metrics["map50_per_class"],
    }


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def halves(run: dict, rare: set[int]) -> dict:
    """Labeled boxes and mean AP@0.5 of the rare and of the common classes of one run."""
    out = {}
    for name, members in (("rare", rare), ("common", set(range(len(run["boxes_per_class"]))) - rare)):
        out[f"{name}_boxes"] = sum(run["boxes_per_class"][c] for c in members)
        out[f"{name}_ap50"] = _mean(run["ap50_per_class"][c] for c in members)
    return out


def table(runs: dict[str, dict[int, dict]], rare: set[int]) -> list[str]:
    header = "| strategy | seed | final mAP@0.5 | rare-class boxes | common-class boxes | rare AP@0.5 | common AP@0.5 |"
    lines = [header, "|" + "---|" * 7]
    for strategy, seeds in runs.items():
        for seed, run in sorted(seeds.items()):
            h = halves(run, rare)
            lines.append(
                f"| {strategy} | {seed} | {100 * run['map50']:.1f} | {h['rare_boxes']} | {h['common_boxes']} "
                f"| {100 * h['rare_ap50']:.1f} | {100 * h['common_ap50']:.1f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the simulation's YAML (its out_dir holds the runs)")
    parser.add_argument("--out", help="JSON to write (default: <out_dir>/class_balance.json)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    config = SimulationConfig.load(args.config)
    pool, test, class_names = load_data(config)
    shares = pool_shares(pool, len(class_names))
    rare = rare_classes(shares)
    runs: dict[str, dict[int, dict]] = {}
    for spec in config.strategies:
        for seed in config.seeds:
            folder = Path(config.out_dir) / "runs" / f"{spec.key}__seed{seed}"
            run = one_run(folder, test, len(class_names), args.device)
            if run is None:
                print(f"skipped {spec.key} seed {seed}: no finished run with its model")
                continue
            runs.setdefault(spec.key, {})[seed] = run
    print(f"rare classes (below the median share of the pool's boxes): {sorted(class_names[c] for c in rare)}")
    print("\n".join(table(runs, rare)))
    out = Path(args.out or Path(config.out_dir) / "class_balance.json")
    record = {"class_names": list(class_names), "pool_share": shares, "rare": sorted(rare), "runs": runs}
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
