"""A silo's data folder: one small JSON file that says which shard of the installed data set it holds.

No image is copied: every silo reads the same IDX files and takes its share, redrawn from the split's
seed, so the shard is the same on every run and on every machine.

```json
{"source": "/usr/share/datasets/fashion-mnist", "silos": 5, "silo": 0, "alpha": 0.5, "seed": 0}
```
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fedmq.errors import DataError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .data import DEFAULT_DIR, Split, load_split
from .split import dirichlet_split, even_split

SHARD_FILE = "fashion-mnist.json"


class ShardSpec(BaseModel):
    """Which share of Fashion-MNIST a silo holds. The training set is split non-IID (Dirichlet over the
    labels, ``split.dirichlet_split``); the test set is dealt out evenly, so that the silos' sample-weighted
    metrics are the global model's metrics on the whole 10,000-image test set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Path = DEFAULT_DIR
    silos: int = Field(ge=1, le=1000)
    silo: int = Field(ge=0)
    alpha: float = Field(gt=0)
    seed: int = 0
    min_size: int = Field(default=100, ge=0)
    train_limit: int | None = Field(default=None, ge=1, description="keep only the first N of the shard (CI runs)")
    test_limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _silo_in_range(self) -> ShardSpec:
        if self.silo >= self.silos:
            raise ValueError(f"silo {self.silo} is not one of the {self.silos} silos (0 to {self.silos - 1})")
        return self


def read_spec(folder: Path) -> ShardSpec:
    path = folder / SHARD_FILE
    if not path.is_file():
        raise DataError(f"{folder} holds no {SHARD_FILE}",
                        hint="make the silo folders with `fashion-mnist-silos --out DIR` (see examples/fashion_mnist)")
    try:
        return ShardSpec.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise DataError(f"{path} is not a valid shard description: {' '.join(first[:3])}",
                        hint="make it again with `fashion-mnist-silos`") from None


def write_spec(folder: Path, spec: ShardSpec) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SHARD_FILE
    path.write_text(spec.model_dump_json(indent=2, exclude_defaults=False) + "\n")
    return path


def train_shards(labels: np.ndarray, spec: ShardSpec) -> list[np.ndarray]:
    return dirichlet_split(labels, spec.silos, spec.alpha, spec.seed, spec.min_size)


def load_shard(spec: ShardSpec) -> tuple[Split, Split]:
    """(train, test) of the silo ``spec`` names, cut to the spec's limits."""
    train, test = load_split(spec.source, "train"), load_split(spec.source, "test")
    mine = np.sort(train_shards(train.labels, spec)[spec.silo])
    tests = even_split(len(test), spec.silos)[spec.silo]
    return train.subset(mine[: spec.train_limit]), test.subset(tests[: spec.test_limit])
