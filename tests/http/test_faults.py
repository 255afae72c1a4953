"""Faults between the backend and Label Studio: calls retried with backoff, then a failed job
that says why, with nothing half-written in the project; and the webhook's shared secret."""

import json
import re

import httpx
import label_studio_sdk.core.http_client as sdk_http
import pytest

from backend.cycle import CycleError, CycleServices, push
from backend.images import ImageLoader
from backend.job_store import JobStore
from backend.models import Models
from backend.store import Store
from exporters.label_studio_api import LabelStudioProject, TaskPrediction

from ..conftest import LEGACY_TOKEN, make_settings


class FakeLabelStudio:
    """Label Studio's API as an httpx transport: imports fail as told, the rest succeeds."""

    def __init__(self, import_failures: int, failure: str = "500"):
        self.import_failures = import_failures
        self.failure = failure
        self.calls: list[tuple[str, str]] = []
        self.imported: list[dict] = []
        self.deleted: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.calls.append((method, path))
        if method == "POST" and re.fullmatch(r"/api/projects/\d+/import/predictions/?", path):
            if self.import_failures > 0:
                self.import_failures -= 1
                if self.failure == "down":
                    raise httpx.ConnectError("connection refused", request=request)
                return httpx.Response(500, json={"detail": "database is locked"})
            self.imported += json.loads(request.content)
            return httpx.Response(201, json={"created": len(json.loads(request.content))})
        if method == "DELETE" and path.endswith("/model-versions/"):
            version = json.loads(request.content)["model_version"]
            self.deleted.append(version)
            gone = [p for p in self.imported if p["model_version"] == version]
            self.imported = [p for p in self.imported if p["model_version"] != version]
            return httpx.Response(200, json={"deleted_predictions": len(gone)})
        if method == "GET" and path.endswith("/model-versions/"):
            return httpx.Response(200, json={})
        if method == "GET" and path.startswith("/api/dm/views"):
            return httpx.Response(200, json=[])
        if method == "POST" and path.startswith("/api/dm/views"):
            return httpx.Response(201, json={"id": 5, "project": 1, "data": {}})
        if method == "PATCH" and re.fullmatch(r"/api/projects/\d+/?", path):
            return httpx.Response(200, json={"id": 1, "model_version": json.loads(request.content)["model_version"]})
        return httpx.Response(404, json={"detail": f"not faked: {method} {path}"})


@pytest.fixture
def delays(monkeypatch):
    """The SDK's backoff sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(sdk_http.time, "sleep", slept.append)
    return slept


def project(fake: FakeLabelStudio, retries: int) -> LabelStudioProject:
    client = httpx.Client(transport=httpx.MockTransport(fake))
    return LabelStudioProject("http://label-studio.test", LEGACY_TOKEN, 1, retries=retries, httpx_client=client)


PREDICTIONS = [TaskPrediction(task_id, [], 0.5) for task_id in range(1, 7)]


@pytest.mark.parametrize("failure", ["500", "down"])
def test_failed_calls_are_retried_with_growing_backoff(delays, failure):
    fake = FakeLabelStudio(import_failures=3, failure=failure)
    project(fake, retries=4).push_predictions(PREDICTIONS, "p1-v2", chunk=4)
    assert len(fake.imported) == 6 and {p["model_version"] for p in fake.imported} == {"p1-v2"}
    assert len(delays) == 3  # 1 s, 2 s, 4 s with the SDK's +-10% jitter
    assert all(0.85 * expected <= slept <= 1.15 * expected for slept, expected in zip(delays, (1, 2, 4)))


@pytest.fixture
def services(tmp_path, untrained_detector):
    def build(retries: int) -> CycleServices:
        settings = make_settings(tmp_path, label_studio_retries=retries)
        store = Store(settings.data_path / "state.sqlite3")
        models = Models(untrained_detector, store, "cpu")
        return CycleServices(settings, store, models, ImageLoader(settings), JobStore(store.path))

    return build


@pytest.mark.parametrize("failure", ["500", "down"])
def test_a_push_that_keeps_failing_fails_the_job_and_leaves_nothing_half_written(services, delays, failure):
    # The first call of 4 predictions succeeds, the second keeps failing past every retry.
    fake = FakeLabelStudio(import_failures=0, failure=failure)
    ls = project(fake, retries=2)
    real_push = ls.push_predictions

    def first_chunk_then_down(predictions, version, chunk=4):
        real_push(predictions[:4], version, chunk)
        fake.import_failures = 100
        real_push(predictions[4:], version, chunk)

    ls.push_predictions = first_chunk_then_down
    with pytest.raises(CycleError) as failed:
        push(services(2), ls, PREDICTIONS, "p1-v2")
    message = str(failed.value)
    assert "pushing p1-v2 to Label Studio failed after 2 retries" in message
    assert "its predictions written so far were removed" in message and "previous version" in message
    assert fake.deleted == ["p1-v2"] and fake.imported == []  # the 4 written first were removed
    assert not any(method == "PATCH" for method, _ in fake.calls)  # the project's version never moved
    assert len(delays) == 2


def test_a_push_that_succeeds_after_retries_moves_the_project(services, delays):
    fake = FakeLabelStudio(import_failures=2)
    push(services(3), project(fake, retries=3), PREDICTIONS, "p1-v2")
    assert len(fake.imported) == 6 and fake.deleted == []
    assert ("PATCH", "/api/projects/1/") in fake.calls or ("PATCH", "/api/projects/1") in fake.calls


def test_the_webhook_secret(make_client):
    client = make_client(webhook_secret="s3cret-hook", train_min_new_annotations=100)
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 3}}
    for headers in ({}, {"X-Webhook-Secret": "wrong"}):
        answer = client.post("/webhook", json=event, headers=headers)
        assert answer.status_code == 401 and "X-Webhook-Secret" in answer.get_json()["error"]
    answer = client.post("/webhook", json=event, headers={"X-Webhook-Secret": "s3cret-hook"})
    assert answer.status_code == 200 and answer.get_json()["status"] == "counted"
    assert make_client().post("/webhook", json=event).status_code == 200  # off by default
