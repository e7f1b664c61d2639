"""Assigning items to silos: IID, or non-IID by label with a Dirichlet prior (Hsu et al. 2019)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def assign_silos(labels: Sequence[int], silos: int, alpha: float | None, rng: np.random.Generator) -> list[int]:
    """The silo of each item. IID deals a shuffled list round-robin; with ``alpha`` each label's
    items are split by proportions drawn from Dirichlet(alpha): small alpha, few labels per silo."""
    if silos < 1:
        raise ValueError("silos must be at least 1")
    order = rng.permutation(len(labels))
    result = [0] * len(labels)
    if alpha is None:
        for position, item in enumerate(order):
            result[item] = position % silos
        return result
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    by_label: dict[int, list[int]] = defaultdict(list)
    for item in order:
        by_label[labels[item]].append(int(item))
    for label in sorted(by_label):
        items = by_label[label]
        shares = rng.dirichlet(np.full(silos, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(items)).round().astype(int)
        for silo, chunk in enumerate(np.split(np.array(items, dtype=np.int64), cuts)):
            for item in chunk:
                result[item] = silo
    return result
