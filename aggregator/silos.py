"""The silo registry: who is online and what each announced (task, labels). Pure: no I/O.

Flower's ClientManager, for a federation whose clients announce themselves with retained
``Presence`` messages: the registry turns each presence into what changed, and answers which silos
may take part (online, data of the job's task, and with ``--sign`` a registered key).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..schemas import Presence

log = logging.getLogger("fedmq.aggregator")


@dataclass
class SiloState:
    online: bool
    task: str | None = None
    labels: list[str] | None = None


class Change(Enum):
    """What a presence changed, for the federation to act on."""

    LEFT = "left"  # offline now (whether or not it was online before)
    IGNORED = "ignored"  # online, but it may not take part (other task, no key): not counted
    CAME_BACK = "came back"  # online and eligible, and it was not online before
    AGAIN = "again"  # online and eligible, and it already was: a re-announcement (after a reconnect, say)


class SiloRegistry:
    def __init__(self, task: str, keys: dict[str, Any] | None = None, keys_dir: Path | None = None) -> None:
        self.task = task
        self.keys = keys  # silo -> Ed25519 public key, with --sign; None: any silo may take part
        self.keys_dir = keys_dir
        self.silos: dict[str, SiloState] = {}

    def eligible(self) -> set[str]:
        """Online silos whose data matches the job's task (and, with --sign, that have a key)."""
        return {name for name, s in self.silos.items()
                if s.online and s.task == self.task and (self.keys is None or name in self.keys)}

    def labels(self, silos: set[str]) -> list[str]:
        """The labels these silos hold between them, sorted."""
        return sorted(set().union(*(self.silos[s].labels or [] for s in silos)))

    def update(self, presence: Presence) -> Change:
        before = self.silos.get(presence.silo)
        self.silos[presence.silo] = SiloState(presence.online, presence.task, presence.labels)
        was_online = before is not None and before.online
        if not presence.online:
            if was_online:
                log.info("silo %s went offline", presence.silo)
            return Change.LEFT
        if presence.task != self.task:
            log.warning("silo %s holds %s data but the job is %s; it is not counted", presence.silo, presence.task,
                        self.task)
            return Change.IGNORED
        if self.keys is not None and presence.silo not in self.keys:
            log.warning("silo %s has no registered public key; it is not counted (add %s.pub to %s)",
                        presence.silo, presence.silo, self.keys_dir)
            return Change.IGNORED
        if was_online:
            return Change.AGAIN
        log.info("silo %s is online (%d eligible)", presence.silo, len(self.eligible()))
        return Change.CAME_BACK
