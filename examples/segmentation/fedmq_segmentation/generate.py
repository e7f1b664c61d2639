"""``segmentation-silos``: generate images with masks for a few silos.

Each image holds one to three ellipses (the objects to segment, mask 1) on a shaded, noisy
background, plus thin bright lines that are not objects (mask 0), so a threshold alone cannot
segment it. Each silo is a different "scanner": its own brightness, contrast and noise level.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from .images import Pairs, save_pairs


def generate(count: int, size: int, rng: np.random.Generator, contrast: float, noise: float, offset: float) -> Pairs:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((count, size, size), dtype=np.uint8)
    masks = np.zeros((count, size, size), dtype=np.uint8)
    for n in range(count):
        mask = np.zeros((size, size), dtype=bool)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.15, 0.85, 2) * size
            ry, rx = rng.uniform(0.08, 0.22, 2) * size
            angle = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
            mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1
        shade = rng.uniform(-0.3, 0.3) * (xx / size - 0.5) + rng.uniform(-0.3, 0.3) * (yy / size - 0.5)
        image = offset + shade + contrast * mask
        for _ in range(rng.integers(1, 3)):  # distractors: bright lines, not objects
            row = rng.integers(0, size)
            image[row, :] += contrast * 0.9 if rng.random() < 0.5 else 0
            image[:, rng.integers(0, size)] += contrast * 0.9 if rng.random() < 0.5 else 0
        image += rng.normal(0, noise, (size, size))
        images[n] = np.clip(image * 255, 0, 255).astype(np.uint8)
        masks[n] = mask
    return Pairs(images, masks)


def make_silos(out: Path, silos: int = 3, train: int = 96, test: int = 32, size: int = 32,
               seed: int = 0) -> list[Path]:
    """Write ``out/<i>/train.npz`` and ``test.npz`` for each silo; returns the folders."""
    folders = []
    for i in range(silos):
        rng = np.random.default_rng([seed, i])
        scanner = dict(contrast=rng.uniform(0.25, 0.45), noise=rng.uniform(0.05, 0.12), offset=rng.uniform(0.2, 0.4))
        folder = out / str(i)
        save_pairs(folder / "train.npz", generate(train, size, rng, **scanner))
        save_pairs(folder / "test.npz", generate(test, size, rng, **scanner))
        folders.append(folder)
    return folders


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--silos", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--train", type=click.IntRange(1), default=96, show_default=True, help="training images per silo")
@click.option("--test", type=click.IntRange(1), default=32, show_default=True, help="test images per silo")
@click.option("--size", type=click.IntRange(16, 512), default=32, show_default=True, help="image side, a multiple of 4")
@click.option("--seed", type=int, default=0, show_default=True)
def main(out: Path, silos: int, train: int, test: int, size: int, seed: int) -> None:
    if size % 4:
        raise click.BadParameter("the U-Net halves the image twice: use a multiple of 4", param_hint="--size")
    for folder in make_silos(out, silos, train, test, size, seed):
        click.echo(f"{folder}: {train} training and {test} test images of {size}x{size}")


if __name__ == "__main__":
    main()
