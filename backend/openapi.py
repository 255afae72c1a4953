"""The OpenAPI 3.0 description of the HTTP API, served at GET /openapi.json.

tests/test_openapi.py keeps it true: every Flask route is here with its methods and every
operation here is a route, the document validates as OpenAPI 3.0, real answers match their
schemas, and schemathesis fuzzes the app against it (no 5xx, only documented codes and shapes).
"""

from __future__ import annotations

from al_core.scoring import AGGREGATIONS, SCORERS

from .job_store import JOB_STATES
from .settings import Settings

# SQLite's INTEGER range: project and task ids beyond it are refused with 400.
MAX_ID = 2**63 - 1
JOBS_PAGE, JOBS_PAGE_MAX = 50, 500  # GET /jobs: jobs per page by default, and at most

JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _object(properties: dict, required: tuple[str, ...] = (), **extra) -> dict:
    schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def _errors(*codes: str) -> dict:
    """The shared 4xx answers, by status code."""
    return {code: {"$ref": f"#/components/responses/{ERROR_RESPONSES[code]}"} for code in codes}


ERROR_RESPONSES = {
    "400": "BadRequest",
    "401": "Unauthorized",
    "404": "NotFound",
    "409": "Conflict",
    "413": "TooLarge",
    "429": "QueueFull",
}

STRING = {"type": "string"}
NUMBER = {"type": "number"}
NULLABLE_STRING = {"type": "string", "nullable": True}
NULLABLE_NUMBER = {"type": "number", "nullable": True}

PROJECT_ID = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
PROJECT_STRING = {"type": "string", "pattern": r"^[0-9]{1,18}(\.[0-9]*)?$"}
PROJECT_REF = {
    "description": (
        'A Label Studio project id: an integer, or Label Studio\'s "<project id>.<timestamp>" string (the part '
        "before the dot is the id). Ids run from 0 to 2^63-1."
    ),
    "oneOf": [PROJECT_ID, PROJECT_STRING],
}

SCHEMAS = {
    "Error": _object(
        {"error": {"type": "string", "description": "What is wrong and, where the client can, how to fix it."}},
        ("error",),
        description="Every 4xx answer (and a 500, which would be a bug) carries this JSON body.",
    ),
    "ProjectRef": PROJECT_REF,
    "Health": _object(
        {
            "status": {"type": "string", "enum": ["UP"]},
            "model_class": STRING,
            "model_version": STRING,
            "device": STRING,
            "fallbacks": {
                "type": "array",
                "description": "Projects whose active version cannot be loaded, and what serves them instead.",
                "items": _object(
                    {"project_id": PROJECT_ID, "active": STRING, "serving": STRING, "reason": STRING},
                    ("project_id", "active", "serving", "reason"),
                ),
            },
        },
        ("status", "model_class", "model_version", "device", "fallbacks"),
    ),
    "Task": _object(
        {
            "id": {"type": "integer", "minimum": -MAX_ID - 1, "maximum": MAX_ID},
            "data": {
                "type": "object",
                "description": "The task's data; the labeling config's <Image value=\"$key\"> names the image's key.",
            },
        },
        description="A Label Studio task; a task that is not an object, or whose image cannot be read, gets an "
        "empty prediction with an 'error' (the call still answers 200).",
    ),
    "Prediction": _object(
        {
            "model_version": STRING,
            "score": {**NUMBER, "description": "1 - normalized informativeness: Label Studio serves the lowest first."},
            "result": {"type": "array", "items": {"type": "object"}, "description": "Rectangle regions."},
            "informativeness": NUMBER,
            "scorer": STRING,
            "al_ratio": {
                **NUMBER,
                "description": "Share of the shown boxes a person must check (1 when none is shown).",
            },
            "uncertain_boxes": {"type": "integer", "description": "Boxes between the two thresholds."},
            "expected_seconds_saved": {
                **NUMBER,
                "description": "Seconds the shown boxes are expected to save against drawing from scratch.",
            },
            "display": {
                "type": "object",
                "description": "The rule that chose the shown boxes: threshold, certain, calibrated, and when "
                "no box is shown, shown=false with a note why.",
            },
            "error": {**STRING, "description": "Why this task has no prediction (its image could not be read)."},
        },
        ("model_version", "score", "result"),
    ),
    "Job": _object(
        {
            "id": STRING,
            "project_id": {"type": "integer"},
            "state": {"type": "string", "enum": list(JOB_STATES)},
            "stage": STRING,
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "params": {"type": "object"},
            "trigger": STRING,
            "error": NULLABLE_STRING,
            "version": NULLABLE_STRING,
            "created_at": NUMBER,
            "started_at": NULLABLE_NUMBER,
            "finished_at": NULLABLE_NUMBER,
            "skipped": {
                "type": "array",
                "description": "Tasks the run left out (an image it could not read or the model cannot take), and why.",
                "items": _object({"task": {"type": "integer"}, "reason": STRING}, ("task", "reason")),
            },
            "cancel_requested": {
                "type": "boolean",
                "description": "POST /jobs/{job_id}/cancel asked the running job to stop (at its next progress report).",
            },
        },
        ("id", "project_id", "state", "stage", "progress", "params", "trigger", "error", "version", "created_at"),
    ),
    "TrainQueued": _object(
        {
            "job_id": STRING,
            "status": {"type": "string", "enum": ["queued", "coalesced into the queued run"]},
            "project": {"type": "integer"},
            "job": _ref("Job"),
        },
        ("job_id", "status", "project", "job"),
    ),
}

RESPONSES = {
    "BadRequest": _json(_ref("Error"), "The request is malformed; 'error' says what to fix."),
    "Unauthorized": {
        "description": "Basic auth is configured and the request's credentials are missing or wrong.",
        "headers": {"WWW-Authenticate": {"schema": STRING}},
        "content": {JSON: {"schema": _ref("Error")}},
    },
    "NotFound": _json(_ref("Error"), "No such resource (or no route for this URL)."),
    "Conflict": _json(_ref("Error"), "The model version exists but cannot be loaded; the active one stays."),
    "TooLarge": _json(_ref("Error"), "The body is over MAX_REQUEST_BYTES."),
    "QueueFull": _json(_ref("Error"), "MAX_QUEUED_JOBS jobs are queued across projects; try again once some have run."),
}


def _train_params(max_epochs: int) -> dict:
    return _object(
        {
            "from_scratch": {
                "type": "boolean",
                "description": "Train from the pretrained backbone, not the active version.",
            },
            "epochs": {
                "type": "integer",
                "minimum": 1,
                "maximum": max_epochs,
                "description": "Most epochs of this run; at most TRAIN_MAX_EPOCHS.",
            },
            "strategy": {"type": "string", "enum": sorted(SCORERS)},
            "aggregation": {**STRING, "description": f"Box -> image aggregation: one of {', '.join(AGGREGATIONS)}."},
        },
        additionalProperties=False,
    )


def _body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, schema: dict) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _health(operation_id: str, summary: str, open_: bool) -> dict:
    operation = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": _json(_ref("Health"), "The service is up; the base model it serves.")},
    }
    if open_:
        operation["security"] = []
    else:
        operation["responses"].update(_errors("401"))
    return operation


def _paths(settings: Settings | None) -> dict:
    threshold = settings.train_min_new_annotations if settings else "TRAIN_MIN_NEW_ANNOTATIONS"
    max_tasks = settings.max_tasks_per_request if settings else "MAX_TASKS_PER_REQUEST"
    project_query = _query("project", PROJECT_STRING, 'A project id (or "<id>.<timestamp>"); absent: every project.')
    job_status_200 = _json(
        {
            "allOf": [
                _ref("Job"),
                _object({"job_status": {"type": "string", "enum": list(JOB_STATES)}}, ("job_status",)),
            ]
        },
        "The job, with 'job_status' (its state) for Label Studio.",
    )
    return {
        "/health": {"get": _health("health", "Liveness and the base model (open without auth).", open_=True)},
        "/": {"get": _health("index", "The same answer as /health, behind auth.", open_=False)},
        "/setup": {
            "post": {
                "operationId": "setup",
                "summary": "Label Studio connects a project: check and remember its labeling config.",
                "requestBody": _body(
                    _object(
                        {
                            "project": _ref("ProjectRef"),
                            "schema": {**STRING, "description": "The project's labeling config (XML)."},
                            "hostname": STRING,
                            "access_token": STRING,
                            "extra_params": {
                                "description": (
                                    "The ML backend's extra params (an object or a JSON string): the project's box "
                                    'thresholds, {"uncertain_threshold": 0.3, "certain_threshold": 0.7}.'
                                ),
                                "nullable": True,
                            },
                        },
                        ("schema",),
                    )
                ),
                "responses": {
                    "200": _json(_object({"model_version": STRING}, ("model_version",)), "The version serving it."),
                    **_errors("400", "401", "413"),
                },
            }
        },
        "/predict": {
            "post": {
                "operationId": "predict",
                "summary": "Pre-annotations and an informativeness score for each task, in task order.",
                "requestBody": _body(
                    _object(
                        {
                            "tasks": {"type": "array", "items": _ref("Task")},
                            "project": _ref("ProjectRef"),
                            "label_config": {
                                **STRING,
                                "description": "The labeling config; absent: the one stored for the project by /setup.",
                            },
                            "params": {"type": "object"},
                        },
                        ("tasks",),
                    )
                ),
                "responses": {
                    "200": _json(
                        _object({"results": {"type": "array", "items": _ref("Prediction")}}, ("results",)),
                        "One prediction per task.",
                    ),
                    **_errors("400", "401"),
                    "413": _json(
                        _ref("Error"),
                        f"The body is over MAX_REQUEST_BYTES, or holds more than {max_tasks} tasks "
                        "(MAX_TASKS_PER_REQUEST); send fewer per call.",
                    ),
                },
            }
        },
        "/train": {
            "post": {
                "operationId": "train",
                "summary": "Queue a training cycle for a project (joins a queued one).",
                "requestBody": _body(
                    _object({"project": _ref("ProjectRef"), "params": _ref("TrainParams")}, ("project",))
                ),
                "responses": {"201": _json(_ref("TrainQueued"), "Queued."), **_errors("400", "401", "413", "429")},
            }
        },
        "/webhook": {
            "post": {
                "operationId": "webhook",
                "summary": (
                    f"Label Studio's events: START_TRAINING queues a cycle; every {threshold} annotation events "
                    "(ANNOTATION_CREATED, ANNOTATION_UPDATED, ANNOTATIONS_DELETED) queue one; others are ignored."
                ),
                "parameters": [
                    {
                        "name": "X-Webhook-Secret",
                        "in": "header",
                        "required": False,
                        "schema": STRING,
                        "description": "Must equal WEBHOOK_SECRET when that is set (401 otherwise).",
                    }
                ],
                "requestBody": _body(
                    _object(
                        {
                            "action": {**STRING, "description": "The event; absent or not a training event: ignored."},
                            "project": {
                                "oneOf": [
                                    _object({"id": _ref("ProjectRef")}, ("id",)),
                                    PROJECT_ID,
                                    PROJECT_STRING,
                                ]
                            },
                        },
                    )
                ),
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "status": {"type": "string", "enum": ["Unknown event", "counted"]},
                                "new_annotations": {"type": "integer"},
                                "threshold": {"type": "integer"},
                            },
                            ("status",),
                        ),
                        "Ignored, or counted towards the next training run.",
                    ),
                    "201": _json(_ref("TrainQueued"), "A training cycle was queued."),
                    **_errors("400", "401", "413", "429"),
                },
            }
        },
        "/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "Training jobs, a page at a time, oldest first (by created_at).",
                "parameters": [
                    project_query,
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": JOBS_PAGE_MAX},
                        f"Jobs in this page (default {JOBS_PAGE}, at most {JOBS_PAGE_MAX}).",
                    ),
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                        "Jobs skipped before this page (default 0); 'total' - 'limit' gives the newest page.",
                    ),
                ],
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "jobs": {"type": "array", "items": _ref("Job")},
                                "total": {"type": "integer", "description": "Jobs matching, over all pages."},
                                "limit": {"type": "integer"},
                                "offset": {"type": "integer"},
                            },
                            ("jobs", "total", "limit", "offset"),
                        ),
                        "One page of the jobs.",
                    ),
                    **_errors("400", "401"),
                },
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "One training job.",
                "parameters": [_path("job_id", STRING)],
                "responses": {"200": _json(_ref("Job"), "The job."), **_errors("401", "404")},
            }
        },
        "/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": (
                    "Cancel a job: a queued one at once (state 'cancelled'); a running one is asked to stop "
                    "('cancel_requested'), and is 'cancelled' from its next progress report."
                ),
                "parameters": [_path("job_id", STRING)],
                "responses": {
                    "200": _json(_ref("Job"), "The job, cancelled or asked to stop."),
                    **_errors("401", "404"),
                    "409": _json(_ref("Error"), "The job has finished (done, failed or cancelled)."),
                },
            }
        },
        "/job_status": {
            "get": {
                "operationId": "jobStatusQuery",
                "summary": "Label Studio's job probe: ?job=<id>.",
                "parameters": [_query("job", STRING, "The job id.")],
                "responses": {"200": job_status_200, **_errors("400", "401", "404")},
            },
            "post": {
                "operationId": "jobStatus",
                "summary": 'Label Studio\'s job probe: {"job": "<id>"} (or ?job=<id>).',
                "parameters": [_query("job", STRING, "The job id, when the body names none.")],
                "requestBody": _body(_object({"job": {"oneOf": [STRING, {"type": "integer"}]}}), required=False),
                "responses": {"200": job_status_200, **_errors("400", "401", "404", "413")},
            },
        },
        "/versions": {
            "get": {
                "operationId": "listVersions",
                "summary": "Model versions: the base model's and the trained ones, with their metrics.",
                "parameters": [project_query],
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "versions": {"type": "array", "items": STRING},
                                "active": {
                                    "description": "With ?project: the version serving it; else every active one.",
                                    "oneOf": [STRING, {"type": "array", "items": STRING}],
                                },
                                "details": {
                                    "type": "array",
                                    "items": _object(
                                        {
                                            "name": STRING,
                                            "project": {"type": "integer"},
                                            "active": {"type": "boolean"},
                                            "metrics": {"type": "object"},
                                        },
                                        ("name", "project", "active", "metrics"),
                                    ),
                                },
                            },
                            ("versions", "active", "details"),
                        ),
                        "The versions.",
                    ),
                    **_errors("400", "401"),
                },
            }
        },
        "/versions/{name}/activate": {
            "post": {
                "operationId": "activateVersion",
                "summary": "Serve this version for its project from now on (rollback or roll forward).",
                "parameters": [_path("name", STRING)],
                "responses": {
                    "200": _json(
                        _object({"active": STRING, "project": {"type": "integer"}}, ("active", "project")),
                        "Now active.",
                    ),
                    **_errors("401", "404", "409"),
                },
            }
        },
        "/export/{project_id}.csv": {
            "get": {
                "operationId": "exportCsv",
                "summary": "The project's latest cycle as CSV (for annotate.online).",
                "parameters": [_path("project_id", PROJECT_ID)],
                "responses": {
                    "200": {"description": "The CSV file.", "content": {"text/csv": {"schema": STRING}}},
                    **_errors("401", "404"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics.",
                "responses": {
                    "200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": STRING}}},
                    **_errors("401"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.0 document."), **_errors("401")},
            }
        },
    }


def openapi_document(settings: Settings | None = None) -> dict:
    """The OpenAPI 3.0 document; with ``settings``, basic auth is required only when configured."""
    auth_on = settings is None or bool(settings.basic_auth_user)
    max_epochs = (settings or Settings()).train_max_epochs
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Active learning ML backend for Label Studio",
            "version": "1.0.0",
            "description": (
                "Label Studio's ML backend protocol (/setup, /predict, /webhook, /train) plus jobs, model versions, "
                "exports and metrics. Every endpoint but /health takes HTTP basic auth when BASIC_AUTH_USER is set. "
                'Every 4xx answer is JSON: {"error": "<what is wrong>"}.'
            ),
        },
        "security": [{"basicAuth": []}] if auth_on else [{"basicAuth": []}, {}],
        "paths": _paths(settings),
        "components": {
            "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
            "schemas": {**SCHEMAS, "TrainParams": _train_params(max_epochs)},  # its bound is a setting
            "responses": RESPONSES,
        },
    }
