"""Why torch work in a serving process goes on threads that end (al_core.device.in_passing_thread).

The CPU preset's forward, batches of 8 generated canvases, run on a new thread in a fresh
process per scenario (OpenMP's thread teams are per process):

- alone: nothing else in the process ever ran torch;
- after the main thread ran torch: one convolution on the main thread first (the server's
  main thread loading a checkpoint did this), so a second team lives beside the model's;
- after a passing thread ran torch: the same convolution on a thread that ended first.

Prints images/s and the CPU share of the process's two busiest threads, and writes JSON.

    python bench/omp_teams.py [--seconds 6] [--out bench/results/omp_teams.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("alone", "after the main thread ran torch", "after a passing thread ran torch")


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds per thread of this process, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for stat in glob.glob(f"/proc/{os.getpid()}/task/*/stat"):
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        used[stat.split("/")[-2]] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def _one_convolution() -> None:
    import torch

    torch.nn.functional.conv2d(torch.randn(1, 64, 64, 64), torch.randn(8, 64, 3, 3))


def _forward(seconds: float, result: dict) -> None:
    import torch

    from al_core.datasets import SHAPE_CLASSES, generate_shapes
    from al_core.detectors import Detector
    from al_core.images import load_rgb

    torch.manual_seed(0)
    detector = Detector.create("cpu_preset", SHAPE_CLASSES, "backbone", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        images = [load_rgb(sample.path) for sample in generate_shapes(Path(tmp), 64, seed=3)]
    detector.predict(images[:8])  # warm-up
    before, started, done = _cpu_seconds(), time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        for start in range(0, len(images), 8):
            detector.predict(images[start : start + 8])
            done += 8
    elapsed = time.perf_counter() - started
    after = _cpu_seconds()
    shares = sorted(((after[t] - before.get(t, 0.0)) / elapsed for t in after), reverse=True)
    result.update(images_per_second=done / elapsed, busiest_threads_cpu=[round(s, 3) for s in shares[:2]])


def run_scenario(name: str, seconds: float) -> dict:
    """In this process: the scenario's earlier torch work, then the forward on a new thread."""
    from al_core.device import in_passing_thread

    if name == SCENARIOS[1]:
        _one_convolution()
    elif name == SCENARIOS[2]:
        in_passing_thread(_one_convolution)
    result: dict = {"scenario": name}
    worker = threading.Thread(target=_forward, args=(seconds, result))
    worker.start()
    worker.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "omp_teams.json"))
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # one scenario, in a child process
    args = parser.parse_args()
    os.environ.setdefault("TORCH_HOME", str(ROOT / "data" / "torch_home"))
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args.seconds)))
        return
    rows = []
    for name in SCENARIOS:
        child = [sys.executable, __file__, "--scenario", name, "--seconds", str(args.seconds)]
        done = subprocess.run(child, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'forward on a new thread':36} {'images/s':>9} {'CPU of the two busiest threads':>32}")
    for row in rows:
        shares = ", ".join(f"{100 * share:.0f}%" for share in row["busiest_threads_cpu"])
        print(f"{row['scenario']:36} {row['images_per_second']:9.1f} {shares:>32}")
    slowed = rows[1]["images_per_second"] / rows[0]["images_per_second"]
    print(f"\nwith a second team / alone: {slowed:.2f}")
    result = {"machine": f"{os.cpu_count()} CPU cores", "seconds": args.seconds, "rows": rows, "second_team": slowed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
