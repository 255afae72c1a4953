"""TensorBoard logs of training runs and of the pool they leave behind (ASM's observability).

Tags: ``train/loss`` and ``train/loss_<part>`` per step (``train_pseudo/...`` for CEAL's
pseudo-labeled batches), ``train/lr``; ``eval/AP``, ``eval/AP50``, ``eval/AP75`` and
``eval/AP_shift`` (what early stopping watches) per evaluation; ``pool/...`` once per cycle,
at step = the number of human-labeled images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from .types import Certainty, Detections


def log_step(board: SummaryWriter, step: int, loss: float, parts: dict, lr: float, weight: float) -> None:
    kind = "train" if weight == 1.0 else "train_pseudo"
    board.add_scalar(f"{kind}/loss", loss, step)
    for name, value in parts.items():
        board.add_scalar(f"{kind}/loss_{name}", float(value), step)
    board.add_scalar("train/lr", lr, step)


def log_evaluation(board: SummaryWriter, epoch: int, metrics: dict, shift: float | None) -> None:
    for tag, key in (("AP", "map"), ("AP50", "map50"), ("AP75", "map75")):
        board.add_scalar(f"eval/{tag}", metrics[key], epoch)
    if shift is not None:
        board.add_scalar("eval/AP_shift", shift, epoch)
    board.flush()


def log_pool(folder: str | Path, detections: Sequence[Detections], certainty: Certainty, labeled: int) -> None:
    """The unlabeled pool under the new model: boxes it would label itself (SL, certain), boxes
    for people (AL, uncertain), their ratio, and the mean per-image AL ratio."""
    splits = [certainty.split(det.scores) for det in detections]
    certain, uncertain = sum(c for c, _ in splits), sum(u for _, u in splits)
    with SummaryWriter(str(folder)) as board:
        board.add_scalar("pool/sl_boxes", certain, labeled)
        board.add_scalar("pool/al_boxes", uncertain, labeled)
        board.add_scalar("pool/sl_al_ratio", certain / max(uncertain, 1), labeled)
        if detections:
            ratios = [certainty.al_ratio(det.scores) for det in detections]
            board.add_scalar("pool/al_ratio_mean", sum(ratios) / len(ratios), labeled)
