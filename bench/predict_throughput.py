"""/predict over HTTP, measured side by side in one run:

1. dynamic batching: 8 concurrent clients, one task per request (annotators opening tasks),
   served one at a time (PREDICT_BATCH_SIZE=1) vs merged into batches (PREDICT_BATCH_SIZE=8):
   throughput and p50/p99 latency;
2. the cost of HTTP, decoding and conversion: one client sending 8-task requests vs the bare
   model forward (decoded images, batches of 8) on the same images.

    python bench/predict_throughput.py [--clients 8] [--requests 400] [--repeats 3]
    python bench/predict_throughput.py --profile data/predict.txt   # where /predict spends its time

With --profile, only the HTTP mode runs, with py-spy (requirements-dev.txt) sampling the server
and its worker; the collapsed stacks go to the file and the frames that take the most time are
printed, self and inclusive.

Each backend runs as `make run` runs it (`python -m backend`, gunicorn) with a checkpoint trained
first, so detections look like real ones. Prints a table and writes
bench/results/predict_throughput.json; the ratios are what count on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests
import torch

from al_core.datasets import SHAPE_CLASSES, generate_shapes
from al_core.detectors import Detector
from al_core.images import load_rgb
from al_core.training import TrainConfig, train_detector
from scripts.backend_process import BackendProcess, start_backend
from scripts.label_studio import free_port

ROOT = Path(__file__).resolve().parent.parent

LABELS = "".join(f'<Label value="{c}"/>' for c in SHAPE_CLASSES)
CONFIG = (
    f'<View><Image name="image" value="$image"/><RectangleLabels name="b" toName="image">{LABELS}'
    "</RectangleLabels></View>"
)


def serve(checkpoint: Path, files: Path, state: Path, batch_size: int, max_wait_ms: float) -> BackendProcess:
    state.mkdir(parents=True, exist_ok=True)
    env = {
        "PORT": str(free_port()),
        "DATA_DIR": str(state),
        "MODEL_CHECKPOINT": str(checkpoint),
        "LOCAL_FILES_ROOT": str(files),
        "PREDICT_BATCH_SIZE": str(batch_size),
        "PREDICT_MAX_WAIT_MS": str(max_wait_ms),
        "SERVER_THREADS": "16",
        "LOG_LEVEL": "WARNING",
    }
    return start_backend(env, state / "backend.log")


WRK_SCRIPT = """
bodies = {BODIES}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, bodies[(counter % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "errors": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def load(backend: BackendProcess, paths: list[str], clients: int, per_request: int, seconds: float, tmp: Path) -> dict:
    """``clients`` connections sending requests of ``per_request`` tasks for ``seconds``, from
    wrk (C, so the load generator takes little of the CPU the server needs); the task lists
    walk the pool."""
    bodies = [
        json.dumps(
            {
                "tasks": [{"id": i, "data": {"image": paths[(i + k) % len(paths)]}} for k in range(per_request)],
                "label_config": CONFIG,
            }
        )
        for i in range(len(paths))
    ]
    script = tmp / "predict.lua"
    script.write_text(WRK_SCRIPT.replace("BODIES", ", ".join(json.dumps(b) for b in bodies)))
    check = requests.post(f"{backend.url}/predict", data=bodies[0], headers={"Content-Type": "application/json"})
    results = check.json()["results"]
    assert check.ok and len(results) == per_request and not any("error" in r for r in results), check.text[:300]

    def run(duration: str) -> str:
        command = ["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", duration, "--timeout", "60s"]
        command += ["-s", str(script), f"{backend.url}/predict"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
        return done.stdout

    run("3s")  # warm-up
    out = run(f"{seconds:g}s")
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} failed requests:\n{out}")
    images = result["requests"] * per_request
    metrics = requests.get(f"{backend.url}/metrics", timeout=10).text
    count = float(re.search(r"^al_backend_batch_images_count (\S+)", metrics, re.M)[1])
    total = float(re.search(r"^al_backend_batch_images_sum (\S+)", metrics, re.M)[1])
    return {**result, "images_per_second": images / result["seconds"], "mean_batch": total / count}


def bare_forward(detector: Detector, paths: list[str], batch_size: int, count: int) -> dict:
    images = [load_rgb(p) for p in paths]
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    detector.predict(batches[0])  # warm-up
    done, start = 0, time.perf_counter()
    while done < count:
        for batch in batches:
            detector.predict(batch)
            done += len(batch)
            if done >= count:
                break
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_second": done / seconds}


def profile(backend: BackendProcess, paths: list[str], seconds: float, tmp: Path, out: Path) -> None:
    """The HTTP mode under py-spy: collapsed stacks to ``out``, the heaviest frames printed."""
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(backend.process.pid), "--subprocesses"]
    spy += ["--rate", "200", "--duration", str(int(seconds)), "--format", "raw", "--output", str(out), "--nonblocking"]
    sampler = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # attached before the load starts
    load(backend, paths, 1, 8, seconds, tmp)
    sampler.wait(timeout=seconds + 60)
    own, inclusive, total = Counter(), Counter(), 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame.split(" (")[0] for frame in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"\n{total} samples of the server and its worker (idle threads included); collapsed stacks: {out}")
    for title, counts in (("self", own), ("inclusive", inclusive)):
        print(f"\ntop frames, {title}:")
        for frame, count in counts.most_common(15):
            print(f"{100 * count / total:6.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="PREDICT_MAX_WAIT_MS of the batched server")
    parser.add_argument("--seconds", type=float, default=20, help="load duration of each mode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--train-epochs", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "predict_throughput.json"))
    parser.add_argument("--profile", type=Path, help="only the HTTP mode, sampled by py-spy; its stacks go here")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_HOME", str(ROOT / "data" / "torch_home"))
    torch.set_flush_denormal(True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        detector = Detector.create("cpu_preset", SHAPE_CLASSES, "backbone", device="cpu")
        train = generate_shapes(tmp / "train", 64, seed=1)
        train_detector(detector, train, TrainConfig(epochs=args.train_epochs, batch_size=4), show_progress=True)
        checkpoint = tmp / "model.pt"
        detector.save(checkpoint, "bench-v1")
        paths = [s.path for s in generate_shapes(tmp / "pool", args.images, seed=3)]
        if args.profile:
            backend = serve(checkpoint, tmp, tmp / "state-profile", 8, args.max_wait_ms)
            try:
                return profile(backend, paths, args.seconds, tmp, args.profile)
            finally:
                backend.stop()
        runs: dict[str, list[dict]] = {}
        for repeat in range(args.repeats):
            for name, batch, clients, per_request in (
                ("one at a time, 8 clients x 1 task", 1, args.clients, 1),
                ("dynamic batching, 8 clients x 1 task", 8, args.clients, 1),
                ("HTTP, 1 client x 8 tasks", 8, 1, 8),
            ):
                backend = serve(checkpoint, tmp, tmp / f"state-{name[:3]}-{repeat}", batch, args.max_wait_ms)
                try:
                    runs.setdefault(name, []).append(load(backend, paths, clients, per_request, args.seconds, tmp))
                finally:
                    backend.stop()
            runs.setdefault("bare forward, batches of 8", []).append(bare_forward(detector, paths, 8, 640))
            runs.setdefault("bare forward, batches of 1", []).append(bare_forward(detector, paths, 1, 320))
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    report(runs, args)


def report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    """The table (medians over repeats), the ratios, and the JSON file."""

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    one, batched = "one at a time, 8 clients x 1 task", "dynamic batching, 8 clients x 1 task"
    http, bare = "HTTP, 1 client x 8 tasks", "bare forward, batches of 8"
    rows = []
    threads = torch.get_num_threads()
    print(f"\n{args.images} canvases of 128 px, cpu_preset on CPU ({threads} threads), median of {args.repeats}")
    print(f"{'mode':40} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6}")
    for name in runs:
        row = {"mode": name, "images_per_second": median(name, "images_per_second"), "runs": runs[name]}
        if "p50_ms" in runs[name][0]:
            row.update(
                p50_ms=median(name, "p50_ms"), p99_ms=median(name, "p99_ms"), mean_batch=median(name, "mean_batch")
            )
        rows.append(row)
        p50 = f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['mean_batch']:6.2f}" if "p50_ms" in row else ""
        print(f"{name:40} {row['images_per_second']:9.1f} {p50}")
    speedup = median(batched, "images_per_second") / median(one, "images_per_second")
    p50_ratio = median(batched, "p50_ms") / median(one, "p50_ms")
    http_ratio = median(http, "images_per_second") / median(bare, "images_per_second")
    batched_ratio = median(batched, "images_per_second") / median(bare, "images_per_second")
    ceiling = median(bare, "images_per_second") / median("bare forward, batches of 1", "images_per_second")
    print(f"\ndynamic batching / one at a time: throughput {speedup:.2f}x (target >= 3)", end="")
    print(f", p50 latency ratio {p50_ratio:.2f} (target <= 1)")
    print(f"the model's own ceiling, bare forward batch 8 / batch 1: {ceiling:.2f}x")
    print(f"HTTP 8-task requests / bare forward: {http_ratio:.2f} (target >= 0.8)")
    print(f"8 single-task clients, batched / bare forward: {batched_ratio:.2f}")
    result = {
        "machine": f"{os.cpu_count()} CPU cores",
        "torch_threads": torch.get_num_threads(),
        "images": args.images,
        "clients": args.clients,
        "seconds_per_mode": args.seconds,
        "max_wait_ms": args.max_wait_ms,
        "repeats": args.repeats,
        "rows": rows,
        "batching_speedup": speedup,
        "batching_p50_ratio": p50_ratio,
        "bare_batch8_over_batch1": ceiling,
        "http_over_bare": http_ratio,
        "batched_clients_over_bare": batched_ratio,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
