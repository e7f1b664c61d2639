"""Stopping on a signal: SIGTERM and SIGINT set a flag that the long-running loops check.

A signal turned into an exception (``KeyboardInterrupt``) lands wherever the main thread happens
to be: between two chunks of a model being published, between a checkpoint's write and its rename,
inside a store transaction. A flag lands nowhere. The aggregator's loop and the silo's loop look at
it between steps (a message handled, a tick, a training batch), finish the step they are in, record
what they must, close their connection and return exit code 130.

A second signal while stopping raises ``KeyboardInterrupt`` as before: whoever presses Ctrl-C twice
wants out now, and accepts what that costs (the store's own transactions still hold).

The flag is an object handed to the loops (``Federation(stop=...)``, ``SiloClient(stop=...)``), not
module state: a loop run in a thread by a test or a script gets its own, never set by a signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("fedmq")

EXIT_STOPPED = 130  # what a shell reports for a process ended by Ctrl-C (128 + SIGINT)


class Stopped(Exception):  # not an error: how a stop leaves a step at a safe point
    """Raised at a safe point inside a long step (a training batch boundary) once a stop was asked."""


class StopFlag:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str = "asked to stop") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise ``Stopped`` if a stop was asked: call it where a step may be cut short safely."""
        if self._event.is_set():
            raise Stopped(self.reason)

    def install(self) -> StopFlag:
        """Make SIGTERM and SIGINT set this flag (from the main thread, the only one signals reach)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._event.is_set():
            raise KeyboardInterrupt  # the second signal: out at once
        self.set(name)
        log.warning("%s: stopping after the current step (send it again to stop at once)", name)
