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
from ..schemas.fingerprint import first_difference
from ..schemas.messages import TaskDefaults, TensorInfo

log = logging.getLogger("fedmq.aggregator")


@dataclass
class SiloState:
    online: bool
    task: str | None = None
    labels: list[str] | None = None
    defaults: TaskDefaults | None = None  # its task's defaults, for the options the job was not given
    fingerprint: list[TensorInfo] | None = None  # of the model it built for this run
    refused: str | None = None  # why this run refused it (its model differs from the job's): never counted


class Change(Enum):
    """What a presence changed, for the federation to act on."""

    LEFT = "left"  # offline now (whether or not it was online before)
    IGNORED = "ignored"  # online, but it may not take part (other task, no key): not counted
    CAME_BACK = "came back"  # online and eligible, and it was not online before
    AGAIN = "again"  # online and eligible, and it already was: a re-announcement (after a reconnect, say)


class SiloRegistry:
    def __init__(self, task: str, keys: dict[str, Any] | None = None, keys_dir: Path | None = None,
                 run_id: str | None = None) -> None:
        self.task = task
        self.run_id = run_id  # fingerprints announced for another run describe another model: not kept
        self.keys = keys  # silo -> Ed25519 public key, with --sign; None: any silo may take part
        self.keys_dir = keys_dir
        self.silos: dict[str, SiloState] = {}

    def eligible(self) -> set[str]:
        """Online silos whose data matches the job's task (and, with --sign, that have a key)."""
        return {name for name, s in self.silos.items()
                if s.online and s.task == self.task and (self.keys is None or name in self.keys) and not s.refused}

    def labels(self, silos: set[str]) -> list[str]:
        """The labels these silos hold between them, sorted."""
        return sorted(set().union(*(self.silos[s].labels or [] for s in silos)))

    def update(self, presence: Presence) -> Change:
        before = self.silos.get(presence.silo)
        was_online = before is not None and before.online
        fingerprint = presence.fingerprint if presence.run_id == self.run_id else None
        if fingerprint is None and presence.online and was_online:
            fingerprint = before.fingerprint  # a re-announcement without it (a reconnect) keeps what we know
        self.silos[presence.silo] = SiloState(presence.online, presence.task, presence.labels, presence.defaults,
                                              fingerprint, refused=before.refused if before else None)
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
        if self.silos[presence.silo].refused:
            return Change.IGNORED
        if was_online:
            return Change.AGAIN
        log.info("silo %s is online (%d eligible)", presence.silo, len(self.eligible()))
        return Change.CAME_BACK

    # -- what the job takes from its silos -------------------------------------------------------------
    def task_defaults(self, silos: set[str]) -> TaskDefaults:
        """The defaults these silos' task announced (the first that did, by name), else the API's own."""
        return next((self.silos[s].defaults for s in sorted(silos) if self.silos[s].defaults), TaskDefaults())

    def init_candidates(self, min_clients: int, waited_enough: bool) -> list[str]:
        """The silos that may build the job's initial weights: once ``min_clients`` of them announced the model
        they built (or ``waited_enough``), those whose fingerprint most share, by name: a lone odd model does
        not become the job's. Empty: wait."""
        eligible = self.eligible()
        built = sorted(s for s in eligible if self.silos[s].fingerprint is not None)
        if len(built) < min(min_clients, len(eligible)):
            if not waited_enough:
                return []
            if not built:
                return sorted(eligible)
        key = {s: tuple((t.name, tuple(t.shape), t.dtype) for t in self.silos[s].fingerprint) for s in built}
        counts = {k: sum(1 for v in key.values() if v == k) for k in key.values()}
        return [s for s in built if counts[key[s]] == max(counts.values())]

    def check_model(self, silo: str, job: list[TensorInfo] | None) -> str | None:
        """Refuse ``silo`` if the model it announced differs from the job's ``job`` fingerprint: the reason
        when it is refused now (once), else None."""
        state = self.silos.get(silo)
        if state is None or state.refused or job is None or state.fingerprint is None:
            return None
        difference = first_difference(job, state.fingerprint)
        if difference is None:
            return None
        state.refused = f"its model differs from the job's: {difference}"
        return state.refused
