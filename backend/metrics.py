"""Prometheus metrics of one app, in a registry of its own."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "al_backend_requests", "HTTP requests served", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "al_backend_request_seconds",
            "HTTP request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 100),
        )
        self.images_scored = Counter(
            "al_backend_images_scored", "Images run through the detector and scored", registry=self.registry
        )
        self.batch_images = Histogram(
            "al_backend_batch_images",
            "Images per model batch of /predict (merged across concurrent calls)",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.errors = Counter("al_backend_errors", "Errors by kind", ["kind"], registry=self.registry)

    def measure(self, app: Flask) -> None:
        """Count and time every request of ``app``, by route rule (not by URL: ids stay out)."""

        @app.before_request
        def start() -> None:
            g.started = time.perf_counter()

        @app.after_request
        def record(response: Response) -> Response:
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            self.requests.labels(endpoint, request.method, str(response.status_code)).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
            return response
