"""A hospital's records as CSV: one row per patient, the 30 measurements, then ``malignant`` (0 or 1).

This is the data format the task reads; ``breast-cancer-hospitals`` writes it from scikit-learn's
bundled copy of the Wisconsin diagnostic data set, and a real hospital would export its own.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fedmq.errors import DataError

LABEL = "malignant"


@dataclass(frozen=True)
class Table:
    features: np.ndarray  # float32 (N, F)
    labels: np.ndarray  # float32 (N,), 1 = malignant
    columns: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def write_table(path: Path, columns: list[str], features: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*columns, LABEL])
        for row, label in zip(features, labels):
            writer.writerow([*(f"{v:.6g}" for v in row), int(label)])


def read_table(path: Path) -> Table:
    """The table in ``path``; any malformed row is a ``DataError`` naming its line."""
    if not path.is_file():
        raise DataError(f"no file {path}", hint="make the hospitals' folders with `breast-cancer-hospitals --out DIR`")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][-1:] != [LABEL]:
        raise DataError(f"{path}: the header must end with the column {LABEL!r}",
                        hint=f"one row per patient: the measurements, then {LABEL} (0 or 1)")
    columns, body = tuple(rows[0][:-1]), rows[1:]
    values = np.empty((len(body), len(columns) + 1), dtype=np.float32)
    for line, row in enumerate(body, start=2):
        if len(row) != len(columns) + 1:
            raise DataError(f"{path} line {line}: {len(row)} values, the header names {len(columns) + 1}")
        try:
            values[line - 2] = [float(v) for v in row]
        except ValueError:
            raise DataError(f"{path} line {line}: a value is not a number", hint="fill in or drop that row") from None
    labels = values[:, -1]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise DataError(f"{path}: {LABEL} must be 0 or 1")
    return Table(values[:, :-1], labels, columns)
