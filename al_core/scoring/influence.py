"""Influence of an unlabeled image on the labeled loss (ISAL, Liu et al., ICCV 2021).

Upweighting a training image z changes the loss on test data by
I(z) = -grad L_test^T H^-1 grad L(z), gradients taken w.r.t. the detector's final prediction
layers, over a seeded random sample of at most ``max_labeled`` labeled images. The images whose
own loss gradient points along s = H^-1 grad L_labeled reduce that loss the most. Score:
s . grad L(z) / ||s||. ``hessian``: "diagonal" (default) estimates H by the diagonal of the
empirical Fisher, the mean squared per-image gradient over the same labeled sample, damped by
its own mean (H + mean(diag) I: between the diagonal and the identity, and never singular);
"identity" is ISAL's practical variant, H = I. L(z) uses pseudo-labels: the image's predicted
boxes scoring above a noise threshold (0.1 in ISAL's script). normalized = 1/2 + atan(value) / pi.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from PIL import Image
from torch import nn

from ..detectors.detector import to_tensor
from ..detectors.registry import DETECTORS
from ..types import ImageScore
from .base import PoolImage, Scorer, ScoringContext, register

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@contextmanager
def loss_mode(model: nn.Module) -> Iterator[None]:
    """Training mode so torchvision computes losses, with batch-norm statistics left alone,
    and the random samplers of two-stage heads seeded, then back to evaluation."""
    model.train()
    for module in model.modules():
        if isinstance(module, _NORMS):
            module.eval()
    try:
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            yield
    finally:
        model.eval()


def last_layer_gradient(model: nn.Module, prefixes: tuple[str, ...], images, targets) -> torch.Tensor:
    params = [p for name, p in model.named_parameters() if name.startswith(prefixes)]
    losses = model(images, targets)
    grads = torch.autograd.grad(sum(losses.values()), params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)]
    )


@register
class InfluenceScorer(Scorer):
    name = "influence"
    needs = frozenset({"trained_head", "gradients", "labeled_set"})

    def __init__(self, noise_threshold: float = 0.1, max_labeled: int = 32, hessian: str = "diagonal"):
        if hessian not in ("diagonal", "identity"):
            raise ValueError(f"hessian is 'diagonal' or 'identity', got {hessian!r}")
        self.noise_threshold, self.max_labeled, self.hessian = noise_threshold, max_labeled, hessian
        self._labeled_direction: torch.Tensor | None = None

    def _direction(self, context: ScoringContext) -> torch.Tensor:
        """Unit vector of H^-1 times the mean loss gradient over a labeled sample."""
        if self._labeled_direction is None:
            if not context.labeled:
                raise ValueError("influence needs labeled images (the labeled set) to take the loss gradient on")
            detector = context.detector
            prefixes = DETECTORS[detector.version.detector].last_layers
            labeled = list(context.labeled)
            samples = random.Random(context.seed).sample(labeled, min(self.max_labeled, len(labeled)))
            grads = []
            for s in samples:  # one image at a time: the Fisher diagonal needs per-image gradients
                image = [to_tensor(Image.open(s.path).convert("RGB")).to(detector.device)]
                target = [{"boxes": s.boxes.float().to(detector.device), "labels": (s.labels + 1).to(detector.device)}]
                with detector.lock, loss_mode(detector.model):
                    grads.append(last_layer_gradient(detector.model, prefixes, image, target))
            grads = torch.stack(grads)
            direction = grads.mean(dim=0)
            if self.hessian == "diagonal":
                diagonal = grads.pow(2).mean(dim=0)
                direction = direction / (diagonal + diagonal.mean().clamp_min(1e-12))
            self._labeled_direction = direction / direction.norm().clamp_min(1e-12)
        return self._labeled_direction

    def score_batch(self, batch: Sequence[PoolImage], context: ScoringContext) -> list[ImageScore]:
        direction = self._direction(context)
        detector = context.detector
        prefixes = DETECTORS[detector.version.detector].last_layers
        scores = []
        for item in batch:
            pseudo = item.detections.above(self.noise_threshold)
            target = {"boxes": pseudo.boxes.to(detector.device), "labels": (pseudo.labels + 1).to(detector.device)}
            with detector.lock, loss_mode(detector.model):
                grad = last_layer_gradient(
                    detector.model, prefixes, [to_tensor(item.image).to(detector.device)], [target]
                )
            value = float(direction @ grad)
            parts = {"pseudo_boxes": float(len(pseudo))}
            scores.append(ImageScore(value, 0.5 + math.atan(value) / math.pi, self.name, None, parts))
        return scores
