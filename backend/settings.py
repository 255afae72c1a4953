"""The one settings object: environment variables over an optional YAML file over defaults.

Each field is read from the environment variable of the same name in upper case
(``model_detector`` <- ``MODEL_DETECTOR``); ``CONFIG_FILE`` may name a YAML file with the same
keys. The README's configuration table lists every field (a test keeps it true).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from al_core.annotation_cost import CostModel
from al_core.detectors.box_losses import BOX_LOSSES
from al_core.display import Display
from al_core.priority import PriorityRule


def _doc(text: str) -> dict:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata=_doc("Address the service listens on."))
    port: int = field(default=9090, metadata=_doc("Port the service listens on."))
    data_dir: str = field(default="data", metadata=_doc("State directory: SQLite store, image cache, models."))
    log_level: str = field(default="INFO", metadata=_doc("Python logging level."))
    server_threads: int = field(default=8, metadata=_doc("Request threads of the single server process."))
    max_request_bytes: int = field(default=32 * 2**20, metadata=_doc("Largest accepted request body (bytes)."))
    max_tasks_per_request: int = field(
        default=1000,
        metadata=_doc(
            "Most tasks in one /predict call (Label Studio sends every selected task in one call and waits "
            "100 s); more gets a 413 naming the limit."
        ),
    )
    max_queued_jobs: int = field(
        default=100,
        metadata=_doc(
            "Most training jobs queued across projects; a trigger that would queue one more gets a 429 "
            "(joining a project's queued job still works)."
        ),
    )
    job_history_max: int = field(
        default=1000,
        metadata=_doc("Finished (done, failed, cancelled) job rows kept; older ones are deleted as a job ends."),
    )
    basic_auth_user: str = field(
        default="", metadata=_doc("With BASIC_AUTH_PASS: HTTP Basic auth on every endpoint but /health.")
    )
    basic_auth_pass: str = field(default="", metadata=_doc("Password for BASIC_AUTH_USER (never logged)."))
    allow_unauthenticated: bool = field(
        default=False,
        metadata=_doc("Serve a non-loopback HOST without basic auth (refused at start-up otherwise; logs a warning)."),
    )
    model_detector: str = field(
        default="cpu_preset", metadata=_doc("Detector of the registry to build when no checkpoint is given.")
    )
    model_checkpoint: str = field(
        default="", metadata=_doc("Path of a checkpoint saved by this backend; overrides MODEL_DETECTOR.")
    )
    model_pretrained: str = field(
        default="backbone",
        metadata=_doc(
            "Weights for a fresh model: `backbone` (ImageNet), `coco` (torchvision COCO detector) or `none`."
        ),
    )
    model_classes: str = field(
        default="object", metadata=_doc("Comma-separated class names of a fresh model (a checkpoint carries its own).")
    )
    model_image_size: int = field(
        default=0, metadata=_doc("Input size the model resizes images to; 0 = the detector's default.")
    )
    model_device: str = field(
        default="auto", metadata=_doc("`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`, ...")
    )
    max_loaded_models: int = field(
        default=4, metadata=_doc("Trained model versions kept in memory (least recently used dropped first).")
    )
    predict_batch_size: int = field(
        default=8, metadata=_doc("Most images per model forward pass, merged across concurrent /predict calls.")
    )
    predict_max_wait_ms: float = field(
        default=10.0, metadata=_doc("How long the first image of a batch waits for others (dynamic batching).")
    )
    prediction_score_threshold: float = field(
        default=0.3,
        metadata=_doc("Boxes below this score are not shown; from it up to CERTAIN_SCORE_THRESHOLD, uncertain."),
    )
    certain_score_threshold: float = field(
        default=0.7, metadata=_doc("Boxes from this score up are certain: the model's to label (ASM, CEAL).")
    )
    display_nms_iou: float = field(
        default=0.7,
        metadata=_doc("Class-agnostic NMS of shown boxes: one object, one box (IoU above this: the surer box stays)."),
    )
    display_max_boxes: int = field(default=100, metadata=_doc("Most boxes shown on one image, surest first."))
    certain_precision_target: float = field(
        default=0.95,
        metadata=_doc(
            "Calibration: certain boxes start at the lowest score above which held-out boxes are right this often."
        ),
    )
    calibration_min_images: int = field(
        default=5,
        metadata=_doc("Held-out images a version needs to calibrate its display; fewer keep the fixed thresholds."),
    )
    cost_open_image_seconds: float = field(
        default=2.0, metadata=_doc("Cost model: seconds to open and look over an image (an assumption).")
    )
    cost_draw_seconds: float = field(
        default=7.0,
        metadata=_doc(
            "Cost model: seconds per box drawn (extreme clicking, Papadopoulos et al. ICCV 2017); about 35 "
            "for a box drawn the traditional way."
        ),
    )
    cost_verify_seconds: float = field(
        default=1.6, metadata=_doc("Cost model: seconds to verify a shown box (Papadopoulos et al. CVPR 2016).")
    )
    cost_delete_seconds: float = field(
        default=2.0, metadata=_doc("Cost model: seconds to delete a wrong box (an assumption).")
    )
    cost_correct_seconds: float = field(
        default=4.0, metadata=_doc("Cost model: seconds to fix a box's corners or label (an assumption).")
    )
    fetch_workers: int = field(default=8, metadata=_doc("Threads downloading and decoding images in parallel."))
    fetch_timeout: float = field(
        default=10.0, metadata=_doc("Seconds allowed to connect and between bytes of an image download.")
    )
    max_image_bytes: int = field(default=30 * 2**20, metadata=_doc("Largest image file accepted (bytes)."))
    max_image_pixels: int = field(
        default=50_000_000, metadata=_doc("Largest image accepted (width x height), against decompression bombs.")
    )
    image_cache_max_bytes: int = field(
        default=2**30, metadata=_doc("Size cap of the on-disk image cache under DATA_DIR/image_cache.")
    )
    local_files_root: str = field(
        default="", metadata=_doc("Directory under which plain local paths in tasks may be read; empty = none.")
    )
    fetch_allow_hosts: str = field(
        default="", metadata=_doc("Comma-separated host or host:port allowed even on private addresses.")
    )
    label_studio_url: str = field(
        default="", metadata=_doc("Label Studio base URL, for /data/upload and /data/local-files images.")
    )
    label_studio_api_key: str = field(
        default="", metadata=_doc("Label Studio legacy token or personal access token (never logged).")
    )
    label_studio_retries: int = field(
        default=4,
        metadata=_doc("Retries of a failed Label Studio call (connection, 5xx, 429), backoff 1 s, 2 s, 4 s, ..."),
    )
    webhook_secret: str = field(
        default="",
        metadata=_doc("If set, /webhook requires it in the X-Webhook-Secret header (Label Studio webhook headers)."),
    )
    train_min_new_annotations: int = field(
        default=5, metadata=_doc("Annotation events since the last run that start a training run.")
    )
    train_epochs: int = field(
        default=12, metadata=_doc("Most epochs of a training run (early stopping may end it sooner).")
    )
    train_max_epochs: int = field(
        default=100, metadata=_doc("Most `epochs` a /train request may ask for; more gets a 400 naming the limit.")
    )
    train_batch_size: int = field(default=4, metadata=_doc("Images per training step."))
    train_lr: float = field(default=0.001, metadata=_doc("AdamW learning rate."))
    train_held_out_fraction: float = field(
        default=0.2,
        metadata=_doc(
            "Share of labeled images held out to measure mAP (none under 5 images), refreshed from the newest labels."
        ),
    )
    train_box_loss: str = field(
        default="default",
        metadata=_doc(
            "Box-regression loss of dense heads: `default` (the head's own), `giou`, `diou`, `ciou`, `eiou`."
        ),
    )
    train_emphasis: float = field(
        default=0.0, metadata=_doc("HUALE's emphasis gamma on poorly localised boxes (dense heads); 0 = off.")
    )
    keep_model_versions: int = field(
        default=5,
        metadata=_doc("Model versions kept per project: the newest N, plus always the active and previous ones."),
    )
    keep_cycle_exports: int = field(
        default=20, metadata=_doc("Cycles whose CSV and COCO selection files are kept per project (newest first).")
    )
    self_labeling_max_images: int = field(
        default=0,
        metadata=_doc("CEAL self-labeling: unlabeled images whose boxes are all certain trained on per run; 0 = off."),
    )
    self_labeling_weight: float = field(
        default=0.5, metadata=_doc("Loss weight of the self-labeled (pseudo-labeled) batches.")
    )
    al_strategy: str = field(
        default="entropy", metadata=_doc("Scorer that ranks unlabeled tasks after each run (see the strategies table).")
    )
    al_aggregation: str = field(default="mean", metadata=_doc("Box -> image aggregation for uncertainty scorers."))
    al_boxes: str = field(
        default="shown",
        metadata=_doc(
            "Boxes an uncertainty scorer aggregates: all (candidates above the detector's low threshold), shown "
            "(what people see; the default matrix's best at equal seconds), or a number k (the k highest scoring)."
        ),
    )
    al_cost_aware: bool = field(
        default=False,
        metadata=_doc("Rank by informativeness per expected second of labeling (al_core.priority)."),
    )
    al_near_duplicates: bool = field(
        default=False,
        metadata=_doc("Push near copies of a higher-ranked or labeled image to the end of the order."),
    )
    al_budget: int = field(
        default=100, metadata=_doc("Images in each cycle's selection (COCO export; diversity scorers).")
    )
    set_uncertainty_sampling: bool = field(
        default=True, metadata=_doc("After each run, set the project's sampling to Uncertainty sampling.")
    )
    write_task_data: bool = field(
        default=False,
        metadata=_doc(
            "Also write data.priority, data.al_ratio, data.uncertain_boxes per task (a PATCH each, slow); off: bulk."
        ),
    )
    executor: str = field(
        default="local", metadata=_doc("Where cycles score the pool and train: local (in process) or ray.")
    )
    ray_address: str = field(
        default="", metadata=_doc("Ray cluster to join with EXECUTOR=ray (e.g. auto); empty starts a local Ray.")
    )
    ray_replicas: int = field(default=2, metadata=_doc("Model replicas scoring the pool on Ray (one per GPU)."))
    train_workers: int = field(
        default=1, metadata=_doc("Ray Train workers (DDP) of a training run with EXECUTOR=ray; 1 trains in process.")
    )

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
        value = self.al_boxes.strip().lower()
        if value in ("all", "shown"):
            return value
        if value.isdigit() and int(value) > 0:
            return int(value)
        raise ValueError(f"all, shown or a positive number of boxes, got {self.al_boxes!r}")

    @property
    def priority(self) -> PriorityRule:
        return PriorityRule(cost_aware=self.al_cost_aware, near_duplicates=self.al_near_duplicates)

    @property
    def display(self) -> Display:
        """What people are shown before a version has calibrated its own."""
        return Display(
            threshold=self.prediction_score_threshold,
            certain=self.certain_score_threshold,
            nms_iou=self.display_nms_iou,
            max_boxes=self.display_max_boxes,
        )

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
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        config_file = environ.get("CONFIG_FILE")
        if config_file:
            with open(config_file) as handle:
                loaded = yaml.safe_load(handle) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{config_file} must hold a mapping of settings")
            values.update({str(key).lower(): value for key, value in loaded.items()})
        for f in dataclasses.fields(cls):
            if f.name.upper() in environ:
                values[f.name] = environ[f.name.upper()]
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown settings in {config_file}: {sorted(unknown)}")
        settings = cls(**{f.name: _convert(f, values[f.name]) for f in dataclasses.fields(cls) if f.name in values})
        settings.check_access()
        if settings.executor not in ("local", "ray"):
            raise ValueError(f"setting EXECUTOR must be local or ray, got {settings.executor!r}")
        if settings.train_box_loss not in BOX_LOSSES or settings.train_emphasis < 0:
            raise ValueError(
                f"setting TRAIN_BOX_LOSS must be one of {list(BOX_LOSSES)} and TRAIN_EMPHASIS >= 0, "
                f"got {settings.train_box_loss!r} and {settings.train_emphasis!r}"
            )
        try:
            settings.cost, settings.display  # noqa: B018 (each checks its values)
        except ValueError as error:
            raise ValueError(f"settings COST_*_SECONDS, DISPLAY_* and *_SCORE_THRESHOLD: {error}") from None
        try:
            settings.boxes  # noqa: B018 (checks AL_BOXES)
        except ValueError as error:
            raise ValueError(f"setting AL_BOXES: {error}") from None
        if not 0 < settings.certain_precision_target <= 1:
            raise ValueError(
                f"setting CERTAIN_PRECISION_TARGET must be in (0, 1], got {settings.certain_precision_target}"
            )
        return settings


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _convert(f: dataclasses.Field, raw: object) -> object:
    kind = type(f.default)
    if kind is bool:
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"setting {f.name.upper()} must be true or false, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        what = {int: "an integer", float: "a number"}.get(kind, "text")
        raise ValueError(f"setting {f.name.upper()} must be {what}, got {raw!r}") from None
