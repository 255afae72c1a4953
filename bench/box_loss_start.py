"""Why a box loss fails from a fresh head: the first cycle of the losses simulation
(bench/simulation/losses.yaml: its data, its initial 20 images of each seed, 12 epochs), trained
with each box loss, with the box-regression loss at the start and end of training (from the
run's TensorBoard log) and mAP@0.5 on the simulation's test split.

    TORCH_HOME=data/torch_home python bench/box_loss_start.py [--seeds 0 1 2]

Prints a table and writes bench/results/box_loss_start.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from al_core.detectors import Detector
from al_core.evaluation import evaluate
from al_core.simulation import SimulationConfig, load_data
from al_core.training import TrainConfig, train_detector

ROOT = Path(__file__).resolve().parent.parent

LOSSES = ("giou", "diou", "ciou", "eiou")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "bench/simulation/losses.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "bench/results/box_loss_start.json"))
    args = parser.parse_args()
    config = SimulationConfig.load(args.config)
    pool, test, class_names = load_data(config)
    rows = []
    for seed in args.seeds:
        labeled = [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), config.initial))]
        for loss in LOSSES:
            torch.manual_seed(seed)  # the simulator's fresh model of this seed
            detector = Detector.create(config.detector, class_names, config.pretrained, None, config.device)
            train = TrainConfig(epochs=config.epochs_first, batch_size=config.batch_size, lr=config.lr, seed=seed)
            train.box_loss = loss
            with tempfile.TemporaryDirectory() as logs:
                train_detector(detector, labeled, train, log_dir=logs)
                board = EventAccumulator(logs)
                board.Reload()
                regression = [event.value for event in board.Scalars("train/loss_bbox_regression")]
            steps = len(regression) // config.epochs_first  # one epoch's steps
            rows.append(
                {
                    "seed": seed,
                    "box_loss": loss,
                    "regression_first_epoch": sum(regression[:steps]) / steps,
                    "regression_last_epoch": sum(regression[-steps:]) / steps,
                    "map50": evaluate(detector, test)["map50"],
                }
            )
            row = rows[-1]
            print(
                f"seed {seed} {loss}: box loss {row['regression_first_epoch']:.3f} -> "
                f"{row['regression_last_epoch']:.3f}, mAP@0.5 {row['map50']:.3f}",
                flush=True,
            )
    print("\n| seed | box loss | box loss, first epoch | box loss, last epoch | mAP@0.5 |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['seed']} | {row['box_loss']} | {row['regression_first_epoch']:.3f} | "
            f"{row['regression_last_epoch']:.3f} | {100 * row['map50']:.1f} |"
        )
    Path(args.out).write_text(json.dumps({"config": args.config, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
