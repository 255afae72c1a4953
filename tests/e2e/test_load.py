"""Load: 20 clients for 60 s mixing /predict (1-8 tasks), /health, /metrics and /jobs against
the backend as `make run` serves it (the untrained CPU preset), with a 16-task /predict every
15 s. Zero errors, the process alive; the figures are printed (the
10-minute soak is `make stress`: bench/load.py --seconds 600)."""

from pathlib import Path

from al_core.datasets import generate_shapes
from bench import load


def test_twenty_clients_for_a_minute_without_an_error(tmp_path):
    paths = [Path(s.path).name for s in generate_shapes(tmp_path / "pool", 48, seed=3)]
    backend = load.serve(tmp_path / "state", tmp_path / "pool")
    try:
        result = load.run_load(backend, paths, clients=20, seconds=60)
    finally:
        backend.stop()
    load.report(result)
    assert result["errors"] == 0, result["error_examples"]
    assert result["alive_after"] and result["statuses"] == {"200": result["requests"]}
    assert result["latency_ms"]["predict"]["requests"] > 20 and set(result["latency_ms"]) == {
        "health",
        "jobs",
        "metrics",
        "predict",
    }
    assert result["predict_16_tasks_s"]["count"] >= 3
    assert result["predict_16_tasks_s"]["max"] < 100  # Label Studio's predict timeout
