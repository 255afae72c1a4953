"""The HTTP layer: Label Studio's ML backend protocol over Flask.

Routes parse and validate, call the shared ``Predictor``, and shape answers. The detector is
built once in ``create_app`` and shared by every request thread.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import re
import time
from pathlib import Path

from flask import Flask, Response, g, jsonify, request, send_file
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from al_core.detectors import Detector
from al_core.scoring import create_scorer
from al_core.types import Certainty
from exporters.label_config import LabelConfigError, parse_label_config

from .cycle import CycleServices, check_train_params, run_cycle, serving_display
from .images import ImageLoader
from .job_store import JobStore, QueueFull
from .jobs import JobRunner
from .label_studio_auth import LabelStudioAuth
from .metrics import Metrics
from .models import Models, VersionError
from .openapi import JOBS_PAGE, JOBS_PAGE_MAX, MAX_ID, openapi_document
from .predictor import Predictor
from .score_writer import ScoreWriter
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)

OPEN_ENDPOINTS = {"/health"}
TRAINING_EVENTS = {"START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
# A \ud800-\udfff escape in the raw body: maybe a lone surrogate, which no text encoding (nor SQLite) takes.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class BadRequest(ValueError):
    """The request is wrong in a way the client can fix; the message says how."""


def load_detector(settings: Settings) -> Detector:
    if settings.model_checkpoint:
        return Detector.load(settings.model_checkpoint, device=settings.model_device)
    classes = [name.strip() for name in settings.model_classes.split(",") if name.strip()]
    return Detector.create(
        settings.model_detector,
        classes,
        pretrained=settings.model_pretrained,
        image_size=settings.model_image_size or None,
        device=settings.model_device,
    )


def parse_project_id(raw: object) -> int | None:
    """Label Studio sends "<project id>.<timestamp>"; the id is the part before the dot."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= MAX_ID:
        return raw
    head = raw.split(".", 1)[0] if isinstance(raw, str) else ""
    # ASCII digits only, and no more than MAX_ID has (int() of a huge string is slow, then refused)
    if head.isascii() and head.isdigit() and len(head.lstrip("0")) <= len(str(MAX_ID)) and int(head) <= MAX_ID:
        return int(head)
    raise BadRequest(f"'project' must look like \"4.1795262362\" or 4, got {raw!r}")


def parse_certainty(extra_params: object, default: Certainty) -> Certainty | None:
    """A project's box thresholds from the ML backend's extra params (Label Studio sends them in
    /setup, as an object or a JSON string): {"uncertain_threshold": 0.3, "certain_threshold": 0.7}.
    None when neither is given: the active version's calibrated display decides."""
    if isinstance(extra_params, str) and extra_params.strip():
        try:
            extra_params = json.loads(extra_params)
        except ValueError:
            raise BadRequest("'extra_params' must be a JSON object") from None
    if not isinstance(extra_params, dict) or not {"uncertain_threshold", "certain_threshold"} & set(extra_params):
        return None
    values = {"uncertain": default.uncertain, "certain": default.certain}
    for key in values:
        raw = extra_params.get(f"{key}_threshold", values[key])
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise BadRequest(f"extra_params.{key}_threshold must be a number, got {raw!r}")
        values[key] = float(raw)
    try:
        return Certainty(**values)
    except ValueError as error:
        raise BadRequest(f"extra_params: {error}") from None


def _request_json() -> object:
    """The parsed JSON body, or None; a body with lone surrogate escapes is refused."""
    body = request.get_json(silent=True)
    if body is not None and SURROGATE_ESCAPE.search(request.get_data()):
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BadRequest("the JSON body holds a lone surrogate (e.g. \\ud800), which is not text") from None
    return body


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    """The query argument ``name`` as an integer from ``low`` to ``high``; ``default`` if absent."""
    raw = request.args.get(name)
    if raw is None:
        return default
    # ASCII digits only, length-capped before int(): "²" and a 10,000-digit string are refused
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and low <= int(raw) <= high):
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}, got {raw!r}")
    return int(raw)


def _json_body() -> dict:
    body = _request_json()
    if body is None:
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object")
    return body


def create_app(settings: Settings | None = None, detector: Detector | None = None) -> Flask:
    settings = settings or Settings.load()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    metrics = Metrics()
    store = Store(settings.data_path / "state.sqlite3")
    job_store = JobStore(store.path)
    models = Models(detector or load_detector(settings), store, settings.model_device, settings.max_loaded_models)
    models.check_active_versions()
    ls_auth = (
        LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key)
        if settings.label_studio_url and settings.label_studio_api_key
        else None
    )
    loader = ImageLoader(settings, ls_auth)
    default_certainty = Certainty(settings.prediction_score_threshold, settings.certain_score_threshold)
    predictor = Predictor(
        create_scorer("entropy", aggregation="mean"),
        loader,
        ScoreWriter(store),
        metrics,
        batch_size=settings.predict_batch_size,
        fetch_workers=settings.fetch_workers,
        max_wait_s=settings.predict_max_wait_ms / 1000,
        cost=settings.cost,
    )
    services = CycleServices(settings, store, models, loader, job_store)
    jobs = JobRunner(
        job_store,
        lambda job, report: run_cycle(services, job, report),
        max_queued=settings.max_queued_jobs,
        history_max=settings.job_history_max,
    )
    jobs.start()
    app.extensions.update(predictor=predictor, store=store, job_store=job_store, models=models, jobs=jobs)
    base = models.base
    log.info("serving %s (%s) on %s", base.version.name, base.version.detector, base.device)
    if settings.open_without_auth:
        log.warning("ALLOW_UNAUTHENTICATED: serving %s without authentication: anyone who reaches it may "
                    "predict, train and activate versions", settings.host)  # fmt: skip

    @app.before_request
    def check_auth():
        g.started = time.perf_counter()
        if not settings.basic_auth_user or request.path in OPEN_ENDPOINTS:
            return None
        auth = request.authorization
        user = ((auth.username if auth else "") or "").encode()
        password = ((auth.password if auth else "") or "").encode()
        # As bytes: compare_digest refuses str with non-ASCII characters (a 500 for "Basic <b64 of é:x>").
        user_ok = hmac.compare_digest(user, settings.basic_auth_user.encode())
        pass_ok = hmac.compare_digest(password, settings.basic_auth_pass.encode())
        if auth is None or not (user_ok and pass_ok):
            return Response(
                '{"error": "authentication required"}\n',
                401,
                {"WWW-Authenticate": 'Basic realm="al-backend"'},
                mimetype="application/json",
            )
        return None

    @app.after_request
    def record(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest):
        metrics.errors.labels(kind="bad_request").inc()
        return jsonify(error=str(error)), 400

    @app.errorhandler(LabelConfigError)
    def bad_config(error: LabelConfigError):
        metrics.errors.labels(kind="label_config").inc()
        return jsonify(error=str(error)), 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        message = "the request body is too large" if error.code == 413 else error.description
        return jsonify(error=message), error.code

    @app.errorhandler(Exception)
    def internal_error(error: Exception):
        log.exception("unhandled error on %s", request.path)
        metrics.errors.labels(kind="internal").inc()
        return jsonify(error="internal error; see the backend's log"), 500

    def health():
        return jsonify(
            status="UP",
            model_class=type(base.model).__name__,
            model_version=base.version.name,
            device=str(base.device),
            # projects whose active version cannot be loaded, and the model serving them instead
            fallbacks=[dataclasses.asdict(f) for f in models.fallbacks.values()],
        )

    app.add_url_rule("/health", "health", health)
    app.add_url_rule("/", "index", health)

    @app.post("/setup")
    def setup():
        body = _json_body()
        project_id = parse_project_id(body.get("project"))
        schema = body.get("schema")
        if not isinstance(schema, str):
            raise BadRequest("'schema' (the project's labeling config) must be a string")
        parse_label_config(schema)
        certainty = parse_certainty(body.get("extra_params"), default_certainty)
        if project_id is not None:
            store.save_project(project_id, schema, certainty)
        return jsonify(model_version=models.for_project(project_id).version.name)

    @app.post("/predict")
    def predict():
        body = _json_body()
        project_id = parse_project_id(body.get("project"))
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("'tasks' must be a list of tasks")
        if len(tasks) > settings.max_tasks_per_request:
            message = (
                f"{len(tasks)} tasks in one request; at most {settings.max_tasks_per_request} "
                "(MAX_TASKS_PER_REQUEST): send them in smaller batches"
            )
            return jsonify(error=message), 413
        ids = [t.get("id") for t in tasks if isinstance(t, dict)]
        if any(isinstance(i, int) and not -MAX_ID - 1 <= i <= MAX_ID for i in ids):
            raise BadRequest("task ids must be integers from -2^63 to 2^63-1")
        stored_config, certainty = store.project(project_id) if project_id is not None else (None, None)
        config_xml = body.get("label_config")
        if config_xml is None:
            config_xml = stored_config
        if not isinstance(config_xml, str):
            raise BadRequest("no 'label_config' in the request and none stored for this project by /setup")
        config = parse_label_config(config_xml)
        detector = models.for_project(project_id)
        display = serving_display(settings, certainty, detector)
        return jsonify(results=predictor.predict(tasks, config, project_id, detector, display))

    def start_training(project_id: int, params: dict, trigger: str):
        try:
            job, coalesced = jobs.submit(project_id, check_train_params(params, settings.train_max_epochs), trigger)
        except QueueFull as error:
            return jsonify(error=str(error)), 429
        status = "coalesced into the queued run" if coalesced else "queued"
        return jsonify(job_id=job.id, status=status, project=project_id, job=job.to_dict()), 201

    @app.post("/train")
    def train():
        body = _json_body()
        project_id = parse_project_id(body.get("project"))
        if project_id is None:
            raise BadRequest("'project' (the Label Studio project id) is required")
        params = body.get("params", {})
        if not isinstance(params, dict):
            raise BadRequest("'params' must be an object")
        try:
            return start_training(project_id, params, "POST /train")
        except ValueError as error:
            raise BadRequest(str(error)) from None

    @app.post("/webhook")
    def webhook():
        if settings.webhook_secret and not hmac.compare_digest(
            request.headers.get("X-Webhook-Secret", "").encode(), settings.webhook_secret.encode()
        ):
            return jsonify(error="missing or wrong X-Webhook-Secret header (WEBHOOK_SECRET is set)"), 401
        body = _json_body()
        action = body.get("action")
        if action is not None and not isinstance(action, str):
            raise BadRequest("'action' must be a string")
        if action not in TRAINING_EVENTS:
            return jsonify(status="Unknown event"), 200
        project = body.get("project")
        project_id = parse_project_id(project.get("id") if isinstance(project, dict) else project)
        if project_id is None:
            raise BadRequest("the event names no project")
        if action == "START_TRAINING":
            return start_training(project_id, {}, "START_TRAINING")
        count = store.count_annotation_event(project_id)
        if count >= settings.train_min_new_annotations:
            return start_training(project_id, {}, f"{count} annotation events")
        return jsonify(status="counted", new_annotations=count, threshold=settings.train_min_new_annotations), 200

    def job_or_404(job_id: str):
        job = job_store.job(job_id)
        if job is None:
            return None
        return job.to_dict()

    @app.get("/jobs/<job_id>")
    def job_detail(job_id: str):
        job = job_or_404(job_id)
        return (jsonify(job), 200) if job else (jsonify(error=f"no job {job_id!r}"), 404)

    @app.post("/jobs/<job_id>/cancel")
    def job_cancel(job_id: str):
        job, changed = jobs.cancel(job_id)
        if job is None:
            return jsonify(error=f"no job {job_id!r}"), 404
        if not changed:
            return jsonify(error=f"job {job_id!r} has finished ({job.state}); nothing to cancel"), 409
        return jsonify(job.to_dict()), 200

    @app.get("/jobs")
    def job_list():
        project = request.args.get("project")
        project_id = parse_project_id(project) if project else None
        limit = _int_arg("limit", JOBS_PAGE, 1, JOBS_PAGE_MAX)
        offset = _int_arg("offset", 0, 0, MAX_ID)
        return jsonify(
            jobs=[job.to_dict() for job in job_store.jobs(project_id, limit=limit, offset=offset)],
            total=job_store.count_jobs(project_id),
            limit=limit,
            offset=offset,
        )

    @app.route("/job_status", methods=["GET", "POST"])
    def job_status():
        """Label Studio's probe: {"job": id} in the body or ?job=id."""
        body = _request_json() if request.method == "POST" else None
        job_id = (body or {}).get("job") if isinstance(body, dict) else None
        job_id = job_id or request.args.get("job")
        if not job_id:
            raise BadRequest('name the job: {"job": "<id>"} or ?job=<id>')
        job = job_or_404(str(job_id))
        if job is None:
            return jsonify(error=f"no job {job_id!r}"), 404
        return jsonify(job_status=job["state"], **job)

    @app.get("/versions")
    def versions():
        project = request.args.get("project")
        project_id = parse_project_id(project) if project else None
        listed = store.versions(project_id)
        # For a project: the version serving it; otherwise every project's active version.
        active = (
            models.for_project(project_id).version.name
            if project_id is not None
            else [v.name for v in listed if v.active]
        )
        return jsonify(
            versions=[base.version.name] + [v.name for v in listed],
            active=active,
            details=[
                {"name": v.name, "project": v.project_id, "active": v.active, "metrics": v.metrics} for v in listed
            ],
        )

    @app.post("/versions/<name>/activate")
    def activate(name: str):
        try:
            detector = models.activate(name)
        except KeyError:
            return jsonify(error=f"no model version {name!r}"), 404
        except VersionError as error:
            return jsonify(error=str(error)), 409
        return jsonify(active=detector.version.name, project=store.version(name).project_id)

    @app.get("/export/<int:project_id>.csv")
    def export_csv(project_id: int):
        cycles = store.cycles(project_id) if project_id <= MAX_ID else []
        if not cycles or not cycles[-1].csv_path or not Path(cycles[-1].csv_path).is_file():
            return jsonify(error=f"project {project_id} has no cycle export yet; trigger training first"), 404
        return send_file(
            cycles[-1].csv_path, mimetype="text/csv", as_attachment=True, download_name=f"project_{project_id}.csv"
        )

    document = openapi_document(settings)  # built once: it depends only on the settings
    app.add_url_rule("/openapi.json", "openapi", lambda: jsonify(document))

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    return app
