"""``fedmq status``: a job as the broker sees it now, read from its retained messages.

It reads the broker, not the store, so it works from any machine that can reach the broker,
while the job runs: the job spec (``init``), each silo's presence, and the aggregator's
``RoundStatus``. It publishes nothing and leaves no trace: no will, no retained message.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import click

from ..broker.connection import Connection, Refused
from ..broker.url import BrokerUrl
from ..errors import FedmqError
from ..schemas import JobSpec, Presence, Topics
from ..schemas.messages import MAX_HEADER_BYTES, RoundStatus


@dataclass
class Snapshot:
    """What the broker retains for one job."""

    job: str
    broker: str
    spec: JobSpec | None = None
    silos: dict[str, Presence] = field(default_factory=dict)
    status: RoundStatus | None = None
    refused: list[str] = field(default_factory=list)  # topics whose retained message broke the contract

    @property
    def found(self) -> bool:
        return self.spec is not None or bool(self.silos) or self.status is not None

    @property
    def status_is_current(self) -> bool:
        """The round status belongs to the run the job spec announces (not one from an earlier run)."""
        return self.status is not None and (self.spec is None or self.status.run_id == self.spec.run_id)

    def to_dict(self, now: float) -> dict[str, Any]:
        spec = self.spec
        online = sorted(name for name, p in self.silos.items() if p.online)
        out: dict[str, Any] = {
            "broker": self.broker, "job": self.job,
            "spec": None if spec is None else {
                "status": spec.status, "run_id": spec.run_id, "task": spec.task, "model": spec.model,
                "rounds": spec.rounds, "min_clients": spec.min_clients, "mode": spec.mode,
                "local_epochs": spec.local_epochs, "labels": len(spec.labels or ()), "signed": spec.signed},
            "silos": [{"silo": name, "online": p.online, "task": p.task} for name, p in sorted(self.silos.items())],
            "online": online,
            "round": None,
        }
        if self.status is not None:
            s = self.status
            out["round"] = {"phase": s.phase, "round": s.round, "version": s.version, "updates_in": s.updates_in,
                            "waiting_for": s.waiting_for, "deadline_unix": s.deadline_unix,
                            "seconds_left": None if s.deadline_unix is None else round(max(0.0, s.deadline_unix - now), 1),
                            "current": self.status_is_current}
        if self.refused:
            out["refused"] = self.refused
        return out


def collect(url: BrokerUrl, job: str, timeout: float, connect_timeout: float = 5.0) -> Snapshot:
    """Subscribe to the job's retained topics and gather what arrives within ``timeout`` seconds.

    Retained messages come right after the subscription, but MQTT has no "that was all" marker,
    so the whole ``timeout`` is waited. Raises ``BrokerError`` when the broker cannot be reached.
    """
    topics = Topics(job)
    conn = Connection(url, name=f"fedmq-status-{job}", subscriptions=topics.observer_subscriptions(),
                      max_message_bytes=2 * MAX_HEADER_BYTES)
    snapshot = Snapshot(job=job, broker=str(url))
    conn.connect(connect_timeout)
    try:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            incoming = conn.receive(timeout=left)
            if isinstance(incoming, Refused):
                snapshot.refused.append(f"{incoming.topic}: {incoming.reason}")
            elif incoming is not None:
                take_retained(snapshot, topics, incoming.topic, incoming.header)
    finally:
        conn.close()
    return snapshot


def take_retained(snapshot: Snapshot, topics: Topics, topic: str, header: Any) -> None:
    """Keep one retained message of the job in ``snapshot`` (also used by the dashboard's broker watcher)."""
    if header.job != snapshot.job:
        return
    if topic == topics.init and isinstance(header, JobSpec):
        snapshot.spec = header
    elif topic == topics.status and isinstance(header, RoundStatus):
        snapshot.status = header
    elif isinstance(header, Presence) and topics.silo_of(topic) == header.silo:
        snapshot.silos[header.silo] = header


def render(snapshot: Snapshot, now: float) -> str:
    """A few lines an operator reads at a glance."""
    d = snapshot.to_dict(now)
    lines = [f"job {snapshot.job} on {snapshot.broker}"]
    spec = d["spec"]
    if spec is None:
        lines.append("  job: not published (no aggregator has started it on this broker)")
    else:
        lines.append(f"  job: {spec['status']}, {spec['task']} with {spec['model']}, {spec['rounds']} round(s), "
                     f"min {spec['min_clients']} silo(s), {spec['mode']} mode, run {spec['run_id'][:8]}")
    offline = [s["silo"] for s in d["silos"] if not s["online"]]
    lines.append(f"  silos online: {len(d['online'])}" + (f" ({', '.join(d['online'])})" if d["online"] else "")
                 + (f"; offline: {', '.join(offline)}" if offline else ""))
    r = d["round"]
    if r is None:
        lines.append("  round: no status published yet")
    else:
        stale = "" if r["current"] else " (from an earlier run of the job)"
        version = "-" if r["version"] is None else f"v{r['version']}"
        lines.append(f"  round {r['round']}: {r['phase']}{stale}, global model {version}")
        if r["phase"] in ("training", "evaluating"):
            what = "updates" if r["phase"] == "training" else "test results"
            lines.append(f"    {what} in: {', '.join(r['updates_in']) or 'none'}; "
                         f"waiting for: {', '.join(r['waiting_for']) or 'nobody'}")
            if r["seconds_left"] is not None:
                lines.append(f"    deadline in {_duration(r['seconds_left'])}")
    for problem in snapshot.refused:
        lines.append(f"  refused: {problem}")
    return "\n".join(lines)


def print_status(url: BrokerUrl, job: str, timeout: float, connect_timeout: float, as_json: bool) -> None:
    snapshot = collect(url, job, timeout, connect_timeout)
    if not snapshot.found:
        raise FedmqError(f"no job {job!r} on the broker at {url}: nothing retained under {Topics(job).prefix}/",
                         hint="check --job and --broker; the aggregator publishes the job when it starts")
    now = time.time()
    click.echo(json.dumps(snapshot.to_dict(now), indent=2) if as_json else render(snapshot, now))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
