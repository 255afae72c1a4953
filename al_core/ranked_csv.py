"""Ranked scores as CSV (image, score, in decreasing order), for annotate.online and similar
tools; the other columns say how each score was made. The writer every CSV of the project uses.

Text cells that a spreadsheet would read as a formula (starting with = + - @, a tab or a carriage
return) get a leading ' (OWASP's advice against CSV injection); numbers are left as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .selection import Selection

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


def write_csv(frame: pd.DataFrame, path: Path) -> None:
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
    write_csv(selection_frame(selection), path)
    return path
