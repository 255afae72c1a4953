"""Training throughput (images/s) of the training loop every path uses (`train_detector`):
the CPU preset at 128 px, and on CUDA Faster R-CNN R50-FPN at 800 px with AMP vs fp32, measured
side by side in one run.

    python bench/training_throughput.py [--images 64] [--epochs 2] [--repeats 3]

Prints a table and writes bench/results/training_throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from al_core.datasets import SHAPE_CLASSES, generate_shapes
from al_core.detectors import Detector
from al_core.training import TrainConfig, train_detector

ROOT = Path(__file__).resolve().parent.parent


def images_per_second(name: str, size: int, amp: bool, samples, epochs: int, batch_size: int) -> float:
    torch.manual_seed(0)
    pretrained = "backbone" if name == "cpu_preset" else "none"  # offline: no ResNet-50 weights here
    detector = Detector.create(name, SHAPE_CLASSES, pretrained, image_size=size, device="auto")
    config = TrainConfig(epochs=1, batch_size=batch_size, amp=amp, warmup_iters=1)
    train_detector(detector, samples[: batch_size * 2], config)  # warm-up (cuDNN autotune, allocator)
    result = train_detector(detector, samples, TrainConfig(epochs=epochs, batch_size=batch_size, amp=amp))
    return len(samples) * result.epochs / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "training_throughput.json"))
    args = parser.parse_args()
    os.environ.setdefault("TORCH_HOME", str(ROOT / "data" / "torch_home"))
    cuda = torch.cuda.is_available()
    modes = [("cpu_preset", 128, True, 4)]
    if cuda:
        modes += [("fasterrcnn_resnet50_fpn", 800, False, 4), ("fasterrcnn_resnet50_fpn", 800, True, 4)]
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        by_size = {}
        for name, size, amp, batch in modes:
            if size not in by_size:
                by_size[size] = generate_shapes(f"{tmp}/{size}", args.images, seed=1, size=(size, size),
                                                object_size=(size // 6, size // 3))  # fmt: skip
            runs = [images_per_second(name, size, amp, by_size[size], args.epochs, batch) for _ in range(args.repeats)]
            precision = "AMP" if amp and cuda else "fp32"
            rows.append({"detector": name, "image_size": size, "precision": precision, "batch_size": batch,
                         "images_per_second": statistics.median(runs), "runs": runs})  # fmt: skip
    print(f"training throughput on {device}, {args.images} images x {args.epochs} epochs, median of {args.repeats}")
    print(f"{'detector':28} {'size':>5} {'precision':>9} {'images/s':>9}")
    for row in rows:
        print(f"{row['detector']:28} {row['image_size']:5} {row['precision']:>9} {row['images_per_second']:9.1f}")
    if cuda:
        amp_gain = rows[2]["images_per_second"] / rows[1]["images_per_second"]
        print(f"Faster R-CNN R50-FPN at 800 px, AMP / fp32: {amp_gain:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": device, "images": args.images, "epochs": args.epochs,
                                          "rows": rows}, indent=2))  # fmt: skip
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
