"""Where a strategy's mAP goes: the boxes it bought and the AP@0.5 it reached, class by class.

A diagnostic for simulation runs (``python -m al_core simulate``) that lose to random. mAP
is a mean over classes, so a strategy that starves the rare classes of labels can lose mAP
while buying as many boxes as random. For each strategy and seed of a finished run, from its
``runs/<strategy>__seed<N>/`` folder:

- the labeled boxes of each class after the last cycle (what the served model trained on);
- the AP@0.5 of each class of the last model (``model.pt``) on the run's test split.

Classes are split in two by their share of the pool's boxes (below the median share: "rare";
the rest: "common"; no constant tied to a dataset). One table gives each half's labeled boxes
and mean AP@0.5 per strategy and seed, a second their means over seeds with the rarest class's
boxes and AP, and the JSON every class. ``--from-json`` prints the tables of a written JSON
again, without the runs' folders.

    python bench/class_balance.py --config bench/simulation/equal_cost_candidates.yaml \
        [--out bench/results/class_balance-equal-cost-candidates.json]
    python bench/class_balance.py --from-json bench/results/class_balance-equal-cost-candidates.json
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
from al_core.pool import labeled_class_counts
from al_core.simulation import SimulationConfig, load_data


def pool_shares(pool, classes: int) -> list[float]:
    counts = labeled_class_counts(pool, classes).double()
    return (counts / counts.sum()).tolist()


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


def _percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"  # "-": no test box of the class


def _by_seed(seeds: dict) -> list[tuple]:
    return sorted(seeds.items(), key=lambda item: int(item[0]))  # JSON turns the seeds into strings


def table(runs: dict[str, dict[int, dict]], rare: set[int]) -> list[str]:
    header = "| strategy | seed | final mAP@0.5 | rare-class boxes | common-class boxes | rare AP@0.5 | common AP@0.5 |"
    lines = [header, "|" + "---|" * 7]
    for strategy, seeds in runs.items():
        for seed, run in _by_seed(seeds):
            h = halves(run, rare)
            lines.append(
                f"| {strategy} | {seed} | {100 * run['map50']:.1f} | {h['rare_boxes']} | {h['common_boxes']} "
                f"| {_percent(h['rare_ap50'])} | {_percent(h['common_ap50'])} |"
            )
    return lines


def means(runs: dict[str, dict[int, dict]], rare: set[int], rarest: int) -> list[str]:
    """Per strategy, means over seeds: final mAP@0.5, each half's boxes and AP@0.5, and the
    rarest class's labeled boxes and AP@0.5 (with each seed's)."""
    header = (
        "| strategy | final mAP@0.5 | labeled boxes, rare / common | AP@0.5, rare / common "
        "| the rarest class: labeled boxes (per seed) | its AP@0.5 (per seed) |"
    )
    lines = [header, "|" + "---|" * 6]
    for strategy, seeds in runs.items():
        ordered = [run for _, run in _by_seed(seeds)]
        h = [halves(run, rare) for run in ordered]
        boxes = [run["boxes_per_class"][rarest] for run in ordered]
        ap = [run["ap50_per_class"][rarest] for run in ordered]
        lines.append(
            f"| {strategy} | {100 * _mean(r['map50'] for r in ordered):.1f} "
            f"| {_mean(x['rare_boxes'] for x in h):.0f} / {_mean(x['common_boxes'] for x in h):.0f} "
            f"| {_percent(_mean(x['rare_ap50'] for x in h))} / {_percent(_mean(x['common_ap50'] for x in h))} "
            f"| {_mean(boxes):.1f} ({', '.join(str(b) for b in boxes)}) "
            f"| {_percent(_mean(ap))} ({', '.join(_percent(a, 0) for a in ap)}) |"
        )
    return lines


def report(record: dict) -> list[str]:
    rare, shares = set(record["rare"]), record["pool_share"]
    rarest = min(range(len(shares)), key=shares.__getitem__)
    names = record["class_names"]
    return [
        f"rare classes (below the median share of the pool's boxes): {sorted(names[c] for c in rare)}",
        *table(record["runs"], rare),
        "",
        f"means over seeds; the rarest class is {names[rarest]!r} ({100 * shares[rarest]:.1f}% of the pool's boxes)",
        *means(record["runs"], rare, rarest),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the simulation's YAML (its out_dir holds the runs)")
    parser.add_argument("--out", help="JSON to write (default: <out_dir>/class_balance.json)")
    parser.add_argument("--from-json", help="print the tables of a JSON this script wrote, and nothing else")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.from_json:
        print("\n".join(report(json.loads(Path(args.from_json).read_text()))))
        return
    if not args.config:
        parser.error("give --config (or --from-json)")
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
    record = {"class_names": list(class_names), "pool_share": shares, "rare": sorted(rare), "runs": runs}
    print("\n".join(report(record)))
    out = Path(args.out or Path(config.out_dir) / "class_balance.json")
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
