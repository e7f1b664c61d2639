"""The MQTT connection used by the aggregator and the silos alike.

paho-mqtt 2 (callback API v2), MQTT 3.1.1 for the widest broker support, QoS 1 everywhere,
automatic reconnect with backoff and re-subscription. Chunks are reassembled on paho's network
thread; whole, verified messages (or the reason one was refused) land in ``inbox`` for the
process's own thread to handle, so no model work ever runs inside a paho callback.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..errors import BrokerError, ProtocolError
from ..schemas import DEFAULT_CHUNK_SIZE, Envelope, Reassembler, encode_chunks, unpack_message
from ..schemas.framing import pack_message, split_chunks
from ..schemas.messages import Message
from .url import BrokerUrl

log = logging.getLogger(__name__)

QOS = 1
KEEPALIVE_S = 30
PUBLISH_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Refused:
    """A message that arrived but broke the contract; the receiver decides whether to record it."""

    topic: str
    reason: str


Incoming = Envelope | Refused


class Connection:
    """One MQTT session: subscribe, publish whole messages, receive whole messages in ``inbox``."""

    def __init__(
        self,
        url: BrokerUrl,
        name: str,
        subscriptions: list[str],
        max_message_bytes: int,
        will: tuple[str, Message] | None = None,
    ) -> None:
        self.url = url
        self.subscriptions = list(subscriptions)
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self._reassembler = Reassembler(max_message_bytes)
        self._connected = threading.Event()
        self._refusal: str | None = None
        self._retained: dict[str, bytes] = {}
        self._retained_lock = threading.Lock()
        client_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        if url.username:
            self._client.username_pw_set(url.username, url.password)
        if will is not None:
            topic, header = will
            self._client.will_set(topic, _single_chunk(header), qos=QOS, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- lifecycle -----------------------------------------------------------------------------
    def connect(self, timeout: float = 30.0) -> None:
        """Connect, retrying until ``timeout`` (the broker may still be starting), then subscribe."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                self._client.connect(self.url.host, self.url.port, keepalive=KEEPALIVE_S)
                break
            except (OSError, ValueError) as exc:
                last_error = exc
                if time.monotonic() >= deadline:
                    raise BrokerError(
                        f"cannot reach the MQTT broker at {self.url}: {last_error}",
                        hint="start one with `fedmq broker --port PORT` or pass --broker mqtt://host:port",
                    ) from None
                time.sleep(0.5)
        self._client.loop_start()
        if not self._connected.wait(max(1.0, deadline - time.monotonic())):
            self.close()
            reason = self._refusal or "no answer to CONNECT"
            raise BrokerError(f"the broker at {self.url} did not accept the connection: {reason}",
                              hint="check the broker address and credentials")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- publishing ----------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        header: Message,
        payload: bytes = b"",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        retain: bool = False,
        timeout: float = PUBLISH_TIMEOUT_S,
    ) -> int:
        """Publish one logical message (chunked) and wait for the broker to acknowledge every chunk.

        Returns the bytes put on the wire. A retained message must fit one chunk, because the
        broker retains only the last packet of a topic.
        """
        chunks = [_single_chunk(header)] if retain else encode_chunks(header, payload, chunk_size)
        infos = [self._client.publish(topic, chunk, qos=QOS, retain=retain) for chunk in chunks]
        self._wait(topic, infos, timeout)
        return sum(len(c) for c in chunks)

    def _wait(self, topic: str, infos: list[mqtt.MQTTMessageInfo], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for info in infos:
            remaining = deadline - time.monotonic()
            try:
                info.wait_for_publish(timeout=max(0.0, remaining))
            except (RuntimeError, ValueError) as exc:
                raise BrokerError(f"publishing to {topic} failed: {exc}", hint="check the broker") from None
            if not info.is_published():
                raise BrokerError(
                    f"the broker did not acknowledge a message on {topic} within {timeout:.0f} s",
                    hint="check that the broker is up and accepts packets of the chunk size",
                )

    def set_retained(self, topic: str, header: Message, timeout: float = 30.0) -> None:
        """Publish a retained one-chunk message now and again after every reconnect.

        A broker without persistence forgets retained messages when it restarts; re-publishing
        them on reconnect (job spec, presence) is what lets a late silo still learn the job.
        """
        chunk = _single_chunk(header)
        with self._retained_lock:
            self._retained[topic] = chunk
        self._wait(topic, [self._client.publish(topic, chunk, qos=QOS, retain=True)], timeout)

    def clear_retained(self, topic: str) -> None:
        with self._retained_lock:
            self._retained.pop(topic, None)
        self._client.publish(topic, b"", qos=QOS, retain=True).wait_for_publish(timeout=10)

    # -- receiving -----------------------------------------------------------------------------
    def receive(self, timeout: float | None) -> Incoming | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    # -- paho callbacks (network thread) ------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            log.error("broker %s refused the connection: %s", self.url, reason_code)
            return
        for topic in self.subscriptions:
            client.subscribe(topic, qos=QOS)
        with self._retained_lock:
            for topic, chunk in self._retained.items():
                client.publish(topic, chunk, qos=QOS, retain=True)
        if self._connected.is_set():
            log.info("reconnected to %s", self.url)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason_code, properties) -> None:
        if reason_code.value != 0:
            log.warning("lost the broker connection (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return  # a cleared retained message
        try:
            whole = self._reassembler.add(message.topic, message.payload)
            if whole is not None:
                self.inbox.put(unpack_message(whole, topic=message.topic))
        except ProtocolError as exc:
            self.inbox.put(Refused(topic=message.topic, reason=str(exc)))
        except Exception:  # a bug here must not kill paho's network thread
            log.exception("unexpected error while handling a message on %s", message.topic)


def _single_chunk(header: Message) -> bytes:
    return split_chunks(pack_message(header), chunk_size=1 << 30)[0]
