"""Image-folder classification data: ``DIR/train/<class>/*.png|jpg`` and ``DIR/test/<class>/*``.

Any image-folder data set works with any classification model: images are converted to the
model's channels (grey or colour) and resized to its input size as they are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ...errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLITS = ("train", "test")


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def is_image_folder(path: Path) -> bool:
    train = path / "train"
    return train.is_dir() and any(child.is_dir() for child in train.iterdir())


def class_dirs(split_dir: Path) -> list[Path]:
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")) if split_dir.is_dir() else []


def folder_labels(path: Path) -> list[str]:
    """The class names of a silo folder: the union of its train and test class folders that hold images."""
    names = {d.name for split in SPLITS for d in class_dirs(path / split) if any(is_image(f) for f in d.iterdir())}
    return sorted(names)


class ImageFolderSplit(Dataset):
    """One split of a silo's image folder. Labels index into the job's ``labels``, not the folder's
    own class list, so silos that lack some classes still agree on what output 3 means.

    Decoded images are kept (at the model's small input size) after their first read, so later
    epochs do not decode again.
    """

    def __init__(self, split_dir: Path, labels: Sequence[str], channels: int, size: int) -> None:
        index = {name: i for i, name in enumerate(labels)}
        self.samples: list[tuple[Path, int]] = []
        for folder in class_dirs(split_dir):
            files = sorted(f for f in folder.iterdir() if is_image(f))
            if files and folder.name not in index:
                raise DataError(f"class folder {folder} is not one of the job's labels",
                                hint=f"the job's labels are: {', '.join(labels[:20])}")
            self.samples.extend((f, index[folder.name]) for f in files)
        self.mode = "L" if channels == 1 else "RGB"
        self.size = size
        self._cache: list[torch.Tensor | None] = [None] * len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self._cache[i]
        if image is None:
            image = self._cache[i] = self._read(self.samples[i][0])
        return image.float().div_(127.5).sub_(1.0), self.samples[i][1]

    def _read(self, path: Path) -> torch.Tensor:
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode).resize((self.size, self.size), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {path}: {exc}", hint="remove or replace the file") from None
        tensor = torch.from_numpy(array.copy())
        return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
