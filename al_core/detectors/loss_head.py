"""Learning Loss for Active Learning (Yoo & Kweon, CVPR 2019), for FPN detectors.

Each FPN level: global average pool -> FC(128) -> ReLU; the levels concatenated -> FC -> one
scalar, the predicted detection loss of the image. Trained with the pair ranking loss
L = max(0, -sign(l_i - l_j) * (l^_i - l^_j) + margin), pairing sample i with its mirror j in the
batch, true losses detached.
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
    """Mean over mirror pairs (i, B-1-i) of max(0, -sign(l_i - l_j) * (l^_i - l^_j) + margin)."""
    half = predicted.shape[0] // 2
    if half == 0:
        return predicted.sum() * 0.0
    true = true.detach()
    pred_i, pred_j = predicted[:half], predicted.flip(0)[:half]
    sign = torch.sign(true[:half] - true.flip(0)[:half])
    return torch.clamp(-sign * (pred_i - pred_j) + margin, min=0).mean()


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
