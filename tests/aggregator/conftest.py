"""Aggregator test helpers: a whole job in this process, the aggregator and the silos in threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest


def run_in_threads(federation: Any, silos: Sequence[Any], timeout: float = 240.0) -> int | None:
    """Run ``federation`` and every silo client, each in a thread, to the job's end; the aggregator's
    exit code (None: it did not finish within ``timeout`` seconds)."""
    result: dict[str, int] = {}
    agg = threading.Thread(target=lambda: result.setdefault("code", federation.run()))
    agg.start()
    threads = [threading.Thread(target=silo.run) for silo in silos]
    for thread in threads:
        thread.start()
    agg.join(timeout=timeout)
    for thread in threads:
        thread.join(timeout=60)
    return result.get("code")


@pytest.fixture
def run_job() -> Callable[..., int | None]:
    return run_in_threads
