"""Box values -> one image value. Every aggregation takes per-box values in [0, 1] and gives
(value, normalized), normalized in [0, 1], so images compare whatever their box count.

- ``max``, ``mean``;
- ``sum``: favours crowded images (which also cost more to label); normalized v / (1 + v);
- ``weighted``: sum of values weighted by each box's top class probability; v / (1 + v);
- ``class_balanced``: PPAL's DCUS, sum of w_c * value with difficulty weights w_c in [1, 1.2]
  from a running per-class quality estimate (``class_quality``); v / (1 + v);
- ``inverse_frequency``: the mean of w_c * value, w_c = (N + K) / (K (n_c + 1)) from the
  labeled set's box counts (``class_counts``: n_c of class c, N in all, K classes): 1 for a
  class at the even share, more for a rarer one, so doubt about a class the labels lack weighs
  more (class-balanced acquisition by inverse frequency, as in Aggarwal et al. 2020, "Active
  learning for imbalanced datasets"); without counts, the mean; v / (1 + v);
- ``hierarchical``: HUALE's box -> class -> image: the mean within each class, then the mean
  over classes weighted by each class's mass (the sum of its boxes' scores), so one class with
  many confident boxes does not drown a rare uncertain one, and a class of a few junk boxes
  weighs what its scores say.
"""

from __future__ import annotations

import torch

from .class_quality import difficulty_weights

AGGREGATIONS = ("max", "mean", "sum", "weighted", "class_balanced", "inverse_frequency", "hierarchical")


def check_aggregation(how: str) -> str:
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
    return how


def aggregate(
    values: torch.Tensor,
    how: str,
    top_probs: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    class_quality: torch.Tensor | None = None,
    class_counts: torch.Tensor | None = None,
) -> tuple[float, float]:
    """(value, normalized) of non-empty per-box ``values``."""
    if how == "max":
        value = float(values.max())
        return value, value
    if how == "mean":
        value = float(values.mean())
        return value, value
    if how == "hierarchical":
        classes = labels.unique()
        per_class = torch.stack([values[labels == c].mean() for c in classes])
        mass = torch.stack([top_probs[labels == c].sum() for c in classes]) if top_probs is not None else None
        value = float(per_class.mean() if mass is None or mass.sum() <= 0 else (per_class * mass).sum() / mass.sum())
        return value, value
    if how == "sum":
        value = float(values.sum())
    elif how == "weighted":
        value = float((values * top_probs).sum())
    elif how == "inverse_frequency":
        value = float((values * inverse_frequency_weights(class_counts, labels)[labels]).mean())
    elif how == "class_balanced":
        quality = class_quality if class_quality is not None else torch.zeros(int(labels.max()) + 1)
        value = float((values * difficulty_weights(quality)[labels]).sum())
    else:
        check_aggregation(how)
    return value, value / (1.0 + value)


def inverse_frequency_weights(class_counts: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """(K,) w_c = (N + K) / (K (n_c + 1)), add-one smoothed so a class never labeled has a finite
    weight; all 1 without counts."""
    if class_counts is None:
        return torch.ones(int(labels.max()) + 1)
    counts = class_counts.float()
    return (counts.sum() + len(counts)) / (len(counts) * (counts + 1))
