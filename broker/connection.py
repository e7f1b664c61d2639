"""The MQTT connection used by the aggregator and the silos alike.

paho-mqtt 2 (callback API v2), MQTT 3.1.1 for the widest broker support, QoS 1 everywhere,
automatic reconnect with backoff and re-subscription. Chunks are reassembled on paho's network
thread; whole, verified messages (or the reason one was refused) land in ``inbox`` for the
process's own thread to handle, so no model work ever runs inside a paho callback. Before its first
publish, and before any larger chunk than before, the broker is probed (broker/probe.py): a broker
without QoS 1 or retained messages is a clear error, not a hang, and chunks larger than it carries
are cut smaller, with a warning.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..errors import BrokerError, Overloaded, ProtocolError
from ..schemas import DEFAULT_CHUNK_SIZE, Envelope, Reassembler, encode_chunks, unpack_message
from ..schemas.framing import pack_message, split_chunks
from ..schemas.messages import JobSpec, Message
from .inbox import Inbox
from .probe import BrokerProbe
from .url import BrokerUrl

DROPS_GIVE_UP_S = 5.0  # connections dropped before CONNACK for this long (and the connect timeout not over): give up

log = logging.getLogger(__name__)

QOS = 1
KEEPALIVE_S = 30
PUBLISH_TIMEOUT_S = 300.0
STALL_TIMEOUT_S = 120.0  # a message that gets no chunk for this long is dropped and reported
MAX_PENDING_PER_TOPIC = 4  # partial messages one sender's topic may hold at a time
SUBACK_TIMEOUT_S = 30.0  # a (re)subscription unanswered this long means the process no longer receives
SUBSCRIPTION_HINT = ("check its ACL (a silo logs in with its silo name as username: see `fedmq broker --auth-dir`); "
                     "NATS before 2.10 takes no '.' in a topic: use job and silo names without one")


@dataclass(frozen=True)
class Refused:
    """A message that arrived but broke the contract; the receiver decides whether to record it."""

    topic: str
    reason: str
    retry: bool = False  # not the message's fault (no room, or chunks lost on the way): ask for it again


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
        stall_timeout: float = STALL_TIMEOUT_S,
        probe: bool = True,
        coalesce: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.subscriptions = list(subscriptions)
        self.inbox: Inbox[Incoming] = Inbox()
        self._coalesce = dict(coalesce or {})  # topic -> key: a newer message of the key replaces a waiting one
        self._reassembler = Reassembler(max_message_bytes, ttl=stall_timeout, check_headers=True,
                                        max_pending_per_topic=MAX_PENDING_PER_TOPIC)
        self._reassembly_lock = threading.Lock()  # paho's thread adds chunks; receive() expires stalled ones
        self._connected = threading.Event()  # set once the first connection succeeded
        self._online = threading.Event()  # set while connected
        self._refusal: str | None = None
        self._answered = threading.Event()  # set by the first CONNACK, accepted or refused
        self._unanswered_drops = 0  # connections dropped before any CONNACK: repeated for long, an answer too
        self._first_drop: float | None = None
        self._suback_topics: dict[int, str] = {}  # SUBSCRIBE mid -> topic, until its SUBACK
        self._suback_deadline = 0.0  # monotonic: when the subscriptions of the last (re)connect must be answered by
        self._refused_topics: list[str] = []
        self._subscribed = threading.Event()  # set once every first subscription was answered
        self._deaf: BrokerError | None = None  # set when the broker no longer delivers what we subscribed to
        self._retained: dict[str, bytes] = {}
        self.epoch = 0  # counts successful (re)connections: a change means messages may have been lost
        self._retained_lock = threading.Lock()
        client_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self._probe = BrokerProbe(url, client_id) if probe else None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        if url.username:
            self._client.username_pw_set(url.username, url.password)
        if url.tls:
            self._client.tls_set(ca_certs=str(url.ca_file) if url.ca_file else None)
        self._will = will is not None
        if will is not None:
            topic, header = will
            self._client.will_set(topic, _single_chunk(header), qos=QOS, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    def set_will(self, topic: str, header: Message) -> None:
        """Make ``header`` (retained, one chunk) the last will the broker publishes if this connection
        is lost without a goodbye. Set before ``connect``, or later for the next reconnect."""
        self._client.will_set(topic, _single_chunk(header), qos=QOS, retain=True)
        self._will = True

    # -- lifecycle -----------------------------------------------------------------------------
    def connect(self, timeout: float = 30.0) -> None:
        """Connect, retrying until ``timeout`` (the broker may still be starting), then subscribe."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                self._client.connect(self.url.host, self.url.port, keepalive=KEEPALIVE_S)
                break
            except ssl.SSLError as exc:  # something answered, but TLS failed: retrying will not help
                raise _tls_error(self.url, exc) from None
            except (OSError, ValueError) as exc:
                last_error = exc
                if time.monotonic() >= deadline:
                    raise BrokerError(
                        f"cannot reach the MQTT broker at {self.url}: {last_error}",
                        hint="start one with `fedmq broker --port PORT` or pass --broker mqtt://host:port",
                    ) from None
                time.sleep(0.5)
        self._client.loop_start()
        self._answered.wait(max(1.0, deadline - time.monotonic()))
        if not self._connected.is_set():
            self.close()
            if self._refusal is None and self._probe is not None and self._will:
                # Dropped without an answer: a broker that lacks what the last will needs (a retained
                # QoS 1 message) does that. The probe, which sends no will, says which it is.
                self._probe.check()
            raise _refusal_error(self.url, self._refusal)
        if not self.subscriptions:
            return
        if not self._subscribed.wait(max(SUBACK_TIMEOUT_S, deadline - time.monotonic())):
            self.close()
            raise BrokerError(f"the broker at {self.url} did not answer the subscription to "
                              f"{', '.join(sorted(set(self._suback_topics.values())))}", hint=SUBSCRIPTION_HINT)
        if self._refused_topics:
            self.close()
            raise BrokerError(f"the broker at {self.url} refused the subscription to {', '.join(self._refused_topics)}",
                              hint=SUBSCRIPTION_HINT)

    def close(self) -> None:
        self._client.disconnect()
        try:
            self._client.loop_stop()
        except AttributeError:
            # paho-mqtt issue 872 (open): the network thread, ending after the disconnect, clears its handle
            # between loop_stop's check and its join. It is past its loop by then: nothing is left to stop.
            pass

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
        largest = max(len(c) for c in chunks)
        fitted = self.probe(largest)
        if fitted < largest:  # the broker does not carry chunks this large: smaller ones, which receivers take as well
            if retain:
                raise BrokerError(f"a retained message of {largest} bytes is larger than the broker at {self.url} carries")
            chunks = encode_chunks(header, payload, fitted)
        self._send(topic, chunks, retain, timeout)
        return sum(len(c) for c in chunks)

    def _send(self, topic: str, chunks: list[bytes], retain: bool, timeout: float) -> None:
        """Send chunks and wait for every acknowledgement, sending them all again if the connection
        drops on the way: a reconnect may have lost what was in flight. The receiver drops partial
        messages after a time limit, and the layers above drop a message that arrives twice."""
        deadline = time.monotonic() + timeout
        while True:
            if not self._online.wait(timeout=max(0.0, deadline - time.monotonic())):
                raise BrokerError(f"not connected to the broker at {self.url}; could not publish to {topic} "
                                  f"within {timeout:.0f} s", hint="check that the broker is up")
            epoch = self.epoch
            infos = [self._client.publish(topic, chunk, qos=QOS, retain=retain) for chunk in chunks]
            if self._acknowledged(topic, infos, epoch, deadline, timeout):
                return
            log.info("the connection dropped while publishing to %s; sending again once reconnected", topic)

    def _acknowledged(self, topic: str, infos: list[mqtt.MQTTMessageInfo], epoch: int, deadline: float,
                      timeout: float) -> bool:
        """True once the broker acknowledged all; False if the connection dropped first."""
        for info in infos:
            while not _is_published(info):
                if self.epoch != epoch or not self._online.is_set() or info.rc == mqtt.MQTT_ERR_NO_CONN:
                    return False
                if time.monotonic() >= deadline:
                    raise BrokerError(
                        f"the broker did not acknowledge a message on {topic} within {timeout:.0f} s",
                        hint="check that the broker is up and accepts packets of the chunk size",
                    )
                try:
                    info.wait_for_publish(timeout=0.5)
                except RuntimeError:  # paho: not connected; the loop above sees the drop
                    time.sleep(0.1)
                except ValueError as exc:
                    raise BrokerError(f"publishing to {topic} failed: {exc}", hint="check the broker") from None
        return True

    def set_retained(self, topic: str, header: Message, timeout: float = 30.0) -> None:
        """Publish a retained one-chunk message now and again after every reconnect.

        A broker without persistence forgets retained messages when it restarts; re-publishing
        them on reconnect (job spec, presence) is what lets a late silo still learn the job.
        """
        chunk = _single_chunk(header)
        # A job spec names the chunk size of the job's messages: one the broker cannot carry is
        # found (and a smaller one chosen) as the aggregator starts, not at its first model.
        self.probe(max(len(chunk), header.chunk_size if isinstance(header, JobSpec) else 0))
        with self._retained_lock:
            self._retained[topic] = chunk
        self._send(topic, [chunk], retain=True, timeout=timeout)

    def clear_retained(self, topic: str) -> None:
        with self._retained_lock:
            self._retained.pop(topic, None)
        self._client.publish(topic, b"", qos=QOS, retain=True).wait_for_publish(timeout=10)

    def probe(self, chunk_bytes: int = 0) -> int:
        """Check the broker (once; again for a larger chunk) and raise ``BrokerError`` naming what it
        lacks. Returns the chunk size to send instead of ``chunk_bytes``: smaller where the broker
        does not carry that (see broker/probe.py)."""
        return chunk_bytes if self._probe is None else self._probe.check(chunk_bytes)

    # -- receiving -----------------------------------------------------------------------------
    def receive(self, timeout: float | None) -> Incoming | None:
        """The next whole message (or a ``Refused``), or None after ``timeout`` seconds.

        Raises ``BrokerError`` once the broker stopped delivering what this process subscribed to (a
        subscription refused or left unanswered after a reconnect): a process that goes on without
        it would wait for messages that can never come."""
        self._check_subscriptions()
        with self._reassembly_lock:
            self._reassembler.expire()
            self._report_dropped()
        return self.inbox.get(timeout=timeout)

    def _check_subscriptions(self) -> None:
        if self._deaf is None and self._connected.is_set() and self._online.is_set() and self._suback_topics \
                and time.monotonic() > self._suback_deadline:
            self._deaf = BrokerError(
                f"the broker at {self.url} did not answer the subscription to "
                f"{', '.join(sorted(set(self._suback_topics.values())))} after reconnecting; this process no longer "
                "receives its messages", hint="check the broker's log, then restart this process")
        if self._deaf is not None:
            raise self._deaf

    def limit_message_bytes(self, max_message_bytes: int, senders: int = 0) -> None:
        """Set the cap on one incoming message (say once the model's size is known), and room for
        partial messages from ``senders`` peers sending at once (at least 4 messages' worth)."""
        with self._reassembly_lock:
            self._reassembler.max_message_bytes = max_message_bytes
            self._reassembler.max_pending_bytes = max(4, senders + 1) * max_message_bytes

    def _report_dropped(self) -> None:
        for topic, reason in self._reassembler.take_dropped():
            self.inbox.put(Refused(topic=topic, reason=reason, retry=True), force=True)

    # -- paho callbacks (network thread) ------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            log.error("broker %s refused the connection: %s", self.url, reason_code)
            self._answered.set()
            return
        self._suback_topics.clear()  # what a dropped connection left unanswered
        self._suback_deadline = time.monotonic() + SUBACK_TIMEOUT_S
        for topic in self.subscriptions:
            self._suback_topics[client.subscribe(topic, qos=QOS)[1]] = topic
        with self._retained_lock:
            for topic, chunk in self._retained.items():
                client.publish(topic, chunk, qos=QOS, retain=True)
        if self._connected.is_set():
            log.info("reconnected to %s", self.url)
        self.epoch += 1
        self._connected.set()
        self._online.set()
        self._answered.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes, properties) -> None:
        topic = self._suback_topics.pop(mid, None)
        if topic is not None and any(code.is_failure for code in reason_codes):
            log.error("the broker at %s refused the subscription to %s", self.url, topic)
            self._refused_topics.append(topic)
            if self._subscribed.is_set() and self._deaf is None:
                # After a reconnect: nobody waits on connect() any more, so the next receive() raises it.
                self._deaf = BrokerError(f"the broker at {self.url} refused the subscription to {topic} after "
                                         "reconnecting; this process no longer receives its messages",
                                         hint=SUBSCRIPTION_HINT)
        if not self._suback_topics:
            self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason_code, properties) -> None:
        self._online.clear()
        if not self._connected.is_set():
            # Dropped on CONNECT: a TLS listener, a will it will not take, or a broker restarting behind
            # something that accepts TCP for it (a load balancer). Give up early only once the drops have
            # gone on for DROPS_GIVE_UP_S: a restarting broker answers within that.
            now = time.monotonic()
            self._first_drop = self._first_drop or now
            self._unanswered_drops += 1
            if self._unanswered_drops >= 2 and now - self._first_drop >= DROPS_GIVE_UP_S:
                self._answered.set()
        if reason_code.value != 0:
            log.warning("lost the broker connection (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return  # a cleared retained message
        try:
            with self._reassembly_lock:
                whole = self._reassembler.add(message.topic, message.payload)
                self._report_dropped()
            if whole is not None:
                self.inbox.put(unpack_message(whole, topic=message.topic), self._coalesce.get(message.topic))
        except Overloaded as exc:
            self.inbox.put(Refused(topic=message.topic, reason=str(exc), retry=True), force=True)
        except ProtocolError as exc:
            self.inbox.put(Refused(topic=message.topic, reason=str(exc)), force=True)
        except Exception:  # a bug here must not kill paho's network thread
            log.exception("unexpected error while handling a message on %s", message.topic)


def _refusal_error(url: BrokerUrl, refusal: str | None) -> BrokerError:
    if refusal is None:
        return BrokerError(f"the broker at {url} did not answer the connection request",
                           hint="check the broker address (mqtts:// for a TLS listener)")
    reason = refusal.lower()
    if url.username is None:
        return BrokerError(f"the broker at {url} refused an anonymous connection ({reason})",
                           hint="it requires a login: pass mqtt://USER:PASSWORD@host:port in --broker or $FEDMQ_BROKER")
    if "not authori" in reason or "user name or password" in reason:
        return BrokerError(f"the broker refused the credentials for user {url.username} ({reason})",
                           hint="check the username and password (AUTH_DIR/credentials.json of `fedmq broker --auth-dir`)")
    return BrokerError(f"the broker at {url} refused the connection ({reason})",
                       hint="check the broker address and credentials")


def _tls_error(url: BrokerUrl, exc: ssl.SSLError) -> BrokerError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerError(f"the TLS certificate of the broker at {url} is not trusted: {exc.verify_message}",
                           hint="pass the broker's CA as --ca-file or $FEDMQ_CA_FILE: DIR/ca.crt of `fedmq broker --tls-dir DIR`")
    return BrokerError(f"TLS with the broker at {url} failed: {exc.reason or exc}",
                       hint="is it a TLS listener? use mqtts:// only for one, mqtt:// otherwise")


def _is_published(info: mqtt.MQTTMessageInfo) -> bool:
    """paho raises for a message queued while disconnected (sent on reconnect): that is "not yet"."""
    try:
        return info.is_published()
    except RuntimeError:
        return False


def _single_chunk(header: Message) -> bytes:
    return split_chunks(pack_message(header), chunk_size=1 << 30)[0]
