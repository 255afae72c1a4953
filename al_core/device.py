"""Choosing where the model runs."""

from __future__ import annotations

import torch


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when there is one, else the CPU; anything else is taken as given."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    flush_denormals(device)
    return device


def flush_denormals(device: torch.device) -> None:
    """Denormal floats slowed CPU training down twofold as it went; flushing them is harmless.
    The flag lives in a CPU register of the calling thread, so every thread that runs the model
    (request batcher, training job) sets it for itself."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)
