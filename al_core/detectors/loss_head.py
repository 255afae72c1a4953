"""Learning Loss for Active Learning (Yoo & Kweon, CVPR 2019), for FPN detectors.

Each FPN level: global average pool -> FC(128) -> ReLU; the levels concatenated -> FC -> one
scalar, the predicted detection loss of the image. Trained with the pair ranking loss
L = max(0, -sign(l_i - l_j) * (l^_i - l^_j) + margin), true losses detached. The paper pairs
each sample with its mirror in the batch; with the small batches of detection (4 images: 2
pairs) that is little signal, so every pair i < j of the batch is used (the same loss, more
pairs per step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class LossPredictionHead(nn.Module):
    def __init__(self, channels_per_level: Sequence[int], hidden: int = 128):
        super().__init__()
        self.levels = nn.ModuleList(nn.Sequential(nn.Linear(c, hidden), nn.ReLU()) for c in channels_per_level)
        self.out = nn.Linear(hidden * len(channels_per_level), 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """(B,) predicted losses from the FPN maps of a batch, each (B, C_l, H_l, W_l)."""
        pooled = [level(feature.mean(dim=(2, 3))) for level, feature in zip(self.levels, features, strict=True)]
        return self.out(torch.cat(pooled, dim=1)).squeeze(1)


def pair_ranking_loss(predicted: Tensor, true: Tensor, margin: float = 1.0) -> Tensor:
    """Mean over all pairs i < j of max(0, -sign(l_i - l_j) * (l^_i - l^_j) + margin)."""
    if predicted.shape[0] < 2:
        return predicted.sum() * 0.0
    i, j = torch.triu_indices(predicted.shape[0], predicted.shape[0], offset=1, device=predicted.device)
    sign = torch.sign(true.detach()[i] - true.detach()[j])
    return torch.clamp(-sign * (predicted[i] - predicted[j]) + margin, min=0).mean()


def attach_loss_head(model: nn.Module) -> LossPredictionHead:
    """Give an FPN detector a ``loss_head`` sized by a dry run of its backbone."""
    if not hasattr(model.backbone, "fpn"):
        raise ValueError(f"loss prediction needs an FPN backbone; {type(model).__name__}'s backbone has none")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        maps = model.backbone(torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device))
    model.train(was_training)
    model.loss_head = LossPredictionHead([m.shape[1] for m in maps.values()]).to(next(model.parameters()).device)
    return model.loss_head
