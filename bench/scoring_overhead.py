"""Scoring overhead: detector forward + entropy (or loss-prediction) scoring vs the bare
torchvision forward, on the same batches, interleaved in one run.

    python bench/scoring_overhead.py [--images 256] [--batch-size 16] [--repeats 5] [--detector cpu_preset]

Prints a table and writes bench/results/scoring_overhead.json. The ratio is what counts: the
machines are shared and noisy, absolute seconds are not comparable across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from al_core.datasets import SHAPE_CLASSES, generate_shapes
from al_core.detectors import Detector
from al_core.detectors.detector import to_tensor
from al_core.detectors.probing import unprobe
from al_core.detectors.registry import build_model
from al_core.images import load_rgb
from al_core.scoring import PoolImage, ScoringContext, create_scorer
from al_core.training import TrainConfig, train_detector

ROOT = Path(__file__).resolve().parent.parent


def bare_copy(detector: Detector, pretrained: str) -> torch.nn.Module:
    """The same architecture (built the same way) and weights in torchvision's own classes:
    no probes, no hooks, no loss head."""
    version = detector.version
    model = build_model(version.detector, version.class_names, detector.image_size, pretrained)
    model.load_state_dict({k: v for k, v in detector.model.state_dict().items() if not k.startswith("loss_head.")})
    return unprobe(model).to(detector.device).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detector", default="cpu_preset")
    parser.add_argument("--image-size", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-epochs", type=int, default=4, help="train first, so detections look like real ones")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scoring_overhead.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    pretrained = "backbone" if args.detector == "cpu_preset" else "none"
    detector = Detector.create(
        args.detector, SHAPE_CLASSES, pretrained, image_size=args.image_size or None, device=args.device, loss_head=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        size = (detector.image_size, detector.image_size)
        objects = (size[0] // 6, size[0] // 3)
        train = generate_shapes(f"{tmp}/train", 64, seed=1, size=size, object_size=objects)
        train_detector(detector, train, TrainConfig(epochs=args.train_epochs, batch_size=4), show_progress=True)
        paths = [s.path for s in generate_shapes(f"{tmp}/pool", args.images, seed=3, size=size, object_size=objects)]
        images = [load_rgb(p) for p in paths]
    bare = bare_copy(detector, pretrained)
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    scorers = {"entropy": create_scorer("entropy"), "loss_prediction": create_scorer("loss_prediction")}
    context = ScoringContext(detector=detector)

    def run_bare() -> None:
        with torch.inference_mode():
            for batch in batches:
                bare([to_tensor(image).to(detector.device) for image in batch])

    def run_scored(name: str) -> None:
        for batch in batches:
            detections = detector.predict(batch)
            scorers[name].score_batch(
                [PoolImage(str(i), im, d) for i, (im, d) in enumerate(zip(batch, detections))], context
            )

    modes = {
        "bare forward": run_bare,
        "forward + entropy": lambda: run_scored("entropy"),
        "forward + loss prediction": lambda: run_scored("loss_prediction"),
    }
    run_bare()  # warm-up
    run_scored("entropy")
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode, fn in modes.items():
            if detector.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if detector.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[mode].append(time.perf_counter() - start)
    report(seconds, detector, args)


def report(seconds: dict[str, list[float]], detector: Detector, args: argparse.Namespace) -> None:
    """The table (medians over repeats, ratio to the bare forward) and the JSON file."""
    base = statistics.median(seconds["bare forward"])
    rows = []
    print(f"{args.images} images of {detector.image_size} px, batches of {args.batch_size}, ", end="")
    print(f"{detector.version.detector} on {detector.device}, median of {args.repeats}")
    print(f"{'mode':28} {'seconds':>8} {'images/s':>9} {'ratio':>6}")
    for mode, values in seconds.items():
        median = statistics.median(values)
        rows.append(
            {
                "mode": mode,
                "median_seconds": median,
                "images_per_second": args.images / median,
                "ratio_to_bare": median / base,
                "runs": values,
            }
        )
        print(f"{mode:28} {median:8.3f} {args.images / median:9.1f} {median / base:6.3f}")
    result = {
        "detector": args.detector,
        "train_epochs": args.train_epochs,
        "device": str(detector.device),
        "images": args.images,
        "image_size": detector.image_size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
