"""The app factory: builds the shared services once (the detector among them, shared by every
request thread) and registers the auth, the error format, the metrics and the routes."""

from __future__ import annotations

import logging
from functools import partial

from flask_openapi3 import Info, OpenAPI

from al_core.detectors import Detector
from al_core.device import in_passing_thread
from al_core.scoring import create_scorer

from . import auth, errors
from .cycle import CycleServices, run_cycle_job
from .images import ImageLoader
from .job_store import JobStore
from .jobs import JobRunner
from .label_studio_auth import LabelStudioAuth
from .metrics import Metrics
from .models import Models
from .predictor import Predictor
from .routes import api
from .score_writer import ScoreWriter
from .services import Services
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)

INFO = Info(
    title="Active learning ML backend for Label Studio",
    version="1.0.0",
    description="Label Studio's ML backend protocol (/setup, /predict, /webhook, /train) plus jobs, model "
    "versions, exports and metrics. Every endpoint but /health takes HTTP basic auth when BASIC_AUTH_USER is "
    'set. Every 4xx answer is JSON: {"error": "<what is wrong>"}.',
)


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


def _services(settings: Settings, detector: Detector | None) -> Services:
    metrics = Metrics()
    store = Store(settings.data_path / "state.sqlite3")
    job_store = JobStore(store.path)
    base = detector or in_passing_thread(partial(load_detector, settings))
    models = Models(base, store, settings.model_device, settings.max_loaded_models)
    models.check_active_versions()
    ls_auth = None
    if settings.label_studio_url and settings.label_studio_api_key:
        ls_auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key)
    loader = ImageLoader(settings, ls_auth)
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
    cycle_services = CycleServices(settings, store, models, loader, job_store)
    jobs = JobRunner(
        job_store,
        lambda job, report: run_cycle_job(cycle_services, job, report),
        max_queued=settings.max_queued_jobs,
        history_max=settings.job_history_max,
    )
    return Services(settings, store, job_store, models, predictor, jobs, metrics)


def create_app(settings: Settings | None = None, detector: Detector | None = None) -> OpenAPI:
    settings = settings or Settings.load()
    app = OpenAPI(
        __name__,
        info=INFO,
        security_schemes={"basicAuth": {"type": "http", "scheme": "basic"}},
        validation_error_status=400,
        validation_error_callback=errors.refuse_invalid,
        doc_ui=False,  # /openapi.json is a route of its own, behind auth
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    services = _services(settings, detector)
    app.extensions.update(services=services, **{k: getattr(services, k) for k in EXTENSIONS})
    services.metrics.measure(app)
    auth.register(app, settings)
    errors.register(app, services.metrics)
    app.register_api(api)
    services.jobs.start()
    base = services.models.base
    log.info("serving %s (%s) on %s", base.version.name, base.version.detector, base.device)
    if settings.open_without_auth:
        log.warning("ALLOW_UNAUTHENTICATED: serving %s without authentication: anyone who reaches it may "
                    "predict, train and activate versions", settings.host)  # fmt: skip
    return app


EXTENSIONS = ("predictor", "store", "job_store", "models", "jobs")  # the tests and tools reach these by name
