"""Training a detector on labeled images, in the spirit of torchvision's detection reference:
linear warm-up, cosine decay, AMP on CUDA, and a stop on a non-finite loss."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from .detectors import Detector
from .detectors.loss_head import pair_ranking_loss
from .types import LabeledImage


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    seed: int = 0
    num_workers: int = 0
    # Learning loss (used when the detector has a loss head): lambda of the pair ranking loss,
    # its margin, and the fraction of training after which the head stops sending gradient
    # into the detector (0 = detached from the start).
    loss_weight: float = 1.0
    loss_margin: float = 1.0
    loss_head_detach_after: float = 0.6


@dataclass
class TrainResult:
    epochs: int
    iterations: int
    final_loss: float
    seconds: float


class NonFiniteLoss(RuntimeError):
    """Training diverged; the model is left as it was before the bad step."""


class DetectionDataset(Dataset):
    """Images from disk with their targets, labels shifted past the background slot 0."""

    def __init__(self, samples: Sequence[LabeledImage]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        with Image.open(sample.path) as image:
            tensor = pil_to_tensor(image.convert("RGB")).float() / 255.0
        return tensor, {"boxes": sample.boxes.float().reshape(-1, 4), "labels": sample.labels.long() + 1}


def _collate(batch):
    return tuple(zip(*batch))


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


def _step_loss(detector: Detector, images, targets, config: TrainConfig, fraction_done: float) -> torch.Tensor:
    if not detector.has_loss_head:
        return sum(detector.model(images, targets).values())
    true_losses, maps = per_image_losses(detector, images, targets)
    detach = fraction_done >= config.loss_head_detach_after
    predicted = torch.cat([detector.model.loss_head([m.detach() if detach else m for m in ms]) for ms in maps])
    ranking = pair_ranking_loss(predicted, true_losses, config.loss_margin)
    return true_losses.mean() + config.loss_weight * ranking


def train_detector(
    detector: Detector,
    samples: Sequence[LabeledImage],
    config: TrainConfig | None = None,
    on_progress: Callable[[float, float], None] | None = None,
    show_progress: bool = False,
) -> TrainResult:
    """Train ``detector.model`` in place; ``on_progress(fraction_done, loss)`` after each step."""
    if not samples:
        raise ValueError("no labeled images to train on")
    config = config or TrainConfig()
    random.seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    loader = DataLoader(
        DetectionDataset(samples),
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=_collate,
        generator=generator,
        num_workers=config.num_workers,
    )
    model, device = detector.model, detector.device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * len(loader)
    warmup = min(config.warmup_iters, max(total // 5, 1))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return 0.001 + (1 - 0.001) * step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, loss_value = 0, float("nan")
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=total, desc="train", disable=not show_progress)
    try:
        for _epoch in range(config.epochs):
            for images, targets in loader:
                images = [image.to(device) for image in images]
                targets = [{key: value.to(device) for key, value in t.items()} for t in targets]
                with torch.autocast(device.type, enabled=use_amp):
                    losses = model(images, targets)
                loss = sum(losses.values())
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise NonFiniteLoss(
                        f"loss is {loss_value} at step {step}: { ({k: float(v) for k, v in losses.items()}) }"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}")
                if on_progress is not None:
                    on_progress(step / total, loss_value)
    finally:
        bar.close()
        model.eval()
    detector.mark_trained()
    return TrainResult(config.epochs, step, loss_value, time.perf_counter() - start)
