"""The Fashion-MNIST data set as numpy arrays, read from the IDX files the Debian package installs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fedmq.errors import DataError

from .idx import read_idx

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 (N, 28, 28), ``labels`` uint8 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        return Split(self.images[index], self.labels[index])


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder} holds no {stem}[.gz]",
                    hint="apt-get install dataset-fashion-mnist (it installs them in /usr/share/datasets/fashion-mnist), "
                         "or point at a folder with the four Fashion-MNIST IDX files")


def load_split(folder: Path, split: str) -> Split:
    """``split`` is ``train`` (60,000 images) or ``test`` (10,000)."""
    prefix = PREFIX[split]
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: the {split} images {images.shape} and labels {labels.shape} do not match",
                        hint="the files must be one data set's images-idx3 and labels-idx1 pair")
    if labels.max(initial=0) >= len(CLASSES):
        raise DataError(f"{folder}: {split} labels go up to {labels.max()}, Fashion-MNIST has {len(CLASSES)} classes")
    return Split(images, labels)
