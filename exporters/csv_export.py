"""Ranked scores as CSV (image, score, in decreasing order), for annotate.online and similar
tools; the other columns say how each score was made.

Text cells that a spreadsheet would read as a formula (starting with = + - @, a tab or a carriage
return) get a leading ' (OWASP's advice against CSV injection); numbers are left as they are."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

import pandas as pd

from al_core.selection import Selection

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula, made plain text; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def neutralised(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with its text columns neutralised; numeric columns untouched."""
    frame = frame.copy()
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].map(neutralise_cell)
    return frame


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    # CRLF rows (RFC 4180): the csv writer then quotes any cell holding a \r, which would end a row
    neutralised(frame).to_csv(path, index=False, lineterminator="\r\n")


def selection_frame(selection: Selection) -> pd.DataFrame:
    rows = [
        {
            "image": item.key,
            "score": item.score.normalized,
            "rank": item.rank,
            "value": item.score.value,
            "scorer": item.score.scorer,
            "aggregation": item.score.aggregation or "",
            "parts": json.dumps(item.score.parts, sort_keys=True),
            "model_version": selection.model_version,
            "rule": selection.rule,
        }
        for item in selection.images
    ]
    columns = ["image", "score", "rank", "value", "scorer", "aggregation", "parts", "model_version", "rule"]
    return pd.DataFrame(rows, columns=columns)


def write_selection_csv(selection: Selection, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(selection_frame(selection), path)
    return path


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
    _write_csv(frame, path)
    return path


def write_history(cycles: list[dict], folder: str | Path) -> tuple[Path, Path]:
    """The cycle history (cycle, version, labeled count, mAP, strategy) as CSV and JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(cycles, columns=["cycle", "version", "labeled", "map", "map50", "strategy"])
    _write_csv(frame, folder / "history.csv")  # the JSON keeps the raw text
    (folder / "history.json").write_text(frame.to_json(orient="records", indent=2))
    return folder / "history.csv", folder / "history.json"
