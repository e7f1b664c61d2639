"""The aggregator's side of the broker: its connection, and every message it sends.

The federation decides what to send and when; this knows how: which topic, which header, which
chunk size, what is retained. Incoming messages come out of ``receive`` whole (or as a ``Refused``
with the reason), and the federation's ``_dispatch`` routes them.
"""

from __future__ import annotations

import logging
import time

from ..broker.connection import Connection, Incoming
from ..errors import BrokerError
from ..schemas import JobSpec, ModelSync, PayloadInfo, TestRequest, Topics
from ..schemas.messages import InitRequest, RoundStatus, UploadGrant
from .config import AggregatorConfig
from .model import LINK, GlobalModel

log = logging.getLogger("fedmq.aggregator")

STATUS_TIMEOUT_S = 2.0  # the status is best effort: never hold the loop long for it
LOST = "the aggregator's connection was lost without a goodbye (killed, crashed or cut off); run the same command to resume"


class AggregatorLink:
    def __init__(self, config: AggregatorConfig, run_id: str, connection: Connection | None = None) -> None:
        self.job = config.job
        self.run_id = run_id
        self.topics = Topics(config.job)
        self.conn = connection or Connection(
            config.broker, name=f"fedmq-aggregator-{config.job}",
            subscriptions=self.topics.aggregator_subscriptions(), max_message_bytes=config.max_update_bytes,
            stall_timeout=config.stall_timeout,
        )
        self._status_error: str | None = None  # the last status publish that failed, said once

    def connect(self, timeout: float) -> None:
        self.conn.connect(timeout)

    def close(self) -> None:
        self.conn.close()

    def receive(self, timeout: float) -> Incoming | None:
        return self.conn.receive(timeout=timeout)

    def limit_message_bytes(self, max_message_bytes: int, senders: int) -> None:
        self.conn.limit_message_bytes(max_message_bytes, senders=senders)

    def will(self, spec: JobSpec) -> None:
        """The last will that goes with ``spec``: if this process dies or is cut off, the broker tells
        the silos (and ``fedmq status``) that the job is interrupted, and why. MQTT fixes a will when
        the connection is made, so a change applies from the next (re)connection on: an unclean drop
        of the connection that published ``finished`` still sets the spec to ``interrupted`` (the
        aggregator closes cleanly, so only a cut at that moment does)."""
        ended = spec.status in ("finished", "failed", "interrupted")
        self.conn.set_will(self.topics.init, spec if ended else spec.model_copy(update={"status": "interrupted",
                                                                                          "reason": LOST}))

    def publish_spec(self, spec: JobSpec, timeout: float = 30.0) -> None:
        """The job spec, retained on the init topic: how a silo learns the job, whenever it starts.
        The last will follows it (``will``)."""
        self.will(spec)
        self.conn.set_retained(self.topics.init, spec, timeout=timeout)

    def publish_status(self, status: RoundStatus) -> bool:
        """The round status, retained, for ``fedmq status``. Best effort: with the broker away it is
        only delayed (re-published on reconnect), so a failure is said once, as a warning, and the
        loop goes on; False when it did not go out."""
        try:
            self.conn.set_retained(self.topics.status, status, timeout=STATUS_TIMEOUT_S)
        except BrokerError as exc:
            if self._status_error is None:
                log.warning("could not publish the job's status (fedmq status shows an older one until the broker "
                            "answers again): %s", exc.message)
            self._status_error = exc.message
            return False
        if self._status_error is not None:
            log.info("the job's status is published again")
            self._status_error = None
        return True

    def ask_initial(self, silo: str) -> None:
        self.conn.publish(self.topics.init_request, InitRequest(job=self.job, run_id=self.run_id, silo=silo))

    def send_model(self, model: GlobalModel, chunk_size: int, train_round: int | None,
                   train_silos: list[str] | None = None, silo: str | None = None) -> None:
        """``model`` to every silo (or to ``silo`` alone); with ``train_round``, to train on for that round."""
        header = ModelSync(job=self.job, run_id=self.run_id, version=model.version, train_round=train_round,
                           train_silos=train_silos,
                           payload=PayloadInfo.of(model.codec, model.payload, model.digest))
        topic = self.topics.model if silo is None else self.topics.model_for(silo)
        start = time.monotonic()
        sent = self.conn.publish(topic, header, model.payload, chunk_size=chunk_size)
        if isinstance(sent, int):  # the link's throughput, for --codec auto
            LINK.sent(sent, time.monotonic() - start)

    def send_grant(self, silo: str, round_number: int, seconds: float) -> None:
        """Let ``silo`` upload its update now (upload flow control, ``uploads.py``)."""
        self.conn.publish(self.topics.grant(silo), UploadGrant(job=self.job, run_id=self.run_id, silo=silo,
                                                               round=round_number, seconds=seconds))

    def send_test_request(self, number: int, digest: str) -> None:
        self.conn.publish(self.topics.test, TestRequest(job=self.job, run_id=self.run_id, round=number,
                                                        model_digest=digest))
