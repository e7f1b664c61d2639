"""COCO-format silo folders: synthetic data, the dataset, and splitting one COCO file into silos."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fedmq.edge_client.coco_metrics import coco_bbox_metrics, predictions_to_detections
from fedmq.edge_client.data.coco import (
    CocoDetectionDataset,
    collate_detection,
    detection_labels,
    is_detection_folder,
    split_coco,
    synth_detection,
)
from fedmq.errors import ConfigError, DataError
from PIL import Image
from pycocotools.coco import COCO

SHAPE_COLOUR_CHANNEL = {"circle": 0, "square": 1, "triangle": 2}  # red, green, blue


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def write_split(split_dir: Path, images: list[dict], annotations: list[dict], categories: list[dict],
                colour: tuple[int, int, int] = (255, 0, 0)) -> None:
    """A hand-made split: one solid-colour PNG per image entry."""
    (split_dir / "images").mkdir(parents=True)
    for image in images:
        Image.new("RGB", (image["width"], image["height"]), colour).save(split_dir / image["file_name"])
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (split_dir / "annotations.json").write_text(json.dumps(doc))


CATS = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]


@pytest.fixture
def small_split(tmp_path: Path) -> Path:
    split = tmp_path / "train"
    images = [
        {"id": 11, "file_name": "images/a.png", "width": 100, "height": 50},
        {"id": 12, "file_name": "images/b.png", "width": 40, "height": 40},  # no annotations
    ]
    annotations = [
        {"id": 1, "image_id": 11, "category_id": 7, "bbox": [10, 20, 30, 25], "area": 700.0, "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0, 0, 50, 10], "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [5, 5, 20, 20], "iscrowd": 1},  # crowd
        {"id": 4, "image_id": 11, "category_id": 7, "bbox": [5, 5, 0, 20], "iscrowd": 0},  # zero width
    ]
    write_split(split, images, annotations, CATS)
    return split


# --------------------------------------------------------------------------- synth_detection


def test_synth_detection_writes_valid_coco_silos(tmp_path: Path) -> None:
    folders = synth_detection(tmp_path, silos=2, images_per_silo=8, image_size=64, seed=3)

    assert folders == [tmp_path / "0", tmp_path / "1"]
    for folder in folders:
        assert is_detection_folder(folder)
        assert detection_labels(folder) == ["circle", "square", "triangle"]
        counts = {}
        for split in ("train", "test"):
            coco = load_coco(folder / split / "annotations.json")
            assert sorted(c["id"] for c in coco.dataset["categories"]) == [1, 2, 3]
            counts[split] = len(coco.getImgIds())
            for image_id in coco.getImgIds():
                info = coco.imgs[image_id]
                with Image.open(folder / split / info["file_name"]) as picture:
                    assert picture.size == (64, 64) == (info["width"], info["height"])
                anns = coco.imgToAnns[image_id]
                assert 1 <= len(anns) <= 3
                for ann in anns:
                    x, y, w, h = ann["bbox"]
                    assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
        assert counts == {"train": 6, "test": 2}


def test_synth_shapes_have_their_category_colour(tmp_path: Path) -> None:
    (folder,) = synth_detection(tmp_path, silos=1, images_per_silo=10, image_size=64)
    doc = read(folder / "train" / "annotations.json")
    name = {c["id"]: c["name"] for c in doc["categories"]}
    files = {image["id"]: image["file_name"] for image in doc["images"]}
    seen = set()
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        pixels = np.asarray(Image.open(folder / "train" / files[ann["image_id"]]))
        centre = pixels[int(y + h / 2), int(x + w / 2)].astype(int)
        shape = name[ann["category_id"]]
        assert centre.argmax() == SHAPE_COLOUR_CHANNEL[shape], (shape, centre)
        seen.add(shape)
    assert seen == {"circle", "square", "triangle"}


def test_synth_detection_is_deterministic_and_silos_differ(tmp_path: Path) -> None:
    one = synth_detection(tmp_path / "a", silos=2, images_per_silo=4, image_size=48, seed=5)
    two = synth_detection(tmp_path / "b", silos=2, images_per_silo=4, image_size=48, seed=5)
    other = synth_detection(tmp_path / "c", silos=1, images_per_silo=4, image_size=48, seed=6)

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert files(one[0]) == files(two[0]) and files(one[1]) == files(two[1])
    pixels = [sorted(files(f / "train" / "images").values()) for f in (one[0], one[1], other[0])]
    assert not set(pixels[0]) & set(pixels[1])
    assert not set(pixels[0]) & set(pixels[2])
    ids = [{i["id"] for s in ("train", "test") for i in read(f / s / "annotations.json")["images"]} for f in one]
    assert not ids[0] & ids[1]


def test_synth_detection_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        synth_detection(tmp_path / "x", silos=0)
    with pytest.raises(ConfigError):
        synth_detection(tmp_path / "x", silos=1, test_fraction=1.0)
    synth_detection(tmp_path / "y", silos=1, images_per_silo=2, image_size=32)
    with pytest.raises(ConfigError, match="already holds"):
        synth_detection(tmp_path / "y", silos=1, images_per_silo=2, image_size=32)


# --------------------------------------------------------------------------- CocoDetectionDataset


def test_dataset_gives_xyxy_boxes_and_one_based_labels(small_split: Path) -> None:
    dataset = CocoDetectionDataset(small_split, ["cat", "dog"])
    assert len(dataset) == 2

    image, target = dataset[0]
    assert image.shape == (3, 50, 100) and image.dtype == torch.float32
    assert torch.allclose(image[0], torch.ones(50, 100)) and image[1:].abs().max() == 0  # pure red
    # Crowd and zero-width annotations are not training targets.
    assert target["boxes"].tolist() == [[10, 20, 40, 45], [0, 0, 50, 10]]
    assert target["labels"].tolist() == [2, 1]  # dog = labels[1], cat = labels[0]
    assert target["labels"].dtype == torch.int64 and target["image_id"] == 11


def test_dataset_image_without_annotations(small_split: Path) -> None:
    _, target = CocoDetectionDataset(small_split, ["cat", "dog"])[1]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["image_id"] == 12


def test_dataset_image_size_scales_image_boxes_and_ground_truth(small_split: Path) -> None:
    dataset = CocoDetectionDataset(small_split, ["cat", "dog"], image_size=50)
    image, target = dataset[0]
    assert image.shape == (3, 25, 50)
    assert target["boxes"].tolist() == [[5, 10, 20, 22.5], [0, 0, 25, 5]]

    truth = dataset.coco_ground_truth()
    assert truth["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [(i["id"], i["width"], i["height"]) for i in truth["images"]] == [(11, 50, 25), (12, 50, 50)]
    by_id = {a["id"]: a for a in truth["annotations"]}
    assert set(by_id) == {1, 2, 3}  # the degenerate box is gone, the crowd region stays
    assert by_id[1]["bbox"] == [5, 10, 15, 12.5] and by_id[1]["category_id"] == 2
    assert by_id[1]["area"] == pytest.approx(700 / 4)
    assert by_id[3]["iscrowd"] == 1


def test_ground_truth_scores_its_own_targets_perfectly(tmp_path: Path) -> None:
    (folder,) = synth_detection(tmp_path, silos=1, images_per_silo=8, image_size=64)
    dataset = CocoDetectionDataset(folder / "test", detection_labels(folder), image_size=96)
    images, targets = collate_detection([dataset[i] for i in range(len(dataset))])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(dataset)

    detections = [
        d for t in targets
        for d in predictions_to_detections(t["image_id"], {**t, "scores": torch.ones(len(t["labels"]))})
    ]
    metrics = coco_bbox_metrics(dataset.coco_ground_truth(), detections)
    assert metrics["map"] == pytest.approx(1.0)


def test_dataset_missing_image_is_a_data_error(small_split: Path) -> None:
    (small_split / "images" / "b.png").unlink()
    with pytest.raises(DataError, match="b.png"):
        CocoDetectionDataset(small_split, ["cat", "dog"])


def test_dataset_unknown_category_is_a_data_error(small_split: Path) -> None:
    with pytest.raises(DataError, match="'dog'"):
        CocoDetectionDataset(small_split, ["cat", "horse"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json {", "not valid JSON"),
        (json.dumps({"images": []}), "not a COCO instances file"),
        (json.dumps({"images": [{"id": 1, "file_name": "images/a.png", "width": 4, "height": 4}],
                     "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
                     "categories": [{"id": 1, "name": "a"}]}), "unknown image 2"),
        (json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 1, "caption": "a dog"}],
                     "categories": []}), "needs 'bbox'"),
    ],
)
def test_dataset_bad_annotation_file_is_a_data_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "annotations.json").write_text(content)
    with pytest.raises(DataError, match=message):
        CocoDetectionDataset(tmp_path / "train", ["a"])


def test_dataset_missing_annotation_file_is_a_data_error(tmp_path: Path) -> None:
    assert not is_detection_folder(tmp_path)
    with pytest.raises(DataError, match="annotations.json"):
        CocoDetectionDataset(tmp_path / "train", ["a"])


# --------------------------------------------------------------------------- split_coco

N_IMAGES = 240
SOURCE_CATS = [{"id": c, "name": n, "supercategory": "thing"}
               for c, n in [(3, "cat"), (5, "dog"), (8, "bird"), (13, "cow"), (21, "fish")]]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A COCO instances file of N_IMAGES tiny images with the fields real COCO has."""
    root = tmp_path_factory.mktemp("coco")
    image_dir = root / "train2017"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for n in range(N_IMAGES):
        image_id = 1000 + 7 * n
        name = f"{image_id:012d}.png"
        Image.new("RGB", (8, 6), (n % 256, 0, 0)).save(image_dir / name)
        images.append({"id": image_id, "file_name": name, "width": 8, "height": 6, "license": 1,
                       "coco_url": f"http://x/{name}", "date_captured": "2013"})
        # Every fourth image has no annotations; the rest mostly one category, so alpha matters.
        main = SOURCE_CATS[n % len(SOURCE_CATS)]["id"]
        for k in range(0 if n % 4 == 0 else int(rng.integers(1, 4))):
            category = main if k == 0 else int(rng.choice([c["id"] for c in SOURCE_CATS]))
            annotations.append({
                "id": 50_000 + len(annotations), "image_id": image_id, "category_id": category,
                "bbox": [1.0, 1.0, 4.0 - k, 3.0], "area": 10.0, "iscrowd": int(k == 2),
                "segmentation": [[1, 1, 5, 1, 5, 4]],
            })
    doc = {"info": {"year": 2017}, "licenses": [{"id": 1, "name": "cc"}],
           "images": images, "annotations": annotations, "categories": SOURCE_CATS}
    annotation_file = root / "instances_train2017.json"
    annotation_file.write_text(json.dumps(doc))
    return annotation_file, image_dir


def silo_docs(folders: list[Path]) -> list[dict[str, dict]]:
    return [{split: read(folder / split / "annotations.json") for split in ("train", "test")} for folder in folders]


def check_partition(folders: list[Path], annotation_file: Path) -> None:
    """Every image in exactly one place, annotations kept whole, all categories everywhere."""
    original = read(annotation_file)
    original_anns = {a["id"]: a for a in original["annotations"]}
    seen_images: list[int] = []
    seen_anns: list[int] = []
    for silo in silo_docs(folders):
        for split, doc in silo.items():
            assert doc["images"], f"empty {split} split"
            assert doc["categories"] == SOURCE_CATS
            assert doc["info"] == original["info"] and doc["licenses"] == original["licenses"]
            ids = {image["id"] for image in doc["images"]}
            seen_images += ids
            for image in doc["images"]:
                assert image["file_name"].startswith("images/")
                assert set(image) == {"id", "file_name", "width", "height", "license"}
            for ann in doc["annotations"]:
                assert ann["image_id"] in ids
                assert "segmentation" not in ann
                source_ann = dict(original_anns[ann["id"]])
                del source_ann["segmentation"]
                assert ann == source_ann
                seen_anns.append(ann["id"])
    assert sorted(seen_images) == sorted(image["id"] for image in original["images"])
    assert sorted(seen_anns) == sorted(original_anns)  # unique, and none lost


def dominant_share(folders: list[Path]) -> float:
    """Mean over silos of the largest share one first-annotation category has among its images."""
    shares = []
    for silo in silo_docs(folders):
        firsts = {}
        for doc in silo.values():
            for ann in doc["annotations"]:
                firsts.setdefault(ann["image_id"], ann["category_id"])
        counts = Counter(firsts.values())
        if not counts:  # a silo may hold only images without annotations
            continue
        shares.append(max(counts.values()) / sum(counts.values()))
    return float(np.mean(shares))


def test_split_coco_iid(source: tuple[Path, Path], tmp_path: Path) -> None:
    annotation_file, image_dir = source
    folders = split_coco(annotation_file, image_dir, silos=3, out=tmp_path / "silos")

    assert folders == [tmp_path / "silos" / str(i) for i in range(3)]
    check_partition(folders, annotation_file)
    for silo in silo_docs(folders):
        assert len(silo["train"]["images"]) + len(silo["test"]["images"]) == N_IMAGES // 3
        assert len(silo["test"]["images"]) == round(N_IMAGES // 3 * 0.2)
    # Symlinks to the source, loadable by pycocotools and by the dataset.
    link = folders[0] / "train" / read(folders[0] / "train" / "annotations.json")["images"][0]["file_name"]
    assert link.is_symlink() and link.resolve().parent == image_dir.resolve()
    load_coco(folders[0] / "test" / "annotations.json")
    assert detection_labels(folders[1]) == sorted(c["name"] for c in SOURCE_CATS)
    dataset = CocoDetectionDataset(folders[1] / "train", detection_labels(folders[1]))
    assert dataset[0][0].shape == (3, 6, 8)


def test_split_coco_dirichlet_is_skewed_and_still_a_partition(source: tuple[Path, Path], tmp_path: Path) -> None:
    annotation_file, image_dir = source
    iid = split_coco(annotation_file, image_dir, silos=4, out=tmp_path / "iid", seed=1)
    skewed = split_coco(annotation_file, image_dir, silos=4, out=tmp_path / "skewed", alpha=0.1, seed=1)

    check_partition(skewed, annotation_file)
    assert dominant_share(skewed) > dominant_share(iid) + 0.2


def test_split_coco_is_deterministic_for_a_seed(source: tuple[Path, Path], tmp_path: Path) -> None:
    annotation_file, image_dir = source

    def layout(out: Path, seed: int) -> list[list[int]]:
        folders = split_coco(annotation_file, image_dir, silos=2, out=out, alpha=0.5, seed=seed)
        return [[i["id"] for i in doc["images"]] for silo in silo_docs(folders) for doc in silo.values()]

    assert layout(tmp_path / "a", 4) == layout(tmp_path / "b", 4)
    assert layout(tmp_path / "a2", 4) != layout(tmp_path / "c", 5)


def test_split_coco_copy_mode_copies_files(source: tuple[Path, Path], tmp_path: Path) -> None:
    annotation_file, image_dir = source
    (folder,) = split_coco(annotation_file, image_dir, silos=1, out=tmp_path / "out", test_fraction=0.0,
                           mode="copy")
    doc = read(folder / "train" / "annotations.json")
    assert len(doc["images"]) == N_IMAGES and read(folder / "test" / "annotations.json")["images"] == []
    for image in doc["images"][:20]:
        copied = folder / "train" / image["file_name"]
        assert copied.is_file() and not copied.is_symlink()
        assert copied.read_bytes() == (image_dir / Path(image["file_name"]).name).read_bytes()


def test_split_coco_missing_image_fails_before_writing(source: tuple[Path, Path], tmp_path: Path) -> None:
    annotation_file, image_dir = source
    doc = read(annotation_file)
    doc["images"][5]["file_name"] = "gone.png"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="gone.png"):
        split_coco(broken, image_dir, silos=2, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_split_coco_bad_input(source: tuple[Path, Path], tmp_path: Path) -> None:
    annotation_file, image_dir = source
    out = tmp_path / "out"
    not_json = tmp_path / "bad.json"
    not_json.write_text("<html>")
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]}))
    unknown_category = tmp_path / "unknown_category.json"
    doc = read(annotation_file)
    doc["annotations"][0]["category_id"] = 99
    unknown_category.write_text(json.dumps(doc))

    with pytest.raises(DataError, match="not valid JSON"):
        split_coco(not_json, image_dir, silos=2, out=out)
    with pytest.raises(DataError, match="not a COCO instances file"):
        split_coco(captions, image_dir, silos=2, out=out)
    with pytest.raises(DataError, match="unknown category 99"):
        split_coco(unknown_category, image_dir, silos=2, out=out)
    with pytest.raises(DataError, match="not found"):
        split_coco(tmp_path / "nope.json", image_dir, silos=2, out=out)
    with pytest.raises(DataError, match="image folder"):
        split_coco(annotation_file, tmp_path / "no-images", silos=2, out=out)
    for bad in ({"silos": 0}, {"silos": 2, "mode": "hardlink"}, {"silos": 2, "alpha": 0.0},
                {"silos": 2, "test_fraction": 1.0}, {"silos": N_IMAGES}):
        with pytest.raises(ConfigError):
            split_coco(annotation_file, image_dir, out=out, **bad)

    split_coco(annotation_file, image_dir, silos=2, out=out)
    with pytest.raises(ConfigError, match="already holds silo folders"):
        split_coco(annotation_file, image_dir, silos=2, out=out)
