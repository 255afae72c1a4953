"""Model versions on disk: one directory per version, written atomically.

    <root>/<name>/model.pt            weights, classes, architecture (Detector.save)
    <root>/<name>/train_config.json   the configuration it was trained with
    <root>/<name>/label_map.json      class names, index = label
    <root>/<name>/labeled.json        ids of the human-labeled items it was trained on
    <root>/<name>/pseudo_labeled.json ids of the items it trained on with its own labels (CEAL), kept apart
    <root>/<name>/metrics.json        evaluation and training figures
    <root>/<name>/checksums.json      SHA-256 of model.pt, checked whenever the version is read
    <root>/<name>/tensorboard/        the training run's TensorBoard log, when one was written

Everything is written into a hidden temporary directory that is renamed into place at the end,
so a crash leaves either no version or a complete one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from .detectors import Detector
from .types import ModelVersion

FILES = (
    "model.pt",
    "train_config.json",
    "label_map.json",
    "labeled.json",
    "pseudo_labeled.json",
    "metrics.json",
    "checksums.json",
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def delete_version(path: str | Path) -> None:
    """Remove a version's directory: renamed aside first, so a crash mid-way never leaves a
    half-deleted directory under the version's name."""
    path = Path(path)
    if not path.exists():
        return
    doomed = path.with_name(f".{path.name}.{uuid.uuid4().hex}.deleted")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def write_version(
    root: str | Path,
    name: str,
    detector: Detector,
    train_config: dict,
    labeled_ids,
    metrics: dict,
    pseudo_ids=(),
    logs: str | Path | None = None,
) -> ModelVersion:
    root = Path(root)
    final = root / name
    if final.exists():
        raise FileExistsError(f"model version {name} already exists at {final}")
    tmp = root / f".{name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir(parents=True)
    try:
        detector.save(tmp / "model.pt", name)
        documents = {
            "train_config.json": train_config,
            "label_map.json": list(detector.class_names),
            "labeled.json": sorted(int(i) for i in labeled_ids),
            "pseudo_labeled.json": sorted(int(i) for i in pseudo_ids),
            "metrics.json": metrics,
            "checksums.json": {"model.pt": _sha256(tmp / "model.pt")},
        }
        for file, content in documents.items():
            (tmp / file).write_text(json.dumps(content, indent=2))
        if logs is not None and Path(logs).is_dir():
            shutil.copytree(logs, tmp / "tensorboard")
        # On disk before the rename publishes it: a power cut never leaves a complete-looking
        # version with empty files behind.
        for file in FILES:
            _fsync(tmp / file)
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    detector.version = dataclasses.replace(detector.version, checkpoint=str(final / "model.pt"))
    return read_version(final)


def read_version(path: str | Path) -> ModelVersion:
    """The saved version at ``path``, checked: every file there and the weights' checksum."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ValueError(f"{path} is not a complete model version: missing {missing}")
    load = lambda file: json.loads((path / file).read_text())  # noqa: E731
    # A flipped bit in the weights still unpickles; only the checksum tells.
    if _sha256(path / "model.pt") != load("checksums.json")["model.pt"]:
        raise ValueError(f"{path / 'model.pt'} is corrupted: its SHA-256 is not the one written with it")
    return ModelVersion(
        path.name,
        _architecture(path / "model.pt"),
        tuple(load("label_map.json")),
        str(path / "model.pt"),
        trained=True,
        labeled_ids=tuple(load("labeled.json")),
        pseudo_ids=tuple(load("pseudo_labeled.json")),
        metrics=load("metrics.json"),
        train_config=load("train_config.json"),
    )


def _architecture(checkpoint: Path) -> str:
    """The detector architecture a checkpoint holds, read without its weights (memory-mapped)."""
    try:
        return str(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["detector"])
    except Exception as error:  # torch raises many kinds for a broken file
        raise ValueError(f"cannot read checkpoint {checkpoint}: {error}") from error
