"""A loopback TCP proxy between fedmq's processes and the broker, which the chaos soak controls.

One listening port per process (the aggregator, each silo): the process is started with
``--broker mqtt://127.0.0.1:<its port>`` and every connection it opens there is forwarded to the
real broker. The benchmark can then, per process:

* ``cut``: abort its connections (an RST, as a dropped link looks to the process);
* ``stall``: stop forwarding in both directions for a while (bytes queue, nothing is lost);
* ``latency``: delay every forwarded piece by a fixed time for a while;
* ``arm_upload_cut``: cut the connection in the middle of its next multi-chunk update (after chunk
  ``i`` of ``n`` went through);
* ``replay``: send the broker again one chunk, or every chunk, of an update it published: a
  duplicated delivery. The copy is re-encoded as a QoS 0 PUBLISH (no packet id, so the process's
  own acknowledgement bookkeeping is untouched); subscribers receive it as any other message.

The client-to-broker stream is split into MQTT control packets (fixed header: type and flags,
then the remaining length as a variable-length integer), so packets are forwarded whole and a
PUBLISH can be read: topic, QoS, and fedmq's 28-byte chunk prefix (magic, message id, index,
count; ``fedmq.schemas.framing``). Broker-to-client bytes are forwarded as they come.

Runs an asyncio loop in a thread of its own; the methods are thread-safe (they run on the loop).
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
PUBLISH = 3
CONNECT = 1
CHUNK_MAGIC = b"FMQ\x01"
_CHUNK_PREFIX = struct.Struct("!4s16sII")
REMEMBERED_MESSAGES = 4  # update messages remembered per process, for replays


def encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def split_packet(buf: bytearray) -> bytes | None:
    """Take one whole MQTT control packet off the front of ``buf``; None if it is not all there yet."""
    if len(buf) < 2:
        return None
    length, multiplier, i = 0, 1, 1
    while True:
        if i >= len(buf):
            return None
        byte = buf[i]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        i += 1
        if not byte & 0x80:
            break
        if i > 4:
            raise ValueError("malformed remaining length")
    total = i + length
    if len(buf) < total:
        return None
    packet = bytes(buf[:total])
    del buf[:total]
    return packet


@dataclass
class Publish:
    topic: str
    qos: int
    properties: bytes  # MQTT 5 only (with its length prefix); b"" in 3.1.1
    payload: bytes

    def as_qos0(self) -> bytes:
        """The same message as a QoS 0, not retained, PUBLISH packet."""
        topic = self.topic.encode()
        body = struct.pack("!H", len(topic)) + topic + self.properties + self.payload
        return bytes([PUBLISH << 4]) + encode_length(len(body)) + body


def parse_publish(packet: bytes, v5: bool) -> Publish:
    flags = packet[0] & 0x0F
    qos = (flags >> 1) & 3
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1
    (topic_len,) = struct.unpack_from("!H", packet, i)
    topic = packet[i + 2:i + 2 + topic_len].decode(errors="replace")
    i += 2 + topic_len
    if qos:
        i += 2
    properties = b""
    if v5:
        start = i
        length, multiplier = 0, 1
        while True:
            byte = packet[i]
            i += 1
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        i += length
        properties = packet[start:i]
    return Publish(topic, qos, properties, packet[i:])


def chunk_info(payload: bytes) -> tuple[str, int, int] | None:
    """(message id, index, count) of a fedmq chunk, or None."""
    if len(payload) < _CHUNK_PREFIX.size or not payload.startswith(CHUNK_MAGIC):
        return None
    _, mid, index, count = _CHUNK_PREFIX.unpack_from(payload)
    return mid.hex()[:12], index, count


def _header_round(message: bytes) -> int | None:
    """The ``round`` of a fedmq message's JSON header (``u32 length | header``), if the first chunk holds it."""
    try:
        (length,) = struct.unpack_from("!I", message)
        return json.loads(message[4:4 + length]).get("round")
    except (struct.error, ValueError, AttributeError):
        return None


@dataclass
class Message:
    """An update a process published (its chunks as they went through, as QoS 0 packets)."""

    mid: str
    topic: str
    count: int
    chunks: dict[int, bytes] = field(default_factory=dict)
    first_seen: float = 0.0
    round: int | None = None  # the update's round (async: the version it is for), from its header

    @property
    def complete(self) -> bool:
        return len(self.chunks) == self.count


class Listener:
    """One process's port: its connections, and the faults set on it."""

    def __init__(self, name: str, proxy: ChaosProxy) -> None:
        self.name, self.proxy = name, proxy
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.conns: list[Conn] = []
        self.accepted_at: list[float] = []  # wall-clock time of every connection accepted
        self.stall_until = 0.0
        self.latency = 0.0
        self.latency_until = 0.0
        self.cut_upload: int | None = None  # armed: cut after this chunk index (clamped to the message)
        self.kill_upload: tuple[int, Callable[[str], None]] | None = None  # armed: call this after that chunk
        self.messages: OrderedDict[str, Message] = OrderedDict()
        self.uploading: tuple[str, int, int] | None = None  # the last update chunk through: (mid, index, count)
        self.replayed: list[tuple[float, int | None]] = []  # (when, the update's round) of each replay

    def delay(self) -> float:
        return self.latency if time.time() < self.latency_until else 0.0


class Conn:
    def __init__(self, listener: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.listener = listener
        self.client_reader, self.client_writer = reader, writer
        self.up_writer: asyncio.StreamWriter | None = None
        self.to_broker: asyncio.Queue = asyncio.Queue()
        self.to_client: asyncio.Queue = asyncio.Queue()
        self.v5 = False
        self.closed = False

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.client_writer, self.up_writer):
            if w is not None:
                w.transport.abort()
        for q in (self.to_broker, self.to_client):
            q.put_nowait(None)

    async def run(self) -> None:
        try:
            up_reader, self.up_writer = await asyncio.open_connection(HOST, self.listener.proxy.upstream_port)
        except OSError:
            self.abort()  # the broker is down: the process sees a refused connection and retries
            if self in self.listener.conns:
                self.listener.conns.remove(self)
            return
        readers = [asyncio.create_task(self._read_client()), asyncio.create_task(self._read_broker(up_reader))]
        writers = [asyncio.create_task(self._write(self.to_broker, self.up_writer)),
                   asyncio.create_task(self._write(self.to_client, self.client_writer))]
        tasks = readers + writers
        try:
            # A side that closes has what it sent forwarded first (a client's DISCONNECT, delayed by
            # added latency, still arrives before the close, as over TCP); a cut drops everything.
            await asyncio.wait(writers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.abort()
            for t in tasks:
                t.cancel()
            if self in self.listener.conns:
                self.listener.conns.remove(self)

    async def _read_client(self) -> None:
        buf = bytearray()
        try:
            while True:
                data = await self.client_reader.read(65536)
                if not data:
                    self.to_broker.put_nowait("eof")
                    return
                buf += data
                while (packet := split_packet(buf)) is not None:
                    self._inspect(packet)
        except (OSError, ValueError):
            self.abort()

    def _inspect(self, packet: bytes) -> None:
        kind = packet[0] >> 4
        listener = self.listener
        cut_after = False
        if kind == CONNECT:
            try:  # protocol name (2 + 4 bytes "MQTT") then the level: 5 is MQTT 5
                i = 1
                while packet[i] & 0x80:
                    i += 1
                self.v5 = packet[i + 1 + 6] == 5
            except IndexError:
                pass
        elif kind == PUBLISH:
            try:
                publish = parse_publish(packet, self.v5)
            except (IndexError, struct.error):
                publish = None
            info = chunk_info(publish.payload) if publish and "/update/" in publish.topic else None
            if info is not None:
                mid, index, count = info
                listener.uploading = info
                message = listener.messages.get(mid)
                if message is None:
                    message = listener.messages[mid] = Message(mid, publish.topic, count, first_seen=time.time())
                    while len(listener.messages) > REMEMBERED_MESSAGES:
                        listener.messages.popitem(last=False)
                elif index in message.chunks:
                    self.listener.proxy.event(listener.name, f"re-sent chunk {index + 1}/{count} of update {mid}")
                message.chunks[index] = publish.as_qos0()
                if index == 0:
                    message.round = _header_round(publish.payload[_CHUNK_PREFIX.size:])
                if listener.kill_upload is not None and count >= 3 and index >= min(listener.kill_upload[0], count - 2):
                    _, kill = listener.kill_upload
                    listener.kill_upload = None
                    kill(f"after chunk {index + 1}/{count} of update {mid} went through")
                if listener.cut_upload is not None and count >= 3 and index >= min(listener.cut_upload, count - 2):
                    listener.cut_upload = None
                    cut_after = True
                    self.listener.proxy.event(listener.name, f"cut mid-upload: after chunk {index + 1}/{count} of "
                                                             f"update {mid}")
        self.to_broker.put_nowait((time.time() + listener.delay(), packet, cut_after))

    async def _read_broker(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    self.to_client.put_nowait("eof")
                    return
                self.to_client.put_nowait((time.time() + self.listener.delay(), data, False))
        except OSError:
            self.abort()

    async def _write(self, queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        listener = self.listener
        while True:
            item = await queue.get()
            if item is None:
                return
            if item == "eof":  # the other side closed: close this one once what it sent is through
                try:
                    await writer.drain()
                    writer.close()
                    await writer.wait_closed()
                except OSError:
                    pass
                return
            due, data, cut_after = item
            while (wait := max(due, listener.stall_until) - time.time()) > 0:
                await asyncio.sleep(min(wait, 0.2))
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                self.abort()
                return
            if cut_after:
                self.abort()
                return


class ChaosProxy:
    """Listeners by process name, all forwarding to the broker on ``upstream_port``."""

    def __init__(self, upstream_port: int, on_event: Callable[[str, str], None] | None = None) -> None:
        self.upstream_port = upstream_port
        self.listeners: dict[str, Listener] = {}
        self.events: list[tuple[float, str, str]] = []  # (wall time, process, what happened)
        self._on_event = on_event
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="chaos-proxy", daemon=True)
        self._thread.start()

    def event(self, name: str, text: str) -> None:
        self.events.append((time.time(), name, text))
        if self._on_event:
            self._on_event(name, text)

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        if not self.loop.is_running():  # closed: read what it recorded
            result = fn()
            return None if asyncio.iscoroutine(result) else result

        async def run() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def add(self, name: str) -> int:
        """A listener for process ``name`` on a free port; returns the port."""
        listener = Listener(name, self)

        async def start() -> int:
            async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                conn = Conn(listener, reader, writer)
                listener.conns.append(conn)
                listener.uploading = None  # a new connection (maybe a new process) has sent nothing yet
                listener.accepted_at.append(time.time())
                await conn.run()
            listener.server = await asyncio.start_server(accept, HOST, 0)
            return listener.server.sockets[0].getsockname()[1]

        listener.port = self._call(start)
        self.listeners[name] = listener
        return listener.port

    def cut(self, name: str) -> int:
        """Abort every connection of ``name``; returns how many there were."""
        def run() -> int:
            conns = [c for c in self.listeners[name].conns if not c.closed]
            for c in conns:
                c.abort()
            return len(conns)
        return self._call(run)

    def stall(self, name: str, seconds: float) -> None:
        def run() -> None:
            self.listeners[name].stall_until = time.time() + seconds
        self._call(run)

    def latency(self, name: str, delay: float, seconds: float) -> None:
        def run() -> None:
            listener = self.listeners[name]
            listener.latency, listener.latency_until = delay, time.time() + seconds
        self._call(run)

    def arm_upload_cut(self, name: str, after_chunk: int) -> None:
        def run() -> None:
            self.listeners[name].cut_upload = after_chunk
        self._call(run)

    def arm_upload_kill(self, name: str, after_chunk: int | None, kill: Callable[[str], None] | None) -> None:
        """Call ``kill`` (on the proxy's thread) once chunk ``after_chunk`` (at most n-2) of ``name``'s next
        multi-chunk update went through; None disarms."""
        def run() -> None:
            self.listeners[name].kill_upload = None if after_chunk is None else (after_chunk, kill)
        self._call(run)

    def upload_cut_armed(self, name: str) -> bool:
        return self._call(lambda: self.listeners[name].cut_upload is not None)

    def replay(self, name: str, whole: bool, pick: float) -> str | None:
        """Send again (now) the chunks of the newest complete update of ``name`` (``whole``), or one of
        its chunks (the one at fraction ``pick`` of the message). None: nothing to replay (no update
        through yet, or no live connection)."""
        def run() -> str | None:
            listener = self.listeners[name]
            done = [m for m in listener.messages.values() if m.complete]
            live = [c for c in listener.conns if not c.closed and c.up_writer is not None]
            if not done or not live:
                return None
            message, conn = done[-1], live[-1]
            indexes = sorted(message.chunks) if whole else [min(message.count - 1, int(pick * message.count))]
            for i in indexes:
                conn.to_broker.put_nowait((time.time() + listener.delay(), message.chunks[i], False))
            what = f"all {message.count} chunks" if whole else f"chunk {indexes[0] + 1}/{message.count}"
            listener.replayed.append((time.time(), message.round))
            return f"{what} of update {message.mid} for round {message.round} (first sent " \
                   f"{time.time() - message.first_seen:.1f} s before)"
        return self._call(run)

    def last_replayed_round(self, name: str) -> int | None:
        replayed = self.listeners[name].replayed
        return replayed[-1][1] if replayed else None

    def forget_upload(self, name: str) -> None:
        """The process behind ``name`` was restarted: what its last run was uploading is not its own."""
        def run() -> None:
            self.listeners[name].uploading = None
        self._call(run)

    def uploading(self, name: str) -> tuple[str, int, int] | None:
        return self._call(lambda: self.listeners[name].uploading)

    def connections_since(self, name: str, since: float) -> list[float]:
        return self._call(lambda: [t for t in self.listeners[name].accepted_at if t >= since])

    def close(self) -> None:
        def run() -> None:
            for listener in self.listeners.values():
                for c in list(listener.conns):
                    c.abort()
                if listener.server:
                    listener.server.close()
        try:
            self._call(run)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
