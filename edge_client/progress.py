"""Progress of a silo's local work (training, evaluation): a rich bar on a terminal, log lines otherwise.

A silo run by hand shows a live bar on stderr; one run by a service manager or with its output
in a file gets a plain log line at most every ``LOG_EVERY_S`` seconds, so a long epoch still
shows it is alive and a short one adds nothing to the log.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

LOG_EVERY_S = 15.0


class Progress:
    """``with Progress("round 3: training", total=40, unit="steps", log=log) as bar: bar.advance(note="loss 0.3")``."""

    def __init__(self, description: str, total: int, unit: str, log: logging.Logger, live: bool | None = None) -> None:
        self.description = description
        self.total = max(0, total)
        self.unit = unit
        self.log = log
        self.live = _stderr_is_terminal() if live is None else live
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        self._last_log = time.monotonic()

    def __enter__(self) -> Progress:
        if self.live and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(self.unit), TimeElapsedColumn(), TimeRemainingColumn(),
                                     TextColumn("{task.fields[note]}"),
                                     console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, note="")
        return self

    def advance(self, n: int = 1, note: str = "") -> None:
        """``n`` more units done; ``note`` (say, the last loss) is shown beside the bar or in the log line."""
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n, note=note)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            share = f"{100 * self.done / self.total:.0f}% " if self.total else ""
            self.log.info("%s: %s(%d/%d %s)%s", self.description, share, self.done, self.total, self.unit,
                          f", {note}" if note else "")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
