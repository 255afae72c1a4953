"""Choosing where the model runs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


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


def in_passing_thread(work: Callable[[], T]) -> T:
    """``work()`` on a new thread that ends with it: its result, or what it raised.

    For torch work of a serving process done outside the thread that runs the model (loading a
    checkpoint, a training job). On CPU, libgomp gives every thread that enters an OpenMP
    region its own team of worker threads, kept until that thread exits; once the teams
    outnumber the cores, every team gives up spin-waiting between regions and the model's
    forward, a long run of small regions, slows down (to 0.71 on two cores: bench/omp_teams.py).
    A thread that ends takes its team with it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-passing") as pool:
        return pool.submit(work).result()  # leaving the block joins the thread
