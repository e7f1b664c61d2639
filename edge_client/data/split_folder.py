"""``fedmq data split-folder``: split one image-folder data set into silo folders."""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from .image_folder import SPLITS, class_dirs, is_image
from .partition import assign_silos

log = logging.getLogger(__name__)


def _collect(split_dir: Path) -> tuple[list[Path], list[str]]:
    files, labels = [], []
    for folder in class_dirs(split_dir):
        for f in sorted(folder.iterdir()):
            if is_image(f):
                files.append(f)
                labels.append(folder.name)
    return files, labels


def check_empty_out(out: Path) -> None:
    """Refuse to write silo folders over existing data: losing a user's files is never right."""
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} is not empty", hint="pass a new --out folder, or remove this one first")


def split_folder(src: Path, silos: int, out: Path, alpha: float | None = None, seed: int = 0,
                 test_fraction: float = 0.2, copy: bool = False) -> list[Path]:
    """Write ``out/0 … out/silos-1``, each with ``train/<class>/`` and ``test/<class>/``.

    ``src`` is either ``SRC/train/<class>/*`` with ``SRC/test/<class>/*`` (each split is divided
    among the silos) or plain ``SRC/<class>/*`` (each silo's share is cut into train and test by
    ``test_fraction``). Files are symlinked, or copied with ``copy=True``.
    """
    if silos < 1:
        raise ConfigError("--silos must be at least 1")
    if not src.is_dir():
        raise DataError(f"source folder {src} does not exist", hint="pass an image-folder data set as --src")
    check_empty_out(out)
    rng = np.random.default_rng(seed)
    has_splits = (src / "train").is_dir()
    sources = {split: _collect(src / split) for split in SPLITS} if has_splits else {"": _collect(src)}
    if not any(files for files, _ in sources.values()):
        raise DataError(f"no images found under {src}",
                        hint="expected SRC/train/<class>/*.png (and SRC/test/...) or SRC/<class>/*.png")
    counts: Counter[tuple[int, str]] = Counter()
    for split, (files, labels) in sources.items():
        names = sorted(set(labels))
        assignment = assign_silos([names.index(n) for n in labels], silos, alpha, rng)
        for f, label, silo in zip(files, labels, assignment):
            target_split = split or ("test" if rng.random() < test_fraction else "train")
            _place(f, out / str(silo) / target_split / label / f.name, copy)
            counts[(silo, target_split)] += 1
    for silo in range(silos):
        log.info("split-folder: silo %d: %d train, %d test images", silo, counts[(silo, "train")], counts[(silo, "test")])
        if counts[(silo, "train")] == 0:
            log.warning("silo %d received no training images; use more data, fewer silos or a larger --alpha", silo)
    return [out / str(s) for s in range(silos)]


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)
