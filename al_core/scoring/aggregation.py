"""Box scores -> one image score. Each aggregation maps per-box values in [0, 1] to an image
value and that value to [0, 1] (``normalized``), so images compare whatever their box count."""

from __future__ import annotations

import torch

AGGREGATIONS = ("max", "mean", "sum")


def aggregate(box_values: torch.Tensor, how: str) -> tuple[float, float]:
    """(value, normalized) of non-empty ``box_values`` under ``how``."""
    if how == "max":
        value = float(box_values.max())
        return value, value
    if how == "mean":
        value = float(box_values.mean())
        return value, value
    if how == "sum":
        # Favours crowded images; value / (1 + value) keeps the order and bounds it.
        value = float(box_values.sum())
        return value, value / (1.0 + value)
    raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
