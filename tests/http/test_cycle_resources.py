"""The annotation cycle against a stand-in Label Studio project (no server): it survives its own
image cache, and tasks it cannot read; a failed push keeps the version Label Studio shows and
the annotation events; retention keeps what it says and deletes the rest."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from al_core.datasets import generate_shapes
from al_core.datasets.label_studio_format import box_to_percent
from al_core.display import Display
from al_core.types import Certainty, Detections
from al_core.versions import read_version
from backend import cycle as cycle_module
from backend.settings import Settings

from ..conftest import LEGACY_TOKEN

CONFIG = """<View>
  <Image name="img" value="$image"/>
  <RectangleLabels name="boxes" toName="img">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </RectangleLabels>
</View>"""
CLASSES = ("circle", "square", "triangle")


def annotation(sample) -> dict:
    regions = [
        {
            "from_name": "boxes", "to_name": "img", "type": "rectanglelabels",
            "original_width": 128, "original_height": 128,
            "value": {**box_to_percent(box, 128, 128), "rotation": 0, "rectanglelabels": [CLASSES[label]]},
        }
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist())
    ]  # fmt: skip
    return {"id": 1, "result": regions, "was_cancelled": False, "created_at": "2026-01-01"}


class FakeProject:
    """The calls the cycle makes on a Label Studio project, answered from memory."""

    tasks_list: list[dict] = []
    fail_push = False
    pushed: list[str] = []

    def __init__(self, url, api_key, project_id, retries=4, **_):
        self.project_id = project_id

    def label_config(self) -> str:
        return CONFIG

    def tasks(self):
        return iter(FakeProject.tasks_list)

    def push_predictions(self, predictions, version, chunk=5000):
        if FakeProject.fail_push:
            raise ConnectionError("Label Studio is down")
        FakeProject.pushed.append(version)

    def write_task_data(self, predictions):
        pass

    def ensure_priority_view(self, by_task_data=False) -> int:
        return 1

    def ensure_quick_acceptance_view(self) -> int:
        return 2

    def set_model_version(self, version, uncertainty_sampling):
        pass

    def delete_predictions(self, versions) -> int:
        return 0

    def prediction_versions(self) -> dict:
        return {}


@pytest.fixture
def project(monkeypatch, shapes, image_server):
    """12 labeled and 12 unlabeled tasks, their images served over http (so they go through the
    image cache)."""
    samples = generate_shapes(shapes["root"] / "cyclepool", 24, seed=21)
    tasks = []
    for i, sample in enumerate(samples, start=1):
        url = f"{image_server.url}/cyclepool/{Path(sample.path).name}"
        tasks.append({"id": i, "data": {"image": url}, "annotations": [annotation(sample)] if i <= 12 else []})
    monkeypatch.setattr(cycle_module, "LabelStudioProject", FakeProject)
    monkeypatch.setattr(FakeProject, "tasks_list", tasks)
    monkeypatch.setattr(FakeProject, "fail_push", False)
    monkeypatch.setattr(FakeProject, "pushed", [])
    return samples


@pytest.fixture
def backend(tmp_path, make_client):
    def build(**overrides):
        values = dict(
            label_studio_url="http://label-studio.test", label_studio_api_key=LEGACY_TOKEN, train_epochs=1,
            al_budget=4, model_pretrained="backbone",
        )  # fmt: skip
        client = make_client(**{**values, **overrides})
        return client, client.application.extensions

    return build


def train(client, extensions, project_id: int = 1):
    answer = client.post("/train", json={"project": project_id})
    assert answer.status_code == 201, answer.get_json()
    return extensions["jobs"].wait(answer.get_json()["job_id"], timeout=300)


def test_a_cycle_whose_images_are_three_times_the_cache_cap(backend, project, tmp_path):
    total = sum(Path(s.path).stat().st_size for s in project)
    client, ext = backend(image_cache_max_bytes=total // 3)
    job = train(client, ext)
    assert job.state == "done", job.error
    assert job.skipped == []
    cache = tmp_path / "state" / "image_cache"
    assert sum(p.stat().st_size for p in cache.iterdir()) <= total // 3  # evictions did happen
    assert list((tmp_path / "state" / "jobs").iterdir()) == []  # the run's own copies are gone
    assert ext["store"].active_version(1).name == job.version
    # 12 labeled tasks hold 2 images out, under CALIBRATION_MIN_IMAGES (5): the fixed thresholds stay
    metrics = read_version(ext["store"].active_version(1).path).metrics
    assert "display" not in metrics and "CALIBRATION_MIN_IMAGES" in metrics["calibration"]["note"]
    assert ext["models"].for_project(1).display is None


def test_every_bad_task_is_skipped_with_its_reason_and_the_cycle_goes_on(backend, project, monkeypatch, image_server):
    bad = {
        101: "http://h:99999/a.png",  # port out of range: a ValueError from the URL parser
        102: "http://[::1/a.png",  # unbalanced bracket: another ValueError
        103: f"{image_server.url}/missing",
        104: f"{image_server.url}/cyclepool/{Path(project[0].path).name}?explode",
    }
    extra = [{"id": i, "data": {"image": url}, "annotations": []} for i, url in bad.items()]
    monkeypatch.setattr(FakeProject, "tasks_list", FakeProject.tasks_list + extra)
    client, ext = backend()
    loader = ext["predictor"].loader
    real = loader.fetch_to_file

    def fetch(reference):
        if isinstance(reference, str) and reference.endswith("?explode"):
            raise RuntimeError("a decoder error nobody expected")
        return real(reference)

    monkeypatch.setattr(loader, "fetch_to_file", fetch)
    job = train(client, ext)
    assert job.state == "done", job.error
    reasons = {entry["task"]: entry["reason"] for entry in job.skipped}
    assert sorted(reasons) == sorted(bad)
    assert "HTTP 404" in reasons[103] and "RuntimeError" in reasons[104]
    assert all(reason for reason in reasons.values())


def test_a_failed_push_keeps_the_served_version_and_the_annotation_events(backend, project, monkeypatch):
    client, ext = backend()
    store, models = ext["store"], ext["models"]
    first = train(client, ext)
    assert first.state == "done" and models.for_project(1).version.name == first.version
    for _ in range(3):
        store.count_annotation_event(1)
    monkeypatch.setattr(FakeProject, "fail_push", True)
    failed = train(client, ext)
    assert failed.state == "failed" and "pushing" in failed.error
    assert store.active_version(1).name == first.version  # Label Studio still shows it
    assert models.for_project(1).version.name == first.version
    assert store.annotation_events(1) == 3  # not lost with the failed run
    monkeypatch.setattr(FakeProject, "fail_push", False)
    again = train(client, ext)
    assert again.state == "done" and store.annotation_events(1) == 0


def test_retention_keeps_the_newest_the_active_and_the_previous(backend, project, tmp_path):
    client, ext = backend(keep_model_versions=1, keep_cycle_exports=1)
    store = ext["store"]
    names = [train(client, ext).version for _ in range(3)]
    assert [v.name for v in store.versions(1)] == names[1:]  # the newest (active) and the previous
    models_dir = tmp_path / "state" / "models" / "project-1"
    assert sorted(p.name for p in models_dir.iterdir()) == sorted(names[1:])
    assert read_version(models_dir / names[2]).name == names[2]
    exports = tmp_path / "state" / "exports" / "project-1"
    assert sorted(p.name for p in exports.glob("cycle_*")) == ["cycle_3.csv", "cycle_3_selection.json"]
    assert client.get("/export/1.csv").status_code == 200
    assert list((tmp_path / "state" / "jobs").iterdir()) == []


def test_stale_work_of_a_killed_job_is_swept(tmp_path):
    work = tmp_path / "jobs"
    (work / "old.images").mkdir(parents=True)
    (work / "old.state").write_bytes(b"x")
    (work / "old.tensorboard").mkdir()
    (work / "new.state").write_bytes(b"x")
    cycle_module._sweep_stale_work(work, "new")
    assert [p.name for p in work.iterdir()] == ["new.state"]


@pytest.mark.parametrize(
    "names, active, keep, deleted",
    [
        (["v1", "v2", "v3", "v4"], "v4", 1, ["v1", "v2"]),
        (["v1", "v2", "v3", "v4"], "v2", 1, ["v3"]),  # rolled back: v2 and v1 stay, and the newest
        (["v1", "v2", "v3"], "v3", 5, []),
        (["v1", "v2"], None, 1, ["v1"]),
    ],
)
def test_which_versions_retention_deletes(names, active, keep, deleted):
    from backend.retention import versions_to_delete

    assert versions_to_delete(names, active, keep) == deleted


@pytest.mark.parametrize("min_steps, max_epochs", [(300, 100), (0, 40)])
def test_the_cycle_trains_with_the_step_floor_and_epoch_cap_of_the_settings(tmp_path, min_steps, max_epochs):
    settings = Settings(train_epochs=12, train_min_steps=min_steps, train_max_epochs=max_epochs)
    job = SimpleNamespace(id="j1", params={"epochs": 5})
    c = SimpleNamespace(settings=settings, job=job, strategy="entropy", run=SimpleNamespace(images=tmp_path / "i"))
    c.thresholds = None
    train = cycle_module._plan(c).train
    assert (train.epochs, train.min_steps, train.max_epochs) == (5, min_steps, max_epochs)
    assert Settings().train_min_steps == 300  # the service's default


def test_each_job_draws_afresh_with_the_settings_sampling(tmp_path):
    settings = Settings(al_sampling="power")

    def plan_of(job_id):
        job = SimpleNamespace(id=job_id, params={})
        c = SimpleNamespace(settings=settings, job=job, strategy="entropy", run=SimpleNamespace(images=tmp_path / "i"))
        c.thresholds = None
        return cycle_module._plan(c)

    first, again, other = plan_of("job-a"), plan_of("job-a"), plan_of("job-b")
    assert first.priority.sampling == "power" and first.seed == again.seed != other.seed


@pytest.mark.parametrize(
    "calibrated, project, certain_setting, expected",
    [
        (False, None, None, []),
        (True, None, None, [7]),
        (False, Certainty(0.3, 0.7), None, [7]),
        (False, None, 0.7, [7]),
    ],
)
def test_self_labeling_waits_for_a_measured_or_chosen_certain_threshold(
    tmp_path, monkeypatch, calibrated, project, certain_setting, expected
):
    """An uncalibrated version's "certain" 0.7 (stored by an older release) labels nothing by
    itself, and no image is predicted for it; a calibrated display, the project's own thresholds
    or CERTAIN_SCORE_THRESHOLD do label. Task 7's one box is certain, task 8 has an uncertain one."""
    paths = {task_id: tmp_path / f"{task_id}.png" for task_id in (7, 8)}
    for path in paths.values():
        Image.new("RGB", (100, 100)).save(path)
    tasks = [cycle_module._Task(task_id, str(path), None) for task_id, path in paths.items()]
    monkeypatch.setattr(cycle_module, "_fetch_images", lambda s, r, t, d: [(task, paths[task.id]) for task in t])
    boxes = torch.tensor([[0.0, 0, 20, 20], [50, 50, 70, 70]])
    found = [  # in the tasks' order
        Detections(boxes[:1], torch.tensor([0]), torch.tensor([0.9]), (100, 100)),
        Detections(boxes, torch.tensor([0, 1]), torch.tensor([0.9, 0.5]), (100, 100)),
    ]
    predicted = []
    detector = SimpleNamespace(
        version=SimpleNamespace(trained=True), predict=lambda images: predicted.append(1) or found
    )
    settings = Settings(self_labeling_max_images=5, predict_batch_size=8, certain_score_threshold=certain_setting)
    services = SimpleNamespace(settings=settings)
    run = SimpleNamespace(job=SimpleNamespace(project_id=1))
    version = SimpleNamespace(display=Display(threshold=0.3, certain=0.7, calibrated=calibrated))
    display = cycle_module.serving_display(settings, project, version)
    pseudo, ids = cycle_module._self_labels(services, run, detector, tasks, display, lambda fraction, stage: None)
    assert ids == expected and [p.path for p in pseudo] == [str(paths[i]) for i in expected]
    assert bool(predicted) == bool(expected)
