"""The annotation cycle against a real Label Studio (started by the tests) and the backend
process: connect, annotate, train from the annotation threshold, Label Studio's training
button and POST /train (coalesced), then check versions, predictions, ordering and exports;
finally a training killed mid-run leaves the previous version served."""

import time

import pandas as pd
import pytest
from label_studio_sdk import LabelStudio

from al_core.datasets import generate_shapes
from backend.connect import connect
from exporters.label_studio_regions import box_to_percent

from .label_studio_server import BACKEND_PASSWORD, BACKEND_USER, free_port, label_studio_server, start_backend  # noqa: F401

CONFIG = """<View>
  <Image name="img" value="$image"/>
  <RectangleLabels name="boxes" toName="img">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </RectangleLabels>
</View>"""
CLASSES = ("circle", "square", "triangle")
LABELED = 16


def truth_regions(sample) -> list[dict]:
    """The sample's true boxes as the RectangleLabels regions a person would draw."""
    return [
        {
            "from_name": "boxes", "to_name": "img", "type": "rectanglelabels",
            "original_width": 128, "original_height": 128,
            "value": {**box_to_percent(box, 128, 128), "rotation": 0, "rectanglelabels": [CLASSES[label]]},
        }
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist())
    ]  # fmt: skip


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def cycle(label_studio_server, image_server, shapes, tmp_path_factory):  # noqa: F811
    samples = generate_shapes(shapes["root"] / "lspool", 40, seed=11)
    ls = LabelStudio(base_url=label_studio_server.url, api_key=label_studio_server.token)
    project = ls.projects.create(title="Active learning cycle", label_config=CONFIG)
    urls = [f"{image_server.url}/lspool/{s.path.split('/')[-1]}" for s in samples]
    imported = ls.projects.import_tasks(id=project.id, request=[{"image": u} for u in urls], return_task_ids=True)
    state = tmp_path_factory.mktemp("backend-state")
    env = {
        "PORT": str(free_port()),
        "DATA_DIR": str(state),
        "LABEL_STUDIO_URL": label_studio_server.url,
        "LABEL_STUDIO_API_KEY": label_studio_server.token,
        "BASIC_AUTH_USER": BACKEND_USER,
        "BASIC_AUTH_PASS": BACKEND_PASSWORD,
        "FETCH_ALLOW_HOSTS": f"127.0.0.1:{image_server.port}",
        "TRAIN_MIN_NEW_ANNOTATIONS": str(LABELED),
        "TRAIN_EPOCHS": "8",
        "AL_BUDGET": "10",
    }
    backend = start_backend(env, state / "backend.log")
    shared = {"ls": ls, "project": project.id, "tasks": dict(zip(imported.task_ids, samples)), "urls": urls}
    shared["backend"] = backend
    yield shared
    shared["backend"].stop()  # the one running now: a test restarts it


def test_connect_puts_credentials_on_the_webhook(cycle, label_studio_server):  # noqa: F811
    ls, backend = cycle["ls"], cycle["backend"]
    done = connect(
        label_studio_server.url,
        label_studio_server.token,
        cycle["project"],
        backend.url,
        BACKEND_USER,
        BACKEND_PASSWORD,
    )
    webhook = ls.webhooks.get(id=done.webhook_id)
    assert webhook.headers["Authorization"].startswith("Basic ")
    assert ls.projects.get(id=cycle["project"]).model_version == done.model_version
    assert any((v.data or {}).get("title") == "Most informative first" for v in ls.views.list(project=cycle["project"]))
    cycle["ml_backend"] = done.ml_backend_id


def test_annotations_train_a_model_and_triggers_coalesce(cycle):
    ls, backend, project = cycle["ls"], cycle["backend"], cycle["project"]
    labeled = list(cycle["tasks"].items())[:LABELED]
    for task_id, sample in labeled:
        ls.annotations.create(id=task_id, result=truth_regions(sample))
    # The 16th ANNOTATION_CREATED (webhook with credentials) starts a run.
    first = wait_for(
        lambda: backend.get(f"/jobs?project={project}").json()["jobs"], 60, "the threshold to start a job"
    )[0]
    assert first["trigger"] == f"{LABELED} annotation events"
    # Label Studio's "Start Training" and POST /train while it runs: one follow-up run, not two.
    ls.ml.train(id=cycle["ml_backend"])
    answer = backend.post("/train", json={"project": project})
    assert answer.status_code == 201
    follow_up = answer.json()
    jobs = backend.get(f"/jobs?project={project}").json()["jobs"]
    assert len(jobs) == 2 and follow_up["status"].startswith("coalesced") and follow_up["job_id"] == jobs[1]["id"]
    for job_id in [job["id"] for job in jobs]:
        finished = lambda job_id=job_id: backend.get(f"/jobs/{job_id}").json()["state"] in ("done", "failed")  # noqa: E731
        wait_for(finished, 600, "training")
        final = backend.get(f"/jobs/{job_id}").json()
        assert final["state"] == "done", final
    jobs = backend.get(f"/jobs?project={project}").json()["jobs"]
    assert [j["version"] for j in jobs] == [f"p{project}-v1", f"p{project}-v2"]
    assert jobs[1]["started_at"] >= jobs[0]["finished_at"]  # never in parallel
    status = backend.post("/job_status", json={"job": jobs[0]["id"]}).json()
    assert status["job_status"] == "done"


def test_label_studio_serves_the_most_informative_task_first(cycle, label_studio_server):  # noqa: F811
    ls, backend, project = cycle["ls"], cycle["backend"], cycle["project"]
    version = f"p{project}-v2"
    assert ls.projects.get(id=project).model_version == version
    assert backend.post("/setup", json={"project": f"{project}.1", "schema": CONFIG}).json()["model_version"] == version
    unlabeled = [t for t in ls.tasks.list(project=project, fields="all") if not t.annotations]
    assert len(unlabeled) == 40 - LABELED
    for task in unlabeled:
        mine = [p for p in task.predictions if p.model_version == version]
        assert len(mine) == 1 and "priority" in task.data
        assert mine[0].score == pytest.approx(1 - task.data["priority"], abs=1e-5)
    most_informative = max(unlabeled, key=lambda t: (t.data["priority"], -t.id))
    import requests

    headers = {"Authorization": f"Token {label_studio_server.token}"}
    nxt = requests.get(f"{label_studio_server.url}/api/projects/{project}/next", headers=headers, timeout=30).json()
    assert nxt["data"]["priority"] == pytest.approx(most_informative.data["priority"])
    # The sorted Data Manager view lists the same task first.
    view = next(v for v in ls.views.list(project=project) if (v.data or {}).get("title") == "Most informative first")
    first = next(iter(ls.tasks.list(project=project, view=view.id, fields="all")))
    assert first.data["priority"] == pytest.approx(most_informative.data["priority"])


def test_cycle_exports(cycle):
    backend, project = cycle["backend"], cycle["project"]
    answer = backend.get(f"/export/{project}.csv")
    assert answer.status_code == 200
    table = pd.read_csv(__import__("io").StringIO(answer.text))
    assert list(table.columns) == ["image", "entropy", "task_id"]
    assert len(table) == 40 - LABELED and table["entropy"].is_monotonic_decreasing
    assert set(table["image"]) <= set(cycle["urls"])
    folder = __import__("pathlib").Path(backend.env["DATA_DIR"]) / "exports" / f"project-{project}"
    history = pd.read_csv(folder / "history.csv")
    assert list(history["cycle"]) == [1, 2] and list(history["labeled"]) == [LABELED, LABELED]
    assert (folder / "cycle_2_selection.json").is_file() and (folder / "cycle_1.csv").is_file()
    versions = backend.get(f"/versions?project={project}").json()
    assert versions["active"] == f"p{project}-v2"
    assert versions["details"][-1]["metrics"]["map50"] > 0.2


def test_a_killed_training_leaves_the_old_version_served(cycle):
    backend, project = cycle["backend"], cycle["project"]
    job = backend.post("/train", json={"project": project, "params": {"epochs": 300}}).json()
    wait_for(
        lambda: backend.get(f"/jobs/{job['job_id']}").json()["stage"].startswith("training"), 120, "training to start"
    )
    backend.kill()
    restarted = start_backend(backend.env, backend.log)
    cycle["backend"] = restarted
    failed = restarted.get(f"/jobs/{job['job_id']}").json()
    assert failed["state"] == "failed" and "stopped while this job ran" in failed["error"]
    assert restarted.get(f"/versions?project={project}").json()["active"] == f"p{project}-v2"
    assert (
        restarted.post("/setup", json={"project": str(project), "schema": CONFIG}).json()["model_version"]
        == f"p{project}-v2"
    )
    # Rolling back to v1 works, and so does rolling forward again.
    assert restarted.post(f"/versions/p{project}-v1/activate").json()["active"] == f"p{project}-v1"
    assert restarted.get(f"/versions?project={project}").json()["active"] == f"p{project}-v1"
    assert restarted.post("/versions/nope/activate").status_code == 404


def test_a_label_studio_json_export_reads_back(label_studio_server, shapes, tmp_path):  # noqa: F811
    """Tasks with local-files URLs, annotated through the API, exported by Label Studio itself."""
    import json
    from pathlib import Path

    import requests
    import torch

    from al_core.datasets import read_dataset

    ls = LabelStudio(base_url=label_studio_server.url, api_key=label_studio_server.token)
    project = ls.projects.create(title="Export round trip", label_config=CONFIG)
    samples = shapes["test"][:3]
    request = [{"image": f"/data/local-files/?d=test/{Path(s.path).name}"} for s in samples]
    task_ids = ls.projects.import_tasks(id=project.id, request=request, return_task_ids=True).task_ids
    for task_id, sample in zip(task_ids, samples):
        ls.annotations.create(id=task_id, result=truth_regions(sample))
    headers = {"Authorization": f"Token {label_studio_server.token}"}
    url = f"{label_studio_server.url}/api/projects/{project.id}/export?exportType=JSON"
    export = requests.get(url, headers=headers, timeout=60).json()
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    data = read_dataset(path, image_root=shapes["root"])
    assert data.class_names == CLASSES
    by_path = {image.path: image for image in data.images}
    for sample in samples:
        read = by_path[str(shapes["root"] / "test" / Path(sample.path).name)]
        assert torch.allclose(read.boxes, sample.boxes, atol=1e-3) and torch.equal(read.labels, sample.labels)
