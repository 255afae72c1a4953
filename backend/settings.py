"""The one settings object: environment variables over an optional YAML file over defaults.

Each field is read from the environment variable of the same name in upper case
(``model_detector`` <- ``MODEL_DETECTOR``); ``CONFIG_FILE`` may name a YAML file with the same
keys. pydantic-settings reads both and pydantic checks every value, so a bad one stops the
service at start-up with the variable's name. The README's configuration table lists every
field (a test keeps it true).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from al_core.annotation_cost import CostModel
from al_core.detectors import DETECTORS
from al_core.detectors.box_losses import BOX_LOSSES
from al_core.display import Display
from al_core.priority import PriorityRule
from al_core.scoring import AGGREGATIONS, SCORERS

# The environment that Settings.load reads; plain Settings(...) reads none (defaults and arguments).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("settings_environ", default=None)


class EnvironSource(PydanticBaseSettingsSource):
    """Each field from the variable of its name in upper case; an empty variable counts as unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.environ.get(field_name.upper()) or None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {
            name: self.environ[name.upper()]
            for name in self.settings_cls.model_fields
            if self.environ.get(name.upper())
        }


class LowerCaseYaml(YamlConfigSettingsSource):
    """CONFIG_FILE's keys in either case (``port`` or ``PORT``)."""

    def __call__(self) -> dict[str, Any]:
        if not isinstance(self.yaml_data, dict):
            raise ValueError(f"{self.yaml_file_path} must hold a mapping of settings")
        return {str(key).lower(): value for key, value in self.yaml_data.items()}


# Settings that name an entry of one of al_core's registries.
_REGISTRIES = {
    "al_strategy": SCORERS,
    "al_aggregation": AGGREGATIONS,
    "model_detector": DETECTORS,
    "train_box_loss": BOX_LOSSES,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", description=("Address the service listens on."))
    port: int = Field(default=9090, description=("Port the service listens on."))
    data_dir: str = Field(default="data", description=("State directory: SQLite store, image cache, models."))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description=("Python logging level.")
    )
    server_threads: int = Field(default=8, description=("Request threads of the single server process."))
    max_request_bytes: int = Field(default=32 * 2**20, description=("Largest accepted request body (bytes)."))
    max_tasks_per_request: int = Field(
        default=1000,
        description=(
            "Most tasks in one /predict call (Label Studio sends every selected task in one call and waits "
            "100 s); more gets a 413 naming the limit."
        ),
    )
    max_queued_jobs: int = Field(
        default=100,
        description=(
            "Most training jobs queued across projects; a trigger that would queue one more gets a 429 "
            "(joining a project's queued job still works)."
        ),
    )
    job_history_max: int = Field(
        default=1000,
        description=("Finished (done, failed, cancelled) job rows kept; older ones are deleted as a job ends."),
    )
    basic_auth_user: str = Field(
        default="", description=("With BASIC_AUTH_PASS: HTTP Basic auth on every endpoint but /health.")
    )
    basic_auth_pass: str = Field(default="", description=("Password for BASIC_AUTH_USER (never logged)."))
    allow_unauthenticated: bool = Field(
        default=False,
        description=("Serve a non-loopback HOST without basic auth (refused at start-up otherwise; logs a warning)."),
    )
    model_detector: str = Field(
        default="cpu_preset", description=("Detector of the registry to build when no checkpoint is given.")
    )
    model_checkpoint: str = Field(
        default="", description=("Path of a checkpoint saved by this backend; overrides MODEL_DETECTOR.")
    )
    model_pretrained: Literal["backbone", "coco", "none"] = Field(
        default="backbone",
        description=("Weights for a fresh model: `backbone` (ImageNet), `coco` (torchvision COCO detector) or `none`."),
    )
    model_classes: str = Field(
        default="object", description=("Comma-separated class names of a fresh model (a checkpoint carries its own).")
    )
    model_image_size: int = Field(
        default=0, description=("Input size the model resizes images to; 0 = the detector's default.")
    )
    model_device: str = Field(
        default="auto", description=("`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`, ...")
    )
    max_loaded_models: int = Field(
        default=4, description=("Trained model versions kept in memory (least recently used dropped first).")
    )
    predict_batch_size: int = Field(
        default=8, description=("Most images per model forward pass, merged across concurrent /predict calls.")
    )
    predict_max_wait_ms: float = Field(
        default=10.0, description=("How long the first image of a batch waits for others (dynamic batching).")
    )
    prediction_score_threshold: float = Field(
        default=0.3,
        description=("Boxes below this score are not shown; from it up to CERTAIN_SCORE_THRESHOLD, uncertain."),
    )
    certain_score_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "Boxes from this score up are certain: the model's to label (ASM, CEAL). Unset: none is until a "
            "version's calibration measures the threshold."
        ),
    )
    display_nms_iou: float = Field(
        default=0.7,
        description=("Class-agnostic NMS of shown boxes: one object, one box (IoU above this: the surer box stays)."),
    )
    display_max_boxes: int = Field(default=100, description=("Most boxes shown on one image, surest first."))
    certain_precision_target: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description=(
            "Calibration: certain boxes start at the lowest score above which held-out boxes are right this often."
        ),
    )
    calibration_min_images: int = Field(
        default=5,
        description=("Held-out images a version needs to calibrate its display; fewer keep the fixed thresholds."),
    )
    cost_open_image_seconds: float = Field(
        default=2.0, description=("Cost model: seconds to open and look over an image (an assumption).")
    )
    cost_draw_seconds: float = Field(
        default=7.0,
        description=(
            "Cost model: seconds per box drawn (extreme clicking, Papadopoulos et al. ICCV 2017); about 35 "
            "for a box drawn the traditional way."
        ),
    )
    cost_verify_seconds: float = Field(
        default=1.6, description=("Cost model: seconds to verify a shown box (Papadopoulos et al. CVPR 2016).")
    )
    cost_delete_seconds: float = Field(
        default=2.0, description=("Cost model: seconds to delete a wrong box (an assumption).")
    )
    cost_correct_seconds: float = Field(
        default=4.0, description=("Cost model: seconds to fix a box's corners or label (an assumption).")
    )
    fetch_workers: int = Field(default=8, description=("Threads downloading and decoding images in parallel."))
    fetch_timeout: float = Field(
        default=10.0, description=("Seconds allowed to connect and between bytes of an image download.")
    )
    max_image_bytes: int = Field(default=30 * 2**20, description=("Largest image file accepted (bytes)."))
    max_image_pixels: int = Field(
        default=50_000_000, description=("Largest image accepted (width x height), against decompression bombs.")
    )
    image_cache_max_bytes: int = Field(
        default=2**30, description=("Size cap of the on-disk image cache under DATA_DIR/image_cache.")
    )
    local_files_root: str = Field(
        default="", description=("Directory under which plain local paths in tasks may be read; empty = none.")
    )
    fetch_allow_hosts: str = Field(
        default="", description=("Comma-separated host or host:port allowed even on private addresses.")
    )
    label_studio_url: str = Field(
        default="", description=("Label Studio base URL, for /data/upload and /data/local-files images.")
    )
    label_studio_api_key: str = Field(
        default="", description=("Label Studio legacy token or personal access token (never logged).")
    )
    label_studio_retries: int = Field(
        default=4,
        description=("Retries of a failed Label Studio call (connection, 5xx, 429), backoff 1 s, 2 s, 4 s, ..."),
    )
    webhook_secret: str = Field(
        default="",
        description=("If set, /webhook requires it in the X-Webhook-Secret header (Label Studio webhook headers)."),
    )
    train_min_new_annotations: int = Field(
        default=5, description=("Annotation events since the last run that start a training run.")
    )
    train_epochs: int = Field(
        default=12, description=("Most epochs of a training run (early stopping may end it sooner).")
    )
    train_min_steps: int = Field(
        default=300,
        ge=0,
        le=100_000,
        description=(
            "Fewest optimisation steps of a training run: its epochs are raised to reach them (at most "
            'TRAIN_MAX_EPOCHS), and early stopping waits for them (BENCHMARKS.md, "Too few steps"). '
            "0: TRAIN_EPOCHS as given."
        ),
    )
    train_max_epochs: int = Field(
        default=100, description=("Most `epochs` a /train request may ask for; more gets a 400 naming the limit.")
    )
    train_batch_size: int = Field(default=4, description=("Images per training step."))
    train_lr: float = Field(default=0.001, description=("AdamW learning rate."))
    train_held_out_fraction: float = Field(
        default=0.2,
        description=(
            "Share of labeled images held out to measure mAP (none under 5 images), refreshed from the newest labels."
        ),
    )
    train_box_loss: str = Field(
        default="default",
        description=("Box-regression loss of dense heads: `default` (the head's own), `giou`, `diou`, `ciou`, `eiou`."),
    )
    train_emphasis: float = Field(
        default=0.0, description=("HUALE's emphasis gamma on poorly localised boxes (dense heads); 0 = off.")
    )
    keep_model_versions: int = Field(
        default=5,
        description=("Model versions kept per project: the newest N, plus always the active and previous ones."),
    )
    keep_cycle_exports: int = Field(
        default=20, description=("Cycles whose CSV and COCO selection files are kept per project (newest first).")
    )
    self_labeling_max_images: int = Field(
        default=0,
        description=("CEAL self-labeling: unlabeled images whose boxes are all certain trained on per run; 0 = off."),
    )
    self_labeling_weight: float = Field(
        default=0.5, description=("Loss weight of the self-labeled (pseudo-labeled) batches.")
    )
    al_strategy: str = Field(
        default="entropy", description=("Scorer that ranks unlabeled tasks after each run (see the strategies table).")
    )
    al_aggregation: str = Field(
        default="mean", description=("Box -> image aggregation for uncertainty scorers and uncertainty_diversity.")
    )
    al_boxes: str = Field(
        default="shown",
        description=(
            "Boxes an uncertainty scorer (and uncertainty_diversity) uses: all (candidates above the detector's low "
            "threshold), shown (what people see; the default matrix's best at equal seconds), or a number k (the k "
            "highest scoring)."
        ),
    )
    al_classes: Literal["top", "all"] = Field(
        default="top",
        description=(
            "Sigmoid heads (the CPU preset, FCOS, RetinaNet): a box's doubt is its winning score's (top) or its "
            "most doubtful one-vs-all class decision (all). Softmax heads already weigh every class."
        ),
    )
    al_cost_aware: bool = Field(
        default=False,
        description=("Rank by informativeness per expected second of labeling (al_core.priority)."),
    )
    al_near_duplicates: bool = Field(
        default=False,
        description=("Push near copies of a higher-ranked or labeled image to the end of the order."),
    )
    al_sampling: Literal["top", "power"] = Field(
        default="top",
        description=(
            "The order within a cycle: sorted by score (top), or drawn with chance in proportion to it (power; "
            "al_core.priority)."
        ),
    )
    al_budget: int = Field(
        default=100, description=("Images in each cycle's selection (COCO export; diversity scorers).")
    )
    set_uncertainty_sampling: bool = Field(
        default=True, description=("After each run, set the project's sampling to Uncertainty sampling.")
    )
    write_task_data: bool = Field(
        default=False,
        description=(
            "Also write data.priority, data.al_ratio, data.uncertain_boxes per task (a PATCH each, slow); off: bulk."
        ),
    )
    executor: Literal["local", "ray"] = Field(
        default="local", description=("Where cycles score the pool and train: local (in process) or ray.")
    )
    ray_address: str = Field(
        default="", description=("Ray cluster to join with EXECUTOR=ray (e.g. auto); empty starts a local Ray.")
    )
    ray_replicas: int = Field(default=2, description=("Model replicas scoring the pool on Ray (one per GPU)."))
    train_workers: int = Field(
        default=1, description=("Ray Train workers (DDP) of a training run with EXECUTOR=ray; 1 trains in process.")
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(*_REGISTRIES)
    @classmethod
    def _known_name(cls, value: str, info: ValidationInfo) -> str:
        return _one_of(value, _REGISTRIES[info.field_name])

    @field_validator("train_emphasis")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("al_boxes")
    @classmethod
    def _boxes_rule(cls, value: str) -> str:
        _boxes(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        self.cost, self.display  # noqa: B018 (each checks its values: thresholds in order, seconds >= 0)
        return self

    @property
    def cost(self) -> CostModel:
        return CostModel(
            self.cost_open_image_seconds,
            self.cost_draw_seconds,
            self.cost_verify_seconds,
            self.cost_delete_seconds,
            self.cost_correct_seconds,
        )

    @property
    def boxes(self) -> str | int:
        """AL_BOXES as an uncertainty scorer's ``boxes`` parameter."""
        return _boxes(self.al_boxes)

    @property
    def priority(self) -> PriorityRule:
        return PriorityRule(
            cost_aware=self.al_cost_aware, near_duplicates=self.al_near_duplicates, sampling=self.al_sampling
        )

    @property
    def display(self) -> Display:
        """What people are shown before a version has calibrated its own: nothing is certain
        unless CERTAIN_SCORE_THRESHOLD sets it."""
        display = Display(
            threshold=self.prediction_score_threshold, nms_iou=self.display_nms_iou, max_boxes=self.display_max_boxes
        )
        if self.certain_score_threshold is None:
            return display
        return replace(display, certain=self.certain_score_threshold)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.basic_auth_pass, self.label_studio_api_key, self.webhook_secret) if s)

    @property
    def open_without_auth(self) -> bool:
        """Whether anyone who reaches HOST may call every endpoint."""
        return not self.basic_auth_user and not _is_loopback(self.host)

    def check_access(self) -> None:
        """Never open by accident: both credentials or neither, and basic auth on any HOST
        other than loopback unless ALLOW_UNAUTHENTICATED says so."""
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError(
                "set both BASIC_AUTH_USER and BASIC_AUTH_PASS (a non-empty password), or neither; "
                f"only {'BASIC_AUTH_USER' if self.basic_auth_user else 'BASIC_AUTH_PASS'} is set"
            )
        if self.open_without_auth and not self.allow_unauthenticated:
            raise ValueError(
                f"HOST {self.host!r} is not loopback and basic auth is off: set BASIC_AUTH_USER and "
                "BASIC_AUTH_PASS, or ALLOW_UNAUTHENTICATED=true to serve the network without authentication"
            )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        if environ is None:
            return (init_settings,)
        yaml_file = environ.get("CONFIG_FILE") or None
        return init_settings, EnvironSource(settings_cls, environ), LowerCaseYaml(settings_cls, yaml_file=yaml_file)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The service's settings from ``environ`` (default: the process environment) and the
        YAML file its CONFIG_FILE names; a bad value raises ValueError naming its variable."""
        token = _ENVIRON.set(os.environ if environ is None else environ)
        try:
            settings = cls()
        except ValidationError as error:
            raise ValueError(_explain(error)) from None
        finally:
            _ENVIRON.reset(token)
        settings.check_access()
        return settings


def _explain(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]).upper() or "settings"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown setting {name}")
        else:
            problems.append(f"setting {name}: {item['msg'].removeprefix('Value error, ')}, got {item.get('input')!r}")
    return "; ".join(problems)


def _one_of(value: str, known: Mapping[str, object] | tuple[str, ...]) -> str:
    if value not in known:
        raise ValueError(f"must be one of {sorted(known)}")
    return value


def _boxes(value: str) -> str | int:
    text = value.strip().lower()
    if text in ("all", "shown"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError("all, shown or a positive number of boxes")


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
