"""COCO bbox metrics through pycocotools."""

from __future__ import annotations

import copy

import pytest
import torch
from fedmq.edge_client.coco_metrics import STAT_NAMES, coco_bbox_metrics, predictions_to_detections

GROUND_TRUTH = {
    "images": [{"id": 4, "width": 300, "height": 300}, {"id": 9, "width": 300, "height": 300}],
    "annotations": [
        # id 0 on purpose: pycocotools would read a match with it as "no match".
        {"id": 0, "image_id": 4, "category_id": 1, "bbox": [10, 10, 100, 100]},
        {"id": 1, "image_id": 4, "category_id": 2, "bbox": [150, 150, 100, 100]},
        {"id": 2, "image_id": 9, "category_id": 1, "bbox": [50, 60, 100, 100]},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
}


def detections(shift: float = 0.0, category: int | None = None) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": category or a["category_id"],
         "bbox": [a["bbox"][0] + shift, *a["bbox"][1:]], "score": 0.9}
        for a in GROUND_TRUTH["annotations"]
    ]


def test_perfect_detections_score_one() -> None:
    metrics = coco_bbox_metrics(GROUND_TRUTH, detections())
    assert set(metrics) == set(STAT_NAMES)
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["map50"] == pytest.approx(1.0)
    assert metrics["map75"] == pytest.approx(1.0)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in metrics.values())


def test_shifted_boxes_lower_map_but_not_map50() -> None:
    # A 100-wide box moved 23 px: IoU = 77 / 123 = 0.626, a match at IoU .50, .55, .60 only.
    metrics = coco_bbox_metrics(GROUND_TRUTH, detections(shift=23))
    assert metrics["map50"] == pytest.approx(1.0)
    assert metrics["map75"] == pytest.approx(0.0)
    assert metrics["map"] == pytest.approx(0.3)


def test_no_detections_give_zeros() -> None:
    assert coco_bbox_metrics(GROUND_TRUTH, []) == dict.fromkeys(STAT_NAMES, 0.0)


def test_wrong_class_gives_zero() -> None:
    wrong = [{**d, "category_id": 3 - d["category_id"]} for d in detections()]
    metrics = coco_bbox_metrics(GROUND_TRUTH, wrong)
    assert metrics["map"] == 0.0 and metrics["map50"] == 0.0


def test_no_ground_truth_maps_minus_one_to_zero() -> None:
    empty = {**GROUND_TRUTH, "annotations": []}
    metrics = coco_bbox_metrics(empty, detections())
    assert metrics == dict.fromkeys(STAT_NAMES, 0.0)


def test_inputs_are_left_unchanged_and_nothing_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    truth, found = copy.deepcopy(GROUND_TRUTH), detections()
    before = copy.deepcopy(found)
    coco_bbox_metrics(truth, found)
    assert truth == GROUND_TRUTH and found == before
    assert capsys.readouterr().out == ""


def test_detections_for_unknown_images_are_refused() -> None:
    with pytest.raises(ValueError, match="77"):
        coco_bbox_metrics(GROUND_TRUTH, [{**detections()[0], "image_id": 77}])


def test_predictions_to_detections_round_trips_a_box() -> None:
    output = {
        "boxes": torch.tensor([[10.0, 10.0, 110.0, 110.0], [150.0, 150.0, 250.0, 250.0]]),
        "labels": torch.tensor([1, 2], dtype=torch.int64),
        "scores": torch.tensor([0.75, 0.5]),
    }
    found = predictions_to_detections(4, output)
    assert found[0] == {"image_id": 4, "category_id": 1, "bbox": [10.0, 10.0, 100.0, 100.0], "score": 0.75}
    assert found[1]["bbox"] == [150.0, 150.0, 100.0, 100.0] and found[1]["category_id"] == 2
    only_image_4 = {**GROUND_TRUTH, "images": GROUND_TRUTH["images"][:1],
                    "annotations": GROUND_TRUTH["annotations"][:2]}
    assert coco_bbox_metrics(only_image_4, found)["map"] == pytest.approx(1.0)


def test_predictions_to_detections_with_no_boxes() -> None:
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    assert predictions_to_detections(4, empty) == []
