"""One annotation cycle, run as a background job: fetch the project's labels from Label
Studio, train (fine-tuning the active version by default), write and activate a new model
version, score every unlabeled task, push predictions and priorities to Label Studio, and write
the cycle's exports (CSV for annotate.online, the selection as COCO, the cycle history)."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from al_core.cooperation import pseudo_labels
from al_core.cycle_loop import CycleHooks, CycleLabels, CyclePlan, CycleResult, Execution, Trained, run_cycle
from al_core.datasets.coco import write_coco
from al_core.datasets.label_studio_format import choose_annotation, regions_to_boxes
from al_core.detectors import Detector
from al_core.detectors.loss_head import attach_loss_head
from al_core.display import Display
from al_core.images import load_rgb
from al_core.scoring import SCORERS
from al_core.tensorboard_log import log_pool
from al_core.training import TrainConfig
from al_core.types import Certainty, Detections, LabeledImage, ModelVersion, ScoredTask
from al_core.versions import read_version, write_version
from exporters.csv_export import write_cycle_csv, write_history
from exporters.label_config import LabelConfig, parse_label_config
from exporters.label_studio_api import LabelStudioProject, TaskPrediction
from exporters.label_studio_regions import detections_to_regions

from . import retention
from .images import ImageError, ImageLoader
from .job_store import Job, JobStore
from .jobs import Report
from .models import Models
from .settings import Settings
from .store import Cycle, Store, TaskScore

log = logging.getLogger(__name__)


class CycleError(RuntimeError):
    """The cycle cannot run as configured; the message says what to change."""


def serving_display(settings: Settings, project: Certainty | None, detector: Detector) -> Display:
    """The boxes a project's people are shown: the thresholds its /setup extra params set, else
    its version's calibrated display, else the settings' thresholds; NMS and the box cap are
    always the settings' current ones."""
    limits = {"nms_iou": settings.display_nms_iou, "max_boxes": settings.display_max_boxes}
    if project is not None:
        return project_display(settings, project)
    if detector.display is not None and detector.display.calibrated:
        return replace(detector.display, **limits)
    return settings.display


def project_display(settings: Settings, project: Certainty) -> Display:
    """The settings' display with the thresholds a project's /setup set."""
    return replace(settings.display, threshold=project.uncertain, certain=project.certain)


@dataclass
class CycleServices:
    settings: Settings
    store: Store
    models: Models
    loader: ImageLoader
    jobs: JobStore

    @property
    def exports(self) -> Path:
        return self.settings.data_path / "exports"


@dataclass
class _Task:
    id: int
    image: str  # the URL or path in the task's data
    annotation: dict | None


def _labeled_image(path: Path, regions: list[tuple[str, tuple]], config: LabelConfig) -> LabeledImage:
    kept = [(config.labels.index(label), box) for label, box in regions if label in config.labels]
    return LabeledImage(
        str(path),
        torch.tensor([box for _, box in kept], dtype=torch.float32).reshape(-1, 4),
        torch.tensor([label for label, _ in kept], dtype=torch.int64),
    )


@dataclass
class _Run:
    """What one cycle owns while it runs: its job, its own copies of the images it uses (the
    shared cache may evict them at any time) and the tasks it left out, with why."""

    job: Job
    images: Path
    skipped: dict[int, str] = field(default_factory=dict)


def run_cycle_job(services: CycleServices, job: Job, report: Report) -> str:
    settings, store = services.settings, services.store
    if not (settings.label_studio_url and settings.label_studio_api_key):
        raise CycleError(
            "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY: training reads the annotations from Label Studio"
        )
    work = settings.data_path / "jobs"
    _sweep_stale_work(work, job.id)
    run = _Run(job, work / f"{job.id}.images")
    run.images.mkdir(parents=True, exist_ok=True)
    events = store.annotation_events(job.project_id)
    try:
        version = _run_cycle(services, run, report)
    finally:
        services.jobs.update_job(job.id, skipped=[{"task": t, "reason": r} for t, r in sorted(run.skipped.items())])
        _sweep_stale_work(work, "")  # this run's images, training state and TensorBoard folder too
    store.consume_annotation_events(job.project_id, events)  # kept for the next run if this one failed
    retention.prune(services.settings, store, services.models, job.project_id)
    return version


def _sweep_stale_work(work: Path, keep_job: str) -> None:
    """Work files of every job but ``keep_job`` (training state, TensorBoard folder, image
    copies): jobs never run two at a time, and a failed or killed job is re-run under a new
    id, so nothing there is read again."""
    if not work.is_dir():
        return
    for entry in work.iterdir():
        if not (keep_job and entry.name.startswith(f"{keep_job}.")):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


@dataclass
class _Cycle:
    """One run's context once the project is read: where its labels come from and go to."""

    services: CycleServices
    run: _Run
    project: LabelStudioProject
    config: LabelConfig
    strategy: str
    thresholds: Certainty | None  # set by the project's /setup, else None
    report: Report

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def job(self) -> Job:
        return self.run.job


def _run_cycle(services: CycleServices, run: _Run, report: Report) -> str:
    """The project's cycle: al_core's loop with Label Studio as the label source, and saving
    the version, pushing and exporting as its hooks."""
    c, tasks = _open(services, run, report)
    unlabeled = [t for t in tasks if t.annotation is None]
    detector = _starting_model(services, run.job, c.config, c.strategy)
    samples, labeled_ids = _labeled_samples(c, [t for t in tasks if t.annotation is not None], detector)
    start_display = serving_display(c.settings, c.thresholds, detector)
    pseudo, pseudo_ids = _self_labels(services, run, detector, unlabeled, start_display, report)
    pool = _pool(c, unlabeled, detector)
    labels = CycleLabels(samples, _recent(c, samples, labeled_ids), list(pool), pseudo)
    plan = _plan(c)
    hooks = _ServiceHooks(c, plan, labeled_ids, pseudo_ids, pool)
    run_cycle(labels, detector, plan, hooks)
    return hooks.version


def _open(services: CycleServices, run: _Run, report: Report) -> tuple[_Cycle, list[_Task]]:
    """The project's labeling config and every task, read from Label Studio."""
    settings, job = services.settings, run.job
    project = LabelStudioProject(
        settings.label_studio_url, settings.label_studio_api_key, job.project_id, retries=settings.label_studio_retries
    )
    report(0.01, "fetching annotations from Label Studio")
    config_xml = project.label_config()
    config = parse_label_config(config_xml)
    services.store.save_project(job.project_id, config_xml)
    tasks = []
    for task in project.tasks():
        image = task["data"].get(config.image_key)
        tasks.append(_Task(task["id"], image, choose_annotation(task.get("annotations") or [])))
    if not any(t.annotation is not None for t in tasks):
        raise CycleError(f"project {job.project_id} has no annotated tasks yet")
    strategy = job.params.get("strategy", settings.al_strategy)
    thresholds = services.store.project(job.project_id)[1]
    return _Cycle(services, run, project, config, strategy, thresholds, report), tasks


def _labeled_samples(c: _Cycle, labeled: list[_Task], detector: Detector) -> tuple[list[LabeledImage], list[int]]:
    """The labeled tasks whose images can be read, as training images, with their task ids."""
    c.report(0.03, f"downloading {len(labeled)} labeled images")
    samples, labeled_ids = [], []
    for task, path in _fetch_images(c.services, c.run, labeled, detector):
        regions = regions_to_boxes(task.annotation["result"], c.config.from_name)
        samples.append(_labeled_image(path, regions, c.config))
        labeled_ids.append(task.id)
    if not samples:
        raise CycleError("no labeled image could be read; see the backend's log")
    return samples, labeled_ids


def _plan(c: _Cycle) -> CyclePlan:
    """The cycle as the settings and the job's parameters ask for it."""
    settings, job = c.settings, c.job
    train = TrainConfig(
        epochs=job.params.get("epochs", settings.train_epochs),
        min_steps=settings.train_min_steps,
        max_epochs=settings.train_max_epochs,
        batch_size=settings.train_batch_size,
        lr=settings.train_lr,
        pseudo_weight=settings.self_labeling_weight,
        box_loss=settings.train_box_loss,
        emphasis=settings.train_emphasis,
    )
    params = scorer_params(c.strategy, settings, job.params.get("aggregation", settings.al_aggregation))
    execution = Execution(
        settings.executor, settings.ray_address, settings.train_workers, settings.ray_replicas,
        settings.predict_batch_size,
    )  # fmt: skip
    work = c.run.images.parent
    return CyclePlan(
        c.strategy,
        train,
        settings.cost,
        settings.display,
        params=params,
        fixed_display=project_display(settings, c.thresholds) if c.thresholds else None,
        held_out_fraction=settings.train_held_out_fraction,
        calibration_min_images=settings.calibration_min_images,
        precision_target=settings.certain_precision_target,
        priority=settings.priority,
        budget=settings.al_budget,
        seed=zlib.crc32(job.id.encode()),  # random scores, tie-breaks and AL_SAMPLING=power: fresh each job
        execution=execution,
        state_path=work / f"{job.id}.state",
        log_dir=work / f"{job.id}.tensorboard",
    )


def _recent(c: _Cycle, samples: list[LabeledImage], labeled_ids: list[int]) -> set[str]:
    """The paths of the labels the active version did not train on."""
    active = c.services.store.active_version(c.job.project_id)
    before = set(read_version(active.path).labeled_ids) if active else set()
    return {s.path for s, task_id in zip(samples, labeled_ids, strict=True) if task_id not in before}


def _pool(c: _Cycle, unlabeled: list[_Task], detector: Detector) -> dict[str, list[_Task]]:
    """The unlabeled tasks whose images can be read, by local image (two tasks may share one:
    it is scored once)."""
    pool: dict[str, list[_Task]] = {}
    for task, path in _fetch_images(c.services, c.run, unlabeled, detector):
        pool.setdefault(str(path), []).append(task)
    return pool


@dataclass
class _ServiceHooks(CycleHooks):
    """The service's side of the loop: progress into the job, the trained model saved as the
    project's next version and served from the cache, then the push and the exports."""

    c: _Cycle
    plan: CyclePlan
    labeled_ids: list[int]
    pseudo_ids: list[int]
    pool: dict[str, list[_Task]]
    version: str = ""
    record: ModelVersion | None = None

    def progress(self, fraction: float, stage: str) -> None:
        self.c.report(fraction, stage)

    def after_train(self, detector: Detector, trained: Trained) -> Detector:
        self.c.report(0.7, "saving the new model version")
        self.version, self.record, detector = _save_version(
            self.c, detector, self.plan.train, self.labeled_ids, trained.metrics, self.pseudo_ids
        )
        return detector

    def after_score(self, result: CycleResult) -> None:
        c, display = self.c, result.trained.display
        scored = _score_and_push(c, result, self.pool, self.version, set(self.pseudo_ids))
        labeled = result.trained.metrics["labeled"]
        # Served only now: evaluated, and shown by Label Studio. A failed push left the project on
        # the previous version, and so does the backend.
        c.services.models.activate(self.version)
        try:  # observability only: the version is served and pushed already
            log_pool(self.record.path / "tensorboard", [t.shown for t in scored], display.certainty(), labeled)
        except OSError as error:
            log.warning("project %s: the pool's TensorBoard figures were not written: %s", c.job.project_id, error)
        c.report(0.95, "writing exports")
        _export(c, self.version, result, scored)


def _save_version(c: _Cycle, detector: Detector, train_config: TrainConfig, labeled_ids, metrics, pseudo_ids):
    """The trained model as the project's next version, read back through the models cache
    before anything is pushed; the run's training state and TensorBoard folder go."""
    store, project_id, work = c.services.store, c.job.project_id, c.run.images.parent
    root = c.settings.data_path / "models" / f"project-{project_id}"
    number = len(store.versions(project_id)) + 1
    while (root / f"p{project_id}-v{number}").exists():  # left by a run that died after writing it
        number += 1
    name = f"p{project_id}-v{number}"
    board = work / f"{c.job.id}.tensorboard"
    record = write_version(root, name, detector, train_config.to_dict(), labeled_ids, metrics, pseudo_ids, board)
    store.add_version(record, project_id)
    detector = c.services.models.load(name, str(record.path))
    (work / f"{c.job.id}.state").unlink(missing_ok=True)
    shutil.rmtree(board, ignore_errors=True)
    return name, record, detector


def _self_labels(
    services: CycleServices, run: _Run, detector: Detector, unlabeled: list[_Task], display: Display, report: Report
) -> tuple[list[LabeledImage], list[int]]:
    """CEAL's self-labeling (opt-in): the unlabeled images whose shown boxes are all certain
    under the starting model, at most SELF_LABELING_MAX_IMAGES, labeled with those boxes. Chosen
    afresh every run (a pseudo-label is never frozen); kept apart from the human labels. None,
    and no image predicted, while nothing is certain (no calibrated or chosen threshold)."""
    settings = services.settings
    if not settings.self_labeling_max_images or not detector.version.trained or not unlabeled:
        return [], []
    if display.certain >= 1.0:
        log.info("project %s: self-labeling waits for a calibrated certain threshold", run.job.project_id)
        return [], []
    report(0.04, f"self-labeling: predicting {len(unlabeled)} unlabeled images")
    fetched = _fetch_images(services, run, unlabeled, detector)
    detections: dict[str, Detections] = {}
    paths = sorted({str(path) for _, path in fetched})
    for start in range(0, len(paths), settings.predict_batch_size):
        chunk = paths[start : start + settings.predict_batch_size]
        detections.update(zip(chunk, detector.predict([load_rgb(p) for p in chunk]), strict=True))
    shown = {path: display.shown(det) for path, det in detections.items()}
    pseudo = pseudo_labels(shown, display.certainty(), settings.self_labeling_max_images)
    chosen = {image.path for image in pseudo}
    ids = sorted(task.id for task, path in fetched if str(path) in chosen)
    log.info("project %s: %d self-labeled images join the training", run.job.project_id, len(pseudo))
    return pseudo, ids


def _fetch_images(
    services: CycleServices, run: _Run, tasks: list[_Task], detector: Detector
) -> list[tuple[_Task, Path]]:
    """(task, local image file the run owns) for every task whose image can be read and the
    model can take, fetched in parallel; the others are left out, logged and recorded in the
    job with why. No task, however broken, fails the cycle."""

    def fetch(task: _Task) -> Path | None:
        try:
            path, size = services.loader.fetch_to_file(task.image)
            if problem := detector.size_problem(*size):
                raise ImageError(problem)
            return _pin(services.loader, task.image, path, run.images)
        except ImageError as error:
            reason = str(error)
        except Exception as error:  # a bug or a library's surprise costs this task only
            log.exception("project %s task %s: unexpected error reading its image", run.job.project_id, task.id)
            reason = f"unexpected error reading the image: {type(error).__name__}"
        log.warning("project %s task %s: image left out: %s", run.job.project_id, task.id, reason)
        run.skipped[task.id] = reason
        return None

    with ThreadPoolExecutor(services.settings.fetch_workers) as pool:
        paths = list(pool.map(fetch, tasks))
    return [(task, path) for task, path in zip(tasks, paths, strict=True) if path is not None]


def _pin(loader: ImageLoader, reference: str, path: Path, folder: Path) -> Path:
    """The run's own name for a cached download (a hard link, or a copy across file systems):
    the cache may evict its name while the run still trains on it. A local file is used as is."""
    if not path.is_relative_to(loader.cache.directory):
        return path
    kept = folder / path.name
    for _attempt in range(2):
        try:
            os.link(path, kept)
            return kept
        except FileExistsError:  # two tasks share the image
            return kept
        except FileNotFoundError:  # evicted between the fetch and the link: fetch it again
            path, _ = loader.fetch_to_file(reference)
        except OSError:
            shutil.copyfile(path, kept)
            return kept
    raise ImageError("the image kept being evicted from the cache while it was fetched")


def _starting_model(services: CycleServices, job: Job, config: LabelConfig, strategy: str) -> Detector:
    """Fine-tune the active version when its classes are the project's; else start afresh."""
    settings = services.settings
    active = services.store.active_version(job.project_id)
    if active and not job.params.get("from_scratch"):
        detector = Detector.load(active.checkpoint, device=settings.model_device)
        if detector.class_names == config.labels:
            if "loss_head" in SCORERS[strategy].needs and not detector.has_loss_head:
                attach_loss_head(detector.model)  # the strategy changed to learning loss
            return detector
        log.info(
            "project %s: labels changed since %s; training from the pretrained backbone", job.project_id, active.name
        )
    torch.manual_seed(0)
    return Detector.create(
        settings.model_detector,
        config.labels,
        pretrained=settings.model_pretrained,
        image_size=settings.model_image_size or None,
        device=settings.model_device,
        loss_head="loss_head" in SCORERS[strategy].needs,
    )


def _score_and_push(
    c: _Cycle, result: CycleResult, pool: dict[str, list[_Task]], version: str, pseudo_ids: set[int]
) -> list[ScoredTask]:
    """Every scored image's tasks with their predictions, their scores stored and pushed to
    Label Studio, in the priority rule's order."""
    settings, display, class_names = c.settings, result.trained.display, result.detector.class_names
    certainty = display.certainty()
    tasks, predictions = [], []
    for image in result.scored:
        regions = detections_to_regions(image.shown, class_names, c.config, certainty)
        cooperation = (certainty.al_ratio(image.shown.scores), certainty.split(image.shown.scores)[1])
        saved = display.expected_seconds_saved(image.shown, settings.cost)
        for task in pool[image.path]:
            prediction = TaskPrediction(
                task.id, regions, image.score.normalized, *cooperation, task.id in pseudo_ids, seconds_saved=saved
            )
            predictions.append(prediction)
            tasks.append(ScoredTask(task.id, task.image, image.path, image.score, image.shown))
    c.services.store.save_scores(
        c.job.project_id,
        [TaskScore(t.task_id, version, t.score.scorer, t.score.value, t.score.normalized) for t in tasks],
    )
    c.report(0.85, f"pushing {len(tasks)} predictions and priorities to Label Studio")
    push(c.services, c.project, predictions, version)
    return tasks


def push(services: CycleServices, project: LabelStudioProject, predictions, version: str) -> None:
    """The cycle's results into Label Studio, all or nothing as far as annotators can see: until
    the project's model version moves, the tab and the editor show the previous version. If a
    step fails after the SDK's retries, the new version's predictions already written are
    removed and the job fails saying so."""
    settings = services.settings
    try:
        project.push_predictions(predictions, version)
        if settings.write_task_data:
            project.write_task_data(predictions)
        services.store.save_view(project.project_id, project.ensure_priority_view(settings.write_task_data))
        if settings.write_task_data and settings.self_labeling_max_images:
            project.ensure_quick_acceptance_view()
        project.set_model_version(version, settings.set_uncertainty_sampling)
    except Exception as error:
        try:
            project.delete_predictions([version])
            undone = "its predictions written so far were removed"
        except Exception as cleanup_error:
            undone = f"removing its predictions written so far failed too ({type(cleanup_error).__name__})"
        raise CycleError(
            f"pushing {version} to Label Studio failed after {settings.label_studio_retries} retries "
            f"({type(error).__name__}: {error}); {undone}; the project still shows the previous version. "
            "Trigger training again once Label Studio answers."
        ) from None
    # The new version replaces the backend's older ones in the editor (never other tools' versions).
    # A failure here leaves extra old predictions, which the next cycle removes: logged, not fatal.
    ours = {v.name for v in services.store.versions(project.project_id)} | {services.models.base.version.name}
    try:
        project.delete_predictions(
            [v for v, count in project.prediction_versions().items() if v in ours - {version} and count]
        )
    except Exception as error:
        log.warning(
            "project %s: older predictions not removed: %s: %s", project.project_id, type(error).__name__, error
        )


def scorer_params(strategy: str, settings: Settings, aggregation: str) -> dict:
    """The AL_* settings a scorer takes (aggregation, boxes, classes): those its signature names,
    so uncertainty scorers and PPAL's uncertainty_diversity rank by the same box set. A scorer
    that weighs another's score by default (information density's entropy) passes them on."""
    offered = {"aggregation": aggregation, "boxes": settings.boxes, "classes": settings.al_classes}
    taken = inspect.signature(SCORERS[strategy]).parameters
    params = {name: value for name, value in offered.items() if name in taken}
    within = taken.get("within")
    if within is not None and within.default in SCORERS:
        params["within_params"] = scorer_params(within.default, settings, aggregation)
    return params


def _export(c: _Cycle, version: str, result: CycleResult, scored: list[ScoredTask]) -> None:
    """The cycle's CSV (every task, most informative first), its selection as COCO (the
    AL_BUDGET tasks a person gets first, in the loop's order for people, the one the simulator
    buys in) and the history."""
    services, project_id, metrics = c.services, c.job.project_id, result.trained.metrics
    folder = services.exports / f"project-{project_id}"
    cycle = len(services.store.cycles(project_id)) + 1
    rows = [{"image": t.image, "score": t.score.normalized, "task_id": t.task_id} for t in scored]
    csv_path = write_cycle_csv(rows, folder / f"cycle_{cycle}.csv")
    by_path: dict[str, list[ScoredTask]] = {}
    for task in scored:
        by_path.setdefault(task.path, []).append(task)
    selected = [t for image in result.for_people for t in by_path[image.path]][: services.settings.al_budget]
    write_coco(
        [LabeledImage(t.path, t.shown.boxes, t.shown.labels) for t in selected],
        result.detector.class_names,
        folder / f"cycle_{cycle}_selection.json",
        file_names=[t.image for t in selected],
    )
    row = Cycle(
        project_id,
        cycle,
        version,
        metrics["labeled"],
        metrics.get("map"),
        metrics.get("map50"),
        c.strategy,
        str(csv_path),
        time.time(),
    )
    services.store.add_cycle(row)
    history = [
        {
            "cycle": r.cycle,
            "version": r.version,
            "labeled": r.labeled,
            "map": r.map,
            "map50": r.map50,
            "strategy": r.strategy,
        }
        for r in services.store.cycles(project_id)
    ]
    write_history(history, folder)
