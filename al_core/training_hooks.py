"""The training loop's hooks, in the manner of detectron2's ``hooks.py``: each concern of a run
(progress, evaluation, best weights, early stopping, resumable state, TensorBoard) is one small
object the loop calls before training, after each step, after each epoch and after training.

Their order matters where one reads what another wrote: ``Resume`` loads the state before the
progress bar starts at its step; ``Evaluate`` appends to the history that ``BestWeights``,
``TensorBoard``, ``SaveState`` and ``EarlyStop`` read after the same epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .detectors import Detector
from .evaluation import evaluate
from .tensorboard_log import log_evaluation, log_step
from .types import LabeledImage

Progress = Callable[[float, str], None]  # (fraction done, what is happening)


@dataclass
class LoopState:
    """What a run has done so far, shared by the loop and its hooks."""

    detector: Detector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epochs: int  # the run's last epoch (1-based)
    total: int  # steps of the whole run
    chief: bool = True  # the process that logs and saves (rank 0 under DDP)
    step: int = 0
    epoch: int = -1  # the epoch last run (0-based); -1 before the first
    first_epoch: int = 0
    loss: float = float("nan")
    history: list[dict] = field(default_factory=list)  # {"epoch", "map", ...} per evaluation
    best: dict | None = None  # {"metrics", "epoch", "weights"} of the best evaluation
    stop: bool = False  # set by a hook: end after this epoch
    finished: bool = False  # the loop ended without an exception

    @property
    def model(self) -> torch.nn.Module:
        return self.detector.model

    def evaluated_now(self) -> dict | None:
        """The evaluation of the epoch just run, if there was one."""
        if self.history and self.history[-1]["epoch"] == self.epoch + 1:
            return self.history[-1]
        return None


class Hook:
    def before_train(self, loop: LoopState) -> None: ...

    def after_step(self, loop: LoopState, parts: dict, weight: float) -> None: ...

    def after_epoch(self, loop: LoopState) -> None: ...

    def after_train(self, loop: LoopState) -> None:
        """Runs whether the loop finished or raised."""


class Resume(Hook):
    """Continue a run from its state file (written by ``SaveState``) when the file exists."""

    def __init__(self, path: Path):
        self.path = path

    def before_train(self, loop: LoopState) -> None:
        if not self.path.exists():
            return
        state = torch.load(self.path, map_location=loop.detector.device, weights_only=False)
        loop.model.load_state_dict(state["model"])
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.scheduler.load_state_dict(state["scheduler"])
        loop.step, loop.history, loop.best = state["step"], state["history"], state["best"]
        loop.first_epoch = state["epoch"] + 1
        loop.epoch = state["epoch"]


class SaveState(Hook):
    """The model, optimizer, scheduler, history and best weights after every epoch, whole or not at all."""

    def __init__(self, path: Path):
        self.path = path

    def after_epoch(self, loop: LoopState) -> None:
        if not loop.chief:
            return
        state = {
            "model": loop.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(),
            "epoch": loop.epoch,
            "step": loop.step,
            "history": loop.history,
            "best": loop.best,
        }
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


class ProgressReport(Hook):
    """A tqdm bar (when asked for, on the chief) and the caller's progress callback per step."""

    def __init__(self, report: Progress | None, show_bar: bool):
        self.report = report or (lambda fraction, stage: None)
        self.show_bar = show_bar
        self.bar: tqdm | None = None

    def before_train(self, loop: LoopState) -> None:
        self.bar = tqdm(total=loop.total, initial=loop.step, desc="train", disable=not (self.show_bar and loop.chief))

    def after_step(self, loop: LoopState, parts: dict, weight: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loop.loss:.3f}")
        self.report(loop.step / loop.total, f"training: epoch {loop.epoch + 1}/{loop.epochs}, loss {loop.loss:.3f}")

    def after_train(self, loop: LoopState) -> None:
        if self.bar is not None:
            self.bar.close()


class Evaluate(Hook):
    """COCO mAP on the held-out images every ``every`` epochs and after the last one."""

    def __init__(self, held_out: Sequence[LabeledImage], every: int, report: Progress | None):
        self.held_out, self.every = held_out, every
        self.report = report or (lambda fraction, stage: None)

    def after_epoch(self, loop: LoopState) -> None:
        done = loop.epoch + 1
        if not self.held_out or (done % self.every and done != loop.epochs):
            return
        self.report(loop.step / loop.total, f"evaluating after epoch {done}")
        loop.model.eval()
        loop.history.append({"epoch": done, **evaluate(loop.detector, self.held_out)})


class BestWeights(Hook):
    """Keep a copy of the best-mAP weights; a finished run ends with them."""

    def after_epoch(self, loop: LoopState) -> None:
        metrics = loop.evaluated_now()
        if metrics is not None and (loop.best is None or metrics["map"] > loop.best["metrics"]["map"]):
            weights = {key: value.detach().to("cpu", copy=True) for key, value in loop.model.state_dict().items()}
            loop.best = {"metrics": metrics, "epoch": loop.epoch + 1, "weights": weights}

    def after_train(self, loop: LoopState) -> None:
        if loop.finished and loop.best is not None:
            loop.model.load_state_dict(loop.best["weights"])


def ap_shift(history: Sequence[dict], window: int) -> float | None:
    """ASM's AP shift: mean |mAP_t - mAP_(t-1)| over the last ``window`` changes (None before)."""
    if len(history) <= window:
        return None
    maps = [h["map"] for h in history[-(window + 1) :]]
    return sum(abs(b - a) for a, b in zip(maps, maps[1:])) / window


def plateaued(history: Sequence[dict], window: int, delta: float) -> bool:
    """ASM's stop rule: the AP shift is below ``delta``."""
    shift = ap_shift(history, window)
    return shift is not None and shift < delta


class EarlyStop(Hook):
    """ASM's rule: stop once the AP shift over ``window`` evaluations is below ``delta``, after ``min_epochs``."""

    def __init__(self, window: int, delta: float, min_epochs: int):
        self.window, self.delta, self.min_epochs = window, delta, min_epochs

    def after_epoch(self, loop: LoopState) -> None:
        if loop.epoch + 1 >= self.min_epochs and plateaued(loop.history, self.window, self.delta):
            loop.stop = True


class TensorBoard(Hook):
    """Per step the loss, its parts and the learning rate; per evaluation AP, AP50, AP75 and the AP shift."""

    def __init__(self, log_dir: Path, window: int):
        self.log_dir, self.window = log_dir, window
        self.board: SummaryWriter | None = None

    def before_train(self, loop: LoopState) -> None:
        if loop.chief:
            self.board = SummaryWriter(str(self.log_dir))

    def after_step(self, loop: LoopState, parts: dict, weight: float) -> None:
        if self.board is not None:
            # The step's learning rate: the scheduler moves on after the hooks.
            log_step(self.board, loop.step - 1, loop.loss, parts, loop.scheduler.get_last_lr()[0], weight)

    def after_epoch(self, loop: LoopState) -> None:
        metrics = loop.evaluated_now()
        if self.board is not None and metrics is not None:
            log_evaluation(self.board, loop.epoch + 1, metrics, ap_shift(loop.history, self.window))

    def after_train(self, loop: LoopState) -> None:
        if self.board is not None:
            self.board.close()
