"""Readers of labeled (and unlabeled) image sets into one in-memory form: ``Dataset``.

- a folder of images (no boxes): every image file under it, sorted;
- COCO JSON (``images``, ``annotations``, ``categories``; bbox = [x, y, width, height]);
- Pascal VOC: a folder with ``Annotations/*.xml`` (1-based pixel corners) and the images;
- a Label Studio JSON export (a list of tasks): RectangleLabels of each task's latest
  non-cancelled annotation, ground-truth annotations first;
- a Label Studio CSV export: one row per task, the image in column ``image`` and each
  RectangleLabels tag's regions as a JSON list in the tag's column.
Paths in COCO and Label Studio files are resolved against ``image_root`` (default: the file's
folder); Label Studio's ``/data/local-files/?d=x`` -> ``image_root/x``, ``/data/upload/p/f`` ->
``image_root/upload/p/f`` (``image_root`` = Label Studio's media folder). A COCO ``file_name``
that is not there (Label Studio's COCO export writes paths relative to a temporary folder) is
looked up by its file name under ``image_root``; it must be unique there.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import torch

from ..types import LabeledImage
from .label_studio_format import choose_annotation, regions_to_boxes  # the one place that converts

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DatasetError(ValueError):
    """A data set file that cannot be read as it is; the message says where and why."""


@dataclass
class Dataset:
    images: list[LabeledImage]
    class_names: tuple[str, ...]

    @property
    def paths(self) -> list[str]:
        return [image.path for image in self.images]


def _labeled(path: Path, boxes: list[list[float]], labels: list[int]) -> LabeledImage:
    return LabeledImage(
        str(path),
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.int64),
    )


def _check_box(box: list[float], width: float, height: float, where: str) -> None:
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise DatasetError(f"{where}: empty box {box}")
    if width and height and (x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1):
        raise DatasetError(f"{where}: box {box} lies outside the {width:g}x{height:g} image")


def _existing(path: Path, where: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{where}: image file {path} does not exist")
    return path


def _by_file_name(root: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in root.rglob("*"):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(path.name, []).append(path)
    return index


def read_folder(folder: Path) -> Dataset:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return Dataset([_labeled(p, [], []) for p in paths], ())


def read_coco(path: Path, image_root: Path | None = None) -> Dataset:
    root = image_root or path.parent
    try:
        data = json.loads(path.read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        index = {c["id"]: i for i, c in enumerate(categories)}
        per_image = {img["id"]: ([], []) for img in data["images"]}
        sizes = {img["id"]: (img.get("width", 0), img.get("height", 0)) for img in data["images"]}
        for ann in data["annotations"]:
            where = f"{path.name}: annotation {ann.get('id')}"
            if ann["category_id"] not in index:
                raise DatasetError(f"{where}: unknown category_id {ann['category_id']}")
            if ann["image_id"] not in per_image:
                raise DatasetError(f"{where}: unknown image_id {ann['image_id']}")
            x, y, w, h = ann["bbox"]
            _check_box([x, y, x + w, y + h], *sizes[ann["image_id"]], where)
            per_image[ann["image_id"]][0].append([x, y, x + w, y + h])
            per_image[ann["image_id"]][1].append(index[ann["category_id"]])
        index: dict[str, list[Path]] | None = None  # built only when a file_name is not where it says

        def image_path(file_name: str) -> Path:
            nonlocal index
            if (root / file_name).is_file():
                return root / file_name
            index = _by_file_name(root) if index is None else index
            found = index.get(Path(file_name).name, [])
            if len(found) > 1:
                raise DatasetError(f"{path.name}: {file_name} matches {len(found)} files under {root}")
            return _existing(found[0] if found else root / file_name, path.name)

        images = [_labeled(image_path(img["file_name"]), *per_image[img["id"]]) for img in data["images"]]
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{path} is not a valid COCO file: {type(error).__name__} {error}") from None
    return Dataset(images, tuple(c["name"] for c in categories))


def read_voc(folder: Path) -> Dataset:
    files = sorted((folder / "Annotations").glob("*.xml"))
    records, names = [], set()
    for file in files:
        try:
            root = ET.parse(file).getroot()
            size = root.find("size")
            width, height = (float(size.findtext(k)) for k in ("width", "height")) if size is not None else (0, 0)
            objects = []
            for obj in root.iter("object"):
                bb = obj.find("bndbox")
                box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                box = [box[0] - 1, box[1] - 1, box[2], box[3]]  # VOC corners are 1-based, inclusive
                _check_box(box, width, height, file.name)
                objects.append((obj.findtext("name").strip(), box))
                names.add(objects[-1][0])
            filename = root.findtext("filename")
        except (ET.ParseError, AttributeError, TypeError, ValueError) as error:
            if isinstance(error, DatasetError):
                raise
            raise DatasetError(f"{file} is not a valid VOC annotation: {error}") from None
        candidates = [folder / "JPEGImages" / filename, folder / filename]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise DatasetError(f"{file.name}: image file {filename} not found under {folder}")
        records.append((image, objects))
    class_names = tuple(sorted(names))
    return Dataset(
        [_labeled(image, [b for _, b in objs], [class_names.index(n) for n, _ in objs]) for image, objs in records],
        class_names,
    )


def label_studio_image_path(url: str, root: Path) -> Path:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        raise DatasetError(f"{url}: download remote images first; this reader reads local files")
    if parts.path.startswith("/data/local-files"):
        return root / parse_qs(parts.query).get("d", [""])[0]
    if parts.path.startswith("/data/"):
        return root / parts.path[len("/data/") :]
    return root / url


def read_label_studio(path: Path, image_root: Path | None = None, image_key: str | None = None) -> Dataset:

    root = image_root or path.parent
    try:
        tasks = json.loads(path.read_text())
        if not isinstance(tasks, list):
            raise DatasetError(f"{path}: a Label Studio JSON export is a list of tasks")
        rows, names = [], set()
        for task in tasks:
            data = task["data"]
            key = image_key or next(k for k, v in data.items() if isinstance(v, str))
            where = f"{path.name}: task {task.get('id')}"
            image = _existing(label_studio_image_path(data[key], root), where)
            annotation = choose_annotation(task.get("annotations", []))
            objects = regions_to_boxes(annotation["result"]) if annotation else []
            if objects:
                region = next(r for r in annotation["result"] if r.get("type") == "rectanglelabels")
                for label, box in objects:
                    _check_box(list(box), region["original_width"], region["original_height"], where)
                    names.add(label)
            rows.append((image, objects))
    except (KeyError, TypeError, ValueError, StopIteration) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{path} is not a valid Label Studio export: {type(error).__name__} {error}") from None
    class_names = tuple(sorted(names))
    return Dataset(
        [_labeled(image, [list(b) for _, b in objs], [class_names.index(n) for n, _ in objs]) for image, objs in rows],
        class_names,
    )


def read_label_studio_csv(path: Path, image_root: Path | None = None, image_key: str = "image") -> Dataset:
    import pandas as pd

    root = image_root or path.parent
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise DatasetError(f"{path} is not a readable CSV file: {error}") from None
    if image_key not in table.columns:
        raise DatasetError(f"{path.name}: no '{image_key}' column (columns: {', '.join(table.columns)})")
    rows, names = [], set()
    for number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        where = f"{path.name}: line {number}"
        objects = []
        for column, cell in row.items():
            if column == image_key or not cell.startswith("[{"):
                continue
            try:
                values = json.loads(cell)
            except json.JSONDecodeError:
                continue  # a text column that happens to look like JSON
            for value in values:
                if not isinstance(value, dict) or "rectanglelabels" not in value:
                    continue
                region = {"type": "rectanglelabels", "value": value}
                try:
                    region.update(original_width=value["original_width"], original_height=value["original_height"])
                    found = regions_to_boxes([region])
                except (KeyError, TypeError, ValueError) as error:
                    raise DatasetError(f"{where}: column {column} holds a region that is not a box: {error}") from None
                for label, box in found:
                    _check_box(list(box), value["original_width"], value["original_height"], where)
                    names.add(label)
                    objects.append((label, box))
        rows.append((_existing(label_studio_image_path(row[image_key], root), where), objects))
    class_names = tuple(sorted(names))
    return Dataset(
        [_labeled(image, [list(b) for _, b in objs], [class_names.index(n) for n, _ in objs]) for image, objs in rows],
        class_names,
    )


def read_dataset(source: str | Path, image_root: str | Path | None = None) -> Dataset:
    """Any of the supported forms, told apart by what ``source`` is."""
    source = Path(source)
    root = Path(image_root) if image_root else None
    if source.is_dir():
        return read_voc(source) if (source / "Annotations").is_dir() else read_folder(source)
    if not source.is_file():
        raise DatasetError(f"{source} does not exist")
    if source.suffix.lower() == ".csv":
        return read_label_studio_csv(source, root)
    if source.suffix.lower() != ".json":
        raise DatasetError(
            f"{source}: give a folder, a COCO or Label Studio .json file, a Label Studio .csv export, or a VOC folder"
        )
    try:
        head = json.loads(source.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{source} is not valid JSON: {error}") from None
    return read_label_studio(source, root) if isinstance(head, list) else read_coco(source, root)
