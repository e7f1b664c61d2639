"""A silo's images and masks: ``train.npz`` and ``test.npz``, each with ``images`` (N, H, W) uint8
and ``masks`` (N, H, W) uint8 of 0 and 1, read with numpy (no pickle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fedmq.errors import DataError


@dataclass(frozen=True)
class Pairs:
    images: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def save_pairs(path: Path, pairs: Pairs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=pairs.images, masks=pairs.masks)


def load_pairs(path: Path) -> Pairs:
    if not path.is_file():
        raise DataError(f"no file {path}", hint="make the silos' folders with `segmentation-silos --out DIR`")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, masks = archive["images"], archive["masks"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint="expected an .npz with arrays 'images' and 'masks'") from None
    if images.shape != masks.shape or images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{path}: images {images.shape} {images.dtype} and masks {masks.shape} do not pair up",
                        hint="images and masks must both be (N, H, W); images uint8")
    if not np.isin(masks, (0, 1)).all():
        raise DataError(f"{path}: masks must hold only 0 and 1")
    return Pairs(images, masks)
