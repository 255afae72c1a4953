"""Ranked scores as CSV (image, score, in decreasing order), for annotate.online and similar
tools; the other columns say how each score was made."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from al_core.selection import Selection


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
    selection_frame(selection).to_csv(path, index=False)
    return path
