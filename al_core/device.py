"""Choosing where the model runs."""

from __future__ import annotations

import torch


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when there is one, else the CPU; anything else is taken as given."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cpu":
        # Denormal floats slowed CPU training down twofold as it went; flushing them is harmless.
        torch.set_flush_denormal(True)
    return device
