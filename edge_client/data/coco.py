"""COCO-format silo folders for federated object detection.

A detection silo folder looks like::

    silo/
      train/annotations.json    COCO instances file; each ``file_name`` is relative to train/
      train/images/...
      test/annotations.json
      test/images/...

``CocoDetectionDataset`` reads one split, ``split_coco`` cuts one big COCO file into silo folders
and ``synth_detection`` writes a small, learnable synthetic data set for demos and tests.

Only boxes are used. Every annotation file is read through ``_slim``, which drops segmentation
masks and the image fields fedmq never looks at as the parser builds each entry; that is what
keeps the 450 MB ``instances_train2017.json`` affordable in memory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fedmq.errors import ConfigError, DataError
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

log = logging.getLogger(__name__)

ANNOTATIONS = "annotations.json"
IMAGES = "images"
SPLITS = ("train", "test")

# The fields kept from each entry; everything else (segmentation, coco_url, ...) is dropped on read.
_IMAGE_KEYS = ("id", "file_name", "width", "height", "license")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")

_REGENERATE = "fix the file, or regenerate the silo with `fedmq split-coco`"


# --------------------------------------------------------------------------- reading and checking


def is_detection_folder(path: Path) -> bool:
    """True when ``path`` looks like a detection silo folder (it has ``train/annotations.json``)."""
    return (Path(path) / "train" / ANNOTATIONS).is_file()


def detection_labels(path: Path) -> list[str]:
    """The sorted, unique category names listed in the silo's train and (if present) test files.

    Names come from the ``categories`` lists, not from the annotations: ``split_coco`` keeps the
    whole list in every silo, so every silo of one split reports the same label space.
    """
    path = Path(path)
    names: set[str] = set()
    for split in SPLITS:
        file = path / split / ANNOTATIONS
        if split == "test" and not file.exists():
            continue
        names.update(category["name"] for category in _read_instances(file)["categories"])
    return sorted(names)


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """``json`` object hook: keep only the fields fedmq uses of image and annotation entries.

    The parser calls it on each object as soon as it is built, so an annotation's segmentation
    polygons are freed at once rather than after the whole file has been parsed.
    """
    if "bbox" in obj and "image_id" in obj:
        return {key: obj[key] for key in _ANNOTATION_KEYS if key in obj}
    if "file_name" in obj and "id" in obj:
        return {key: obj[key] for key in _IMAGE_KEYS if key in obj}
    return obj


def _read_instances(path: Path) -> dict[str, Any]:
    """Read and check a COCO instances file, slimmed by ``_slim``."""
    if not path.is_file():
        raise DataError(f"annotation file {path} not found", hint=_REGENERATE)
    try:
        with path.open(encoding="utf-8") as f:
            doc = json.load(f, object_hook=_slim)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}", hint=_REGENERATE) from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e
    _check_instances(doc, path)
    return doc


def _check_instances(doc: object, path: Path) -> None:
    """Raise ``DataError`` unless ``doc`` is a consistent COCO instances document."""
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{path} is not a COCO instances file: it needs 'images', 'annotations' and "
            "'categories' lists",
            hint="pass an instances_*.json file (object detection), not captions or panoptic",
        )
    category_ids = _check_categories(doc["categories"], path)
    image_ids = _check_images(doc["images"], path)
    _check_annotations(doc["annotations"], image_ids, category_ids, path)


def _bad_entry(path: Path, kind: str, index: int, problem: str) -> DataError:
    return DataError(f"{path}: {kind} entry {index} {problem}", hint=_REGENERATE)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_categories(categories: list[Any], path: Path) -> set[int]:
    ids: set[int] = set()
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise _bad_entry(path, "category", index, "has no integer 'id'")
        if not isinstance(category.get("name"), str) or not category["name"]:
            raise _bad_entry(path, "category", index, "has no 'name'")
        if category["id"] in ids:
            raise _bad_entry(path, "category", index, f"repeats id {category['id']}")
        ids.add(category["id"])
    return ids


def _check_images(images: list[Any], path: Path) -> set[int]:
    ids: set[int] = set()
    names: set[str] = set()
    for index, image in enumerate(images):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise _bad_entry(path, "image", index, "has no integer 'id'")
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            raise _bad_entry(path, "image", index, "has no 'file_name'")
        # Names are joined onto the split folder: keep them inside it.
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise _bad_entry(path, "image", index, f"has file_name {name!r} outside its folder")
        if not all(_is_int(image.get(key)) and image[key] > 0 for key in ("width", "height")):
            raise _bad_entry(path, "image", index, "needs positive integer 'width' and 'height'")
        if image["id"] in ids:
            raise _bad_entry(path, "image", index, f"repeats image id {image['id']}")
        if name in names:
            raise _bad_entry(path, "image", index, f"repeats file_name {name!r}")
        ids.add(image["id"])
        names.add(name)
    return ids


def _check_annotations(
    annotations: list[Any], image_ids: set[int], category_ids: set[int], path: Path
) -> None:
    ids: set[int] = set()
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise _bad_entry(path, "annotation", index, "has no integer 'id'")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            raise _bad_entry(path, "annotation", index, "needs 'bbox' = [x, y, width, height]")
        if ann.get("image_id") not in image_ids:
            raise _bad_entry(path, "annotation", index, f"names unknown image {ann.get('image_id')!r}")
        if ann.get("category_id") not in category_ids:
            raise _bad_entry(
                path, "annotation", index, f"names unknown category {ann.get('category_id')!r}"
            )
        if ann["id"] in ids:
            raise _bad_entry(path, "annotation", index, f"repeats annotation id {ann['id']}")
        ids.add(ann["id"])


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class _ImageRecord:
    """One image of a split and its usable boxes, in the file's pixel frame."""

    image_id: int
    file_name: str
    width: int
    height: int
    ann_ids: np.ndarray  # int64 [N]
    boxes: np.ndarray  # float64 [N, 4], COCO xywh
    areas: np.ndarray  # float64 [N], the file's 'area' (segment area for real COCO)
    labels: np.ndarray  # int64 [N], 1-based index into the dataset's labels
    crowd: np.ndarray  # bool [N]; crowd regions are kept for evaluation only


class CocoDetectionDataset(Dataset):
    """One split (``train/`` or ``test/``) of a detection silo folder, torchvision style.

    Item ``i`` is ``(image, target)``: ``image`` a float tensor [3, H, W] in [0, 1]; ``target`` a
    dict with ``boxes`` (float [N, 4], xyxy pixels), ``labels`` (int64 [N], 1 + the index of the
    category name in ``labels``; 0 is background) and ``image_id`` (the COCO image id).
    Crowd annotations and boxes with zero or negative width or height are left out of targets.
    A category used by an annotation whose name is not in ``labels`` is a ``DataError``; unused
    entries of the file's ``categories`` list are ignored. Image files are checked on construction.

    With ``image_size`` each image is scaled so its longer side is ``image_size`` pixels (aspect
    kept); boxes and ``coco_ground_truth()`` are scaled alike, so predictions on the items can be
    scored against it directly.
    """

    def __init__(self, split_dir: Path, labels: Sequence[str], image_size: int | None = None) -> None:
        self.split_dir = Path(split_dir)
        self.labels = tuple(labels)
        self.image_size = image_size
        _check_labels(self.labels)
        if image_size is not None and image_size < 1:
            raise ConfigError(f"image_size must be a positive number of pixels, not {image_size}")
        annotation_file = self.split_dir / ANNOTATIONS
        doc = _read_instances(annotation_file)
        label_of = _label_ids(doc, self.labels, annotation_file)
        self._records = _image_records(doc, label_of)
        self._check_image_files(annotation_file)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self._records[index]
        image = self._load_image(record)
        sx, sy = self._scale(record)
        usable = ~record.crowd
        boxes = _xywh_to_xyxy(record.boxes[usable]) * np.array([sx, sy, sx, sy])
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(record.labels[usable], dtype=torch.int64),
            "image_id": record.image_id,
        }
        return image, target

    def coco_ground_truth(self) -> dict[str, Any]:
        """This split as a COCO dict for ``coco_bbox_metrics`` / ``pycocotools.coco.COCO``.

        Category ids are 1..len(labels) in ``labels`` order (the same numbers as the targets'
        labels); image and annotation ids are the file's. Boxes, areas and image sizes are in the
        items' frame (scaled when ``image_size`` is set). Crowd regions are included with
        ``iscrowd=1`` so that COCO evaluation ignores detections on them, as the official one does.
        """
        images, annotations = [], []
        for record in self._records:
            width, height = _scaled_size(record.width, record.height, self.image_size)
            sx, sy = width / record.width, height / record.height
            images.append({"id": record.image_id, "file_name": record.file_name,
                           "width": width, "height": height})
            for ann_id, (x, y, w, h), area, label, crowd in zip(
                record.ann_ids, record.boxes, record.areas, record.labels, record.crowd
            ):
                annotations.append({
                    "id": int(ann_id), "image_id": record.image_id, "category_id": int(label),
                    "bbox": [x * sx, y * sy, w * sx, h * sy], "area": float(area) * sx * sy,
                    "iscrowd": int(crowd),
                })
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(self.labels)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def _scale(self, record: _ImageRecord) -> tuple[float, float]:
        width, height = _scaled_size(record.width, record.height, self.image_size)
        return width / record.width, height / record.height

    def _check_image_files(self, annotation_file: Path) -> None:
        """Fail at construction, not mid-training, when an image is missing."""
        for record in self._records:
            if not (self.split_dir / record.file_name).is_file():
                raise DataError(
                    f"image {self.split_dir / record.file_name} listed in {annotation_file} "
                    "is missing",
                    hint="put the image back, or regenerate the silo with `fedmq split-coco`",
                )

    def _load_image(self, record: _ImageRecord) -> torch.Tensor:
        path = self.split_dir / record.file_name
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except FileNotFoundError as e:
            raise DataError(f"image {path} is missing", hint=_REGENERATE) from e
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}", hint="replace the file") from e
        if image.size != (record.width, record.height):
            raise DataError(
                f"image {path} is {image.size[0]}x{image.size[1]} but its annotation file says "
                f"{record.width}x{record.height}",
                hint=_REGENERATE,
            )
        if self.image_size is not None:
            size = _scaled_size(record.width, record.height, self.image_size)
            image = image.resize(size, Image.Resampling.BILINEAR)
        return pil_to_tensor(image).float().div_(255)


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """DataLoader ``collate_fn``: detection images differ in size and box count, so no stacking."""
    return [image for image, _ in batch], [target for _, target in batch]


def _check_labels(labels: tuple[str, ...]) -> None:
    if not labels:
        raise ConfigError("a detection job needs at least one label")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"detection labels repeat a name: {list(labels)}")


def _label_ids(doc: dict[str, Any], labels: tuple[str, ...], path: Path) -> dict[int, int]:
    """Map each category id used by an annotation to its 1-based label."""
    index = {name: i + 1 for i, name in enumerate(labels)}
    name_of = {category["id"]: category["name"] for category in doc["categories"]}
    label_of = {}
    for category_id in sorted({ann["category_id"] for ann in doc["annotations"]}):
        name = name_of[category_id]
        if name not in index:
            shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
            raise DataError(
                f"{path} has category {name!r}, which is not one of the job's "
                f"{len(labels)} labels ({shown})",
                hint="give every silo the same label set, or relabel this silo's data",
            )
        label_of[category_id] = index[name]
    return label_of


def _image_records(doc: dict[str, Any], label_of: dict[int, int]) -> list[_ImageRecord]:
    """Group usable annotations (positive width and height) by image, in the file's image order."""
    by_image: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in doc["images"]}
    for ann in doc["annotations"]:
        if ann["bbox"][2] > 0 and ann["bbox"][3] > 0:
            by_image[ann["image_id"]].append(ann)
    records = []
    for image in doc["images"]:
        anns = by_image[image["id"]]
        boxes = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
        records.append(_ImageRecord(
            image_id=image["id"],
            file_name=image["file_name"],
            width=image["width"],
            height=image["height"],
            ann_ids=np.array([ann["id"] for ann in anns], dtype=np.int64),
            boxes=boxes,
            areas=np.array([ann.get("area", w * h) for ann, (_, _, w, h) in zip(anns, boxes)],
                           dtype=np.float64),
            labels=np.array([label_of[ann["category_id"]] for ann in anns], dtype=np.int64),
            crowd=np.array([bool(ann.get("iscrowd", 0)) for ann in anns], dtype=bool),
        ))
    return records


def _scaled_size(width: int, height: int, image_size: int | None) -> tuple[int, int]:
    """The size an image is served at: unchanged, or longer side = ``image_size``."""
    if image_size is None:
        return width, height
    scale = image_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


# --------------------------------------------------------------------------- writing silo folders


def _check_out_free(out: Path) -> None:
    """Refuse to write silos over earlier ones: mixed old and new files would be silently wrong."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder", hint="give a folder for the silos")
    if not out.is_dir():
        return
    taken = sorted(p.name for p in out.iterdir() if p.name.isdigit() and p.is_dir() and any(p.iterdir()))
    if taken:
        raise ConfigError(
            f"{out} already holds silo folders with data ({', '.join(taken[:5])})",
            hint="choose an empty output folder, or delete the old silos first",
        )


def _test_count(n_images: int, test_fraction: float) -> int:
    """How many of a silo's images go to test: at least one when asked for, never all."""
    if test_fraction <= 0:
        return 0
    return min(max(round(n_images * test_fraction), 1), n_images - 1)


def _write_annotations(split_dir: Path, doc: dict[str, Any]) -> None:
    """Write the split's annotation file. Callers write it last, after the images, so a split cut
    short never looks complete to ``is_detection_folder``."""
    split_dir.mkdir(parents=True, exist_ok=True)
    # One-shot dumps uses the C encoder; json.dump streaming is several times slower.
    (split_dir / ANNOTATIONS).write_text(json.dumps(doc), encoding="utf-8")


# --------------------------------------------------------------------------- synthetic data

_SHAPES = ("circle", "square", "triangle")
_COLOURS = {"circle": (220, 50, 50), "square": (50, 190, 70), "triangle": (60, 90, 230)}
_MAX_OBJECTS = 3


def synth_detection(
    out: Path,
    silos: int,
    images_per_silo: int = 24,
    image_size: int = 128,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> list[Path]:
    """Write a small learnable detection data set as silo folders ``out/0 .. out/silos-1``.

    Each image shows 1-3 non-overlapping solid shapes on a noisy grey background; the category is
    the shape (circle, square, triangle: ids 1, 2, 3) and each has its own colour, so a small
    detector learns it in a few rounds. Image and annotation ids are unique across silos. The same
    ``seed`` gives byte-identical files; each silo draws from its own stream, so silos differ.
    """
    out = Path(out)
    if silos < 1 or images_per_silo < 2:
        raise ConfigError("synth_detection needs silos >= 1 and images_per_silo >= 2")
    if image_size < 32:
        raise ConfigError(f"image_size must be at least 32 pixels, not {image_size}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, not {test_fraction}")
    _check_out_free(out)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(_SHAPES)]
    n_test = _test_count(images_per_silo, test_fraction)
    folders = []
    for silo in range(silos):
        rng = np.random.default_rng([seed, silo])
        first_id = silo * images_per_silo + 1
        ids = list(range(first_id, first_id + images_per_silo))
        folder = out / str(silo)
        for split, split_ids in (("train", ids[n_test:]), ("test", ids[:n_test])):
            _write_synth_split(folder / split, split_ids, image_size, categories, rng)
        folders.append(folder)
    log.info("synth-detection: wrote %d silos of %d images to %s", silos, images_per_silo, out)
    return folders


def _write_synth_split(
    split_dir: Path, image_ids: list[int], size: int, categories: list[dict[str, Any]],
    rng: np.random.Generator,
) -> None:
    (split_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    category_id = {category["name"]: category["id"] for category in categories}
    images, annotations = [], []
    for image_id in image_ids:
        picture, objects = _synth_image(rng, size)
        file_name = f"{IMAGES}/{image_id:06d}.png"
        picture.save(split_dir / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for k, (shape, box) in enumerate(objects):
            annotations.append({
                "id": image_id * (_MAX_OBJECTS + 1) + k,  # unique across images and silos
                "image_id": image_id, "category_id": category_id[shape], "bbox": list(box),
                "area": box[2] * box[3], "iscrowd": 0,
            })
    _write_annotations(split_dir, {"images": images, "annotations": annotations, "categories": categories})


def _synth_image(
    rng: np.random.Generator, size: int
) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    """One picture and its objects as (shape, (x, y, w, h))."""
    grey = rng.integers(90, 166, size=3)
    noise = rng.integers(-20, 21, size=(size, size, 3))
    picture = Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    for _ in range(rng.integers(1, _MAX_OBJECTS + 1)):
        box = _free_box(rng, size, [box for _, box in objects])
        if box is None:
            continue
        shape = _SHAPES[rng.integers(len(_SHAPES))]
        colour = tuple(int(c) for c in np.clip(np.array(_COLOURS[shape]) + rng.integers(-20, 21, 3), 0, 255))
        _draw_shape(draw, shape, box, colour)
        objects.append((shape, box))
    return picture, objects


def _free_box(
    rng: np.random.Generator, size: int, taken: list[tuple[int, int, int, int]], tries: int = 30
) -> tuple[int, int, int, int] | None:
    """A random square box that keeps a small gap to the ``taken`` ones, or None if none fits."""
    low, high = size // 8, size * 3 // 8
    for _ in range(tries):
        side = int(rng.integers(low, high + 1))
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if all(_apart((x, y, side, side), other, gap=2) for other in taken):
            return x, y, side, side
    return None


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return (a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0]
            or a[1] + a[3] + gap <= b[1] or b[1] + b[3] + gap <= a[1])


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int],
                colour: tuple[int, ...]) -> None:
    """Fill ``shape`` so that it touches all four sides of ``box`` (PIL corners are inclusive)."""
    x, y, w, h = box
    right, bottom = x + w - 1, y + h - 1
    if shape == "square":
        draw.rectangle([x, y, right, bottom], fill=colour)
    elif shape == "circle":
        draw.ellipse([x, y, right, bottom], fill=colour)
    else:
        draw.polygon([(x, bottom), (right, bottom), ((x + right) / 2, y)], fill=colour)


# --------------------------------------------------------------------------- splitting real COCO

_MODES = ("symlink", "copy")
_DIRICHLET_TRIES = 100


def split_coco(
    annotations: Path,
    images: Path,
    silos: int,
    out: Path,
    test_fraction: float = 0.2,
    alpha: float | None = None,
    seed: int = 0,
    mode: str = "symlink",
) -> list[Path]:
    """Split one COCO instances file into silo folders ``out/0 .. out/silos-1``.

    Every image, with or without annotations, lands in exactly one silo and then in its train or
    test split (``test_fraction`` of the silo's images, at least one when > 0). The split is IID;
    with ``alpha`` it is Dirichlet non-IID over each image's dominant category (largest total box
    area; images without annotations are dealt IID). Small ``alpha`` means skewed silos; draws
    that leave a silo too small for a train and a test image are redrawn.

    Each silo file keeps the whole ``categories`` list (so all silos share one label space) and
    the original image and annotation ids. Segmentation masks are dropped (bbox evaluation does
    not need them, and they are most of the file), as are the image URL and date fields; the
    annotations' ``area`` is kept so COCO's small/medium/large ranges still match the official
    evaluation. Images are symlinked (absolute links, ``mode="symlink"``) or copied
    (``mode="copy"``) into each split's ``images/``. All image files are checked before anything
    is written. Peak memory is the file text plus the slimmed entries, about 4 bytes per byte of
    file on a COCO-like test file (plain ``json.load``: 7.5), so roughly 2 GB for
    instances_train2017.json; the entries are shared, never copied, between silo documents.
    """
    annotations, images, out = Path(annotations), Path(images), Path(out)
    _check_split_args(silos, test_fraction, alpha, mode)
    if not images.is_dir():
        raise DataError(f"image folder {images} not found",
                        hint="pass the folder holding the images the annotation file names, e.g. train2017/")
    _check_out_free(out)
    log.info("split-coco: reading %s (%.0f MB)", annotations, _size_mb(annotations))
    doc = _read_instances(annotations)
    log.info("split-coco: read %d images, %d annotations, %d categories",
             len(doc["images"]), len(doc["annotations"]), len(doc["categories"]))
    _check_source_images(doc["images"], images)
    groups = _annotations_by_image(doc)
    rng = np.random.default_rng(seed)
    silo_of = _assign_silos(groups, silos, alpha, 2 if test_fraction > 0 else 1, rng)
    header = {key: doc[key] for key in ("info", "licenses") if key in doc}
    folders = []
    for silo in range(silos):
        folder = out / str(silo)
        members = rng.permutation(np.flatnonzero(silo_of == silo))
        n_test = _test_count(len(members), test_fraction)
        for split, indices in (("train", members[n_test:]), ("test", members[:n_test])):
            # Sorted: each split lists its images in the source file's order.
            _write_coco_split(folder / split, sorted(indices.tolist()), doc, groups, header, images, mode)
        log.info("split-coco: wrote silo %d: %d train and %d test images",
                 silo, len(members) - n_test, n_test)
        folders.append(folder)
    return folders


def _check_split_args(silos: int, test_fraction: float, alpha: float | None, mode: str) -> None:
    if silos < 1:
        raise ConfigError(f"silos must be at least 1, not {silos}")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be in [0, 1), not {test_fraction}")
    if alpha is not None and not alpha > 0:
        raise ConfigError(f"alpha must be positive, not {alpha}",
                          hint="leave alpha out for an IID split; small values such as 0.3 skew silos")
    if mode not in _MODES:
        raise ConfigError(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.is_file() else 0.0


def _check_source_images(entries: list[dict[str, Any]], folder: Path) -> None:
    """Every listed image must exist before any silo is written; name the first that does not."""
    root = str(folder)
    for image in entries:
        if not os.path.isfile(os.path.join(root, image["file_name"])):
            raise DataError(
                f"image {image['file_name']} (id {image['id']}) is listed in the annotation file "
                f"but not found in {folder}",
                hint="pass the image folder that matches the annotation file, "
                "e.g. train2017/ for instances_train2017.json",
            )
    log.info("split-coco: all %d image files present", len(entries))


def _annotations_by_image(doc: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The annotations of each image, by position in ``doc['images']`` (shared, not copied)."""
    position = {image["id"]: i for i, image in enumerate(doc["images"])}
    groups: list[list[dict[str, Any]]] = [[] for _ in doc["images"]]
    for ann in doc["annotations"]:
        groups[position[ann["image_id"]]].append(ann)
    return groups


def _assign_silos(
    groups: list[list[dict[str, Any]]], silos: int, alpha: float | None, min_images: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The silo of each image, by position; every silo gets at least ``min_images``."""
    n_images = len(groups)
    if n_images < silos * min_images:
        raise ConfigError(f"{n_images} images are too few for {silos} silos",
                          hint=f"each silo needs at least {min_images}; use fewer silos")
    silo_of = np.full(n_images, -1, dtype=np.int64)
    if alpha is None:
        _deal_iid(np.arange(n_images), silos, rng, silo_of)
        return silo_of
    dominant = np.array([_dominant_category(anns) for anns in groups], dtype=np.int64)
    for _ in range(_DIRICHLET_TRIES):
        _deal_dirichlet(dominant, silos, alpha, rng, silo_of)
        if np.bincount(silo_of, minlength=silos).min() >= min_images:
            return silo_of
    raise ConfigError(
        f"alpha={alpha} left a silo with fewer than {min_images} images in {_DIRICHLET_TRIES} draws",
        hint="raise alpha, use fewer silos, or leave alpha out for an IID split",
    )


def _dominant_category(anns: list[dict[str, Any]]) -> int:
    """The category with the largest total box area in one image; -1 when it has none.
    Ties go to the smaller category id, so the result does not depend on annotation order."""
    area: dict[int, float] = {}
    for ann in anns:
        area[ann["category_id"]] = area.get(ann["category_id"], 0.0) + ann["bbox"][2] * ann["bbox"][3]
    if not area:
        return -1
    return min(area, key=lambda category: (-area[category], category))


def _deal_iid(indices: np.ndarray, silos: int, rng: np.random.Generator, silo_of: np.ndarray) -> None:
    """Shuffle ``indices`` and cut them into ``silos`` parts whose sizes differ by at most one."""
    for silo, part in enumerate(np.array_split(rng.permutation(indices), silos)):
        silo_of[part] = silo


def _deal_dirichlet(
    dominant: np.ndarray, silos: int, alpha: float, rng: np.random.Generator, silo_of: np.ndarray
) -> None:
    """Per dominant category, share its images among silos in Dirichlet(alpha) proportions."""
    for category in np.unique(dominant[dominant >= 0]):
        members = rng.permutation(np.flatnonzero(dominant == category))
        cuts = (np.cumsum(rng.dirichlet(np.full(silos, alpha)))[:-1] * len(members)).astype(int)
        for silo, part in enumerate(np.split(members, cuts)):
            silo_of[part] = silo
    _deal_iid(np.flatnonzero(dominant < 0), silos, rng, silo_of)


def _write_coco_split(
    split_dir: Path, indices: list[int], doc: dict[str, Any], groups: list[list[dict[str, Any]]],
    header: dict[str, Any], source: Path, mode: str,
) -> None:
    image_dir = split_dir / IMAGES
    image_dir.mkdir(parents=True, exist_ok=True)
    source = source.resolve()  # symlinks must not depend on the working directory
    entries, annotations = [], []
    for i in indices:
        image = doc["images"][i]
        _place_image(source / image["file_name"], image_dir / image["file_name"], mode)
        entries.append({**image, "file_name": f"{IMAGES}/{image['file_name']}"})
        annotations.extend(groups[i])
    _write_annotations(split_dir, {**header, "images": entries, "annotations": annotations,
                                   "categories": doc["categories"]})


def _place_image(source: Path, target: Path, mode: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)  # file names may hold sub-folders
    if mode == "copy":
        shutil.copyfile(source, target)
    else:
        os.symlink(source, target)
