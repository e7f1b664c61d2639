"""What an update must satisfy before it may touch the global model."""

from __future__ import annotations

import torch

from ..errors import UpdateRejected
from ..schemas.codec import StateDict, raw_size
from ..schemas.limits import payload_limit


def check_tensors(state: StateDict, reference: StateDict) -> None:
    """Same tensor names, shapes and dtypes as the global model, and only finite values."""
    missing = reference.keys() - state.keys()
    extra = state.keys() - reference.keys()
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if extra:
            parts.append(f"unexpected {_few(extra)}")
        raise UpdateRejected(f"tensor names differ from the global model: {'; '.join(parts)}")
    for name, ref in reference.items():
        tensor = state[name]
        if tensor.shape != ref.shape:
            raise UpdateRejected(f"tensor {name!r} has shape {tuple(tensor.shape)}, the global model {tuple(ref.shape)}")
        if tensor.dtype != ref.dtype:
            raise UpdateRejected(f"tensor {name!r} has dtype {tensor.dtype}, the global model {ref.dtype}")
    check_finite(state)


def check_finite(state: StateDict) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UpdateRejected(f"tensor {name!r} holds NaN or infinite values")


def check_claimed_samples(silo: str, claimed: int, declared: int | None) -> None:
    """An update may claim no more training samples than its silo declared when it joined.

    ``num_samples`` is the update's FedAvg weight and the silo's own word: unchecked, one silo could
    claim 2**53 and outvote all the others. A silo that declared nothing (``None``: an earlier fedmq,
    or a task that cannot tell its size) is let through as before; ``--max-samples-per-silo`` bounds
    its weight. Fewer than declared is fine (a task may train on a part of its data)."""
    if declared is not None and claimed > declared:
        raise UpdateRejected(f"claims {claimed} training samples but silo {silo} declared {declared} when it joined")


def update_size_limit(state: StateDict) -> int:
    """The most bytes an update of this model may take on the wire or once decompressed (``payload_limit``)."""
    return payload_limit(raw_size(state), len(state))


def _few(names: set[str], limit: int = 3) -> str:
    shown = sorted(names)[:limit]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")
