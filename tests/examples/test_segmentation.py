"""examples/segmentation: a U-Net on generated images with masks; Dice and IoU through a real federation."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_three_silos_learn_to_segment(tmp_path: Path, example) -> None:
    made = example.command("fedmq_segmentation.generate", "--out", str(tmp_path / "S"), "--silos", "3",
                                "--train", "64", "--test", "24")
    assert made.returncode == 0, made.stderr
    silos = [tmp_path / "S" / str(i) for i in range(3)]
    rounds = example.job("segmentation-example", silos,
                         ["--task", "segmentation", "--rounds", "3", "--local-epochs", "1"],
                         ["--task", "segmentation"])
    assert [r["status"] for r in rounds] == ["completed"] * 3
    assert all({"dice", "iou", "loss"} <= set(r["metrics"]) for r in rounds)
    first, last = rounds[0]["metrics"], rounds[-1]["metrics"]
    # Objects cover about an eighth of each image: marking every pixel scores a Dice of about 0.2.
    assert last["dice"] > 0.6 and last["iou"] > 0.45, last
    assert last["loss"] < first["loss"]
