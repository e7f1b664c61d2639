"""Does the broker offer what fedmq relies on? Checked before a connection's first publish.

fedmq needs three things that not every MQTT broker, or every broker's configuration, gives:

- QoS 1: every chunk is acknowledged (Mosquitto with ``max_qos 0`` drops the connection instead);
- retained messages: the job spec and the presences are retained (Mosquitto with
  ``retain_available false`` drops the connection; a broker may also accept them and forget);
- packets as large as the job's chunks (Mosquitto ``max_packet_size``, EMQX
  ``mqtt.max_packet_size`` (1 MB by default), NATS ``max_payload`` (1 MB) drop the connection).

Without them a federation does not fail, it hangs: paho sends a refused packet again after every
reconnect, and a silo waits for a job spec that never comes. The probe turns a missing feature
into a ``BrokerError`` that names it and the setting to change. A chunk size the broker does not
carry is not an error: ``check`` returns a smaller one it does (receivers take any chunk size),
with a warning, and fails only where not even 4 KiB chunks get through.

Each attempt runs on a throwaway session of its own (client id ``<connection's id>-p<n>``), so
whatever the broker does to it cannot touch the federation's connection, on topics of its own,
``fedmq-probe/<its client id>/...``, outside every job. On a good broker it costs one connection
and a few round trips. Its own live message must come back to it first: where it does not (an
ACL that does not grant ``fedmq-probe/<client id>/#``, as with ``fedmq broker --auth-dir``), the
checks that need a delivery are skipped and logged as skipped, after ``ECHO_TIMEOUT_S``.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..errors import BrokerError
from .url import BrokerUrl

log = logging.getLogger(__name__)

QOS = 1
PROBE_ROOT = "fedmq-probe"
TIMEOUT_S = 5.0  # for an acknowledgement; the packet step adds transfer time at SLOWEST_LINK_BYTES_PER_S
ECHO_TIMEOUT_S = 1.0  # for the probe's own live message to come back, before concluding the topic is not ours
GRACE_S = 0.5  # how much later than the live message a retained one may still arrive (never, on RabbitMQ's wildcards)
SLOWEST_LINK_BYTES_PER_S = 1 << 20
MAX_TOPIC_BYTES = 160  # the longest fedmq topic: "fedmq/" + job (64) + "/presence/" + silo (64) = 144 bytes
FALLBACK_MARGIN = 4096  # room for the topic and headers under a limit equal to the chunk size
MIN_FALLBACK_CHUNK = 4096

QOS_HINT = "fedmq needs QoS 1 (at least once): allow it on the broker (Mosquitto: max_qos 1 or more)"
RETAIN_HINT = ("enable retained messages (Mosquitto: retain_available true; EMQX: the retainer; "
               "NATS: JetStream, which its MQTT support needs; RabbitMQ: a retained message store, its default)")
PACKET_HINT = ("lower the aggregator's --chunk-size to the broker's maximum packet size less 200 bytes, or raise that "
               "maximum (Mosquitto: max_packet_size; EMQX: mqtt.max_packet_size; NATS: max_payload)")


class NoSession(Exception):
    """The probe could not open a session of its own (a broker that allows one per login, say)."""


class ProbeSession:
    """One throwaway MQTT session: publish and wait for the PUBACK, subscribe and wait for the
    SUBACK, collect what arrives. It never reconnects: a dropped session stays dropped."""

    def __init__(self, url: BrokerUrl, client_id: str) -> None:
        self.url = url
        self.base = f"{PROBE_ROOT}/{client_id.replace('.', '_')}"  # NATS before 2.10 takes no '.' in a topic
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._events = threading.Condition()  # every callback below notifies it
        self._connected = False
        self.dropped = False
        self._subacks: dict[int, int | None] = {}
        self._pubacks: set[int] = set()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                   clean_session=True)
        if url.username:  # the same login and TLS as the federation's connection
            self._client.username_pw_set(url.username, url.password)
        if url.tls:
            self._client.tls_set(ca_certs=str(url.ca_file) if url.ca_file else None)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._thread = threading.Thread(target=self._loop, name="fedmq-probe", daemon=True)

    def __enter__(self) -> ProbeSession:
        try:
            self._client.connect(self.url.host, self.url.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise NoSession(str(exc)) from None
        self._thread.start()
        if not self._wait(lambda: self._connected or self.dropped, TIMEOUT_S) or not self._connected:
            self.__exit__()
            raise NoSession("the broker refused it" if self.dropped else "no answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._thread.join(timeout=TIMEOUT_S)

    def publish(self, topic: str, payload: bytes, retain: bool = False, timeout: float = TIMEOUT_S) -> bool:
        """Whether the broker acknowledged it, in time and without dropping the session."""
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        return self._wait(lambda: self.dropped or info.mid in self._pubacks, timeout) and not self.dropped

    def subscribe(self, filters: list[str]) -> int | None:
        """Subscribe at QoS 1; the lowest QoS granted, None where the broker refused a filter (an ACL)."""
        _, mid = self._client.subscribe([(f, QOS) for f in filters])
        if not self._wait(lambda: self.dropped or mid in self._subacks, TIMEOUT_S) or self.dropped:
            raise BrokerError(f"the broker at {self.url} did not answer a subscription within {TIMEOUT_S:.0f} s",
                              hint="check that the broker is up and allows subscriptions")
        return self._subacks[mid]

    def receive(self, topics: set[str], token: bytes, first: str, timeout: float, grace: float = GRACE_S) -> set[str]:
        """Those of ``topics`` whose message starting with ``token`` arrived: waits up to ``timeout``
        for ``first``, then up to ``grace`` for the others."""
        got: set[str] = set()
        deadline = time.monotonic() + timeout
        while got != topics and (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload = self.inbox.get(timeout=left)
            except queue.Empty:
                break
            if topic in topics and payload.startswith(token):
                got.add(topic)
                if topic == first:
                    deadline = min(deadline, time.monotonic() + grace)
        return got

    def clear_retained(self, *topics: str) -> None:
        """Delete the probe's retained messages, and wait until they are gone: the broker keeps them otherwise."""
        infos = [self._client.publish(topic, b"", qos=QOS, retain=True) for topic in topics]
        self._wait(lambda: self.dropped or all(i.mid in self._pubacks for i in infos), TIMEOUT_S)

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        with self._events:
            return self._events.wait_for(done, timeout=timeout)

    def _notify(self, change: Callable[[], None]) -> None:
        with self._events:
            change()
            self._events.notify_all()

    # -- paho's network thread --------------------------------------------------------------------
    def _loop(self) -> None:
        """paho's network loop without its reconnects."""
        while self._client.loop(timeout=0.05) == mqtt.MQTT_ERR_SUCCESS:
            pass
        self._notify(lambda: setattr(self, "dropped", True))

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code, properties) -> None:
        self._notify(lambda: setattr(self, "_connected", not reason_code.is_failure))

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason_code, properties) -> None:
        self._notify(lambda: setattr(self, "dropped", True))

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes, properties) -> None:
        granted = None if any(code.is_failure for code in reason_codes) else min(code.value for code in reason_codes)
        self._notify(lambda: self._subacks.__setitem__(mid, granted))

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code, properties) -> None:
        self._notify(lambda: self._pubacks.add(mid))  # paho marks the message info published only after this

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.inbox.put((message.topic, bytes(message.payload)))


class PacketRefused(BrokerError):
    """The broker did not carry a packet of some size: a smaller chunk may still do."""


class BrokerProbe:
    """What one connection learnt about its broker: probed once for its features, and again for
    each larger chunk than before. Thread-safe; free once probed."""

    def __init__(self, url: BrokerUrl, client_id: str) -> None:
        self.url = url
        self.client_id = client_id
        self._lock = threading.Lock()
        self._sessions = itertools.count(1)
        self._features_checked = False
        self._chunk_ok = 0  # the largest chunk the broker was seen to carry
        self._chunk_refused = 0  # the smallest chunk it was seen to refuse (0: none)
        self.usable = True  # whether the probe may publish on its topics (not: an ACL that disconnects it)
        self.echoes: bool | None = None  # whether the probe's topics come back to it (not: an ACL); None: not known
        self.wildcard_retained: bool | None = None  # whether retained messages reach wildcard filters

    def check(self, chunk_bytes: int = 0) -> int:
        """Raise ``BrokerError`` naming a feature the broker lacks; return the chunk size to send
        instead of ``chunk_bytes``: itself where the broker carries it, else the largest of
        ``chunk_bytes - 4 KiB``, then halves of it, that it carries (with a warning). Whatever was
        checked before is not checked again."""
        with self._lock:
            try:
                if not self._features_checked:
                    self._twice(lambda session: self._check_features(session))
                    self._features_checked = True
                return self._fit(chunk_bytes)
            except NoSession as exc:
                log.warning("could not open a second session to probe the broker at %s (%s): not checked whether "
                            "it supports QoS 1, retained messages and %d-byte chunks", self.url, exc, chunk_bytes)
                self._features_checked = True
                self._chunk_ok = max(self._chunk_ok, chunk_bytes)
                return chunk_bytes

    def _fit(self, chunk_bytes: int) -> int:
        if not self.usable:
            return chunk_bytes
        refusal: PacketRefused | None = None
        for size in fallback_chunk_sizes(chunk_bytes):
            if size <= self._chunk_ok:
                return min(chunk_bytes, self._chunk_ok)
            if self._chunk_refused and size >= self._chunk_refused:
                continue
            try:
                self._twice(lambda session, size=size: self._check_packet(session, size))
            except PacketRefused as exc:
                self._chunk_refused, refusal = size, refusal or exc
                continue
            self._chunk_ok = size
            if size < chunk_bytes:
                log.warning("the broker at %s does not carry chunks of %d bytes: sending chunks of %d (pass "
                            "--chunk-size %d to the aggregator, or raise the broker's maximum packet size)",
                            self.url, chunk_bytes, size, size)
            return size
        raise refusal or PacketRefused(f"the broker at {self.url} carries no chunk of {MIN_FALLBACK_CHUNK} bytes or more",
                                       hint=PACKET_HINT)

    def _twice(self, steps: Callable[[ProbeSession], None]) -> None:
        """Probe on a session of its own. One the broker dropped gets a second session: a broker
        restart is not a missing feature, but a broker that drops every session that sends some
        packet refuses that packet. The first failure is the one reported: it names the step that broke."""
        failures: list[BrokerError] = []
        for _ in range(2):
            with ProbeSession(self.url, f"{self.client_id}-p{next(self._sessions)}") as session:
                try:
                    steps(session)
                    return
                except BrokerError as exc:
                    if not session.dropped:
                        raise
                    failures.append(exc)
            log.info("the broker at %s dropped the probe's session: %s", self.url, failures[-1].message)
        raise failures[0]

    def _check_features(self, session: ProbeSession) -> None:
        """QoS 1, then retained messages: published before the subscription, they must arrive on it,
        ahead of a live message published after it (the echo that shows the topics are ours)."""
        started = time.monotonic()
        if not self._check_qos(session):
            return
        token = uuid.uuid4().hex.encode()
        exact, wild, echo = f"{session.base}/e", f"{session.base}/w/r", f"{session.base}/l"
        try:
            if not (session.publish(exact, token, retain=True) and session.publish(wild, token, retain=True)):
                raise BrokerError(f"the broker at {self.url} refused a retained message", hint=RETAIN_HINT)
            got = set()
            if session.subscribe([exact, f"{session.base}/w/+", echo]) is not None and session.publish(echo, token):
                got = session.receive({exact, wild, echo}, token, first=echo, timeout=ECHO_TIMEOUT_S)
        finally:
            session.clear_retained(exact, wild)
        self.echoes = echo in got
        if not self.echoes:
            log.info("the broker at %s does not deliver %s/# back to its publisher (an ACL?): not checked whether "
                     "it returns retained messages or delivers large ones", self.url, session.base)
            return
        if exact not in got:
            raise BrokerError(f"the broker at {self.url} did not return a retained message to a new subscription",
                              hint=RETAIN_HINT)
        self.wildcard_retained = wild in got
        if not self.wildcard_retained:
            log.warning("the broker at %s does not send retained messages to wildcard subscriptions (RabbitMQ does "
                        "not): start the aggregator before the silos, so that it hears each silo come online", self.url)
        log.debug("probed the broker at %s in %.3f s", self.url, time.monotonic() - started)

    def _check_qos(self, session: ProbeSession) -> bool:
        """QoS 1 granted to a subscription and acknowledged for a publish. False where the probe may
        not use its topics at all: an ACL refused the subscription and dropped the session for the
        publish (EMQX with ``authorization.deny_action = disconnect``)."""
        topic = f"{session.base}/q"
        granted = session.subscribe([topic])
        if granted == 0:
            raise BrokerError(f"the broker at {self.url} granted QoS 0 to a QoS 1 subscription", hint=QOS_HINT)
        if session.publish(topic, b"q"):
            return True
        if granted is None:
            self.usable = self.echoes = False
            log.warning("the broker at %s refuses the probe's topics %s/# (an ACL): not checked whether it supports "
                        "QoS 1, retained messages and large chunks; allow fedmq-probe/<client id>/# to have them "
                        "checked", self.url, session.base)
            return False
        raise BrokerError(f"the broker at {self.url} did not acknowledge a QoS 1 message",
                          hint=QOS_HINT + "; or an ACL disconnects a client that publishes outside its topics "
                                          "(allow fedmq-probe/<client id>/#)")

    def _check_packet(self, session: ProbeSession, chunk_bytes: int) -> None:
        """A packet at least as large as a chunk of ``chunk_bytes`` on any fedmq topic must be
        acknowledged and, where the probe's topics come back to it, delivered."""
        topic = f"{session.base}/p"
        token = uuid.uuid4().hex.encode()
        payload = token + bytes(max(0, chunk_bytes + MAX_TOPIC_BYTES - len(topic.encode()) - len(token)))
        timeout = TIMEOUT_S + 2 * len(payload) / SLOWEST_LINK_BYTES_PER_S
        delivered = self.echoes is not False and session.subscribe([topic]) is not None
        if not session.publish(topic, payload, timeout=timeout):
            raise PacketRefused(f"the broker at {self.url} refused a message of {len(payload)} bytes "
                                f"(for chunks of {chunk_bytes} bytes)", hint=PACKET_HINT)
        if delivered and topic not in session.receive({topic}, token, first=topic, timeout=timeout):
            raise PacketRefused(f"the broker at {self.url} acknowledged a message of {len(payload)} bytes but did "
                                f"not deliver it (for chunks of {chunk_bytes} bytes)", hint=PACKET_HINT)


def fallback_chunk_sizes(chunk_bytes: int) -> list[int]:
    """``chunk_bytes``, then sizes that fit under the limits brokers commonly have, largest first:
    4 KiB less (a limit equal to the chunk size leaves no room for the topic), then halves."""
    sizes = [chunk_bytes]
    size = chunk_bytes
    while size - FALLBACK_MARGIN >= MIN_FALLBACK_CHUNK:
        sizes.append(size - FALLBACK_MARGIN)
        size //= 2
    return sizes
