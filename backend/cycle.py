"""One annotation cycle, run as a background job: fetch the project's labels from Label
Studio, train (fine-tuning the active version by default), write and activate a new model
version, score every unlabeled task, push predictions and priorities to Label Studio, and write
the cycle's exports (CSV for annotate.online, the selection as COCO, the cycle history)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from al_core.cooperation import pseudo_labels
from al_core.datasets.coco import write_coco
from al_core.datasets.label_studio_format import choose_annotation, regions_to_boxes
from al_core.detectors import Detector
from al_core.detectors.loss_head import attach_loss_head
from al_core.display import Display, calibrate
from al_core.evaluation import evaluate
from al_core.images import load_rgb
from al_core.pool import detect, image_features, score_pool
from al_core.priority import prioritize
from al_core.ray_scoring import RayOptions, ray_can_score, score_pool_ray
from al_core.ray_training import train_detector_ray
from al_core.scoring import SCORERS, ScoringContext
from al_core.scoring.uncertainty import UncertaintyScorer
from al_core.tensorboard_log import log_pool
from al_core.training import TrainConfig, final_pass, split_held_out, train_detector
from al_core.types import Certainty, Detections, LabeledImage
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
        return replace(settings.display, threshold=project.uncertain, certain=project.certain)
    if detector.display is not None:
        return replace(detector.display, **limits)
    return settings.display


def calibration(settings: Settings, detector: Detector, held_out: list[LabeledImage]) -> dict:
    """The version's metrics on what its people should be shown: the calibrated display (al_core
    .display) when enough labeled images were held out of its training, else a note why not."""
    if len(held_out) < settings.calibration_min_images:
        note = (f"{len(held_out)} held-out images, under CALIBRATION_MIN_IMAGES ({settings.calibration_min_images}): "
                "the fixed thresholds stay")  # fmt: skip
        return {"calibration": {"images": len(held_out), "note": note}}
    detections = detect(detector, [image.path for image in held_out], settings.predict_batch_size)
    result = calibrate(detections, held_out, settings.cost, settings.display, settings.certain_precision_target)
    about = {"images": result.images, "seconds_from_scratch": result.seconds_from_scratch}
    about.update(seconds_shown=result.seconds_shown, cost_model=settings.cost.describe())
    return {"display": result.display.to_dict(), "calibration": about}


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


def run_cycle(services: CycleServices, job: Job, report: Report) -> str:
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


def _run_cycle(services: CycleServices, run: _Run, report: Report) -> str:
    settings, store, job = services.settings, services.store, run.job
    params = job.params
    strategy = params.get("strategy", settings.al_strategy)
    project = LabelStudioProject(
        settings.label_studio_url, settings.label_studio_api_key, job.project_id, retries=settings.label_studio_retries
    )

    report(0.01, "fetching annotations from Label Studio")
    config_xml = project.label_config()
    config = parse_label_config(config_xml)
    store.save_project(job.project_id, config_xml)
    tasks = []
    for task in project.tasks():
        image = task["data"].get(config.image_key)
        tasks.append(_Task(task["id"], image, choose_annotation(task.get("annotations") or [])))
    labeled_tasks = [t for t in tasks if t.annotation is not None]
    if not labeled_tasks:
        raise CycleError(f"project {job.project_id} has no annotated tasks yet")

    detector = _starting_model(services, job, config, strategy)
    report(0.03, f"downloading {len(labeled_tasks)} labeled images")
    samples, labeled_ids = [], []
    for task, path in _fetch_images(services, run, labeled_tasks, detector):
        samples.append(_labeled_image(path, regions_to_boxes(task.annotation["result"], config.from_name), config))
        labeled_ids.append(task.id)
    if not samples:
        raise CycleError("no labeled image could be read; see the backend's log")
    unlabeled = [t for t in tasks if t.annotation is None]
    thresholds = store.project(job.project_id)[1]  # set by the project's /setup, else None
    start_display = serving_display(settings, thresholds, detector)
    pseudo, pseudo_ids = _self_labels(services, run, detector, unlabeled, start_display, report)
    train_config = TrainConfig(
        epochs=params.get("epochs", settings.train_epochs),
        batch_size=settings.train_batch_size,
        lr=settings.train_lr,
        pseudo_weight=settings.self_labeling_weight,
        box_loss=settings.train_box_loss,
        emphasis=settings.train_emphasis,
    )
    active = store.active_version(job.project_id)
    before = set(read_version(active.path).labeled_ids) if active else set()
    recent = {s.path for s, task_id in zip(samples, labeled_ids, strict=True) if task_id not in before}
    train, held_out = split_held_out(samples, settings.train_held_out_fraction, train_config.seed, recent=recent)
    work = run.images.parent
    board = work / f"{job.id}.tensorboard"
    if settings.executor == "ray" and settings.train_workers > 1 and not detector.has_loss_head and not pseudo:
        report(0.05, f"training on Ray: {settings.train_workers} DDP workers")
        log.info("project %s: training on Ray with %d DDP workers", job.project_id, settings.train_workers)
        result = train_detector_ray(
            detector, train, train_config, held_out, settings.train_workers, detector.device.type == "cuda",
            settings.ray_address, work,
        )  # fmt: skip
    else:
        result = train_detector(
            detector,
            train,
            train_config,
            held_out,
            on_progress=lambda fraction, stage: report(0.05 + 0.6 * fraction, stage),
            state_path=work / f"{job.id}.state",
            pseudo=pseudo,
            log_dir=board,
        )
    metrics = dict(result.metrics)
    if not held_out:
        report(0.66, "evaluating (on the training images: too few to hold any out)")
        metrics = {**evaluate(detector, train), "evaluated_on": "training images"}
    metrics.update(epochs=result.epochs, stopped_early=result.stopped_early, seconds=round(result.seconds, 1))
    metrics.update(labeled=len(samples), held_out=len(held_out), pseudo_labeled=len(pseudo))
    report(0.68, "calibrating what people are shown on the held-out images")
    metrics.update(calibration(settings, detector, held_out))
    if held_out:  # every label trains the served version; its figures came from unseen images
        last = final_pass(train_config, settings.train_held_out_fraction)
        report(0.69, f"a last pass over every label, held-out images too ({last.epochs} epochs)")
        train_detector(detector, samples, last, pseudo=pseudo)
        metrics.update(final_pass_epochs=last.epochs)

    report(0.7, "saving the new model version")
    root = settings.data_path / "models" / f"project-{job.project_id}"
    number = len(store.versions(job.project_id)) + 1
    while (root / f"p{job.project_id}-v{number}").exists():  # left by a run that died after writing it
        number += 1
    name = f"p{job.project_id}-v{number}"
    record = write_version(root, name, detector, train_config.to_dict(), labeled_ids, metrics, pseudo_ids, board)
    store.add_version(name, job.project_id, str(record.path), metrics)
    detector = services.models.load(name, str(record.path))  # it reads back before anything is pushed
    (work / f"{job.id}.state").unlink(missing_ok=True)
    shutil.rmtree(board, ignore_errors=True)

    display = serving_display(settings, thresholds, detector)
    items = _score_and_push(
        services, run, project, config, detector, unlabeled, samples, strategy, name, display, set(pseudo_ids), report
    )
    # Served only now: evaluated, and shown by Label Studio. A failed push left the project on
    # the previous version, and so does the backend.
    services.models.activate(name)
    try:  # observability only: the version is served and pushed already
        log_pool(record.path / "tensorboard", [det for *_, det in items], display.certainty(), len(samples))
    except OSError as error:
        log.warning("project %s: the pool's TensorBoard figures were not written: %s", job.project_id, error)

    report(0.95, "writing exports")
    cycle = len(store.cycles(job.project_id)) + 1
    _export(services, job.project_id, cycle, name, detector.class_names, samples, items, metrics, strategy)
    return name


def _self_labels(
    services: CycleServices, run: _Run, detector: Detector, unlabeled: list[_Task], display: Display, report: Report
) -> tuple[list[LabeledImage], list[int]]:
    """CEAL's self-labeling (opt-in): the unlabeled images whose shown boxes are all certain
    under the starting model, at most SELF_LABELING_MAX_IMAGES, labeled with those boxes. Chosen
    afresh every run (a pseudo-label is never frozen); kept apart from the human labels."""
    settings = services.settings
    if not settings.self_labeling_max_images or not detector.version.trained or not unlabeled:
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
        detector = Detector.load(Path(active.path) / "model.pt", device=settings.model_device)
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
    services, run, project, config, detector, unlabeled, samples, strategy, version, display, pseudo_ids, report
):
    settings, job = services.settings, run.job
    report(0.75, f"scoring {len(unlabeled)} unlabeled tasks with {strategy}")

    paths, by_path = [], {}
    for task, path in _fetch_images(services, run, unlabeled, detector):
        if str(path) not in by_path:  # two tasks may share an image: score it once
            paths.append(str(path))
        by_path.setdefault(str(path), []).append(task)
    regions: dict[str, list[dict]] = {}
    kept: dict[str, Detections] = {}

    certainty = display.certainty()

    seconds: dict[str, float] = {}
    cost_aware = settings.priority.cost_aware

    def keep(path: str, det: Detections) -> None:
        kept[path] = display.shown(det)
        if cost_aware:  # only the per-second ranking needs it
            seconds[path] = display.expected_seconds(det, settings.cost)
        regions[path] = detections_to_regions(kept[path], detector.class_names, config, certainty)

    params = {}
    if _aggregates(strategy):
        params = {"aggregation": job.params.get("aggregation", settings.al_aggregation), "boxes": settings.boxes}
    context = ScoringContext(labeled=samples, budget=settings.al_budget, display=display)
    if settings.executor == "ray" and ray_can_score(strategy, params, detector):
        options = RayOptions(settings.ray_address, settings.ray_replicas, 1.0 if detector.device.type == "cuda" else 0)
        checkpoint = detector.version.checkpoint
        log.info("project %s: scoring %d images on Ray (%d replicas)", job.project_id, len(paths), options.replicas)
        scored = score_pool_ray(checkpoint, paths, strategy, params, context, settings.predict_batch_size, options,
                                on_detections=keep)  # fmt: skip
    else:
        scored = score_pool(detector, paths, strategy, params, context, settings.predict_batch_size, on_detections=keep)
    scored.scores = _prioritized(settings, detector, scored, samples, seconds, kept)
    items, scores = [], []
    for path, score in zip(scored.keys, scored.scores, strict=True):
        for task in by_path[path]:
            det = kept[path]
            cooperation = (certainty.al_ratio(det.scores), certainty.split(det.scores)[1], task.id in pseudo_ids)
            saved = display.expected_seconds_saved(det, settings.cost)
            prediction = TaskPrediction(task.id, regions[path], score.normalized, *cooperation, seconds_saved=saved)
            items.append((task, path, score, prediction))
            scores.append(TaskScore(task.id, version, score.scorer, score.value, score.normalized))
    services.store.save_scores(job.project_id, scores)

    report(0.85, f"pushing {len(items)} predictions and priorities to Label Studio")
    push(services, project, [item[3] for item in items], version)
    return [(task, path, score, kept[path]) for task, path, score, _ in items]


def _prioritized(settings, detector, scored, samples, seconds, kept) -> list:
    """The scores in AL_COST_AWARE's and AL_NEAR_DUPLICATES' order (al_core.priority)."""
    rule = settings.priority
    if not (rule.cost_aware or rule.near_duplicates):
        return scored.scores
    features = seen = None
    if rule.near_duplicates:
        features = torch.stack([kept[path].image_features for path in scored.keys])
        seen = image_features(detector, [s.path for s in samples], settings.predict_batch_size)
    expected = [seconds[path] for path in scored.keys] if rule.cost_aware else None
    return prioritize(scored.keys, scored.scores, rule, expected, features, settings.al_budget, seen)


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


def _aggregates(strategy: str) -> bool:
    return issubclass(SCORERS[strategy], UncertaintyScorer)


def _export(services, project_id, cycle, version, class_names, samples, items, metrics, strategy) -> None:
    folder = services.exports / f"project-{project_id}"
    rows = [{"image": task.image, "score": score.normalized, "task_id": task.id} for task, _, score, _ in items]
    csv_path = write_cycle_csv(rows, folder / f"cycle_{cycle}.csv")
    ranked = sorted(items, key=lambda item: (-item[2].normalized, item[0].id))
    selected = [item for item in ranked if item[2].for_people][: services.settings.al_budget]
    write_coco(
        [LabeledImage(path, det.boxes, det.labels) for _, path, _, det in selected],
        class_names,
        folder / f"cycle_{cycle}_selection.json",
        file_names=[task.image for task, *_ in selected],
    )
    services.store.add_cycle(
        Cycle(
            project_id,
            cycle,
            version,
            len(samples),
            metrics.get("map"),
            metrics.get("map50"),
            strategy,
            str(csv_path),
            time.time(),
        )
    )
    history = [
        {
            "cycle": c.cycle,
            "version": c.version,
            "labeled": c.labeled,
            "map": c.map,
            "map50": c.map50,
            "strategy": c.strategy,
        }
        for c in services.store.cycles(project_id)
    ]
    write_history(history, folder)
