"""COCO bounding-box metrics (mAP) with pycocotools, made safe to call from a training loop.

pycocotools prints, mutates the dicts it is given, crashes on an empty result list and treats a
ground-truth annotation id of 0 as "unmatched"; ``coco_bbox_metrics`` shields callers from all four.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

if TYPE_CHECKING:
    import torch

# The names of COCOeval.stats, in its order.
STAT_NAMES = (
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)


def coco_bbox_metrics(ground_truth: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float]:
    """Score ``detections`` against ``ground_truth`` with the standard COCO bbox evaluation.

    ``ground_truth`` is a COCO dict (``images``, ``annotations`` with xywh ``bbox``,
    ``categories``); ``detections`` are ``{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}``. Returns the twelve COCO summary numbers named in ``STAT_NAMES`` (``map`` is
    AP@[.50:.95], ``map50`` AP@.50, ...) as floats in [0, 1]. Where pycocotools reports -1 (no
    ground truth in that category or area range) the value is 0.0, and no detections at all give
    zeros. Neither argument is modified.
    """
    if not detections:
        return dict.fromkeys(STAT_NAMES, 0.0)
    _check_image_ids(ground_truth, detections)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = _coco(ground_truth)
        results = truth.loadRes([dict(detection) for detection in detections])
        evaluation = COCOeval(truth, results, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: max(float(value), 0.0) for name, value in zip(STAT_NAMES, evaluation.stats)}


def predictions_to_detections(image_id: int, output: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Turn one torchvision detection output (``boxes`` xyxy, 1-based ``labels``, ``scores``)
    into COCO detection dicts; the label is used as the category id."""
    boxes = output["boxes"].detach().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().tolist()
    return [
        {"image_id": int(image_id), "category_id": int(label),
         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
        for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores)
    ]


def _check_image_ids(ground_truth: dict[str, Any], detections: list[dict[str, Any]]) -> None:
    """pycocotools only asserts this; say which ids are wrong instead."""
    unknown = {d["image_id"] for d in detections} - {image["id"] for image in ground_truth["images"]}
    if unknown:
        raise ValueError(f"detections name images not in the ground truth: {sorted(unknown)[:10]}")


def _coco(ground_truth: dict[str, Any]) -> COCO:
    """A COCO index over copies of the ground truth's entries, since COCOeval writes into them.

    Annotation ids are renumbered from 1 (COCOeval takes a matched id of 0 for "no match") and
    ``area`` and ``iscrowd``, which COCOeval requires, default to the box area and 0.
    """
    annotations = []
    for new_id, ann in enumerate(ground_truth["annotations"], start=1):
        width, height = ann["bbox"][2], ann["bbox"][3]
        annotations.append({**ann, "id": new_id, "area": ann.get("area", width * height),
                            "iscrowd": int(ann.get("iscrowd", 0))})
    coco = COCO()
    coco.dataset = {
        "images": [dict(image) for image in ground_truth["images"]],
        "annotations": annotations,
        "categories": [dict(category) for category in ground_truth["categories"]],
    }
    coco.createIndex()
    return coco
