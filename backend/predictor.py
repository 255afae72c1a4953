"""/predict's work: fetch and decode the tasks' images in parallel (shrunk towards the model's
input size; boxes come back in the full image's pixels), run them through the shared
detector in batches merged across concurrent requests (backend/batcher.py), score them, and
shape one Label Studio prediction per task."""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import islice

from PIL import Image

from al_core.annotation_cost import CostModel
from al_core.detectors import Detector
from al_core.display import Display
from al_core.scoring import PoolImage, Scorer, ScoringContext
from al_core.types import Detections, ImageScore
from exporters.label_config import LabelConfig
from exporters.label_studio_regions import detections_to_regions

from .batcher import Batcher
from .images import ImageError, ImageLoader
from .metrics import Metrics
from .score_writer import ScoreWriter
from .store import TaskScore

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    index: int
    task_id: int | None
    image: Image.Image | None = None  # shrunk towards the model's input size
    original_size: tuple[int, int] = (0, 0)  # the full image's (width, height), as shown
    error: str | None = None


class Predictor:
    """Built once per process; its scorer, fetch pool and batcher serve every request, with the
    detector of the request's project."""

    def __init__(
        self,
        scorer: Scorer,
        loader: ImageLoader,
        writer: ScoreWriter,
        metrics: Metrics,
        batch_size: int,
        fetch_workers: int,
        max_wait_s: float = 0.01,
        cost: CostModel | None = None,
    ):
        self.scorer = scorer
        self.cost = cost or CostModel()
        self.loader = loader
        self.writer = writer  # the scores go to SQLite off the request path
        self.metrics = metrics
        self.batch_size = batch_size
        self.pool = ThreadPoolExecutor(max_workers=fetch_workers, thread_name_prefix="fetch")
        self.batcher = Batcher(self._run_batch, batch_size, max_wait_s)

    def close(self) -> None:
        """Stop the batcher and the fetch pool; the pending scores are written."""
        self.batcher.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.writer.close()

    def predict(
        self, tasks: list, config: LabelConfig, project_id: int | None, detector: Detector, display: Display
    ) -> list[dict]:
        """One Label Studio prediction per task, in task order. Images are fetched in the pool
        and handed to the batcher a batch at a time as they arrive, so the model never waits on
        I/O and a request's images are not split into smaller batches; at most
        ``2 x batch_size`` images are fetched ahead and as many wait for the model."""
        window = 2 * self.batch_size
        results: list[dict] = [{} for _ in tasks]
        scores: list[TaskScore] = []
        queued = iter(enumerate(tasks))
        loading: deque[Future] = deque(
            self.pool.submit(self._load, i, t, config, detector) for i, t in islice(queued, window)
        )
        inferring: deque[tuple[_Loaded, Future]] = deque()
        while loading or inferring:
            if loading and len(inferring) < window:
                group = self._next_group(loading, queued, window - len(inferring), config, detector, results)
                futures = self.batcher.submit_many(detector, [item.image for item in group])
                for item, future in zip(group, futures, strict=True):
                    item.image = None  # the batcher holds it until its batch has run
                    inferring.append((item, future))
                continue
            item, future = inferring.popleft()
            try:
                detections, image_score = future.result()
            except Exception as error:  # the model failed on this batch: its tasks fail, not the call
                log.error("task %s: the model failed: %s: %s", item.task_id, type(error).__name__, error)
                results[item.index] = self._failed(detector, f"the model failed on this image: {type(error).__name__}")
                continue
            self.metrics.images_scored.inc()
            detections = detections.scaled(item.original_size)  # boxes in the full image's pixels
            results[item.index] = prediction(detector, config, detections, image_score, display, self.cost)
            if item.task_id is not None:
                version = detector.version.name
                scores.append(
                    TaskScore(item.task_id, version, image_score.scorer, image_score.value, image_score.normalized)
                )
        self.writer.submit(project_id, scores)
        return results

    def _next_group(self, loading: deque, queued, room: int, config, detector, results) -> list[_Loaded]:
        """The next loaded images, up to a batch (and ``room``), handed to the model together;
        a task that cannot be read gets its error result here."""
        group: list[_Loaded] = []
        while loading and len(group) < min(self.batch_size, room):
            item = loading.popleft().result()
            loading.extend(self.pool.submit(self._load, i, t, config, detector) for i, t in islice(queued, 1))
            if item.error is None and (problem := detector.size_problem(*item.image.size)):
                item.error = problem
            if item.error is None:
                group.append(item)
            else:
                results[item.index] = self._failed(detector, item.error)
        return group

    def _failed(self, detector: Detector, error: str) -> dict:
        self.metrics.errors.labels(kind="task").inc()
        # A broken task goes last in Label Studio's lowest-score-first order.
        return {"model_version": detector.version.name, "score": 1.0, "result": [], "error": error}

    def _run_batch(self, detector: Detector, images: list[Image.Image]) -> list[tuple[Detections, ImageScore]]:
        self.metrics.batch_images.observe(len(images))
        detections = detector.predict(images)
        batch = [PoolImage(str(i), image, det) for i, (image, det) in enumerate(zip(images, detections, strict=True))]
        return list(zip(detections, self.scorer.score_batch(batch, ScoringContext(detector=detector)), strict=True))

    def _load(self, index: int, task: object, config: LabelConfig, detector: Detector) -> _Loaded:
        if not isinstance(task, dict):
            return _Loaded(index, None, error="a task must be a JSON object")
        task_id = task["id"] if isinstance(task.get("id"), int) and not isinstance(task["id"], bool) else None
        data = task.get("data")
        if not isinstance(data, dict) or config.image_key not in data:
            error = f'task data has no {config.image_key!r} field (the config\'s <Image value="${config.image_key}">)'
            log.warning("task %s: %s", task_id, error)
            return _Loaded(index, task_id, error=error)
        try:
            decoded = self.loader.load_reduced(data[config.image_key], partial(reduction_factor, detector))
            return _Loaded(index, task_id, image=decoded.image, original_size=decoded.original_size)
        except ImageError as error:
            log.warning("task %s: %s", task_id, error)
            return _Loaded(index, task_id, error=str(error))
        except Exception:  # a bug must cost one task, not the whole call
            log.exception("task %s: unexpected error reading its image", task_id)
            return _Loaded(index, task_id, error="internal error reading the image (see the backend's log)")


def reduction_factor(detector: Detector, width: int, height: int) -> int:
    """The largest integer factor an image can shrink by and stay at least the size the model
    resizes it to, so decoding it smaller loses nothing the model would see."""
    transform = getattr(detector.model, "transform", None)
    if transform is None:
        return 1
    if getattr(transform, "fixed_size", None):  # SSD: stretched to one (height, width)
        model_width, model_height = transform.fixed_size[1], transform.fixed_size[0]
    else:  # the shorter side to min_size, unless the longer would pass max_size
        scale = min(max(transform.min_size) / min(width, height), transform.max_size / max(width, height))
        model_width, model_height = width * scale, height * scale
    return max(1, int(min(width / model_width, height / model_height)))


def prediction(
    detector: Detector,
    config: LabelConfig,
    detections: Detections,
    score: ImageScore,
    display: Display,
    cost: CostModel,
) -> dict:
    """One task's Label Studio prediction: the regions ``display`` shows, uncertain first; the
    share of them a person must check (``al_ratio``) with the number of uncertain boxes; the
    seconds they are expected to save against drawing from scratch; and the display's rule."""
    shown = display.shown(detections)
    certainty = display.certainty()
    _, uncertain = certainty.split(shown.scores)
    return {
        "model_version": detector.version.name,
        # Label Studio's Uncertainty sampling serves the LOWEST score first.
        "score": round(1.0 - score.normalized, 6),
        "result": detections_to_regions(shown, detector.class_names, config, certainty),
        "informativeness": score.value,
        "scorer": score.scorer,
        "al_ratio": round(certainty.al_ratio(shown.scores), 6),
        "uncertain_boxes": uncertain,
        "expected_seconds_saved": display.expected_seconds_saved(shown, cost),
        "display": display.describe(),
    }
