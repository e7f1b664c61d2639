"""The broker watcher: every job's retained spec, silo presences and round status, kept current.

One MQTT connection subscribes to the observer topics of every job (``fedmq/+/init``,
``fedmq/+/presence/+``, ``fedmq/+/status``): what ``fedmq status`` reads once, held here as it
changes. It publishes nothing. Each change bumps ``version``, which the pages' event stream
watches. The broker may be absent (a finished job's page needs only the store): the watcher keeps
trying to connect and says so once in the log.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from ..broker.connection import Connection, Refused
from ..broker.url import BrokerUrl
from ..commands.status import Snapshot, take_retained
from ..errors import ConfigError, FedmqError
from ..schemas import Topics
from ..schemas.messages import MAX_HEADER_BYTES, RoundStatus
from ..schemas.topics import ROOT

log = logging.getLogger(__name__)
RETRY_S = 5.0


class LiveView:
    """What the broker retains for each job, updated by a background thread."""

    def __init__(self, url: BrokerUrl | None) -> None:
        self.url = url
        self.snapshots: dict[str, Snapshot] = {}
        # job -> round -> silos asked to train it, as seen while the round was open (the store does not keep them)
        self.asked: dict[str, dict[int, set[str]]] = {}
        self.version = 0
        self.connected = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def broker(self) -> str | None:
        """The broker's address without any password, for pages."""
        return None if self.url is None else f"{self.url.scheme}://{self.url.host}:{self.url.port}"

    def start(self) -> None:
        if self.url is not None:
            self._thread = threading.Thread(target=self._run, name="fedmq-dashboard-broker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def job(self, name: str, now: float | None = None) -> dict[str, Any] | None:
        """The job as the broker shows it now (``fedmq status --json``'s shape), or None if nothing is retained."""
        with self._lock:
            snapshot = self.snapshots.get(name)
            if snapshot is None or not snapshot.found:
                return None
            out = snapshot.to_dict(now or time.time())
            status = snapshot.status if snapshot.status_is_current else None
            out["broker"] = self.broker  # never the URL's user or password
            out["strategy"] = status.strategy if status else None
            out["peak_memory_bytes"] = status.peak_memory_bytes if status else None
            out["asked"] = {str(n): sorted(s) for n, s in self.asked.get(name, {}).items()}
            return out

    def jobs(self) -> list[str]:
        with self._lock:
            return sorted(name for name, s in self.snapshots.items() if s.found)

    def _run(self) -> None:
        subscriptions = Topics.every_job().observer_subscriptions()
        warned = False
        while not self._stop.is_set():
            conn = None
            try:
                conn = Connection(self.url, name=f"fedmq-dashboard-{uuid.uuid4().hex[:8]}", subscriptions=subscriptions,
                                  max_message_bytes=2 * MAX_HEADER_BYTES)
                conn.connect(timeout=RETRY_S)
            except FedmqError as exc:
                if not warned:
                    log.warning("the dashboard cannot reach the broker at %s (%s); showing the store alone, "
                                "retrying every %.0f s", self.url, exc.message, RETRY_S)
                    warned = True
                if conn is not None:
                    conn.close()
                self._stop.wait(RETRY_S)
                continue
            log.info("watching the jobs on %s", self.url)
            warned = False
            try:
                self._watch(conn)
            finally:
                conn.close()
                self._set_connected(False)

    def _watch(self, conn: Connection) -> None:
        while not self._stop.is_set():
            self._set_connected(conn.connected)
            incoming = conn.receive(timeout=0.5)
            if incoming is None:
                continue
            if isinstance(incoming, Refused):
                log.warning("ignored a retained message on %s: %s", incoming.topic, incoming.reason)
                continue
            self._take(incoming.topic, incoming.header)

    def _take(self, topic: str, header: Any) -> None:
        parts = topic.split("/")
        if len(parts) < 3 or parts[0] != ROOT:
            return
        job = parts[1]
        try:
            topics = Topics(job)
        except ConfigError:
            return  # not a name fedmq would give a job
        with self._lock:
            snapshot = self.snapshots.setdefault(job, Snapshot(job=job, broker=self.broker or ""))
            take_retained(snapshot, topics, topic, header)
            if isinstance(header, RoundStatus) and header.phase == "training" and snapshot.status_is_current:
                self.asked.setdefault(job, {}).setdefault(header.round, set()).update(
                    header.updates_in, header.waiting_for)
            self.version += 1

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            with self._lock:
                self.connected = connected
                self.version += 1
