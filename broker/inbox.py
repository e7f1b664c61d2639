"""The inbox of whole messages a connection received, waiting for its process to take them.

Bounded, with coalescing: a message whose topic is given a key replaces any message of the same
key still waiting (a silo that trains keeps only the newest model and the newest test request, not
every version sent meanwhile, each a model's size). Past ``max_items`` waiting messages, a new one
is refused with ``Overloaded`` (the sender is asked again), never queued without end.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

from ..errors import Overloaded

T = TypeVar("T")

MAX_ITEMS = 1024


class Inbox(Generic[T]):
    def __init__(self, max_items: int = MAX_ITEMS) -> None:
        self.max_items = max_items
        self._items: deque[tuple[str | None, T]] = deque()
        self._ready = threading.Condition()
        self.replaced = 0  # messages dropped for a newer one of the same key

    def put(self, item: T, key: str | None = None, *, force: bool = False) -> None:
        """Queue ``item``; with ``key``, in place of a waiting item of that key. ``force``: even when full
        (a refusal must always get through). Raises ``Overloaded`` when full."""
        with self._ready:
            if key is not None:
                before = len(self._items)
                self._items = deque((k, i) for k, i in self._items if k != key)
                self.replaced += before - len(self._items)
            if len(self._items) >= self.max_items and not force:
                raise Overloaded(f"{len(self._items)} messages wait to be handled (the most this process queues)")
            self._items.append((key, item))
            self._ready.notify()

    def get(self, timeout: float | None) -> T | None:
        """The oldest waiting item, or None after ``timeout`` seconds (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._items:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._ready.wait(left)
            return self._items.popleft()[1]

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
