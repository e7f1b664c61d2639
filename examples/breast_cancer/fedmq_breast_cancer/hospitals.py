"""``breast-cancer-hospitals``: deal scikit-learn's breast-cancer data set out to hospitals' folders.

Each hospital gets ``OUT/<i>/train.csv`` and ``OUT/<i>/test.csv``. The hospitals differ, as real ones
do: their sizes are drawn from Dirichlet(``--alpha``) over the 569 patients, and each keeps a
stratified quarter of its patients for testing.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from .table import write_table

MIN_PATIENTS = 40


def make_hospitals(out: Path, hospitals: int = 3, seed: int = 0, alpha: float = 5.0,
                   test_fraction: float = 0.25) -> list[tuple[Path, int, int]]:
    """Write the folders; returns (folder, training rows, test rows) for each hospital."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()  # bundled with scikit-learn: no download
    features = data.data.astype(np.float32)
    labels = (data.target == 0).astype(np.int64)  # scikit-learn's 0 is malignant; here 1 means malignant
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    while True:  # redraw until every hospital can keep both classes in both splits
        cuts = (np.cumsum(rng.dirichlet([alpha] * hospitals)) * len(labels)).astype(int)[:-1]
        parts = np.split(order, cuts)
        if min(len(p) for p in parts) >= MIN_PATIENTS:
            break
    made = []
    for i, part in enumerate(parts):
        train_idx, test_idx = train_test_split(part, test_size=test_fraction, stratify=labels[part], random_state=seed)
        folder = out / str(i)
        columns = [str(name) for name in data.feature_names]
        write_table(folder / "train.csv", columns, features[train_idx], labels[train_idx])
        write_table(folder / "test.csv", columns, features[test_idx], labels[test_idx])
        made.append((folder, len(train_idx), len(test_idx)))
    return made


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--hospitals", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Dirichlet concentration of the hospitals' sizes (small: very unequal)")
@click.option("--seed", type=int, default=0, show_default=True)
def main(out: Path, hospitals: int, alpha: float, seed: int) -> None:
    for folder, train_rows, test_rows in make_hospitals(out, hospitals, seed, alpha):
        click.echo(f"{folder}: {train_rows} training and {test_rows} test patients")


if __name__ == "__main__":
    main()
