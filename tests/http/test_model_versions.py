"""A broken model never takes the service down: a corrupt or missing active version at
start-up is replaced by the newest intact one (or the base model) and /health says so; loaded
versions live in an LRU; version files reach the disk before the rename that publishes them;
task data PATCHes keep what people edited meanwhile."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import pytest

from al_core.datasets import SHAPE_CLASSES
from al_core.detectors import Detector
from al_core.versions import write_version
from backend.models import Models
from backend.store import Store
from exporters.label_studio_api import LabelStudioProject, TaskPrediction

from ..conftest import LEGACY_TOKEN, SHAPES_CONFIG


@pytest.fixture(scope="module")
def small():
    return Detector.create("cpu_preset", SHAPE_CLASSES, pretrained="none")


def add(store: Store, root, name: str, detector: Detector, active: bool = False):
    record = write_version(root, name, detector, {}, [1], {"map50": 0.5})
    store.add_version(record, 1)
    if active:
        store.activate_version(name)
    return record


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_broken_active_version_at_start_up_falls_back_to_the_newest_intact_one(tmp_path, make_client, small, damage):
    state = tmp_path / "state"
    store = Store(state / "state.sqlite3")
    add(store, state / "models", "p1-v1", small)
    add(store, state / "models", "p1-v2", small)
    broken = add(store, state / "models", "p1-v3", small, active=True)
    if damage == "corrupt":
        (broken.path / "model.pt").write_bytes(b"garbage")
    else:
        shutil.rmtree(broken.path)
    client = make_client()
    health = client.get("/health").get_json()
    assert [(f["project_id"], f["active"], f["serving"]) for f in health["fallbacks"]] == [(1, "p1-v3", "p1-v2")]
    assert "p1-v3 cannot be loaded" in health["fallbacks"][0]["reason"]
    body = {"project": 1, "tasks": [{"id": 1, "data": {"picture": "x.png"}}], "label_config": SHAPES_CONFIG}
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200 and answer.get_json()["results"][0]["model_version"] == "p1-v2"
    assert client.post("/setup", json={"project": 1, "schema": SHAPES_CONFIG}).get_json()["model_version"] == "p1-v2"
    assert client.get("/versions?project=1").get_json()["active"] == "p1-v2"
    assert client.post("/versions/p1-v1/activate").status_code == 200  # an operator's way out
    assert client.get("/health").get_json()["fallbacks"] == []


def test_with_no_intact_version_the_base_model_serves(tmp_path, make_client, small, untrained_detector):
    state = tmp_path / "state"
    store = Store(state / "state.sqlite3")
    broken = add(store, state / "models", "p1-v1", small, active=True)
    (broken.path / "checksums.json").unlink()
    client = make_client()
    assert client.get("/health").get_json()["fallbacks"][0]["serving"] == untrained_detector.version.name
    assert client.get("/versions?project=1").status_code == 200


def test_loaded_versions_live_in_an_lru(tmp_path, small, untrained_detector):
    store = Store(tmp_path / "state.sqlite3")
    models = Models(untrained_detector, store, "cpu", max_loaded=2)
    records = [add(store, tmp_path / "models", f"p1-v{i}", small) for i in (1, 2, 3)]
    for record in records:
        models.load(record.name, str(record.path))
    models.load("p1-v2", str(records[1].path))  # used again: the most recent now
    assert list(models._loaded) == ["p1-v3", "p1-v2"]
    models.load("p1-v1", str(records[0].path))
    assert list(models._loaded) == ["p1-v2", "p1-v1"]


def test_version_files_reach_the_disk_before_the_rename_publishes_them(tmp_path, small, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {b}"), real_replace(a, b)))
    write_version(tmp_path, "p1-v1", small, {}, [1], {})
    published = events.index(f"replace {tmp_path / 'p1-v1'}")
    synced = {os.path.basename(path) for path in events[:published]}
    assert {"model.pt", "metrics.json", "checksums.json", "labeled.json"} <= synced
    assert any(path.endswith(".tmp") for path in events[:published])  # the directory's entries too
    assert str(tmp_path) in events[published + 1 :]  # and the rename itself


def test_task_data_patches_only_the_backend_fields_read_fresh():
    patched: dict[str, dict] = {}

    def label_studio(request: httpx.Request) -> httpx.Response:
        task = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET":  # an annotator added a note while the model trained
            return httpx.Response(200, json={"id": int(task), "data": {"image": "a.png", "note": "edited"}})
        patched[task] = json.loads(request.content)["data"]
        return httpx.Response(200, json={"id": int(task), "data": patched[task]})

    client = httpx.Client(transport=httpx.MockTransport(label_studio))
    project = LabelStudioProject("http://label-studio.test", LEGACY_TOKEN, 1, httpx_client=client)
    project.write_task_data([TaskPrediction(7, [], 0.25, 0.5, 2, seconds_saved=12.345)])
    assert patched["7"] == {
        "image": "a.png", "note": "edited", "priority": 0.25, "al_ratio": 0.5, "uncertain_boxes": 2, "self_labeled": 0,
        "seconds_saved": 12.35,
    }  # fmt: skip
