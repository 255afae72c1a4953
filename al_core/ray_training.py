"""Data-parallel training on a Ray cluster with Ray Train's ``TorchTrainer``: each worker (one
per GPU, or CPU workers with the gloo backend) runs ``train_detector`` on its shard of the
labeled images under DistributedDataParallel, so the training loop is the same one the
in-process path runs. ``torchrun --nproc_per_node N -m al_core train ...`` is the other launcher
of that same loop.

The detector travels as a checkpoint file in ``work_dir`` and comes back the same way: on a
cluster of several machines, ``work_dir`` and the image paths must be on shared storage.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .detectors import Detector
from .training import TrainConfig, TrainResult, train_detector
from .types import LabeledImage


def _train_worker(job: dict) -> None:
    import ray.train
    import ray.train.torch

    detector = Detector.load(job["checkpoint"], device=str(ray.train.torch.get_device()))
    result = train_detector(detector, job["samples"], TrainConfig(**job["config"]), job["held_out"])
    if ray.train.get_context().get_world_rank() == 0:  # every rank holds the same weights
        detector.save(job["out"], detector.version.name)
        Path(job["out"]).with_suffix(".json").write_text(json.dumps(dataclasses.asdict(result)))


def train_detector_ray(
    detector: Detector,
    samples: Sequence[LabeledImage],
    config: TrainConfig,
    held_out: Sequence[LabeledImage] = (),
    workers: int = 2,
    use_gpu: bool = False,
    address: str = "",
    work_dir: str | Path | None = None,
) -> TrainResult:
    """``train_detector`` on ``workers`` Ray Train workers; trains ``detector`` in place."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if detector.has_loss_head:
        raise ValueError("learning-loss training runs per-image forward passes; train it in process")
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        version = detector.version
        detector.save(Path(tmp) / "start.pt", version.name)
        job = {
            "checkpoint": str(Path(tmp) / "start.pt"),
            "out": str(Path(tmp) / "trained.pt"),
            "samples": list(samples),
            "held_out": list(held_out),
            "config": config.to_dict(),
        }
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config=job,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(storage_path=str(Path(tmp) / "ray"), name="train"),
        )
        trainer.fit()
        trained = Detector.load(job["out"], device="cpu")
        detector.model.load_state_dict(trained.model.state_dict())
        result = TrainResult(**json.loads(Path(job["out"]).with_suffix(".json").read_text()))
    detector.version = version
    detector.mark_trained()
    return result
