"""The backend as `make run` starts it (`python -m backend`), with a trained CPU-preset
checkpoint: boxes of good tasks land on the known objects, a broken task gets an error."""

import base64
import os
import subprocess
import sys
import time

import pytest
import requests
import torch
from torchvision.ops import box_iou

from al_core.datasets import SHAPE_CLASSES
from al_core.datasets.label_studio_format import percent_to_box

from ..conftest import LEGACY_TOKEN, ROOT, SHAPES_CONFIG
from ..label_studio_server import free_port

PASSWORD = "pass-9f8e7d6c"
HOOK_SECRET = "hook-5a4b3c2d1e"
LABELS = {"Circle": "circle", "Square": "square", "triangle": "triangle"}


@pytest.fixture
def served(tmp_path, trained_checkpoint, image_server, shapes):
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "DATA_DIR": str(tmp_path / "state"),
        "MODEL_CHECKPOINT": str(trained_checkpoint),
        "BASIC_AUTH_USER": "ls",
        "BASIC_AUTH_PASS": PASSWORD,
        "LOCAL_FILES_ROOT": str(shapes["root"]),
        "FETCH_ALLOW_HOSTS": f"127.0.0.1:{image_server.port}",
        "LABEL_STUDIO_URL": image_server.url,  # serves /data/upload/ files to LEGACY_TOKEN; no API
        "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
        "WEBHOOK_SECRET": HOOK_SECRET,
        "LOG_LEVEL": "DEBUG",
    }
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{url}/health", timeout=1).json()["status"] == "UP":
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            raise AssertionError("backend did not come up:\n" + log_path.read_text())
        yield url, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_good_tasks_get_boxes_on_their_objects_and_one_broken_task_an_error(served, image_server, shapes):
    """Ten good tasks (five by http, five local) and a broken one. The tiny trained model must
    find most objects with the right label: a margin that holds for any seed and machine load,
    not every object (one confident mistake in a few objects once failed CI)."""
    url, log_path = served
    good = shapes["test"][2:12]
    tasks = [{"id": 0, "data": {"picture": f"{image_server.url}/broken.png?token={PASSWORD}"}}]
    for i, sample in enumerate(good, start=1):
        name = sample.path.split("/")[-1]
        tasks.append({"id": i, "data": {"picture": f"{image_server.url}/test/{name}" if i % 2 else sample.path}})
    body = {"tasks": tasks, "project": "5.1795262362", "label_config": SHAPES_CONFIG}
    assert requests.post(f"{url}/predict", json=body, timeout=60).status_code == 401
    answer = requests.post(f"{url}/predict", json=body, auth=("ls", PASSWORD), timeout=60)
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert len(results) == len(tasks)
    assert results[0]["result"] == [] and "HTTP 404" in results[0]["error"]
    found = total = 0
    for entry, sample in zip(results[1:], good, strict=True):
        assert entry["model_version"] == "shapes-v1" and "error" not in entry
        regions = entry["result"]
        for region in regions:
            assert region["original_width"] == 128 and region["type"] == "rectanglelabels" and 0 < region["score"] <= 1
        boxes = torch.tensor(
            [percent_to_box(r["value"], r["original_width"], r["original_height"]) for r in regions]
        ).reshape(-1, 4)
        labels = [SHAPE_CLASSES.index(LABELS[r["value"]["rectanglelabels"][0]]) for r in regions]
        for truth, label in zip(sample.boxes, sample.labels.tolist()):
            total += 1
            if len(labels):
                iou = box_iou(truth[None], boxes)[0]
                best = int(iou.argmax())
                found += int(iou[best] > 0.5 and labels[best] == label)
    assert total >= 10 and found / total >= 0.75, (found, total)
    assert requests.post(
        f"{url}/setup", json={"project": "5.1", "schema": SHAPES_CONFIG}, auth=("ls", PASSWORD)
    ).json() == {"model_version": "shapes-v1"}
    log_text = log_path.read_text()
    assert "broken.png?..." in log_text and PASSWORD not in log_text


def test_no_secret_reaches_the_log(served, image_server, shapes):
    """Every secret the process knows or is sent, after requests that log: wrong credentials, a
    presigned-looking URL, a Label Studio file, webhooks with and without the secret, and a
    training job that fails against Label Studio. The log is at DEBUG."""
    url, log_path = served
    auth = ("ls", PASSWORD)
    upload = f"/data/upload/5/test/{shapes['test'][0].path.split('/')[-1]}"
    signed = f"{image_server.url}/missing?X-Amz-Signature=sig-77e1f0&X-Amz-Credential=cred-0c9d"
    tasks = [{"id": 1, "data": {"picture": upload}}, {"id": 2, "data": {"picture": signed}}]
    requests.post(f"{url}/predict", json={"tasks": tasks}, auth=("ls", "wrong-pass-31337"), timeout=30)
    answer = requests.post(
        f"{url}/predict", json={"tasks": tasks, "label_config": SHAPES_CONFIG}, auth=auth, timeout=60
    )
    results = answer.json()["results"]
    assert "error" not in results[0] and "HTTP 404" in results[1]["error"]
    event = {"action": "START_TRAINING", "project": {"id": 5}}
    wrong = requests.post(
        f"{url}/webhook", json=event, auth=auth, headers={"X-Webhook-Secret": "guess-0000"}, timeout=30
    )
    assert wrong.status_code == 401
    job = requests.post(f"{url}/webhook", json=event, auth=auth, headers={"X-Webhook-Secret": HOOK_SECRET}, timeout=30)
    assert job.status_code == 201
    for _ in range(100):
        state = requests.get(f"{url}/jobs/{job.json()['job_id']}", auth=auth, timeout=30).json()
        if state["state"] == "failed":
            break
        time.sleep(0.2)
    assert state["state"] == "failed" and LEGACY_TOKEN not in state["error"]
    log_text = log_path.read_text()
    assert "/missing?..." in log_text and "job" in log_text  # the log did record these events
    basic = base64.b64encode(f"ls:{PASSWORD}".encode()).decode()
    for secret in (
        PASSWORD,
        LEGACY_TOKEN,
        HOOK_SECRET,
        "wrong-pass-31337",
        "guess-0000",
        "sig-77e1f0",
        "cred-0c9d",
        basic,
    ):
        assert secret not in log_text, f"{secret} is in the log"
