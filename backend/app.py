"""The HTTP layer: Label Studio's ML backend protocol over Flask.

Routes parse and validate, call the shared ``Predictor``, and shape answers. The detector is
built once in ``create_app`` and shared by every request thread.
"""

from __future__ import annotations

import hmac
import logging
import time

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from al_core.detectors import Detector
from al_core.scoring import create_scorer
from exporters.label_config import LabelConfigError, parse_label_config

from .images import ImageLoader
from .label_studio_auth import LabelStudioAuth
from .metrics import Metrics
from .predictor import Predictor
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)

OPEN_ENDPOINTS = {"/health"}
TRAINING_EVENTS = {"START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}


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
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.split(".", 1)[0].isdigit():
        return int(raw.split(".", 1)[0])
    raise BadRequest(f"'project' must look like \"4.1795262362\" or 4, got {raw!r}")


def _json_body() -> dict:
    body = request.get_json(silent=True)
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
    detector = detector or load_detector(settings)
    ls_auth = (
        LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key)
        if settings.label_studio_url and settings.label_studio_api_key
        else None
    )
    predictor = Predictor(
        detector,
        create_scorer("entropy", aggregation="mean"),
        ImageLoader(settings, ls_auth),
        store,
        metrics,
        batch_size=settings.predict_batch_size,
        score_threshold=settings.prediction_score_threshold,
        fetch_workers=settings.fetch_workers,
    )
    app.extensions["predictor"] = predictor
    log.info("serving %s (%s) on %s", detector.version.name, detector.version.detector, detector.device)

    @app.before_request
    def check_auth():
        g.started = time.perf_counter()
        if not settings.basic_auth_user or request.path in OPEN_ENDPOINTS:
            return None
        auth = request.authorization
        user_ok = hmac.compare_digest((auth.username if auth else "") or "", settings.basic_auth_user)
        pass_ok = hmac.compare_digest((auth.password if auth else "") or "", settings.basic_auth_pass)
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
            model_class=type(detector.model).__name__,
            model_version=detector.version.name,
            device=str(detector.device),
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
        if project_id is not None:
            store.save_project(project_id, schema)
        return jsonify(model_version=detector.version.name)

    @app.post("/predict")
    def predict():
        body = _json_body()
        project_id = parse_project_id(body.get("project"))
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("'tasks' must be a list of tasks")
        config_xml = body.get("label_config")
        if config_xml is None and project_id is not None:
            config_xml = store.project_label_config(project_id)
        if not isinstance(config_xml, str):
            raise BadRequest("no 'label_config' in the request and none stored for this project by /setup")
        config = parse_label_config(config_xml)
        return jsonify(results=predictor.predict(tasks, config, project_id))

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        action = body.get("action")
        if action not in TRAINING_EVENTS:
            return jsonify(status="Unknown event"), 200
        project = body.get("project")
        project_id = parse_project_id(project.get("id") if isinstance(project, dict) else project)
        log.info("webhook %s for project %s: training is not available in this version", action, project_id)
        return jsonify(status="received", action=action, training="not available in this version"), 200

    @app.get("/versions")
    def versions():
        return jsonify(versions=[detector.version.name], active=detector.version.name)

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    return app
