"""The HTTP contract: one pydantic model per request part and answer.

The routes (backend/routes.py) take these as typed arguments; flask-openapi3 validates every
request against them and generates /openapi.json from them, so the checks and the document
cannot drift apart. Answers are built as plain dicts on the hot path (no response validation
per request); tests/http/test_openapi.py checks real answers against these schemas.

Why flask-openapi3 (not spectree or apispec): it takes the models as typed view arguments,
generates OpenAPI 3.1 from pydantic v2 models directly, and validates no answers at run time,
so /predict's answer costs nothing extra.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from al_core.scoring import AGGREGATIONS, SCORERS
from al_core.types import Certainty

from .job_store import JOB_STATES

# SQLite's INTEGER range: project and task ids beyond it are refused with 400.
MAX_ID = 2**63 - 1
JOBS_PAGE, JOBS_PAGE_MAX = 50, 500  # GET /jobs: jobs per page by default, and at most


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
    raise ValueError(f"'project' must look like \"4.1795262362\" or 4, got {raw!r}")


PROJECT_ID_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
PROJECT_STRING_SCHEMA = {"type": "string", "pattern": r"^[0-9]{1,18}(\.[0-9]*)?$"}


def _project_schema(nullable: bool) -> WithJsonSchema:
    kinds = [PROJECT_ID_SCHEMA, PROJECT_STRING_SCHEMA] + ([{"type": "null"}] if nullable else [])
    about = 'A Label Studio project id: an integer, or Label Studio\'s "<project id>.<timestamp>" string (the part '
    about += "before the dot is the id). Ids run from 0 to 2^63-1."
    return WithJsonSchema({"description": about + (" Null or absent: none." if nullable else ""), "oneOf": kinds})


def _required_project(raw: object) -> int:
    project_id = parse_project_id(raw)
    if project_id is None:
        raise ValueError("'project' (the Label Studio project id) is required")
    return project_id


ProjectRef = Annotated[int | None, BeforeValidator(parse_project_id), _project_schema(nullable=True)]
RequiredProject = Annotated[int, BeforeValidator(_required_project), _project_schema(nullable=False)]


class _Request(BaseModel):
    """A JSON body: keys Label Studio adds that we do not use are ignored."""

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: object) -> object:
        if value is None:
            raise ValueError("the body must be JSON (Content-Type: application/json)")
        if not isinstance(value, dict):
            raise ValueError("the JSON body must be an object")
        return value


class Error(BaseModel):
    """Every 4xx answer (and a 500, which would be a bug) carries this JSON body."""

    error: str = Field(description="What is wrong and, where the client can, how to fix it.")


class Fallback(BaseModel):
    project_id: int
    active: str
    serving: str
    reason: str


class Health(BaseModel):
    status: Literal["UP"]
    model_class: str
    model_version: str
    device: str
    fallbacks: list[Fallback] = Field(
        description="Projects whose active version cannot be loaded, and what serves them instead."
    )


class SetupBody(_Request):
    project: ProjectRef = None
    schema_: str = Field(alias="schema", description="The project's labeling config (XML).")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = Field(
        None,
        description="The ML backend's extra params (an object or a JSON string): the project's box thresholds, "
        '{"uncertain_threshold": 0.3, "certain_threshold": 0.7}.',
    )

    def certainty(self, default: Certainty) -> Certainty | None:
        """The project's box thresholds; None when neither is given (the active version's
        calibrated display decides)."""
        extra = self.extra_params
        if isinstance(extra, str) and extra.strip():
            try:
                extra = json.loads(extra)
            except ValueError:
                raise ValueError("'extra_params' must be a JSON object") from None
        return parse_certainty(extra, default)


def parse_certainty(extra_params: object, default: Certainty) -> Certainty | None:
    """{"uncertain_threshold": 0.3, "certain_threshold": 0.7} as a Certainty; a missing one keeps
    ``default``'s; None when neither is given."""
    if not isinstance(extra_params, dict) or not {"uncertain_threshold", "certain_threshold"} & set(extra_params):
        return None
    values = {"uncertain": default.uncertain, "certain": default.certain}
    for key in values:
        raw = extra_params.get(f"{key}_threshold", values[key])
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"extra_params.{key}_threshold must be a number, got {raw!r}")
        values[key] = float(raw)
    try:
        return Certainty(**values)
    except ValueError as error:
        raise ValueError(f"extra_params: {error}") from None


class SetupAnswer(BaseModel):
    model_version: str = Field(description="The version serving the project.")


TASK_SCHEMA = {
    "type": "object",
    "description": "A Label Studio task; a task that is not an object, or whose image cannot be read, gets an "
    "empty prediction with an 'error' (the call still answers 200).",
    "properties": {
        "id": {"type": "integer", "minimum": -MAX_ID - 1, "maximum": MAX_ID},
        "data": {
            "type": "object",
            "description": "The task's data; the labeling config's <Image value=\"$key\"> names the image's key.",
        },
    },
}


class PredictBody(_Request):
    # Any item: one bad task gets an error in its own result, not a refused call (Label Studio's contract).
    tasks: Annotated[list[Any], WithJsonSchema({"type": "array", "items": TASK_SCHEMA})]
    project: ProjectRef = None
    label_config: str | None = Field(
        None, description="The labeling config; absent: the one stored for the project by /setup."
    )
    params: dict[str, Any] | None = None

    @field_validator("tasks")
    @classmethod
    def _ids_fit(cls, tasks: list[Any]) -> list[Any]:
        for task in tasks:
            task_id = task.get("id") if isinstance(task, dict) else None
            if isinstance(task_id, int) and not -MAX_ID - 1 <= task_id <= MAX_ID:
                raise ValueError("task ids must be integers from -2^63 to 2^63-1")
        return tasks


class Prediction(BaseModel):
    model_version: str
    score: float = Field(description="1 - normalized informativeness: Label Studio serves the lowest first.")
    result: list[dict[str, Any]] = Field(description="Rectangle regions.")
    informativeness: float | None = None
    scorer: str | None = None
    al_ratio: float | None = Field(None, description="Share of the shown boxes a person must check (1 when none).")
    uncertain_boxes: int | None = Field(None, description="Boxes between the two thresholds.")
    expected_seconds_saved: float | None = Field(
        None, description="Seconds the shown boxes are expected to save against drawing from scratch."
    )
    display: dict[str, Any] | None = Field(
        None,
        description="The rule that chose the shown boxes: threshold, certain, calibrated, and when no box is "
        "shown, shown=false with a note why.",
    )
    error: str | None = Field(None, description="Why this task has no prediction (its image could not be read).")


class PredictAnswer(BaseModel):
    results: list[Prediction] = Field(description="One prediction per task, in task order.")


class TrainParams(BaseModel):
    """A training trigger's options; each is bounded (epochs by TRAIN_MAX_EPOCHS, checked by the route)."""

    model_config = ConfigDict(extra="forbid")

    from_scratch: StrictBool | None = Field(
        None, description="Train from the pretrained backbone, not the active version."
    )
    epochs: StrictInt | None = Field(None, ge=1, description="Most epochs of this run; at most TRAIN_MAX_EPOCHS.")
    strategy: Literal[tuple(sorted(SCORERS))] | None = None  # type: ignore[valid-type]
    aggregation: Literal[tuple(AGGREGATIONS)] | None = Field(None, description="Box -> image aggregation.")  # type: ignore[valid-type]


class TrainBody(_Request):
    project: RequiredProject
    params: TrainParams = Field(default_factory=TrainParams)


class SkippedTask(BaseModel):
    task: int
    reason: str


class Job(BaseModel):
    id: str
    project_id: int
    state: Literal[JOB_STATES]  # type: ignore[valid-type]
    stage: str
    progress: float = Field(ge=0, le=1)
    params: dict[str, Any]
    trigger: str
    error: str | None
    version: str | None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    skipped: list[SkippedTask] = Field(
        [], description="Tasks the run left out (an image it could not read or the model cannot take), and why."
    )
    cancel_requested: bool = Field(
        False, description="POST /jobs/{job_id}/cancel asked the running job to stop (at its next progress report)."
    )


class TrainQueued(BaseModel):
    job_id: str
    status: Literal["queued", "coalesced into the queued run"]
    project: int
    job: Job


class WebhookProject(BaseModel):
    id: ProjectRef = None


class WebhookBody(_Request):
    action: str | None = Field(None, description="The event; absent or not a training event: ignored.")
    project: WebhookProject | ProjectRef = None

    @property
    def project_id(self) -> int | None:
        return self.project.id if isinstance(self.project, WebhookProject) else self.project


class WebhookAnswer(BaseModel):
    status: Literal["Unknown event", "counted"]
    new_annotations: int | None = None
    threshold: int | None = None


def _digits(raw: object) -> object:
    """A query integer as ASCII digits only, length-capped before int(): "²" and a 10,000-digit
    string are refused."""
    if isinstance(raw, str) and not (raw.isascii() and raw.isdigit() and len(raw) <= 19):
        raise ValueError(f"must be a whole number in ASCII digits, got {raw!r}")
    return raw


Digits = Annotated[int, BeforeValidator(_digits)]


class JobsQuery(BaseModel):
    project: ProjectRef = Field(None, description='A project id (or "<id>.<timestamp>"); absent: every project.')
    limit: Digits = Field(
        JOBS_PAGE, ge=1, le=JOBS_PAGE_MAX, description=f"Jobs in this page (at most {JOBS_PAGE_MAX})."
    )
    offset: Digits = Field(0, ge=0, le=MAX_ID, description="Jobs skipped before this page; total - limit: the newest.")


class JobsPage(BaseModel):
    jobs: list[Job]
    total: int = Field(description="Jobs matching, over all pages.")
    limit: int
    offset: int


class JobPath(BaseModel):
    job_id: str


class JobQuery(BaseModel):
    job: str | None = Field(None, description="The job id (POST: when the body names none).")


class JobStatusBody(BaseModel):
    job: str | int | None = None

    @model_validator(mode="before")
    @classmethod
    def _optional(cls, value: object) -> object:
        return {} if value is None else value  # the body is optional: ?job= may name the job


class JobStatus(Job):
    job_status: Literal[JOB_STATES]  # type: ignore[valid-type]


class VersionsQuery(BaseModel):
    project: ProjectRef = Field(None, description='A project id (or "<id>.<timestamp>"); absent: every project.')


class VersionDetail(BaseModel):
    name: str
    project: int
    active: bool
    metrics: dict[str, Any]


class Versions(BaseModel):
    versions: list[str]
    active: str | list[str] = Field(description="With ?project: the version serving it; else every active one.")
    details: list[VersionDetail]


class VersionPath(BaseModel):
    name: str


class Activated(BaseModel):
    active: str
    project: int


class ExportPath(BaseModel):
    project_id: int = Field(ge=0)
