"""The routes of Label Studio's ML backend protocol (/setup, /predict, /webhook, /train) and of
jobs, model versions, exports and metrics, in one APIBlueprint.

Each route takes its validated request models (backend/api_models.py) and answers plain JSON;
flask-openapi3 turns the models, the docstrings and ``responses`` into /openapi.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flask import Response, current_app, jsonify, send_file
from flask_openapi3 import APIBlueprint
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from exporters.label_config import parse_label_config

from .api_models import (
    MAX_ID,
    Activated,
    Error,
    ExportPath,
    Health,
    JobPath,
    JobQuery,
    JobsPage,
    JobsQuery,
    JobStatus,
    JobStatusBody,
    PredictAnswer,
    PredictBody,
    SetupAnswer,
    SetupBody,
    TrainBody,
    TrainQueued,
    VersionPath,
    Versions,
    VersionsQuery,
    WebhookAnswer,
    WebhookBody,
)
from .api_models import Job as JobModel
from .auth import BASIC_AUTH
from .cycle import serving_display
from .errors import BadRequest
from .job_store import QueueFull
from .models import VersionError
from .services import services

TRAINING_EVENTS = {"START_TRAINING", "ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "ANNOTATION_UPDATED"}
UNAUTHORIZED = {
    "description": "Basic auth is configured and the request's credentials are missing or wrong.",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def answers(ok: dict, *codes: int) -> dict:
    """An operation's documented answers: ``ok`` and the error codes it can give (401 always)."""
    return {**ok, **{code: Error for code in codes}, 401: UNAUTHORIZED}


def text(media_type: str, description: str) -> dict:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


api = APIBlueprint("api", __name__)


def guarded(method: str, rule: str, operation_id: str, ok: dict, *codes: int):
    """A route behind basic auth, documented with its answers."""
    register = api.get if method == "get" else api.post
    return register(rule, operation_id=operation_id, security=BASIC_AUTH, responses=answers(ok, *codes))


@api.get("/health", operation_id="health", responses={200: Health, 400: Error})
def health():
    """Liveness and the base model (open without auth)."""
    models = services().models
    base = models.base
    return jsonify(
        status="UP",
        model_class=type(base.model).__name__,
        model_version=base.version.name,
        device=str(base.device),
        # projects whose active version cannot be loaded, and the model serving them instead
        fallbacks=[dataclasses.asdict(f) for f in models.fallbacks.values()],
    )


@guarded("get", "/", "index", {200: Health}, 400)
def index():
    """The same answer as /health, behind auth."""
    return health()


@guarded("post", "/setup", "setup", {200: SetupAnswer}, 400, 413)
def setup(body: SetupBody):
    """Label Studio connects a project: check and remember its labeling config."""
    s = services()
    parse_label_config(body.schema_)
    try:
        certainty = body.certainty(s.default_certainty)
    except ValueError as error:
        raise BadRequest(str(error)) from None
    if body.project is not None:
        s.store.save_project(body.project, body.schema_, certainty)
    return jsonify(model_version=s.models.for_project(body.project).version.name)


@guarded("post", "/predict", "predict", {200: PredictAnswer}, 400, 413)
def predict(body: PredictBody):
    """Pre-annotations and an informativeness score for each task, in task order.

    413: the body is over MAX_REQUEST_BYTES, or holds more tasks than MAX_TASKS_PER_REQUEST.
    """
    s = services()
    limit = s.settings.max_tasks_per_request
    if len(body.tasks) > limit:
        message = f"{len(body.tasks)} tasks in one request; at most {limit} (MAX_TASKS_PER_REQUEST): "
        message += "send them in smaller batches"
        return jsonify(error=message), 413
    stored_config, certainty = s.store.project(body.project) if body.project is not None else (None, None)
    config_xml = body.label_config if body.label_config is not None else stored_config
    if config_xml is None:
        raise BadRequest("no 'label_config' in the request and none stored for this project by /setup")
    config = parse_label_config(config_xml)
    detector = s.models.for_project(body.project)
    display = serving_display(s.settings, certainty, detector)
    return jsonify(results=s.predictor.predict(body.tasks, config, body.project, detector, display))


def _start_training(project_id: int, params: dict, trigger: str):
    s = services()
    if params.get("epochs", 1) > s.settings.train_max_epochs:
        limit = s.settings.train_max_epochs
        raise BadRequest(f"training parameter 'epochs' must be at most {limit} (TRAIN_MAX_EPOCHS)")
    try:
        job, coalesced = s.jobs.submit(project_id, params, trigger)
    except QueueFull as error:
        return jsonify(error=str(error)), 429
    status = "coalesced into the queued run" if coalesced else "queued"
    return jsonify(job_id=job.id, status=status, project=project_id, job=job.to_dict()), 201


@guarded("post", "/train", "train", {201: TrainQueued}, 400, 413, 429)
def train(body: TrainBody):
    """Queue a training cycle for a project (joins a queued one)."""
    return _start_training(body.project, body.params.model_dump(exclude_none=True), "POST /train")


@guarded("post", "/webhook", "webhook", {200: WebhookAnswer, 201: TrainQueued}, 400, 413, 429)
def webhook(body: WebhookBody):
    """Label Studio's events: START_TRAINING queues a cycle; so do annotation events, in batches.

    Every TRAIN_MIN_NEW_ANNOTATIONS-th annotation event queues a cycle. The annotation events are
    ANNOTATION_CREATED, ANNOTATION_UPDATED and ANNOTATIONS_DELETED; others are ignored.
    With WEBHOOK_SECRET set, the X-Webhook-Secret header must equal it (401 otherwise).
    """
    if body.action not in TRAINING_EVENTS:
        return jsonify(status="Unknown event"), 200
    if body.project_id is None:
        raise BadRequest("the event names no project")
    if body.action == "START_TRAINING":
        return _start_training(body.project_id, {}, "START_TRAINING")
    s = services()
    count = s.store.count_annotation_event(body.project_id)
    threshold = s.settings.train_min_new_annotations
    if count >= threshold:
        return _start_training(body.project_id, {}, f"{count} annotation events")
    return jsonify(status="counted", new_annotations=count, threshold=threshold), 200


@guarded("get", "/jobs", "listJobs", {200: JobsPage}, 400)
def job_list(query: JobsQuery):
    """Training jobs, a page at a time, oldest first (by created_at)."""
    store = services().job_store
    page = store.jobs(query.project, limit=query.limit, offset=query.offset)
    total = store.count_jobs(query.project)
    return jsonify(jobs=[job.to_dict() for job in page], total=total, limit=query.limit, offset=query.offset)


def _no_job(job_id: object):
    return jsonify(error=f"no job {job_id!r}"), 404


@guarded("get", "/jobs/<job_id>", "getJob", {200: JobModel}, 400, 404)
def job_detail(path: JobPath):
    """One training job."""
    job = services().job_store.job(path.job_id)
    return jsonify(job.to_dict()) if job else _no_job(path.job_id)


@guarded("post", "/jobs/<job_id>/cancel", "cancelJob", {200: JobModel}, 400, 404, 409)
def job_cancel(path: JobPath):
    """Cancel a job: a queued one at once; a running one stops at its next progress report.

    A running job gets 'cancel_requested' and is 'cancelled' from its next progress report. 409: the job
    has finished (done, failed or cancelled).
    """
    job, changed = services().jobs.cancel(path.job_id)
    if job is None:
        return _no_job(path.job_id)
    if not changed:
        return jsonify(error=f"job {path.job_id!r} has finished ({job.state}); nothing to cancel"), 409
    return jsonify(job.to_dict()), 200


def _job_status(job_id: object):
    if not job_id:
        raise BadRequest('name the job: {"job": "<id>"} or ?job=<id>')
    job = services().job_store.job(str(job_id))
    if job is None:
        return _no_job(job_id)
    return jsonify(job_status=job.state, **job.to_dict())


@guarded("get", "/job_status", "jobStatusQuery", {200: JobStatus}, 400, 404)
def job_status_query(query: JobQuery):
    """Label Studio's job probe: ?job=<id>."""
    return _job_status(query.job)


@guarded("post", "/job_status", "jobStatus", {200: JobStatus}, 400, 404, 413)
def job_status(query: JobQuery, body: JobStatusBody):
    """Label Studio's job probe: {"job": "<id>"} (or ?job=<id>)."""
    return _job_status(body.job or query.job)


@guarded("get", "/versions", "listVersions", {200: Versions}, 400)
def versions(query: VersionsQuery):
    """Model versions: the base model's and the trained ones, with their metrics."""
    s = services()
    listed = s.store.versions(query.project)
    # For a project: the version serving it; otherwise every project's active version.
    if query.project is not None:
        active = s.models.for_project(query.project).version.name
    else:
        active = [v.name for v in listed if v.active]
    details = [{"name": v.name, "project": v.project_id, "active": v.active, "metrics": v.metrics} for v in listed]
    return jsonify(versions=[s.models.base.version.name] + [v.name for v in listed], active=active, details=details)


@guarded("post", "/versions/<name>/activate", "activateVersion", {200: Activated}, 400, 404, 409)
def activate(path: VersionPath):
    """Serve this version for its project from now on (rollback or roll forward).

    409: the version exists but cannot be loaded; the active one stays.
    """
    s = services()
    try:
        detector = s.models.activate(path.name)
    except KeyError:
        return jsonify(error=f"no model version {path.name!r}"), 404
    except VersionError as error:
        return jsonify(error=str(error)), 409
    return jsonify(active=detector.version.name, project=s.store.version(path.name).project_id)


@guarded("get", "/export/<int:project_id>.csv", "exportCsv", {200: text("text/csv", "The CSV file.")}, 400, 404)
def export_csv(path: ExportPath):
    """The project's latest cycle as CSV (for annotate.online)."""
    project_id = path.project_id
    cycles = services().store.cycles(project_id) if project_id <= MAX_ID else []
    if not cycles or not cycles[-1].csv_path or not Path(cycles[-1].csv_path).is_file():
        return jsonify(error=f"project {project_id} has no cycle export yet; trigger training first"), 404
    return send_file(
        cycles[-1].csv_path, mimetype="text/csv", as_attachment=True, download_name=f"project_{project_id}.csv"
    )


@guarded("get", "/metrics", "metrics", {200: text("text/plain", "Prometheus text format.")}, 400)
def prometheus_metrics():
    """Prometheus metrics."""
    return Response(generate_latest(services().metrics.registry), content_type=CONTENT_TYPE_LATEST)


@guarded(
    "get",
    "/openapi.json",
    "openapi",
    {
        200: {
            "description": "The OpenAPI 3.1 document.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
    400,
)
def openapi():
    """This document."""
    return jsonify(current_app.api_doc)
