"""Data set readers: COCO, VOC, Label Studio exports, folders; broken files get clear errors."""

import json

import pytest
import torch

from al_core.datasets import SHAPE_CLASSES, DatasetError, read_dataset
from al_core.datasets.coco import write_coco
from al_core.datasets.label_studio_format import box_to_percent


def test_coco_round_trip(shapes, tmp_path):
    samples = shapes["test"][:3]
    path = write_coco(samples, SHAPE_CLASSES, shapes["root"] / "three.json")
    data = read_dataset(path)
    assert data.class_names == SHAPE_CLASSES
    for original, read in zip(samples, data.images):
        assert read.path == original.path
        assert torch.allclose(read.boxes, original.boxes) and torch.equal(read.labels, original.labels)


def test_coco_errors(shapes, tmp_path):
    path = write_coco(shapes["test"][:1], SHAPE_CLASSES, shapes["root"] / "one.json")
    coco = json.loads(path.read_text())
    broken = shapes["root"] / "broken.json"
    for change, message in [
        (lambda c: c["annotations"][0].update(category_id=99), "unknown category_id 99"),
        (lambda c: c["annotations"][0].update(bbox=[100, 100, 60, 60]), "outside the 128x128 image"),
        (lambda c: c["images"][0].update(file_name="missing.png"), "does not exist"),
        (lambda c: c.pop("categories"), "not a valid COCO file"),
    ]:
        copy = json.loads(json.dumps(coco))
        change(copy)
        broken.write_text(json.dumps(copy))
        with pytest.raises(DatasetError, match=message):
            read_dataset(broken)
    broken.write_text("{nope")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_dataset(broken)


def test_voc_folder(shapes, tmp_path):
    sample = shapes["test"][0]
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "JPEGImages" / "a.png").write_bytes(open(sample.path, "rb").read())
    objects = "".join(
        f"<object><name>{SHAPE_CLASSES[c]}</name><bndbox><xmin>{b[0] + 1:g}</xmin><ymin>{b[1] + 1:g}</ymin>"
        f"<xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>"
        for b, c in zip(sample.boxes.tolist(), sample.labels.tolist())
    )
    xml = f"<annotation><filename>a.png</filename><size><width>128</width><height>128</height></size>{objects}</annotation>"
    (tmp_path / "Annotations" / "a.xml").write_text(xml)
    data = read_dataset(tmp_path)
    assert torch.allclose(data.images[0].boxes, sample.boxes)
    assert [data.class_names[i] for i in data.images[0].labels] == [SHAPE_CLASSES[i] for i in sample.labels]


def test_label_studio_export_takes_the_latest_valid_annotation(shapes, tmp_path):
    sample = shapes["test"][0]
    region = lambda box, label: {  # noqa: E731
        "type": "rectanglelabels",
        "original_width": 128,
        "original_height": 128,
        "value": {**box_to_percent(box, 128, 128), "rotation": 0, "rectanglelabels": [label]},
    }
    name = sample.path.split("/")[-1]
    tasks = [
        {
            "id": 1,
            "data": {"image": f"/data/local-files/?d=test/{name}"},
            "annotations": [
                {"id": 1, "updated_at": "2026-01-01", "result": [region([0, 0, 5, 5], "old")]},
                {"id": 2, "updated_at": "2026-02-01", "result": [region(sample.boxes[0].tolist(), "Circle")]},
                {"id": 3, "updated_at": "2026-03-01", "was_cancelled": True, "result": []},
            ],
        }
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    data = read_dataset(path, image_root=shapes["root"])
    assert data.class_names == ("Circle",)
    assert torch.allclose(data.images[0].boxes, sample.boxes[:1], atol=1e-4)
    tasks[0]["data"]["image"] = "https://example.com/x.png"
    path.write_text(json.dumps(tasks))
    with pytest.raises(DatasetError, match="download remote images first"):
        read_dataset(path, image_root=shapes["root"])


def test_folder_lists_images_sorted(shapes):
    data = read_dataset(shapes["root"] / "test")
    assert data.paths == sorted(s.path for s in shapes["test"]) and data.class_names == ()


def test_coco_file_names_from_elsewhere_are_found_by_name(shapes, tmp_path):
    """Label Studio's COCO export writes paths relative to a temporary folder of the server's."""
    samples = shapes["test"][:2]
    path = write_coco(samples, SHAPE_CLASSES, tmp_path / "result.json")
    coco = json.loads(path.read_text())
    for image in coco["images"]:
        image["file_name"] = "../tmpxyz/media/upload/1/" + image["file_name"].split("/")[-1]
    path.write_text(json.dumps(coco))
    data = read_dataset(path, image_root=shapes["root"] / "test")
    assert [image.path for image in data.images] == [s.path for s in samples]
    twin = shapes["root"] / "test" / "twin"
    twin.mkdir()
    (twin / samples[0].path.split("/")[-1]).write_bytes(open(samples[0].path, "rb").read())
    with pytest.raises(DatasetError, match="matches 2 files"):
        read_dataset(path, image_root=shapes["root"] / "test")
    (twin / samples[0].path.split("/")[-1]).unlink()
    twin.rmdir()


def test_label_studio_csv_export(shapes, tmp_path):
    import pandas as pd

    sample = shapes["test"][0]
    name = sample.path.split("/")[-1]
    values = [
        {**box_to_percent(box, 128, 128), "rotation": 0, "rectanglelabels": [SHAPE_CLASSES[label]]}
        | {"original_width": 128, "original_height": 128}
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist())
    ]
    rows = [
        {"annotation_id": 1, "boxes": json.dumps(values), "id": 7, "image": f"/data/local-files/?d=test/{name}"},
        {"annotation_id": "", "boxes": "", "id": 8, "image": f"/data/local-files/?d=test/{name}"},
    ]
    path = tmp_path / "export.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    data = read_dataset(path, image_root=shapes["root"])
    assert torch.allclose(data.images[0].boxes, sample.boxes, atol=1e-4)
    assert [data.class_names[i] for i in data.images[0].labels] == [SHAPE_CLASSES[i] for i in sample.labels]
    assert len(data.images[1].boxes) == 0
    values[0]["width"] = -3
    pd.DataFrame([{**rows[0], "boxes": json.dumps(values)}]).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="line 2: empty box"):
        read_dataset(path, image_root=shapes["root"])
    pd.DataFrame([{"picture": "x.png"}]).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="no 'image' column"):
        read_dataset(path, image_root=shapes["root"])
