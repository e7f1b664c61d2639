from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fedmq.edge_client.data.image_folder import ImageFolderSplit, folder_labels
from fedmq.edge_client.data.partition import assign_silos
from fedmq.edge_client.data.split_folder import split_folder
from fedmq.edge_client.data.synth_classification import synth_classification
from fedmq.errors import ConfigError, DataError
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image


def _image(path: Path, size: tuple[int, int] = (20, 10), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=128 if mode == "L" else (200, 10, 10)).save(path)


def test_any_image_becomes_the_models_input_and_labels_follow_the_job(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "cat" / "a.png", (50, 20), "L")
    _image(tmp_path / "train" / "dog" / "b.jpg", (8, 8))
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    assert folder_labels(tmp_path) == ["cat", "dog"]
    # The job knows a class this silo lacks ("ant"): indices follow the job's labels, not the folder.
    colour = ImageFolderSplit(tmp_path / "train", ["ant", "cat", "dog"], channels=3, size=32)
    grey = ImageFolderSplit(tmp_path / "train", ["ant", "cat", "dog"], channels=1, size=28)
    assert len(colour) == 2
    x, y = colour[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1 and y == 1
    assert grey[1][0].shape == (1, 28, 28) and grey[1][1] == 2


def test_unknown_class_and_broken_image_are_data_errors(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "cat" / "a.png")
    with pytest.raises(DataError, match="not one of the job's labels"):
        ImageFolderSplit(tmp_path / "train", ["dog", "emu"], channels=3, size=32)
    (tmp_path / "train" / "cat" / "bad.png").write_bytes(b"not a png")
    split = ImageFolderSplit(tmp_path / "train", ["cat"], channels=3, size=32)
    with pytest.raises(DataError, match="cannot read image"):
        [split[i] for i in range(len(split))]


def test_synthetic_data_is_deterministic_and_balanced(tmp_path: Path) -> None:
    synth_classification(tmp_path / "a", silos=2, seed=3, train_per_silo=8, test_per_silo=4)
    synth_classification(tmp_path / "b", silos=2, seed=3, train_per_silo=8, test_per_silo=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * 12
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert folder_labels(tmp_path / "a" / "0") == ["bars", "cross", "disc", "stripes"]
    counts = Counter(p.parent.name for p in (tmp_path / "a" / "1" / "train").rglob("*.png"))
    assert set(counts.values()) == {2}


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_split_folder_places_every_image_once(tmp_path: Path, alpha: float | None) -> None:
    src = tmp_path / "src"
    for label in ("a", "b", "c"):
        for i in range(10):
            _image(src / label / f"{label}{i}.png")
    out = tmp_path / "out"
    split_folder(src, silos=3, out=out, alpha=alpha, seed=1, test_fraction=0.3)
    placed = sorted(p.name for p in out.rglob("*.png"))
    assert placed == sorted(p.name for p in src.rglob("*.png"))
    assert all(p.is_symlink() for p in out.rglob("*.png"))
    assert {p.parent.parent.name for p in out.rglob("*.png")} <= {"train", "test"}


def test_split_folder_keeps_train_and_test_apart_and_can_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for split in ("train", "test"):
        for i in range(6):
            _image(src / split / "x" / f"{split}{i}.png")
    split_folder(src, silos=2, out=tmp_path / "out", copy=True)
    assert all(p.name.startswith(p.parent.parent.name) for p in (tmp_path / "out").rglob("*.png"))
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*.png"))
    with pytest.raises(ConfigError, match="not empty"):
        split_folder(src, silos=2, out=tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        split_folder(tmp_path / "missing", silos=2, out=tmp_path / "o2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        split_folder(tmp_path / "empty", silos=2, out=tmp_path / "o3")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=300), st.integers(1, 8),
       st.one_of(st.none(), st.floats(0.05, 10)), st.integers(0, 2**32 - 1))
def test_every_item_goes_to_exactly_one_silo(labels: list[int], silos: int, alpha: float | None, seed: int) -> None:
    assignment = assign_silos(labels, silos, alpha, np.random.default_rng(seed))
    assert len(assignment) == len(labels)
    assert all(0 <= s < silos for s in assignment)
    if alpha is None:
        counts = Counter(assignment)
        assert max(counts.values()) - min(counts.get(s, 0) for s in range(silos)) <= 1
