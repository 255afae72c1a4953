"""The service's CSV exports: one cycle's list for annotate.online and similar tools, and the
cycle history. Cells go through al_core.ranked_csv's writer (formula cells neutralised)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

import pandas as pd

from al_core.ranked_csv import write_csv

CYCLE_COLUMNS = ["file_name", "score", "task_id", "image"]


def file_name(image: str) -> str:
    """The name an import matches items on: the last path segment of the image's URL or path,
    percent-decoded, without query or fragment; for Label Studio's local files
    (``/data/local-files/?d=dir/name.jpg``), that of the ``d`` parameter."""
    parts = urlsplit(image) if "://" in image or image.startswith("/data/") else None
    path = image if parts is None else (parse_qs(parts.query).get("d") or [parts.path])[0]
    return PurePosixPath(unquote(path).replace("\\", "/")).name


def write_cycle_csv(rows: list[dict], path: str | Path) -> Path:
    """One cycle's list for annotate.online and similar tools, in decreasing score (ties by task
    id): ``file_name`` (what their import matches items on), ``score`` (the strategy's, in
    [0, 1]), ``task_id`` (Label Studio's), ``image`` (the task's full image reference).
    ``rows`` hold "image", "score" and "task_id"."""
    frame = pd.DataFrame(rows, columns=["image", "score", "task_id"])
    frame["file_name"] = frame["image"].map(lambda image: file_name(str(image)))
    frame = frame[CYCLE_COLUMNS].sort_values(["score", "task_id"], ascending=[False, True], kind="stable")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, path)
    return path


def write_history(cycles: list[dict], folder: str | Path) -> tuple[Path, Path]:
    """The cycle history (cycle, version, labeled count, mAP, strategy) as CSV and JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(cycles, columns=["cycle", "version", "labeled", "map", "map50", "strategy"])
    write_csv(frame, folder / "history.csv")  # the JSON keeps the raw text
    (folder / "history.json").write_text(frame.to_json(orient="records", indent=2))
    return folder / "history.csv", folder / "history.json"
