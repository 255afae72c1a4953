"""Training a detector on labeled images, in the spirit of torchvision's detection reference:
linear warm-up then cosine decay, AMP on CUDA, a stop on a non-finite loss, COCO mAP on a
held-out split, early stopping when mAP stops moving, and resumable state after each epoch."""

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
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .detectors import Detector
from .detectors.box_losses import training_losses
from .detectors.detector import to_tensor
from .detectors.loss_head import pair_ranking_loss
from .device import flush_denormals
from .evaluation import evaluate
from .images import load_rgb
from .tensorboard_log import log_evaluation, log_step
from .types import LabeledImage

Progress = Callable[[float, str], None]  # (fraction done, what is happening)


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
    """Images from disk with their targets, labels shifted past the background slot 0."""

    def __init__(self, samples: Sequence[LabeledImage]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        target = {"boxes": sample.boxes.float().reshape(-1, 4), "labels": sample.labels.long() + 1}
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
    return replace(config, epochs=epochs, lr=config.lr / 10, warmup_iters=0)


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
    model, device = detector.model, detector.device
    flush_denormals(device)
    # Under a process group (Ray Train's TorchTrainer, torchrun) each worker trains on its shard
    # and DistributedDataParallel averages the gradients.
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and detector.has_loss_head:
        raise ValueError("learning-loss training runs per-image forward passes; train it on one worker")
    if distributed and pseudo:
        raise ValueError("pseudo-labeled images train on one worker")
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
        pseudo_loader = DataLoader(
            DetectionDataset(pseudo),
            batch_size=config.batch_size,
            shuffle=True,
            collate_fn=_collate,
            generator=generator,
        )
        loaders.append((pseudo_loader, config.pseudo_weight))
    net = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if distributed
        else model
    )
    chief = not distributed or dist.get_rank() == 0
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    total = config.epochs * sum(len(batches) for batches, _ in loaders)
    # The loss head's pull on the detector is global over the run: only a detector's first
    # training (from the pretrained backbone) feels it, for its first loss_head_detach_after;
    # fine-tuning a trained detector keeps the head detached from the start.
    detach_after = 0.0 if detector.version.trained else config.loss_head_detach_after
    warmup = min(config.warmup_iters, max(total // 5, 1))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return 0.001 + (1 - 0.001) * step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    use_amp = device.type == "cuda" and config.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, first_epoch, history, best = 0, 0, [], None
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, first_epoch, history, best = state["step"], state["epoch"] + 1, state["history"], state["best"]
    report = on_progress or (lambda fraction, stage: None)
    start, loss_value, stopped_early, epoch = time.perf_counter(), float("nan"), False, first_epoch - 1
    bar = tqdm(total=total, initial=step, desc="train", disable=not (show_progress and chief))
    board = SummaryWriter(str(log_dir)) if log_dir is not None and chief else None
    with training_losses(model, config.box_loss, config.emphasis):
        try:
            for epoch in range(first_epoch, config.epochs):
                if sampler is not None:
                    sampler.set_epoch(epoch)
                model.train()
                for (images, targets), weight in _interleaved(loaders, random.Random(config.seed * 1000 + epoch)):
                    images = [image.to(device) for image in images]
                    targets = [{key: value.to(device) for key, value in t.items()} for t in targets]
                    with torch.autocast(device.type, enabled=use_amp):
                        detach = step / total >= detach_after
                        loss, parts = _step_loss(detector, net, images, targets, config, detach)
                        loss = weight * loss
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        raise NonFiniteLoss(
                            f"loss is {loss_value} at step {step} (epoch {epoch}); try a lower learning rate"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    if board is not None:
                        log_step(board, step, loss_value, parts, scheduler.get_last_lr()[0], weight)
                    scheduler.step()
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.3f}")
                    report(step / total, f"training: epoch {epoch + 1}/{config.epochs}, loss {loss_value:.3f}")
                model.eval()
                if held_out and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
                    report(step / total, f"evaluating after epoch {epoch + 1}")
                    metrics = evaluate(detector, held_out)
                    history.append({"epoch": epoch + 1, **metrics})
                    if board is not None:
                        log_evaluation(board, epoch + 1, metrics, ap_shift(history, config.early_stop_window))
                    if best is None or metrics["map"] > best["metrics"]["map"]:
                        best = {"metrics": metrics, "epoch": epoch + 1, "weights": _cpu_copy(model.state_dict())}
                if state_path is not None and chief:
                    _save_state(state_path, model, optimizer, scheduler, epoch, step, history, best)
                if epoch + 1 >= config.min_epochs and plateaued(
                    history, config.early_stop_window, config.early_stop_delta
                ):
                    stopped_early = True
                    break
        finally:
            bar.close()
            model.eval()
            if board is not None:
                board.close()
    if best is not None:
        model.load_state_dict(best["weights"])
    detector.mark_trained()
    metrics = best["metrics"] if best else {}
    return TrainResult(epoch + 1, step, loss_value, time.perf_counter() - start, history, metrics, stopped_early)


def _cpu_copy(state: dict) -> dict:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def _save_state(path: Path, model, optimizer, scheduler, epoch, step, history, best) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "history": history,
        "best": best,
    }
    torch.save(state, tmp)
    tmp.replace(path)
