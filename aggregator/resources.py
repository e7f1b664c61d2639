"""The aggregator's own resource use, published in its ``RoundStatus`` for dashboards."""

from __future__ import annotations

import resource
import sys


def peak_memory_bytes() -> int:
    """The process's peak resident set so far. It only grows, so a status that carries it changes
    (and is published again) only when the peak does."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kilobytes on Linux
