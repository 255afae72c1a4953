"""Pool scoring at two pool sizes: time should grow linearly, peak memory stay flat.

    python bench/pool_memory.py [--sizes 1000 10000] [--strategy entropy] [--batch-size 16]

Each size is scored in a fresh process (python -m al_core score on a folder, as a user would
run it) whose peak resident memory is read from the kernel. Prints a table and writes
bench/results/pool_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> None:
    """Score the first ``--size`` images of the folder; print seconds and peak RSS as JSON."""
    from al_core.detectors import Detector
    from al_core.pool import score_pool

    paths = sorted(str(p) for p in Path(args.folder).glob("*.png"))[: args.size]
    detector = Detector.load(args.checkpoint)
    start = time.perf_counter()
    scored = score_pool(detector, paths, args.strategy, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    assert len(scored.scores) == args.size
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"size": args.size, "seconds": seconds, "peak_rss_mib": peak_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--strategy", default="entropy")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pool_memory.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch

    from al_core.datasets import SHAPE_CLASSES, generate_shapes
    from al_core.detectors import Detector
    from al_core.training import TrainConfig, train_detector

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        detector = Detector.create("cpu_preset", SHAPE_CLASSES)
        train_detector(detector, generate_shapes(f"{tmp}/train", 64, seed=1), TrainConfig(epochs=4))
        checkpoint = f"{tmp}/model.pt"
        detector.save(checkpoint, "bench")
        print(f"generating {max(args.sizes)} images ...", flush=True)
        generate_shapes(f"{tmp}/pool", max(args.sizes), seed=2)
        rows = []
        for size in args.sizes:
            command = [sys.executable, __file__, "--child", "--folder", f"{tmp}/pool", "--checkpoint", checkpoint]
            command += ["--size", str(size), "--strategy", args.strategy, "--batch-size", str(args.batch_size)]
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{'images':>7} {'seconds':>8} {'images/s':>9} {'time/img ratio':>15} {'peak RSS MiB':>13} {'RSS ratio':>10}")
    for row in rows:
        row["time_per_image_ratio"] = (row["seconds"] / row["size"]) / (base["seconds"] / base["size"])
        row["peak_rss_ratio"] = row["peak_rss_mib"] / base["peak_rss_mib"]
        print(
            f"{row['size']:7d} {row['seconds']:8.1f} {row['size'] / row['seconds']:9.1f} "
            f"{row['time_per_image_ratio']:15.3f} {row['peak_rss_mib']:13.1f} {row['peak_rss_ratio']:10.3f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"strategy": args.strategy, "batch_size": args.batch_size, "rows": rows}, indent=2)
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
