"""The non-IID split of the reference runs (Flower's ``DirichletPartitioner`` recipe).

For each class in turn, its images are shuffled and cut over the silos in proportions drawn from
Dirichlet(alpha); the whole draw is repeated until every silo holds at least ``min_size`` images.
All randomness comes from one ``numpy.random.default_rng(seed)``, so the same arguments always give
the same shards: on Fashion-MNIST's 60,000 training images with 5 silos, alpha 0.5 and seed 0 the
silos hold 6003, 18661, 10746, 7833 and 16757 images, the split the published figures used.
"""

from __future__ import annotations

import numpy as np
from fedmq.errors import ConfigError

MAX_DRAWS = 1000


def dirichlet_split(labels: np.ndarray, silos: int, alpha: float, seed: int = 0, min_size: int = 100) -> list[np.ndarray]:
    """The indices of ``labels`` each silo holds (disjoint, together all of them), in the order drawn."""
    if silos < 1 or alpha <= 0:
        raise ConfigError(f"cannot split over {silos} silo(s) with alpha {alpha}",
                          hint="use at least 1 silo and an alpha above 0 (small: skewed, large: near IID)")
    if silos * min_size > len(labels):
        raise ConfigError(f"{len(labels)} samples cannot give {silos} silos at least {min_size} each",
                          hint="use fewer silos or a smaller minimum")
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DRAWS):
        shards: list[list[np.ndarray]] = [[] for _ in range(silos)]
        for label in np.unique(labels):
            members = np.nonzero(labels == label)[0]
            rng.shuffle(members)
            proportions = rng.dirichlet([alpha] * silos)
            cuts = (np.cumsum(proportions) * len(members)).astype(int)[:-1]
            for shard, part in zip(shards, np.split(members, cuts)):
                shard.append(part)
        joined = [np.concatenate(parts) for parts in shards]
        if min(len(s) for s in joined) >= min_size:
            return joined
    raise ConfigError(f"no Dirichlet draw in {MAX_DRAWS} gave every silo {min_size} samples at alpha {alpha}",
                      hint="raise alpha or lower the minimum size")


def even_split(count: int, silos: int) -> list[np.ndarray]:
    """``range(count)`` dealt out in turn (silo i gets i, i+silos, ...): for a test set shared out
    evenly, so that the sample-weighted mean of the silos' metrics is the metric on the whole set."""
    return [np.arange(i, count, silos) for i in range(silos)]
