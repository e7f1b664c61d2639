"""The silo registry: who is online and what each announced (task, labels, its task's defaults,
the fingerprint of the model it built), and which silos this run refused. Pure: no I/O.

Flower's ClientManager, for a federation whose clients announce themselves with retained
``Presence`` messages: the registry turns each presence into what changed, and answers which silos
may take part (online, data of the job's task, with ``--sign`` a registered key, and a model that
matches the job's).

A silo's model is compared with the job's by fingerprint (tensor names, shapes, dtypes;
``schemas/fingerprint.py``) as soon as both are known: when the silo announces the model it built,
or, for the silos that announced theirs first, when the job's initial weights are set. A silo whose
model differs is refused once, with the first difference as the reason, and stays refused for the
run: it is never counted, and the federation records the refusal.

A silo also declares, with the fingerprint, how many training samples it holds (``train_samples``):
the most any of its updates may claim (``checks.check_claimed_samples``). A silo that declares none
(an earlier fedmq, or a task whose ``train_size()`` is 0) is taken as before, its claims unchecked;
``--max-samples-per-silo`` is what bounds its weight, as every silo's.
"""

from __future__ import annotations

import logging
from collections import Counter
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
    defaults: TaskDefaults | None = None
    fingerprint: list[TensorInfo] | None = None  # of the model it built for this run
    refused: str | None = None  # why this run refused it (its model differs from the job's); never counted
    session: str | None = None  # the connection it announced itself from (Presence.session)
    train_samples: int | None = None  # the training samples it declared for this run; None: none declared


class Change(Enum):
    """What a presence changed, for the federation to act on."""

    LEFT = "left"  # offline now (whether or not it was online before)
    STALE = "stale"  # an offline mark from another connection than the one online (a stale last will): no change
    IGNORED = "ignored"  # online, but it may not take part (other task, no key, refused before): not counted
    REFUSED = "refused"  # online, and refused now: the model it built differs from the job's (``refusal``)
    CAME_BACK = "came back"  # online and eligible, and it was not online before
    AGAIN = "again"  # online and eligible, and it already was: a re-announcement (after a reconnect, say)


class SiloRegistry:
    def __init__(self, task: str, run_id: str, keys: dict[str, Any] | None = None, keys_dir: Path | None = None) -> None:
        self.task = task
        self.run_id = run_id  # a fingerprint announced for another run is of another model: unknown
        self.keys = keys  # silo -> Ed25519 public key, with --sign; None: any silo may take part
        self.keys_dir = keys_dir
        self.silos: dict[str, SiloState] = {}
        self.model: list[TensorInfo] | None = None  # the job's model's fingerprint, once its initial weights are set

    def eligible(self) -> set[str]:
        """Online silos whose data matches the job's task (and, with --sign, that have a key), not refused."""
        return {name for name, s in self.silos.items()
                if s.online and s.task == self.task and (self.keys is None or name in self.keys) and not s.refused}

    def labels(self, silos: set[str]) -> list[str]:
        """The labels these silos hold between them, sorted."""
        return sorted(set().union(*(self.silos[s].labels or [] for s in silos)))

    def defaults(self, silos: set[str]) -> TaskDefaults:
        """The task defaults the first of these silos (by name) that announced any announced; else the
        schema's."""
        return next((self.silos[s].defaults for s in sorted(silos) if self.silos[s].defaults), TaskDefaults())

    def refusal(self, silo: str) -> str | None:
        """Why ``silo`` is refused (its model differs from the job's), or None."""
        state = self.silos.get(silo)
        return state.refused if state else None

    def declared(self, silo: str) -> int | None:
        """The training samples ``silo`` declared for this run, or None (it declared none)."""
        state = self.silos.get(silo)
        return state.train_samples if state else None

    def update(self, presence: Presence) -> Change:
        before = self.silos.get(presence.silo)
        if not presence.online and before is not None and before.online and before.session is not None \
                and presence.session != before.session:
            log.info("ignored an offline mark of silo %s from an earlier connection (a stale last will); it is "
                     "online", presence.silo)
            return Change.STALE
        this_run = presence.run_id == self.run_id  # what a silo built or counted for another run is unknown here
        fingerprint = presence.fingerprint if this_run else None
        samples = presence.train_samples if this_run else None
        if before is not None and presence.online and before.online:
            # a re-announcement without them (a reconnect) keeps what we know
            fingerprint = before.fingerprint if fingerprint is None else fingerprint
            samples = before.train_samples if samples is None else samples
        if fingerprint is not None and samples is None and (before is None or before.fingerprint is None):
            log.info("silo %s declared no training-sample count (an earlier fedmq, or its task's train_size() is 0): "
                     "its updates' sample counts are taken unchecked; --max-samples-per-silo bounds their weight",
                     presence.silo)
        self.silos[presence.silo] = SiloState(presence.online, presence.task, presence.labels, presence.defaults,
                                              fingerprint, refused=before.refused if before else None,
                                              train_samples=samples, session=presence.session)
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
        if self.silos[presence.silo].refused:
            return Change.IGNORED  # said when it was refused
        if self._refuse(presence.silo):
            return Change.REFUSED
        if was_online:
            return Change.AGAIN
        log.info("silo %s is online (%d eligible)", presence.silo, len(self.eligible()))
        return Change.CAME_BACK

    def set_model(self, fingerprint: list[TensorInfo]) -> list[str]:
        """The job's model is known: compare the eligible silos that announced theirs before; the ones
        refused now, by name."""
        self.model = fingerprint
        return [silo for silo in sorted(self.eligible()) if self._refuse(silo)]

    def init_candidates(self, min_clients: int, *, wait: bool) -> list[str]:
        """The silos that may build the job's initial weights, by name: of the eligible silos that
        announced the model they built, those whose model most of them share, so a lone odd model does
        not become the job's. While ``wait``, none until ``min_clients`` of them (or every eligible
        one) announced a model; after it, with none announced, any eligible silo."""
        eligible = self.eligible()
        built = sorted(s for s in eligible if self.silos[s].fingerprint is not None)
        if len(built) < min(min_clients, len(eligible)):
            if wait:
                return []
            if not built:
                return sorted(eligible)
        if not built:
            return []
        key = {s: tuple((t.name, tuple(t.shape), t.dtype) for t in self.silos[s].fingerprint) for s in built}
        counts = Counter(key.values())
        most = max(counts.values())
        return [s for s in built if counts[key[s]] == most]

    def agreed_fingerprint(self) -> list[TensorInfo] | None:
        """The model every eligible silo that announced one built, if they all built the same; else None.
        What the initial weights may be sized by: one hostile silo cannot announce a huge model for them."""
        built = [self.silos[s].fingerprint for s in self.eligible() if self.silos[s].fingerprint is not None]
        keys = {tuple((t.name, tuple(t.shape), t.dtype) for t in f) for f in built}
        return built[0] if len(keys) == 1 else None

    def _refuse(self, silo: str) -> bool:
        """Refuse ``silo`` if the model it built differs from the job's; True if it is refused now."""
        state = self.silos[silo]
        if self.model is None or state.fingerprint is None:
            return False
        difference = first_difference(self.model, state.fingerprint)
        if difference is None:
            return False
        state.refused = f"its model differs from the job's: {difference}"
        log.warning("refused silo %s at join: %s; it is not counted (run the job's task and options on it)",
                    silo, state.refused)
        return True
