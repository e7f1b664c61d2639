"""The job lease: one aggregator runs a job at a time.

The aggregator holds a lease on its job in the store, renewed every ``RENEW_S`` while it runs and
given up when it exits. A second aggregator for the same job finds the lease held: it waits until
the lease's expiry (``TTL_S`` at most), and takes the job over if nobody renewed it meanwhile (the
holder died: SIGKILL, a crash, a lost machine), or refuses to start with a clear message if the
holder is alive. An aggregator that finds at renewal that another took its lease (it was frozen for
longer than the lease) stops at once, before it writes anything more.

Times are the aggregators' own clocks in UTC: they must agree to within a few seconds. The lease
names its holder's run, host and process id: a holder on this host whose process is gone (the same
command restarted after a SIGKILL, say) is taken over at once, without waiting for its lease to expire.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from ..errors import FedmqError
from ..store import Store

log = logging.getLogger("fedmq.aggregator")

TTL_S = 15.0
RENEW_S = 5.0


class LeaseLost(FedmqError):
    """Another aggregator holds the job (or took it over): this one must not run it."""


def lease_owner(run_id: str) -> str:
    """``run@host:pid``, at most 64 characters: who holds a lease, and where to check that it lives."""
    return f"{run_id[:16]}@{socket.gethostname()[:32]}:{os.getpid()}"


def _dead_here(owner: str) -> bool:
    """True if ``owner`` ran on this host in a process that no longer exists (or in this one's pid:
    a container restarted with the same hostname)."""
    _, _, where = owner.partition("@")
    host, _, pid = where.rpartition(":")
    if host != socket.gethostname()[:32] or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class JobLease:
    def __init__(self, store: Store, job_id: int, job: str, run_id: str, *, ttl: float = TTL_S,
                 renew_every: float = RENEW_S) -> None:
        self.store, self.job_id, self.job, self.owner = store, job_id, job, lease_owner(run_id)
        self.ttl, self.renew_every = ttl, renew_every
        self._renewed = 0.0
        self.held = False

    def take(self, stopped: Callable[[], bool] = lambda: False) -> None:
        """Hold the job, waiting out a lease that its holder no longer renews; raise ``LeaseLost`` if the
        holder renews it while we wait (it is alive), or return early if ``stopped``."""
        holder = self.store.take_lease(self.job_id, self.owner, self.ttl)
        if holder is None:
            self._held()
            return
        owner, expires = holder
        if _dead_here(owner) and self.store.take_lease(self.job_id, self.owner, self.ttl, replacing=owner) is None:
            log.info("took job %r over from aggregator %s, whose process is gone", self.job, owner)
            self._held()
            return
        log.info("job %r is held by aggregator %s until %s UTC (it renews its lease every %.0f s while it "
                 "runs); waiting for the lease to expire before taking the job over", self.job, owner,
                 expires.strftime("%H:%M:%S"), self.renew_every)
        deadline = time.monotonic() + self.ttl + 1.0
        while time.monotonic() < deadline and not stopped():
            time.sleep(0.5)
            again = self.store.take_lease(self.job_id, self.owner, self.ttl)
            if again is None:
                log.info("took job %r over from aggregator %s, which no longer renewed its lease", self.job, owner)
                self._held()
                return
            if again[1] > expires:  # renewed: the holder runs
                raise LeaseLost(f"job {self.job!r} is run by another aggregator ({again[0]}, which renews its lease)",
                                hint="stop that aggregator first, or give this one another --job")
        if not stopped():
            raise LeaseLost(f"job {self.job!r} is still held by aggregator {owner}",
                            hint="stop that aggregator first, or give this one another --job")

    def renew(self, now: float) -> None:
        """Renew the lease every ``renew_every`` seconds (``now``: monotonic); ``LeaseLost`` if another took it."""
        if not self.held or now - self._renewed < self.renew_every:
            return
        holder = self.store.take_lease(self.job_id, self.owner, self.ttl)
        if holder is not None:
            self.held = False
            raise LeaseLost(f"aggregator {holder[0]} took job {self.job!r} over while this one did not "
                            f"renew its lease for {self.ttl:.0f} s (frozen or cut off from the store); stopping",
                            hint="run one aggregator per job")
        self._renewed = now

    def release(self) -> None:
        if self.held:
            self.held = False
            self.store.release_lease(self.job_id, self.owner)

    def _held(self) -> None:
        self.held = True
        self._renewed = time.monotonic()
