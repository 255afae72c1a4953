"""/predict's work: fetch and decode the tasks' images in parallel, run them through the shared
detector in batches, score them, and shape one Label Studio prediction per task."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from al_core.detectors import Detector
from al_core.scoring import PoolImage, Scorer, ScoringContext
from exporters.label_config import LabelConfig
from exporters.label_studio_regions import detections_to_regions

from .images import ImageError, ImageLoader
from .metrics import Metrics
from .store import Store, TaskScore

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    index: int
    task_id: int | None
    image: Image.Image | None = None
    error: str | None = None


class Predictor:
    """Built once per process; its scorer and fetch pool serve every request, with the detector
    of the request's project."""

    def __init__(
        self,
        scorer: Scorer,
        loader: ImageLoader,
        store: Store,
        metrics: Metrics,
        batch_size: int,
        score_threshold: float,
        fetch_workers: int,
    ):
        self.scorer = scorer
        self.loader = loader
        self.store = store
        self.metrics = metrics
        self.batch_size = batch_size
        self.score_threshold = score_threshold
        self.pool = ThreadPoolExecutor(max_workers=fetch_workers, thread_name_prefix="fetch")

    def predict(self, tasks: list, config: LabelConfig, project_id: int | None, detector: Detector) -> list[dict]:
        """One Label Studio prediction per task, in task order. Images are fetched one batch
        ahead of the model, so memory holds at most two batches of images."""
        indexed = list(enumerate(tasks))
        chunks = [indexed[start : start + self.batch_size] for start in range(0, len(indexed), self.batch_size)]
        results: list[dict] = [{} for _ in tasks]
        scores: list[TaskScore] = []
        pending = self._submit(chunks[0], config) if chunks else []
        for number in range(len(chunks)):
            loaded = [future.result() for future in pending]
            pending = self._submit(chunks[number + 1], config) if number + 1 < len(chunks) else []
            scores += self._predict_batch(loaded, config, detector, results)
        if scores:
            self.store.save_scores(project_id, scores)
        return results

    def _submit(self, chunk: list[tuple[int, object]], config: LabelConfig) -> list[Future]:
        return [self.pool.submit(self._load, index, task, config) for index, task in chunk]

    def _predict_batch(
        self, loaded: list[_Loaded], config: LabelConfig, detector: Detector, results: list[dict]
    ) -> list[TaskScore]:
        version = detector.version.name
        for item in loaded:
            if item.error is not None:
                self.metrics.errors.labels(kind="task").inc()
                # A broken task goes last in Label Studio's lowest-score-first order.
                results[item.index] = {"model_version": version, "score": 1.0, "result": [], "error": item.error}
        good = [item for item in loaded if item.image is not None]
        if not good:
            return []
        detections = detector.predict([item.image for item in good])
        batch = [PoolImage(str(item.task_id), item.image, det) for item, det in zip(good, detections, strict=True)]
        image_scores = self.scorer.score_batch(batch, ScoringContext(detector=detector))
        self.metrics.images_scored.inc(len(good))
        scores = []
        for item, det, image_score in zip(good, detections, image_scores):
            results[item.index] = {
                "model_version": version,
                # Label Studio's Uncertainty sampling serves the LOWEST score first.
                "score": round(1.0 - image_score.normalized, 6),
                "result": detections_to_regions(det, detector.class_names, config, self.score_threshold),
                "informativeness": image_score.value,
                "scorer": image_score.scorer,
            }
            if item.task_id is not None:
                scores.append(
                    TaskScore(item.task_id, version, image_score.scorer, image_score.value, image_score.normalized)
                )
        return scores

    def _load(self, index: int, task: object, config: LabelConfig) -> _Loaded:
        if not isinstance(task, dict):
            return _Loaded(index, None, error="a task must be a JSON object")
        task_id = task.get("id") if isinstance(task.get("id"), int) else None
        data = task.get("data")
        if not isinstance(data, dict) or config.image_key not in data:
            error = f'task data has no {config.image_key!r} field (the config\'s <Image value="${config.image_key}">)'
            log.warning("task %s: %s", task_id, error)
            return _Loaded(index, task_id, error=error)
        try:
            return _Loaded(index, task_id, image=self.loader.load(data[config.image_key]))
        except ImageError as error:
            log.warning("task %s: %s", task_id, error)
            return _Loaded(index, task_id, error=str(error))
        except Exception:  # a bug must cost one task, not the whole call
            log.exception("task %s: unexpected error reading its image", task_id)
            return _Loaded(index, task_id, error="internal error reading the image (see the backend's log)")
