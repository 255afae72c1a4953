"""The annotation cycle against a real Label Studio (started by the tests) and the backend
process: connect, annotate, train from the annotation threshold, Label Studio's training
button and POST /train (coalesced), then check versions, predictions, ordering and exports;
finally a training killed mid-run leaves the previous version served."""

import io
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
import requests
import torch
from label_studio_sdk import LabelStudio
from prometheus_client.parser import text_string_to_metric_families

from al_core.annotation_cost import CostModel
from al_core.cooperation import correct_boxes, oracle_edits
from al_core.datasets import generate_shapes, read_dataset
from al_core.datasets.label_studio_format import box_to_percent, percent_to_box
from al_core.types import Certainty, Detections
from al_core.versions import read_version
from backend.store import Store
from exporters.label_studio_api import QUICK_ACCEPTANCE_VIEW_TITLE as QUICK_ACCEPTANCE
from exporters.label_studio_api import LabelStudioProject

from ..label_studio_server import (  # noqa: F401
    BACKEND_PASSWORD,
    BACKEND_USER,
    ROOT,
    free_port,
    label_studio,
    label_studio_server,
    start_backend,
)

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


def sample_of(url: str, by_name: dict):
    """The generated sample behind a task's image URL, whichever way it was imported."""
    return next(sample for name, sample in by_name.items() if url.endswith(name))


def metric(backend, name: str, **labels) -> float:
    text = backend.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def cycle(label_studio_server, image_server, shapes, tmp_path_factory):  # noqa: F811
    """40 tasks imported three ways: 8 uploaded, 12 from a Local Storage, 20 by http URL."""
    samples = generate_shapes(shapes["root"] / "lspool", 40, seed=11)
    by_name = {Path(s.path).name: s for s in samples}
    ls = LabelStudio(base_url=label_studio_server.url, api_key=label_studio_server.token)
    project = ls.projects.create(title="Active learning cycle", label_config=CONFIG)
    assert (
        label_studio.upload_images(
            label_studio_server.url, label_studio_server.token, project.id, [s.path for s in samples[:8]]
        )
        == 8
    )
    folder = label_studio_server.data_dir / "media" / "cycle-local"
    folder.mkdir()
    for sample in samples[8:20]:
        shutil.copy(sample.path, folder)
    label_studio.add_local_storage(ls, project.id, folder)
    urls = [f"{image_server.url}/lspool/{Path(s.path).name}" for s in samples[20:]]
    ls.projects.import_tasks(id=project.id, request=[{"image": u} for u in urls])
    listed = wait_for(
        lambda: (t := list(ls.tasks.list(project=project.id, fields="all"))) and len(t) == 40 and t, 60, "40 tasks"
    )
    tasks = {t.id: sample_of(t.data["image"], by_name) for t in listed}
    kinds = {
        t.id: (
            "upload" if "/data/upload/" in t.data["image"] else "local" if "local-files" in t.data["image"] else "http"
        )
        for t in listed
    }
    assert sorted(Counter(kinds.values()).items()) == [("http", 20), ("local", 12), ("upload", 8)]
    state = tmp_path_factory.mktemp("backend-state")
    env = {
        "PORT": str(free_port()),
        "DATA_DIR": str(state),
        "LABEL_STUDIO_URL": label_studio_server.url,
        "LABEL_STUDIO_API_KEY": label_studio_server.token,  # the legacy token; the PAT test uses a PAT
        "BASIC_AUTH_USER": BACKEND_USER,
        "BASIC_AUTH_PASS": BACKEND_PASSWORD,
        "FETCH_ALLOW_HOSTS": f"127.0.0.1:{image_server.port}",
        "TRAIN_MIN_NEW_ANNOTATIONS": str(LABELED),
        "TRAIN_EPOCHS": "8",
        "TRAIN_MIN_STEPS": "0",
        # 16 labels hold 3 images out of training: enough here to calibrate what people see
        "CALIBRATION_MIN_IMAGES": "3",
        "AL_BUDGET": "10",
    }
    backend = start_backend(env, state / "backend.log")
    # Five uploaded, five local and six http tasks get labeled.
    order = sorted(tasks, key=lambda i: (kinds[i], i))
    labeled = [i for i in order if kinds[i] == "upload"][:5] + [i for i in order if kinds[i] == "local"][:5]
    labeled += [i for i in order if kinds[i] == "http"][:6]
    shared = {"ls": ls, "project": project.id, "tasks": tasks, "kinds": kinds, "labeled": labeled, "urls": urls}
    shared["backend"] = backend
    yield shared
    shared["backend"].stop()  # the one running now: a test restarts it


def test_connect_command_and_label_studio_connection_check(cycle, label_studio_server):  # noqa: F811
    ls, backend = cycle["ls"], cycle["backend"]
    command = [sys.executable, "-m", "backend", "connect", "--project", str(cycle["project"])]
    command += ["--backend-url", backend.url, "--label-studio-url", label_studio_server.url]
    command += ["--api-key", label_studio_server.token, "--user", BACKEND_USER, "--password", BACKEND_PASSWORD]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = re.search(r"ML backend (\d+), webhook (\d+) with credentials, model version (.*), view (\d+)", done.stdout)
    ml_backend, webhook_id = int(found[1]), int(found[2])
    webhook = ls.webhooks.get(id=webhook_id)
    assert webhook.headers["Authorization"].startswith("Basic ")
    assert any((v.data or {}).get("title") == "Most informative first" for v in ls.views.list(project=cycle["project"]))
    # Label Studio's own check: reading the backend re-runs its health and setup calls.
    assert ls.ml.get(id=ml_backend).state == "CO"
    headers = {"Authorization": f"Token {label_studio_server.token}"}
    versions = requests.get(f"{label_studio_server.url}/api/ml/{ml_backend}/versions", headers=headers, timeout=30)
    assert versions.status_code == 200 and "versions" in versions.json()
    cycle["ml_backend"] = ml_backend


def test_annotations_train_a_model_and_triggers_coalesce(cycle):
    ls, backend, project = cycle["ls"], cycle["backend"], cycle["project"]
    for task_id in cycle["labeled"]:
        ls.annotations.create(id=task_id, result=truth_regions(cycle["tasks"][task_id]))
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
    stored = {
        s.task_id: s for s in Store(Path(backend.env["DATA_DIR"]) / "state.sqlite3").task_scores(project, version)
    }
    for task in unlabeled:  # the new version's predictions replaced the old ones, and carry the score
        assert [p.model_version for p in task.predictions] == [version]
        assert "priority" not in task.data  # no per-task PATCH by default (WRITE_TASK_DATA)
        assert task.predictions[0].score == pytest.approx(1 - stored[task.id].normalized, abs=1e-5)
    score = {t.id: t.predictions[0].score for t in unlabeled}
    lowest = min(score.values())
    headers = {"Authorization": f"Token {label_studio_server.token}"}
    nxt = requests.get(f"{label_studio_server.url}/api/projects/{project}/next", headers=headers, timeout=30).json()
    assert score[nxt["id"]] == pytest.approx(lowest)
    # The Data Manager tab lists the unlabeled tasks by that score, most informative first.
    view = next(v for v in ls.views.list(project=project) if (v.data or {}).get("title") == "Most informative first")
    listed = [t.id for t in ls.tasks.list(project=project, view=view.id)]
    assert sorted(listed) == sorted(score) and [score[i] for i in listed] == sorted(score.values())


def test_cycle_exports(cycle):
    backend, project = cycle["backend"], cycle["project"]
    answer = backend.get(f"/export/{project}.csv")
    assert answer.status_code == 200
    table = pd.read_csv(io.StringIO(answer.text))
    assert list(table.columns) == ["file_name", "score", "task_id", "image"]
    assert len(table) == 40 - LABELED and table["score"].is_monotonic_decreasing
    unlabeled = [t for t in cycle["ls"].tasks.list(project=project, fields="all") if not t.annotations]
    assert set(table["image"]) == {t.data["image"] for t in unlabeled}
    assert all(name and name in unquote(image) for name, image in zip(table["file_name"], table["image"], strict=True))
    folder = Path(backend.env["DATA_DIR"]) / "exports" / f"project-{project}"
    history = pd.read_csv(folder / "history.csv")
    assert list(history["cycle"]) == [1, 2] and list(history["labeled"]) == [LABELED, LABELED]
    assert (folder / "cycle_2_selection.json").is_file() and (folder / "cycle_1.csv").is_file()
    versions = backend.get(f"/versions?project={project}").json()
    assert versions["active"] == f"p{project}-v2"
    assert versions["details"][-1]["metrics"]["map50"] > 0.2


def iou(a, b) -> float:
    from torchvision.ops import box_iou

    return float(box_iou(torch.tensor([a]), torch.tensor([b]))[0, 0])


def test_retrieve_predictions_action_fills_every_task_in_one_call(cycle, label_studio_server):  # noqa: F811
    """Label Studio's Data Manager action "Retrieve Predictions": one batched /predict for all
    40 tasks (uploaded, local-storage and http images, downloaded with the legacy token)."""
    ls, backend, project_id = cycle["ls"], cycle["backend"], cycle["project"]
    version = f"p{project_id}-v2"
    project = LabelStudioProject(label_studio_server.url, label_studio_server.token, project_id)
    project.delete_predictions([version])  # the action skips tasks that have one of this version
    calls, images = (
        metric(backend, "al_backend_requests_total", endpoint="/predict"),
        metric(backend, "al_backend_images_scored_total"),
    )
    ls.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []})
    assert metric(backend, "al_backend_requests_total", endpoint="/predict") - calls == 1
    assert metric(backend, "al_backend_images_scored_total") - images == 40  # every image downloaded and scored
    project.set_model_version(version, uncertainty_sampling=False)
    found = located = total = shown = right = 0
    seconds = {"from scratch": 0.0, "pre-annotated": 0.0}
    cost = CostModel()  # the backend's default cost model
    for task in ls.tasks.list(project=project_id, fields="all"):
        assert [p.model_version for p in task.predictions] == [version]
        if task.id not in cycle["labeled"]:
            continue
        # The images the model was trained on: its boxes land on the true objects.
        sample = cycle["tasks"][task.id]
        predicted = [
            (percent_to_box(r["value"], r["original_width"], r["original_height"]), r["value"]["rectanglelabels"][0])
            for r in task.predictions[0].result
        ]
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist()):
            total += 1
            found += any(iou(box, p) > 0.5 and name == CLASSES[label] for p, name in predicted)
            located += any(iou(box, p) > 0.5 for p, _ in predicted)
        # What an annotator spends on it, every shown box reviewed, against drawing every box.
        boxes = torch.tensor([p for p, _ in predicted]).reshape(-1, 4)
        labels = torch.tensor([CLASSES.index(name) for _, name in predicted], dtype=torch.long)
        detections = Detections(boxes, labels, torch.ones(len(predicted)), (128, 128))
        edits, _ = oracle_edits(detections, sample, Certainty(0.0, 1.0), cooperative=False)
        shown, right = shown + len(predicted), right + correct_boxes(boxes, labels, sample)
        seconds["from scratch"] += cost.from_scratch(len(sample.labels))
        seconds["pre-annotated"] += cost.seconds(edits)
    cycle["recall"] = found / total
    print(f"pre-annotations of the trained-on images: {located} of {total} true boxes covered, {found} with "
          f"the right label; {right} of {shown} shown boxes right; {seconds}")  # fmt: skip
    # One box per object (class-agnostic NMS): a confused label is a box to fix, not a second box.
    assert located / total >= 0.85, f"{located} of {total} true boxes covered by the pre-annotations"
    assert found / total >= 0.7, f"{found} of {total} true boxes found with their label"
    assert right / shown >= 0.6, f"only {right} of {shown} shown boxes are right"
    assert seconds["pre-annotated"] < seconds["from scratch"], seconds


def test_the_labeling_editor_shows_the_pre_annotations(cycle, label_studio_server, tmp_path):  # noqa: F811
    """Headless Chromium logs in, opens the most informative unlabeled task with boxes, and the
    editor lists the prediction's regions: same labels, same scores, same order."""
    from scripts.browser_check import labeling_page_regions

    ls, project = cycle["ls"], cycle["project"]
    view = next(v for v in ls.views.list(project=project) if (v.data or {}).get("title") == "Most informative first")
    task = next(t for t in ls.tasks.list(project=project, view=view.id, fields="all") if t.predictions[0].result)
    shot = tmp_path / "editor.png"
    user, password = label_studio.USERNAME, label_studio.PASSWORD
    shown = labeling_page_regions(label_studio_server.url, user, password, project, task.id, shot)
    expected = [(r["value"]["rectanglelabels"][0], r["score"]) for r in task.predictions[0].result]
    assert 0 < len(shown) <= len(expected)
    for (label, score), (want_label, want_score) in zip(shown, expected):
        assert label == want_label and score == pytest.approx(want_score, abs=0.006)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_personal_access_token_downloads_label_studio_images(cycle, label_studio_server, tmp_path):  # noqa: F811
    """The cycle's backend downloads with the legacy token; this one with a PAT, which the SDK
    exchanges for short-lived access tokens."""
    token = label_studio.personal_access_token(label_studio_server.url, label_studio_server.token)
    env = {**cycle["backend"].env, "PORT": str(free_port()), "DATA_DIR": str(tmp_path), "LABEL_STUDIO_API_KEY": token}
    backend = start_backend(env, tmp_path / "backend.log")
    try:
        listed = cycle["ls"].tasks.list(project=cycle["project"])
        tasks = [{"id": t.id, "data": t.data} for t in listed if cycle["kinds"][t.id] != "http"]
        answer = backend.post(
            "/predict", json={"tasks": tasks, "project": f"{cycle['project']}.1", "label_config": CONFIG}
        )
        results = answer.json()["results"]
        assert len(results) == 20 and all("error" not in r for r in results), results
    finally:
        backend.stop()
    log = (tmp_path / "backend.log").read_text()
    assert token not in log and label_studio_server.token not in log


def test_a_killed_training_leaves_the_old_version_served(cycle):
    backend, project = cycle["backend"], cycle["project"]
    job = backend.post("/train", json={"project": project, "params": {"epochs": 100}}).json()
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
    # The failed job can be run again: the trigger queues a fresh run, which completes.
    rerun = restarted.post("/train", json={"project": project, "params": {"epochs": 1}}).json()
    assert rerun["status"] == "queued"

    def finished():
        job = restarted.get(f"/jobs/{rerun['job_id']}").json()
        return job if job["state"] in ("done", "failed") else None

    done = wait_for(finished, 300, "the re-run")
    assert done["state"] == "done" and done["version"] == f"p{project}-v3", done


def test_uncertain_boxes_come_first_and_al_ratio_sorts_the_data_manager(cycle, label_studio_server, tmp_path):  # noqa: F811
    """Box-level cooperation in a real Label Studio: the project's thresholds arrive through
    /setup's extra_params; after a cycle with WRITE_TASK_DATA each unlabeled task's prediction
    lists its uncertain boxes first, marked, the labeling editor shows them first, and the
    task's data holds al_ratio and uncertain_boxes, by which a Data Manager view sorts and
    filters. Self-labeling is on: its pseudo-labels stay out of the human labels of the version
    and of the exports. The version holds the run's TensorBoard log.

    DOCS_SCREENSHOT=docs/annotator-view.png keeps the editor's screenshot for the docs."""
    ls, project = cycle["ls"], cycle["project"]
    cycle["backend"].stop()
    env = {**cycle["backend"].env, "WRITE_TASK_DATA": "true", "SELF_LABELING_MAX_IMAGES": "10"}
    backend = start_backend(env, cycle["backend"].log)
    cycle["backend"] = backend
    extra = {"uncertain_threshold": 0.3, "certain_threshold": 0.8}
    assert backend.post("/setup", json={"project": f"{project}.1", "schema": CONFIG, "extra_params": extra}).ok
    job = backend.post("/train", json={"project": project, "params": {"epochs": 1}}).json()

    def finished():
        state = backend.get(f"/jobs/{job['job_id']}").json()
        return state if state["state"] in ("done", "failed") else None

    done = wait_for(finished, 300, "the cycle")
    assert done["state"] == "done", done
    unlabeled = [t for t in ls.tasks.list(project=project, fields="all") if not t.annotations]
    mixed = 0
    for task in unlabeled:
        (prediction,) = [p for p in task.predictions if p.model_version == done["version"]]
        marks = [r["meta"]["certainty"] for r in prediction.result]
        assert marks == sorted(marks, key=lambda mark: mark != "uncertain")  # uncertain first
        assert all(0.3 <= r["score"] < 0.8 for r in prediction.result if r["meta"]["certainty"] == "uncertain")
        assert all(r["score"] >= 0.8 for r in prediction.result if r["meta"]["certainty"] == "certain")
        uncertain = marks.count("uncertain")
        assert task.data["uncertain_boxes"] == uncertain
        assert task.data["al_ratio"] == pytest.approx(uncertain / len(marks) if marks else 1.0, abs=1e-6)
        mixed += 0 < uncertain < len(marks)
    view = ls.views.create(
        project=project,
        data={
            "title": "Boxes to check",
            "ordering": ["-tasks:data.al_ratio"],
            "columnsDisplayType": {"tasks:data.al_ratio": "Number", "tasks:data.uncertain_boxes": "Number"},
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:data.uncertain_boxes", "operator": "greater", "type": "Number", "value": 0}
                ],
            },
        },
    )
    listed = [t.id for t in ls.tasks.list(project=project, view=view.id)]
    ratio = {t.id: t.data["al_ratio"] for t in unlabeled}
    expected = [t.id for t in unlabeled if t.data["uncertain_boxes"] > 0]
    print(f"{len(unlabeled)} unlabeled tasks, {len(expected)} with boxes to check, {mixed} with both kinds")
    assert expected and sorted(listed) == sorted(expected)
    assert [ratio[i] for i in listed] == sorted((ratio[i] for i in expected), reverse=True)
    # What the annotator sees: the editor lists the regions in the prediction's order, uncertain first.
    from scripts.browser_check import labeling_page_regions

    def result(task) -> list[dict]:
        return next(p.result for p in task.predictions if p.model_version == done["version"])

    def kinds(task) -> tuple[int, int]:
        marks = [r["meta"]["certainty"] for r in result(task)]
        return marks.count("uncertain"), marks.count("certain")

    # The editor loads http images only with a CORS header, which the test's image server does
    # not send: show an uploaded or Local Storage image, with both kinds of box and few boxes.
    hosted = [t for t in unlabeled if "/data/upload/" in t.data["image"] or "local-files" in t.data["image"]]
    shown_task = max(hosted, key=lambda t: (min(kinds(t)) > 0, -sum(kinds(t))))
    shot = Path(os.environ.get("DOCS_SCREENSHOT") or tmp_path / "cooperation.png")
    user, password = label_studio.USERNAME, label_studio.PASSWORD
    shown = labeling_page_regions(label_studio_server.url, user, password, project, shown_task.id, shot)
    regions = result(shown_task)[: len(shown)]
    assert shown and [label for label, _ in shown] == [r["value"]["rectanglelabels"][0] for r in regions]
    assert [score for _, score in shown] == pytest.approx([r["score"] for r in regions], abs=0.006)
    print(f"editor of task {shown_task.id}: {kinds(shown_task)} (uncertain, certain) boxes, listed {shown}")
    # Self-labeled images: recorded apart, never as human labels.
    version = read_version(Store(Path(env["DATA_DIR"]) / "state.sqlite3").version(done["version"]).path)
    annotated = {t.id for t in ls.tasks.list(project=project, fields="all") if t.annotations}
    assert set(version.labeled_ids) == annotated and len(annotated) == LABELED
    assert set(version.pseudo_ids) <= {t.id for t in unlabeled}
    assert version.metrics["labeled"] == LABELED and version.metrics["pseudo_labeled"] == len(version.pseudo_ids)
    # ... and offered for quick acceptance: flagged in the task data, listed in their own tab.
    assert {t.id for t in unlabeled if t.data["self_labeled"]} == set(version.pseudo_ids)
    quick = next(v for v in ls.views.list(project=project) if (v.data or {}).get("title") == QUICK_ACCEPTANCE)
    assert {t.id for t in ls.tasks.list(project=project, view=quick.id)} == set(version.pseudo_ids)
    history = pd.read_csv(Path(env["DATA_DIR"]) / "exports" / f"project-{project}" / "history.csv")
    assert history["labeled"].iloc[-1] == LABELED
    print(f"self-labeled images in {done['version']}: {len(version.pseudo_ids)}")
    # The run's TensorBoard log: one epoch, one evaluation on the held-out images; the pool's SL/AL.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(version.path / "tensorboard"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/AP", "eval/AP50", "eval/AP75", "pool/sl_al_ratio"} <= tags, tags
    assert board.Scalars("eval/AP50")[-1].value == pytest.approx(version.metrics["map50"])
    boxes = sum(kinds(t)[0] for t in unlabeled), sum(kinds(t)[1] for t in unlabeled)
    assert [board.Scalars(f"pool/{k}_boxes")[-1].value for k in ("al", "sl")] == list(boxes)


def test_label_studio_exports_read_back(label_studio_server, tmp_path):  # noqa: F811
    """Uploaded and local-storage tasks, annotated through the API, exported by Label Studio
    itself as JSON, CSV and COCO, read back by the data set readers with the true boxes."""
    samples = generate_shapes(tmp_path / "images", 4, seed=21)
    by_name = {Path(s.path).name: s for s in samples}
    ls = LabelStudio(base_url=label_studio_server.url, api_key=label_studio_server.token)
    project = ls.projects.create(title="Export round trip", label_config=CONFIG)
    label_studio.upload_images(
        label_studio_server.url, label_studio_server.token, project.id, [s.path for s in samples[:2]]
    )
    media = label_studio_server.data_dir / "media"
    folder = media / f"export-{project.id}"
    folder.mkdir()
    for sample in samples[2:]:
        shutil.copy(sample.path, folder)
    label_studio.add_local_storage(ls, project.id, folder)
    tasks = wait_for(lambda: (t := list(ls.tasks.list(project=project.id))) and len(t) == 4 and t, 60, "4 tasks")
    for task in tasks:
        ls.annotations.create(id=task.id, result=truth_regions(sample_of(task.data["image"], by_name)))
    headers = {"Authorization": f"Token {label_studio_server.token}"}
    exports = {}
    for kind in ("JSON", "CSV", "COCO"):
        url = f"{label_studio_server.url}/api/projects/{project.id}/export?exportType={kind}"
        answer = requests.get(url, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        if kind == "COCO":  # a zip: result.json (and an images/ folder left empty for these tasks)
            zipfile.ZipFile(io.BytesIO(answer.content)).extractall(tmp_path / "coco")
            exports[kind] = tmp_path / "coco" / "result.json"
        else:
            exports[kind] = tmp_path / f"export.{kind.lower()}"
            exports[kind].write_bytes(answer.content)
    for kind, path in exports.items():
        data = read_dataset(path, image_root=media)
        assert len(data.images) == 4, kind
        for image in data.images:
            sample = by_name[next(name for name in by_name if image.path.endswith(name))]
            # COCO's boxes are rounded to whole pixels by Label Studio's converter.
            assert torch.allclose(image.boxes, sample.boxes, atol=1.0 if kind == "COCO" else 1e-3), kind
            assert [data.class_names[i] for i in image.labels] == [CLASSES[i] for i in sample.labels], kind
