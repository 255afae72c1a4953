"""/predict over HTTP, measured side by side in one run:

1. dynamic batching: 8 concurrent clients, one task per request (annotators opening tasks),
   served one at a time (PREDICT_BATCH_SIZE=1) vs merged into batches (PREDICT_BATCH_SIZE=8):
   throughput and p50/p99 latency;
2. the cost of HTTP, decoding and conversion: one client sending 8-task requests vs the bare
   model forward (decoded images, batches of 8) on the same images.

    python bench/predict_throughput.py [--clients 8] [--requests 400] [--repeats 3]

Each backend runs as `make run` runs it (`python -m backend`, gunicorn) with a checkpoint trained
first, so detections look like real ones. Prints a table and writes
bench/results/predict_throughput.json; the ratios are what count on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from label_studio import free_port  # noqa: E402

from al_core.datasets import SHAPE_CLASSES, generate_shapes  # noqa: E402
from al_core.detectors import Detector  # noqa: E402
from al_core.images import load_rgb  # noqa: E402
from al_core.training import TrainConfig, train_detector  # noqa: E402

LABELS = "".join(f'<Label value="{c}"/>' for c in SHAPE_CLASSES)
CONFIG = (
    f'<View><Image name="image" value="$image"/><RectangleLabels name="b" toName="image">{LABELS}'
    "</RectangleLabels></View>"
)


class Backend:
    def __init__(self, checkpoint: Path, files: Path, state: Path, batch_size: int):
        self.port = free_port()
        env = {
            **os.environ,
            "PORT": str(self.port),
            "DATA_DIR": str(state),
            "MODEL_CHECKPOINT": str(checkpoint),
            "LOCAL_FILES_ROOT": str(files),
            "PREDICT_BATCH_SIZE": str(batch_size),
            "SERVER_THREADS": "16",
            "LOG_LEVEL": "WARNING",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backend"], cwd=ROOT, env=env, start_new_session=True, stderr=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.3)
        raise RuntimeError("the backend did not start")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def load(backend: Backend, paths: list[str], clients: int, per_request: int, count: int) -> dict:
    """``count`` requests of ``per_request`` tasks from ``clients`` threads (each with its own
    connection); every request's image list walks the pool."""
    sessions = [requests.Session() for _ in range(clients)]

    def call(number: int) -> float:
        tasks = [
            {"id": number * per_request + k, "data": {"image": paths[(number * per_request + k) % len(paths)]}}
            for k in range(per_request)
        ]
        start = time.perf_counter()
        answer = sessions[number % clients].post(
            f"{backend.url}/predict", json={"tasks": tasks, "label_config": CONFIG}, timeout=120
        )
        elapsed = time.perf_counter() - start
        results = answer.json()["results"]
        assert answer.ok and len(results) == per_request and not any("error" in r for r in results), answer.text[:300]
        return elapsed

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(call, range(clients * 2)))  # warm-up
        start = time.perf_counter()
        latencies = list(pool.map(call, range(count)))
        seconds = time.perf_counter() - start
    latencies.sort()
    return {
        "seconds": seconds,
        "images_per_second": count * per_request / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="single-task requests per batching mode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--train-epochs", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "predict_throughput.json"))
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
        runs: dict[str, list[dict]] = {}
        for repeat in range(args.repeats):
            for name, batch, clients, per_request, count in (
                ("one at a time, 8 clients x 1 task", 1, args.clients, 1, args.requests),
                ("dynamic batching, 8 clients x 1 task", 8, args.clients, 1, args.requests),
                ("HTTP, 1 client x 8 tasks", 8, 1, 8, args.requests // 8),
            ):
                backend = Backend(checkpoint, tmp, tmp / f"state-{name[:3]}-{repeat}", batch)
                try:
                    runs.setdefault(name, []).append(load(backend, paths, clients, per_request, count))
                finally:
                    backend.stop()
            runs.setdefault("bare forward, batches of 8", []).append(bare_forward(detector, paths, 8, args.requests))
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    one, batched = "one at a time, 8 clients x 1 task", "dynamic batching, 8 clients x 1 task"
    http, bare = "HTTP, 1 client x 8 tasks", "bare forward, batches of 8"
    rows = []
    threads = torch.get_num_threads()
    print(f"\n{args.images} canvases of 128 px, cpu_preset on CPU ({threads} threads), median of {args.repeats}")
    print(f"{'mode':40} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name in runs:
        row = {"mode": name, "images_per_second": median(name, "images_per_second"), "runs": runs[name]}
        if "p50_ms" in runs[name][0]:
            row.update(p50_ms=median(name, "p50_ms"), p99_ms=median(name, "p99_ms"))
        rows.append(row)
        p50 = f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f}" if "p50_ms" in row else f"{'':8} {'':8}"
        print(f"{name:40} {row['images_per_second']:9.1f} {p50}")
    speedup = median(batched, "images_per_second") / median(one, "images_per_second")
    p50_ratio = median(batched, "p50_ms") / median(one, "p50_ms")
    http_ratio = median(http, "images_per_second") / median(bare, "images_per_second")
    batched_ratio = median(batched, "images_per_second") / median(bare, "images_per_second")
    print(f"\ndynamic batching / one at a time: throughput {speedup:.2f}x (target >= 3)", end="")
    print(f", p50 latency ratio {p50_ratio:.2f} (target <= 1)")
    print(f"HTTP 8-task requests / bare forward: {http_ratio:.2f} (target >= 0.8)")
    print(f"8 single-task clients, batched / bare forward: {batched_ratio:.2f}")
    result = {
        "machine": f"{os.cpu_count()} CPU cores",
        "torch_threads": torch.get_num_threads(),
        "images": args.images,
        "clients": args.clients,
        "requests": args.requests,
        "repeats": args.repeats,
        "rows": rows,
        "batching_speedup": speedup,
        "batching_p50_ratio": p50_ratio,
        "http_over_bare": http_ratio,
        "batched_clients_over_bare": batched_ratio,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
