"""Pool scoring on a Ray cluster: a Ray Data ``map_batches`` job over model replicas (actors:
one per GPU, or CPU actors), streaming the pool through them. The optional scale-out path
(``EXECUTOR=ray``); the in-process ``score_pool`` stays the default and the reference: the
scores are the same.

Every replica loads the checkpoint once and runs ``score_batch`` of a per-image scorer. A scorer
with a set-level ``finish`` (core-set, DAL, PPAL's diversity step) needs the whole pool in one
place and runs in process. Ray retries a batch whose actor died (``max_task_retries``) on a
restarted replica; a finished block lost with a dead node is skipped, and its images are
scored again in another pass. A worker lost mid-job costs a retry, not the job. Image paths must be
readable from every node (shared storage) when the cluster spans machines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from .detectors import Detector
from .pool import ScoredPool, prepare_context
from .scoring import PoolImage, Scorer, ScoringContext, create_scorer
from .types import Detections, ImageScore


def is_set_level(scorer: Scorer) -> bool:
    return type(scorer).finish is not Scorer.finish


def ray_can_score(strategy: str, params: dict, detector: Detector) -> bool:
    """Whether the Ray path scores this strategy: per-image scorers, once their head is trained."""
    scorer = create_scorer(strategy, **params)
    return not is_set_level(scorer) and ("trained_head" not in scorer.needs or detector.version.trained)


@dataclass
class RayOptions:
    address: str = ""  # "" starts a local Ray; "auto" or "ray://host:10001" joins a cluster
    replicas: int = 2
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_retries: int = 3


class _Replica:
    """One model replica: loads the checkpoint once, scores the batches it is handed."""

    def __init__(self, checkpoint: str, strategy: str, params: dict, context: ScoringContext, device: str):
        self.detector = Detector.load(checkpoint, device=device)
        self.scorer = create_scorer(strategy, **params)
        self.context = context
        self.context.detector = self.detector

    def __call__(self, batch: dict) -> dict:
        from .images import load_rgb

        paths = [str(p) for p in batch["path"]]
        images = [load_rgb(p) for p in paths]
        detections = self.detector.predict(images, box_features="box_features" in self.scorer.needs)
        pool = [PoolImage(p, image, det) for p, image, det in zip(paths, images, detections, strict=True)]
        scores = self.scorer.score_batch(pool, self.context)
        # JSON keeps every float exact and spares Arrow the varying ``parts`` keys.
        return {
            "path": paths,
            "score": [json.dumps(asdict(score)) for score in scores],
            "detections": [_boxes_json(det) for det in detections],
        }


def _boxes_json(detections: Detections) -> str:
    """What pre-annotations need of the detections: boxes, labels, scores, image size."""
    return json.dumps(
        {
            "boxes": detections.boxes.tolist(),
            "labels": detections.labels.tolist(),
            "scores": detections.scores.tolist(),
            "image_size": list(detections.image_size),
            "image_features": None if detections.image_features is None else detections.image_features.tolist(),
        }
    )


def _boxes_from_json(text: str) -> Detections:
    import torch

    fields = json.loads(text)
    return Detections(
        torch.tensor(fields["boxes"], dtype=torch.float32).reshape(-1, 4),
        torch.tensor(fields["labels"], dtype=torch.int64),
        torch.tensor(fields["scores"], dtype=torch.float32),
        tuple(fields["image_size"]),
        image_features=None if fields.get("image_features") is None else torch.tensor(fields["image_features"]),
    )


def score_pool_ray(
    checkpoint: str,
    paths: Sequence[str],
    strategy: str = "entropy",
    params: dict | None = None,
    context: ScoringContext | None = None,
    batch_size: int = 16,
    options: RayOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_detections: Callable[[str, Detections], None] | None = None,
) -> ScoredPool:
    """``score_pool`` of the detector saved at ``checkpoint``, on Ray; keys are the paths, in
    the order given. ``on_progress(n)`` hears how many images are scored so far;
    ``on_detections(path, detections)`` gets each image's boxes, labels, scores and image
    features (the pre-NMS candidate scores stay on the replica)."""
    import ray

    options = options or RayOptions()
    params = params or {}
    detector = Detector.load(checkpoint, device="cpu")
    if not ray_can_score(strategy, params, detector):
        raise ValueError(
            f"score {strategy} in process: it ranks the pool as a whole (a set-level step), "
            "or its head is untrained (the cold-start rule)"
        )
    context = context or ScoringContext()
    prepare_context(create_scorer(strategy, **params), detector, context, batch_size)  # e.g. class quality
    context.detector = None  # each replica sets its own
    if not ray.is_initialized():
        ray.init(address=options.address or None, include_dashboard=False, log_to_driver=False)
    constructor = {"checkpoint": str(checkpoint), "strategy": strategy, "params": params, "context": context,
                   "device": "cuda" if options.gpus_per_replica else "cpu"}  # fmt: skip
    by_path: dict[str, ImageScore] = {}
    data_context = ray.data.DataContext.get_current()
    tolerated = data_context.max_errored_blocks
    # A block lost with a dead node is skipped by the pass and its images go into the next one.
    data_context.max_errored_blocks = -1
    try:
        for _ in range(options.max_retries + 1):
            todo = [str(p) for p in paths if str(p) not in by_path]
            if not todo:
                break
            scored = ray.data.from_items([{"path": p} for p in todo]).map_batches(
                _Replica,
                fn_constructor_kwargs=constructor,
                batch_size=batch_size,
                concurrency=options.replicas,
                num_gpus=options.gpus_per_replica,
                num_cpus=options.cpus_per_replica,
                max_restarts=options.max_retries,
                max_task_retries=options.max_retries,
            )
            for row in scored.iter_rows():  # streams: the pool is never held as images
                fields = json.loads(row["score"])
                by_path[row["path"]] = ImageScore(**{**fields, "box_values": tuple(fields["box_values"])})
                if on_detections is not None:
                    on_detections(row["path"], _boxes_from_json(row["detections"]))
                if on_progress is not None:
                    on_progress(len(by_path))
    finally:
        data_context.max_errored_blocks = tolerated
    missing = [p for p in paths if str(p) not in by_path]
    if missing:
        raise RuntimeError(f"Ray returned no score for {len(missing)} images, e.g. {missing[0]}")
    scores = [by_path[str(p)] for p in paths]
    return ScoredPool([str(p) for p in paths], scores, strategy, strategy, detector.version.name, context.seed)
