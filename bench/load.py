"""Load and soak: concurrent clients mixing /predict (1-8 tasks), /health, /metrics and /jobs
against the backend as `make run` serves it, for a set time. Records every error, p50/p99
latency per endpoint, the server's resident memory over time (growth from the first minute to
the last), and the time of a 16-task /predict under load (Label Studio gives up after 100 s).

    python bench/load.py --clients 20 --seconds 60             # the load figure
    python bench/load.py --clients 20 --seconds 600            # the 10-minute soak (make stress)

Prints a table and writes bench/results/load-<seconds>s.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import requests

from al_core.datasets import generate_shapes
from bench.predict_throughput import CONFIG
from scripts.backend_process import BackendProcess, start_backend
from scripts.label_studio import free_port

ROOT = Path(__file__).resolve().parent.parent

AUTH = ("load", "load-password-1")
# Share of requests per endpoint: mostly what annotators cause, plus dashboards and probes.
MIX = [("predict", 0.55), ("health", 0.15), ("metrics", 0.15), ("jobs", 0.15)]


def rss_bytes(process_group: int) -> int:
    """Resident memory of every process in the group (gunicorn's master and its worker)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == process_group:  # field 5 of stat: the process group
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24: rss in pages
        except (OSError, IndexError, ValueError):
            continue
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def serve(state: Path, images: Path, checkpoint: str = "") -> BackendProcess:
    state.mkdir(parents=True, exist_ok=True)
    env = {
        "PORT": str(free_port()),
        "DATA_DIR": str(state),
        "LOCAL_FILES_ROOT": str(images),
        "BASIC_AUTH_USER": AUTH[0],
        "BASIC_AUTH_PASS": AUTH[1],
        "LOG_LEVEL": "WARNING",
    }
    if checkpoint:
        env["MODEL_CHECKPOINT"] = checkpoint
    return start_backend(env, state / "backend.log")


def run_load(backend: BackendProcess, paths: list[str], clients: int, seconds: float, seed: int = 0) -> dict:
    """``clients`` threads, each with its own connection, sending the mix until ``seconds``
    pass; a sampler records the server's memory every second and, every 15 s, the time of a
    16-task /predict."""
    stop = time.monotonic() + seconds
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter = Counter()
    errors: list[str] = []
    memory: list[tuple[float, int]] = []
    sixteen: list[float] = []
    lock = threading.Lock()
    started = time.monotonic()

    def predict_body(rng: random.Random, count: int) -> dict:
        picked = rng.sample(paths, count)
        return {"tasks": [{"id": i, "data": {"image": p}} for i, p in enumerate(picked)], "label_config": CONFIG}

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        session = requests.Session()
        session.auth = AUTH
        while time.monotonic() < stop:
            endpoint = rng.choices([m[0] for m in MIX], [m[1] for m in MIX])[0]
            begin = time.perf_counter()
            try:
                if endpoint == "predict":
                    body = predict_body(rng, rng.randint(1, 8))
                    answer = session.post(f"{backend.url}/predict", json=body, timeout=100)
                    ok = answer.ok and not any("error" in r for r in answer.json()["results"])
                else:
                    answer = session.get(f"{backend.url}/{endpoint}", timeout=100)
                    ok = answer.ok
                status = str(answer.status_code)
            except (requests.RequestException, ValueError) as error:
                ok, status = False, type(error).__name__
            elapsed = time.perf_counter() - begin
            with lock:
                latencies[endpoint].append(elapsed)
                statuses[status] += 1
                if not ok:
                    errors.append(f"{endpoint}: {status}")

    def sampler() -> None:
        session = requests.Session()
        session.auth = AUTH
        rng = random.Random(seed)
        next_sixteen = time.monotonic() + 5
        while time.monotonic() < stop:
            memory.append((time.monotonic() - started, rss_bytes(backend.process.pid)))
            if time.monotonic() >= next_sixteen:
                begin = time.perf_counter()
                answer = session.post(f"{backend.url}/predict", json=predict_body(rng, 16), timeout=100)
                sixteen.append(time.perf_counter() - begin)
                if not answer.ok or any("error" in r for r in answer.json()["results"]):
                    errors.append(f"16-task predict: {answer.status_code}")
                next_sixteen = time.monotonic() + 15
            time.sleep(1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=sampler))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alive = backend.process.poll() is None and backend.get("/health").ok
    return summarize(clients, seconds, latencies, statuses, errors, memory, sixteen, alive)


def summarize(clients, seconds, latencies, statuses, errors, memory, sixteen, alive) -> dict:
    """The run's figures: requests and errors, latency per endpoint, memory over time."""
    minute = [rss for t, rss in memory if t <= min(60.0, seconds / 2)]
    last = [rss for t, rss in memory if t >= seconds - min(60.0, seconds / 2)]
    total = sum(len(v) for v in latencies.values())
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": total,
        "requests_per_second": total / seconds,
        "errors": len(errors),
        "error_examples": errors[:10],
        "statuses": dict(statuses),
        "alive_after": alive,
        "latency_ms": {
            endpoint: {
                "requests": len(values),
                "p50": 1000 * statistics.median(values),
                "p99": 1000 * percentile(values, 99),
                "max": 1000 * max(values),
            }
            for endpoint, values in sorted(latencies.items())
        },
        "predict_16_tasks_s": {"count": len(sixteen), "max": max(sixteen, default=float("nan"))},
        "rss_mib": {
            "first_minute_mean": statistics.mean(minute) / 2**20,
            "last_minute_mean": statistics.mean(last) / 2**20,
            "peak": max(rss for _, rss in memory) / 2**20,
        },
        "rss_growth": statistics.mean(last) / statistics.mean(minute) - 1,
        "rss_samples": [(round(t, 1), round(rss / 2**20, 1)) for t, rss in memory],
    }


def report(result: dict) -> None:
    print(f"\n{result['clients']} clients for {result['seconds']:g} s: {result['requests']} requests, ", end="")
    print(f"{result['requests_per_second']:.1f}/s, {result['errors']} errors, statuses {result['statuses']}")
    print(f"{'endpoint':10} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for endpoint, row in result["latency_ms"].items():
        print(f"{endpoint:10} {row['requests']:8d} {row['p50']:8.1f} {row['p99']:8.1f} {row['max']:8.1f}")
    rss = result["rss_mib"]
    print(
        f"16-task /predict under load: slowest {result['predict_16_tasks_s']['max']:.1f} s (Label Studio waits 100 s)"
    )
    print(
        f"server memory: first minute {rss['first_minute_mean']:.0f} MiB, last minute {rss['last_minute_mean']:.0f}",
        end="",
    )
    print(f" MiB, peak {rss['peak']:.0f} MiB, growth {100 * result['rss_growth']:+.1f}% (target <= +10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--checkpoint", default="", help="MODEL_CHECKPOINT; default: the untrained CPU preset")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_HOME", str(ROOT / "data" / "torch_home"))  # as `make run` sets it
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = [Path(s.path).name for s in generate_shapes(tmp / "pool", args.images, seed=3)]
        backend = serve(tmp / "state", tmp / "pool", args.checkpoint)
        try:
            result = run_load(backend, paths, args.clients, args.seconds)
        finally:
            backend.stop()
    result["machine"] = f"{os.cpu_count()} CPU cores"
    report(result)
    out = Path(args.out or ROOT / "bench" / "results" / f"load-{args.seconds:g}s.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
