"""Upload flow control: at most ``slots`` silos send their update at a time. Pure: no I/O.

An update in flight sits in the aggregator's memory until it is whole, so N silos that finish
training together would need N models of memory (NVIDIA FLARE's users meet exactly that). With
``JobSpec.upload_grants`` a silo that has trained asks (``UploadRequest``) and uploads once granted
(``UploadGrant``); the aggregator grants ``slots`` silos at a time, first come first served. A slot
frees when the silo's update (or its refusal) arrived, when the silo went offline, or when the grant
lapsed unused after ``grant_s``. A silo whose grant was lost asks again and is granted again (within
the same lapse); so is a silo whose request was lost. Nothing waits for a message that may never come.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

log = logging.getLogger("fedmq.aggregator")

GRANT_S = 120.0  # how long a grant waits for its update to start arriving (a stalled upload is dropped anyway)


class UploadSlots:
    def __init__(self, slots: int, grant_s: float = GRANT_S) -> None:
        self.slots = max(1, slots)
        self.grant_s = grant_s
        self.granted: dict[str, tuple[float, int]] = {}  # silo -> (when its grant lapses, monotonic; the round)
        self.waiting: OrderedDict[str, int] = OrderedDict()  # silo -> the round it asked for, first come first
        self.peak = 0  # the most grants held at once, for tests and benchmarks

    def ask(self, silo: str, round_number: int, now: float) -> list[tuple[str, int]]:
        """``silo`` asks to upload its update for ``round_number``; the (silo, round) to grant now
        (``silo`` itself again if it already holds a grant: its grant was lost; the grant still lapses
        when it was going to, so a silo that asks and never sends holds its slot no longer)."""
        if silo in self.granted:
            self.granted[silo] = (self.granted[silo][0], round_number)
            return [(silo, round_number)]
        self.waiting[silo] = round_number
        return self._fill(now)

    def done(self, silo: str, now: float) -> list[tuple[str, int]]:
        """``silo``'s update (or its refusal) arrived, or it went offline: free its slot; the silos to grant now."""
        self.waiting.pop(silo, None)
        if self.granted.pop(silo, None) is None:
            return []
        return self._fill(now)

    def expire(self, now: float) -> list[tuple[str, int]]:
        """Grants that lapsed unused free their slots; the silos to grant now."""
        lapsed = [silo for silo, (until, _) in self.granted.items() if until <= now]
        for silo in lapsed:
            log.info("the upload grant of %s lapsed unused after %.0f s; its slot goes to the next silo", silo,
                     self.grant_s)
            del self.granted[silo]
        return self._fill(now) if lapsed else []

    def resize(self, slots: int, now: float) -> list[tuple[str, int]]:
        self.slots = max(1, slots)
        return self._fill(now)

    def _fill(self, now: float) -> list[tuple[str, int]]:
        granted: list[tuple[str, int]] = []
        while self.waiting and len(self.granted) < self.slots:
            silo, round_number = self.waiting.popitem(last=False)
            self.granted[silo] = (now + self.grant_s, round_number)
            granted.append((silo, round_number))
        self.peak = max(self.peak, len(self.granted))
        return granted


def slots_for(memory_budget: int, update_bytes: int) -> int:
    """How many updates of ``update_bytes`` on the wire may be in flight within ``memory_budget`` bytes:
    each costs its payload while it arrives and about as much again while it is decoded and folded."""
    return max(1, memory_budget // max(1, 2 * update_bytes))
