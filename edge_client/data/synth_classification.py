"""A small, learnable synthetic image-folder data set for the demo and the tests.

Each class is a pattern (stripes, a disc, a cross, a checkerboard...) in its own hue, drawn at a
random place and phase with noise, so a small CNN learns it in a few rounds but not in one step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

CLASS_NAMES = ("stripes", "bars", "disc", "cross", "checker", "ring", "diagonal", "corner")
_HUES = np.array([[220, 60, 60], [60, 200, 60], [60, 90, 230], [230, 200, 40],
                  [200, 60, 200], [40, 200, 210], [240, 140, 40], [150, 150, 150]], dtype=np.float32)


def _pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    phase = rng.uniform(0, 2 * np.pi)
    r = np.hypot(y - cy, x - cx)
    shapes = [
        np.sin(y * 0.8 + phase) > 0,
        np.sin(x * 0.8 + phase) > 0,
        r < size * 0.25,
        (np.abs(y - cy) < size * 0.08) | (np.abs(x - cx) < size * 0.08),
        ((x // (size // 4)) + (y // (size // 4))) % 2 == 0,
        np.abs(r - size * 0.25) < size * 0.06,
        np.sin((x + y) * 0.6 + phase) > 0,
        (x < cx) & (y < cy),
    ]
    return shapes[label % len(shapes)].astype(np.float32)


def make_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    mask = _pattern(label, size, rng)[..., None]
    colour = _HUES[label % len(_HUES)] * rng.uniform(0.7, 1.1)
    background = rng.uniform(20, 90, 3).astype(np.float32)
    image = mask * colour + (1 - mask) * background + rng.normal(0, 25, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def synth_classification(out: Path, silos: int, seed: int = 0, classes: int = 4, train_per_silo: int = 160,
                         test_per_silo: int = 40, image_size: int = 32) -> list[Path]:
    """Write ``out/0 … out/silos-1``, each ``train/<class>/*.png`` and ``test/<class>/*.png``."""
    if not 2 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be between 2 and {len(CLASS_NAMES)}")
    rng = np.random.default_rng(seed)
    folders = []
    for silo in range(silos):
        root = out / str(silo)
        for split, count in (("train", train_per_silo), ("test", test_per_silo)):
            for i in range(count):
                label = i % classes
                folder = root / split / CLASS_NAMES[label]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(make_image(label, image_size, rng)).save(folder / f"{silo}-{i:05d}.png")
        folders.append(root)
        log.info("synth: silo %d of %d written to %s", silo + 1, silos, root)
    return folders
