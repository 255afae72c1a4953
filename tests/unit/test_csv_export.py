"""CSV exports opened in spreadsheets: text cells that would run as formulas get a leading '
(OWASP, CSV injection); numbers, negative ones included, stay numbers."""

import json

import pandas as pd
import pytest

from al_core.ranked_csv import neutralise_cell, write_selection_csv
from al_core.selection import SelectedImage, Selection
from al_core.types import ImageScore
from exporters.csv_export import file_name, write_cycle_csv, write_history

HOSTILE = ['=HYPERLINK("http://x")', "-1+2", "@SUM(1)", "+1", "\tx", "\rx"]


def _read(path):
    return pd.read_csv(path, keep_default_na=False)


@pytest.mark.parametrize("text", HOSTILE)
def test_formula_text_gets_a_leading_quote(text):
    assert neutralise_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["img.png", "http://x/a=b.png", "", "'=already", -1.5, -3, None])
def test_other_cells_are_left_alone(value):
    assert neutralise_cell(value) == value


def test_cycle_csv(tmp_path):
    rows = [{"image": text, "score": 0.5 - i, "task_id": i} for i, text in enumerate(HOSTILE)]
    rows.append({"image": "plain.png", "score": -7.25, "task_id": -3})
    path = write_cycle_csv(rows, tmp_path / "cycle.csv")
    assert path.read_text().splitlines()[0] == "file_name,score,task_id,image"
    frame = _read(path)
    assert set(frame["image"]) == {"'" + text for text in HOSTILE} | {"plain.png"}
    assert frame["score"].tolist() == sorted([0.5 - i for i in range(len(HOSTILE))] + [-7.25], reverse=True)
    assert frame.loc[frame["image"] == "plain.png", "task_id"].item() == -3
    assert pd.api.types.is_float_dtype(frame["score"]) and pd.api.types.is_integer_dtype(frame["task_id"])


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("http://ls:8080/data/upload/1/ab12-cat%20one.jpg?x=1#f", "ab12-cat one.jpg"),
        ("/data/local-files/?d=images/dog%201.png", "dog 1.png"),
        ("/data/upload/3/dog.png", "dog.png"),
        ("s3://bucket/a/b/c.jpeg", "c.jpeg"),
        ("plain.png", "plain.png"),
        ("C:\\x\\y.png", "y.png"),
    ],
)
def test_cycle_csv_names_each_item_by_its_file_name(image, name):
    assert file_name(image) == name


def test_selection_csv(tmp_path):
    score = ImageScore(-0.5, 0.25, "=cmd", aggregation="@mean", parts={"entropy": -0.5})
    selection = Selection((SelectedImage("-1+2", 1, score),), "entropy", "+rule", "@v1", seed=0)
    frame = _read(write_selection_csv(selection, tmp_path / "selection.csv"))
    row = frame.iloc[0]
    assert (row["image"], row["scorer"], row["aggregation"], row["rule"], row["model_version"]) == (
        "'-1+2",
        "'=cmd",
        "'@mean",
        "'+rule",
        "'@v1",
    )
    assert (row["score"], row["value"], row["rank"]) == (0.25, -0.5, 1)
    assert json.loads(row["parts"]) == {"entropy": -0.5}


def test_history_csv_is_neutralised_and_its_json_keeps_the_text(tmp_path):
    cycles = [{"cycle": 1, "version": "=v1", "labeled": 4, "map": -0.0, "map50": 0.5, "strategy": "-entropy"}]
    csv_path, json_path = write_history(cycles, tmp_path)
    row = _read(csv_path).iloc[0]
    assert (row["version"], row["strategy"], row["labeled"], row["map50"]) == ("'=v1", "'-entropy", 4, 0.5)
    assert json.loads(json_path.read_text())[0]["version"] == "=v1"
