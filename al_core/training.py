"""Training a detector on labeled images, in the spirit of torchvision's detection reference:
linear warm-up then cosine decay, AMP on CUDA, a stop on a non-finite loss, COCO mAP on a
held-out split, early stopping when mAP stops moving, and resumable state after each epoch.

The loop is an epoch function (``_train_one_epoch``, one ``_Step`` per batch) inside
``run_loop``; evaluation, best weights, early stopping, resume, TensorBoard and progress are
hooks (al_core.training_hooks), in the manner of detectron2's ``train_loop.py``."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from scipy.stats import spearmanr
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.ops import remove_small_boxes

from .detectors import Detector
from .detectors.box_losses import training_losses
from .detectors.detector import to_tensor
from .detectors.loss_head import pair_ranking_loss
from .device import flush_denormals
from .images import load_rgb
from .training_hooks import (
    BestWeights,
    EarlyStop,
    Evaluate,
    Hook,
    LoopState,
    Progress,
    ProgressReport,
    Resume,
    SaveState,
    TensorBoard,
    plateaued,
)
from .types import LabeledImage

__all__ = ["NonFiniteLoss", "Progress", "TrainConfig", "TrainResult", "plateaued", "split_held_out", "train_detector"]


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    seed: int = 0
    num_workers: int = 0
    amp: bool = True  # mixed precision on CUDA (ignored on the CPU)
    # Evaluation on the held-out images every ``eval_every`` epochs; early stopping (ASM's rule)
    # once the mean absolute change of mAP over the last ``early_stop_window`` evaluations is
    # below ``early_stop_delta``, after ``min_epochs``. The best-mAP weights are kept.
    eval_every: int = 1
    early_stop_window: int = 3
    early_stop_delta: float = 0.002
    min_epochs: int = 4
    # At least this many optimisation steps (epochs raised to reach them, at most max_epochs),
    # before early stopping may end the run: a few epochs of a small labeled set are a few dozen
    # steps, far from fitted (BENCHMARKS.md, "Too few steps"). 0: ``epochs`` as given.
    min_steps: int = 0
    max_epochs: int = 100
    # Learning loss (when the detector has a loss head): lambda of the pair ranking loss, its
    # margin, and the fraction of a detector's first training after which the head stops
    # sending gradient into the detector (0 = detached from the start; later trainings of the
    # same detector are always detached).
    loss_weight: float = 1.0
    loss_margin: float = 1.0
    loss_head_detach_after: float = 0.6
    # Self-labeling (CEAL): the loss of a batch of pseudo-labeled images is scaled by this.
    pseudo_weight: float = 0.5
    # Box regression of dense heads (al_core.detectors.box_losses): "default" (the head's own),
    # giou, diou, ciou or eiou; and HUALE's emphasis gamma (0 = off).
    box_loss: str = "default"
    emphasis: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    epochs: int
    iterations: int
    final_loss: float
    seconds: float
    history: list[dict] = field(default_factory=list)  # {"epoch", "map", "map50"} per evaluation
    metrics: dict[str, float] = field(default_factory=dict)  # of the kept (best) weights
    stopped_early: bool = False


class NonFiniteLoss(RuntimeError):
    """Training diverged; the step that produced the loss was not taken."""


class DetectionDataset(Dataset):
    """Images from disk with their targets, labels shifted past the background slot 0. Boxes
    under one pixel wide or high are left out: no object, and torchvision's detectors refuse a
    box without area (a model's own labels, CEAL's, can hold one)."""

    def __init__(self, samples: Sequence[LabeledImage]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        boxes = sample.boxes.float().reshape(-1, 4)
        keep = remove_small_boxes(boxes, 1.0)
        target = {"boxes": boxes[keep], "labels": sample.labels.long()[keep] + 1}
        return to_tensor(load_rgb(sample.path)), target


def _collate(batch):
    return tuple(zip(*batch))


def split_held_out(
    samples: Sequence[LabeledImage], fraction: float, seed: int, minimum: int = 5, recent: Collection[str] = ()
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """(train, held-out): ``fraction`` of the images held out (none when fewer than ``minimum``),
    refreshed from the newest labels so that mAP follows what people are labeling now.

    ``recent``: paths of the images labeled since the previous model version. The held-out
    split takes a seeded random half of them at most (the other half, at least, trains this
    model) and fills up with a seeded draw from the older images. The split is drawn anew every
    run from the labels of that run. Without ``recent`` it is a seeded draw from all.
    """
    samples = list(samples)
    if len(samples) < minimum or fraction <= 0:
        return samples, []
    count = max(1, round(fraction * len(samples)))
    rng = random.Random(seed)
    new = [i for i, sample in enumerate(samples) if sample.path in recent]
    old = [i for i, sample in enumerate(samples) if sample.path not in recent]
    rng.shuffle(new)
    rng.shuffle(old)
    from_old = min(count - min(count, len(new) // 2), len(old))
    held = set(new[: count - from_old]) | set(old[:from_old])  # more new ones when the older run short
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def final_pass(config: TrainConfig, held_out_fraction: float) -> TrainConfig:
    """The served version's last pass over every label, held-out images included, after the
    held-out split has chosen the weights (early stopping) and calibrated the display: the
    held-out share of the epochs (at least one), at a tenth of the learning rate, without
    warm-up (the loss head is detached: the detector is trained by then). The images active
    learning just chose thus train the model that is served, while its mAP and calibration come
    from images it had not seen."""
    epochs = max(1, round(config.epochs * held_out_fraction))
    return replace(config, epochs=epochs, lr=config.lr / 10, warmup_iters=0, min_steps=0)


def with_min_steps(config: TrainConfig, per_epoch: int) -> TrainConfig:
    """``config`` with epochs (and the epochs before early stopping may stop) raised to give at
    least ``min_steps`` steps of ``per_epoch`` each, at most ``max_epochs``."""
    needed = min(math.ceil(config.min_steps / max(per_epoch, 1)), config.max_epochs)
    return replace(config, epochs=max(config.epochs, needed), min_epochs=max(config.min_epochs, needed))


def per_image_losses(detector: Detector, images, targets) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """(B,) the detector's loss on each image alone, and each image's FPN maps.

    torchvision's detection models return losses averaged over the batch, so each image gets
    its own forward pass: its loss is exactly what torchvision computes for it. For heads that
    average per-image losses (RetinaNet) their mean equals the batch loss, as long as batch-norm
    statistics are frozen (torchvision's FrozenBatchNorm2d, the default with pretrained weights).
    """
    losses, maps = [], []
    for image, target in zip(images, targets, strict=True):
        losses.append(sum(detector.model([image], [target]).values()))
        maps.append(list(detector.features.values()))
    return torch.stack(losses), maps


def loss_spearman(detector: Detector, samples: Sequence[LabeledImage], predicted: Sequence[float]) -> float | None:
    """Spearman's rank correlation between the loss head's predictions and the detector's true
    loss on these labeled images (each computed alone, in training mode, without gradient):
    whether learning loss can rank at all. None under 3 images."""
    if len(samples) < 3:
        return None
    dataset = DetectionDataset(list(samples))
    was_training = detector.model.training
    detector.model.train()
    try:
        with torch.no_grad():
            items = [dataset[i] for i in range(len(dataset))]
            images = [image.to(detector.device) for image, _ in items]
            targets = [{k: v.to(detector.device) for k, v in t.items()} for _, t in items]
            true, _ = per_image_losses(detector, images, targets)
    finally:
        detector.model.train(was_training)
    return float(spearmanr(list(predicted), true.cpu().tolist()).statistic)


def _step_loss(
    detector: Detector, net, images, targets, config: TrainConfig, detach: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss to minimise, its parts for the training log, detached: read only when logged, since
    reading a CUDA value waits for the GPU).

    With a loss head, the detector still learns from torchvision's own batch loss (normalised
    as the batch loss is, e.g. by the batch's foreground count for FCOS); the head predicts,
    from that forward pass's FPN maps, each image's loss computed alone (the ranking target,
    without gradient)."""
    parts = net(images, targets)
    detection = sum(parts.values())
    logged = {name: value.detach() for name, value in parts.items()}
    if not detector.has_loss_head:
        return detection, logged
    maps = list(detector.features.values())  # this batch's FPN maps; the passes below replace them
    with torch.no_grad():
        true_losses, _ = per_image_losses(detector, images, targets)
    predicted = detector.model.loss_head([m.detach() if detach else m for m in maps])
    ranking = pair_ranking_loss(predicted, true_losses, config.loss_margin)
    logged["ranking"] = ranking.detach()
    return detection + config.loss_weight * ranking, logged


def _interleaved(loaders: list[tuple[DataLoader, float]], rng: random.Random) -> Iterator[tuple[tuple, float]]:
    """Every batch of every loader once, in a seeded random order of loaders, with its loss
    weight. With one loader this is that loader's own order."""
    schedule = [index for index, (batches, _) in enumerate(loaders) for _ in range(len(batches))]
    rng.shuffle(schedule)
    iterators = [iter(batches) for batches, _ in loaders]
    for index in schedule:
        yield next(iterators[index]), loaders[index][1]
    for iterator in iterators:  # run each to its end: the sampler draws from its generator there too
        for _ in iterator:
            raise RuntimeError("a loader yielded more batches than its length")


def train_detector(
    detector: Detector,
    samples: Sequence[LabeledImage],
    config: TrainConfig | None = None,
    held_out: Sequence[LabeledImage] = (),
    on_progress: Progress | None = None,
    show_progress: bool = False,
    state_path: str | Path | None = None,
    pseudo: Sequence[LabeledImage] = (),
    log_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``detector.model`` in place and mark it trained.

    ``pseudo``: images labeled by the model itself (CEAL's self-labeling). They go in batches of
    their own, interleaved with the human batches, and their loss counts ``pseudo_weight``
    times: torchvision averages a batch's loss over its images, so weights apply per batch.

    With ``state_path``, the model, optimizer, scheduler and epoch are saved there after every
    epoch, and a run that finds the file resumes from it.

    With ``log_dir``, a TensorBoard log is written there: per step the loss, its parts and the
    learning rate; per evaluation AP, AP50, AP75 and the AP shift that early stopping watches.
    """
    if not samples:
        raise ValueError("no labeled images to train on")
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    flush_denormals(detector.device)
    # Under a process group (Ray Train's TorchTrainer, torchrun) each worker trains on its shard
    # and DistributedDataParallel averages the gradients.
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and detector.has_loss_head:
        raise ValueError("learning-loss training runs per-image forward passes; train it on one worker")
    if distributed and pseudo:
        raise ValueError("pseudo-labeled images train on one worker")
    loaders, sampler = _loaders(samples, pseudo, config, distributed)
    per_epoch = sum(len(batches) for batches, _ in loaders)
    config = with_min_steps(config, per_epoch)
    total = config.epochs * per_epoch
    step = _Step(detector, config, distributed, total)
    chief = not distributed or dist.get_rank() == 0
    loop = LoopState(detector, step.optimizer, step.scheduler, config.epochs, total, chief)
    hooks = _hooks(config, held_out, on_progress, show_progress, state_path, log_dir)
    start = time.perf_counter()
    with training_losses(detector.model, config.box_loss, config.emphasis):
        run_loop(loop, hooks, lambda epoch: _train_one_epoch(loop, step, loaders, sampler, hooks))
    detector.mark_trained()
    metrics = loop.best["metrics"] if loop.best else {}
    seconds = time.perf_counter() - start
    return TrainResult(loop.epoch + 1, loop.step, loop.loss, seconds, loop.history, metrics, loop.stop)


def _hooks(config, held_out, on_progress, show_progress, state_path, log_dir) -> list[Hook]:
    """In the order they run (see al_core.training_hooks)."""
    hooks: list[Hook] = [Resume(Path(state_path))] if state_path else []
    hooks += [ProgressReport(on_progress, show_progress), Evaluate(held_out, config.eval_every, on_progress)]
    hooks += [BestWeights()]
    if log_dir is not None:
        hooks.append(TensorBoard(Path(log_dir), config.early_stop_window))
    if state_path:
        hooks.append(SaveState(Path(state_path)))
    return hooks + [EarlyStop(config.early_stop_window, config.early_stop_delta, config.min_epochs)]


def run_loop(loop: LoopState, hooks: Sequence[Hook], train_epoch: Callable[[int], None]) -> None:
    """The epochs from where the run stands to ``loop.epochs``, hooks around each; the model is
    left in eval mode whatever happens."""
    for hook in hooks:
        hook.before_train(loop)
    try:
        for epoch in range(loop.first_epoch, loop.epochs):
            loop.epoch = epoch
            train_epoch(epoch)
            loop.model.eval()
            for hook in hooks:
                hook.after_epoch(loop)
            if loop.stop:
                break
        loop.finished = True
    finally:
        loop.model.eval()
        for hook in hooks:
            hook.after_train(loop)


def _loaders(
    samples: Sequence[LabeledImage], pseudo: Sequence[LabeledImage], config: TrainConfig, distributed: bool
) -> tuple[list[tuple[DataLoader, float]], DistributedSampler | None]:
    """The human batches (sharded under DDP) and, with pseudo labels, their own batches, each
    with its loss weight."""
    dataset = DetectionDataset(samples)
    sampler = DistributedSampler(dataset, shuffle=True, seed=config.seed) if distributed else None
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(config.seed),
        num_workers=config.num_workers,
    )
    loaders = [(loader, 1.0)]
    if pseudo:
        generator = torch.Generator().manual_seed(config.seed + 1)
        batches = DataLoader(
            DetectionDataset(pseudo),
            batch_size=config.batch_size,
            shuffle=True,
            collate_fn=_collate,
            generator=generator,
        )
        loaders.append((batches, config.pseudo_weight))
    return loaders, sampler


class _Step:
    """One optimisation step: AdamW, linear warm-up then cosine decay, AMP on CUDA, the loss
    head's detach point, and a stop before a non-finite loss is stepped on."""

    def __init__(self, detector: Detector, config: TrainConfig, distributed: bool, total: int):
        model, device = detector.model, detector.device
        self.detector, self.config, self.total = detector, config, total
        self.net = (
            DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            if distributed
            else model
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.warmup = min(config.warmup_iters, max(total // 5, 1))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.use_amp = device.type == "cuda" and config.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        # The loss head's pull on the detector is global over the run: only a detector's first
        # training (from the pretrained backbone) feels it, for its first loss_head_detach_after;
        # fine-tuning a trained detector keeps the head detached from the start.
        self.detach_after = 0.0 if detector.version.trained else config.loss_head_detach_after

    def _lr_factor(self, step: int) -> float:
        if step < self.warmup:
            return 0.001 + (1 - 0.001) * step / self.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - self.warmup) / max(self.total - self.warmup, 1)))

    def __call__(self, loop: LoopState, images, targets, weight: float) -> dict:
        device = self.detector.device
        images = [image.to(device) for image in images]
        targets = [{key: value.to(device) for key, value in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=self.use_amp):
            detach = loop.step / self.total >= self.detach_after
            loss, parts = _step_loss(self.detector, self.net, images, targets, self.config, detach)
            loss = weight * loss
        loop.loss = float(loss.detach())
        if not math.isfinite(loop.loss):
            raise NonFiniteLoss(
                f"loss is {loop.loss} at step {loop.step} (epoch {loop.epoch}); try a lower learning rate"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return parts


def _train_one_epoch(loop: LoopState, step: _Step, loaders, sampler, hooks: Sequence[Hook]) -> None:
    """Every batch once, in the epoch's seeded interleaving of human and pseudo-labeled batches."""
    if sampler is not None:
        sampler.set_epoch(loop.epoch)
    loop.model.train()
    for (images, targets), weight in _interleaved(loaders, random.Random(step.config.seed * 1000 + loop.epoch)):
        parts = step(loop, images, targets, weight)
        loop.step += 1
        for hook in hooks:
            hook.after_step(loop, parts, weight)
        step.scheduler.step()
