"""Message framing: header + payload -> one byte string -> chunks, and back.

A logical message is ``u32 header_length | header JSON | payload``. It is cut into chunks of at
most ``chunk_size`` bytes so brokers with small packet limits work; every chunk carries a fixed
28-byte prefix ``magic | message id (16) | index (u32) | count (u32)`` so chunks may arrive out of
order or twice. The ``Reassembler`` keeps a size cap and a time limit per message, so a peer
cannot make the receiver buffer without bound.
"""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass, field

from ..errors import Overloaded, ProtocolError
from .limits import DEFAULT_CHUNK_SIZE
from .messages import MAX_HEADER_BYTES, Message, dump_header, parse_header
from .pieces import Buffer, Pieces, hasher

MAGIC = b"FMQ\x01"
_PREFIX = struct.Struct("!4s16sII")
PREFIX_SIZE = _PREFIX.size
_HEADER_LEN = struct.Struct("!I")


Received = bytes | Pieces
"""A received payload: ``Pieces`` (views into the chunks it came in) or, from one chunk, bytes."""


@dataclass(frozen=True)
class Envelope:
    """One whole, verified message: a typed header and its payload bytes (possibly empty)."""

    header: Message
    payload: Received = b""  # no joined copy of a model
    topic: str = ""


def pack_message(header: Message, payload: Buffer = b"") -> bytes:
    head = dump_header(header)
    return _HEADER_LEN.pack(len(head)) + head + payload


def unpack_message(data: Buffer | Pieces, topic: str = "") -> Envelope:
    """Parse header and payload, and verify the payload against the header's size and digest.

    The payload stays views into ``data`` (``Pieces``), not a copy: a model is tens of megabytes.
    """
    data = data if isinstance(data, Pieces) else Pieces([data])
    if len(data) < _HEADER_LEN.size:
        raise ProtocolError("message shorter than its length prefix")
    (head_len,) = _HEADER_LEN.unpack(data.take(0, _HEADER_LEN.size))
    end = _HEADER_LEN.size + head_len
    if end > len(data):
        raise ProtocolError(f"header length {head_len} runs past the end of the message")
    header = parse_header(data.take(_HEADER_LEN.size, end))
    payload = data.tail(end)
    info = getattr(header, "payload", None)
    if info is None:
        if len(payload):
            raise ProtocolError(f"{header.type!r} message carries {len(payload)} unexpected payload bytes")
        return Envelope(header=header, topic=topic)
    if len(payload) != info.size:
        raise ProtocolError(f"payload is {len(payload)} bytes but the header declares {info.size}")
    if payload.digest(info.algorithm) != info.digest:
        raise ProtocolError(f"payload {info.algorithm} does not match the header")
    return Envelope(header=header, payload=payload, topic=topic)


def split_chunks(data: Buffer, chunk_size: int, message_id: bytes | None = None) -> list[bytes]:
    """Cut a packed message into prefixed chunks of at most ``chunk_size`` bytes each."""
    return _chunks(Pieces([data]).parts, chunk_size, message_id)


def encode_chunks(header: Message, payload: Buffer = b"", chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """The chunks of one message, each built in one copy from the header and a view of the payload
    (the packed message is never joined first)."""
    head = dump_header(header)
    return _chunks(Pieces([_HEADER_LEN.pack(len(head)) + head, payload]).parts, chunk_size)


def _chunks(parts: list[memoryview], chunk_size: int, message_id: bytes | None = None) -> list[bytes]:
    """Chunks over the concatenation of ``parts`` (non-empty byte views), without materialising it."""
    body = chunk_size - PREFIX_SIZE
    if body <= 0:
        raise ValueError(f"chunk_size must exceed the {PREFIX_SIZE}-byte prefix")
    mid = message_id or uuid.uuid4().bytes
    total = sum(len(p) for p in parts)
    count = max(1, -(-total // body))
    chunks, at, offset = [], 0, 0  # the part being read and the offset in it
    for index in range(count):
        pieces = [_PREFIX.pack(MAGIC, mid, index, count)]
        want = body
        while want and at < len(parts):
            piece = parts[at][offset : offset + want]
            pieces.append(piece)
            want -= len(piece)
            offset += len(piece)
            if offset == len(parts[at]):
                at, offset = at + 1, 0
        chunks.append(b"".join(pieces))
    return chunks


@dataclass
class _Partial:
    count: int
    touched: float  # when its last new chunk arrived
    parts: dict[int, memoryview] = field(default_factory=dict)
    size: int = 0
    # The payload's digest (the algorithm its header names), fed chunk by chunk in order as they
    # arrive, so the whole message needs no second read: chunks up to ``hashed`` (exclusive) are in;
    # ``skip`` header bytes are left out. A header that does not fit the first chunk, or that does
    # not parse, leaves the digest to ``unpack_message`` (which also reports what is wrong).
    running: object | None = None
    algorithm: str = ""
    hashed: int = 0
    skip: int = 0
    payload_start: int | None = None  # the header's end, known once chunk 0 is in

    def feed_hash(self) -> None:
        while self.hashed in self.parts:
            part = self.parts[self.hashed]
            if self.hashed == 0 and not self._start(part):
                self.hashed = -1  # never in parts: hashing stops
                return
            drop = min(self.skip, len(part))
            self.skip -= drop
            self.running.update(part[drop:])
            self.hashed += 1

    def _start(self, part: memoryview) -> bool:
        if len(part) < _HEADER_LEN.size:
            return False
        end = _HEADER_LEN.size + _HEADER_LEN.unpack_from(part)[0]
        if end > len(part):
            return False
        try:
            info = getattr(parse_header(bytes(part[_HEADER_LEN.size:end])), "payload", None)
        except ProtocolError:
            return False
        if info is None:
            return False
        self.algorithm, self.running = info.algorithm, hasher(info.algorithm)
        self.payload_start = self.skip = end
        return True

    def whole(self) -> Pieces:
        known = {(self.payload_start, self.algorithm): self.running.hexdigest()} if self.hashed == self.count else {}
        return Pieces((self.parts[i] for i in range(self.count)), known)


class Reassembler:
    """Collects chunks per (topic, message id) until a message is whole.

    Caps, so a peer cannot make the receiver buffer without bound: ``max_message_bytes`` for one
    message, ``max_pending_bytes`` for all partial ones together, ``max_pending_per_topic``
    partial messages per sender's topic, and ``ttl``: a partial message that gets no new chunk for
    that many seconds is dropped and reported by ``take_dropped``. Running out of room for all
    senders together raises ``Overloaded`` (the message may be sent again); every other breach a
    ``ProtocolError``. With ``check_headers`` the first chunk's header is checked at once, so a
    message declaring more than the cap, or a chunk count that its size does not need, is refused
    before its other chunks are buffered. A refused message's later chunks are ignored.
    Duplicated chunks are ignored, and so are chunks of a message already delivered whole: after a
    reconnect the sender publishes every chunk again under the same id, and that late copy must
    neither come out as a second message nor wait as a partial one (which would expire into a
    rejection). The last ``max_completed`` multi-chunk messages are remembered for that; a
    single-chunk message is not, since retained state is redelivered on purpose.
    Not thread-safe: callers serialise ``add`` and ``expire``.
    """

    def __init__(self, max_message_bytes: int, max_pending_bytes: int | None = None, ttl: float = 600.0,
                 max_pending_messages: int = 1024, max_pending_per_topic: int | None = None,
                 check_headers: bool = False, max_completed: int = 4096) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_pending_bytes = max_pending_bytes or 4 * max_message_bytes
        self.max_pending_messages = max_pending_messages
        self.max_pending_per_topic = max_pending_per_topic or max_pending_messages
        self.check_headers = check_headers
        self.ttl = ttl
        self._pending: dict[tuple[str, bytes], _Partial] = {}  # least recently touched first
        self._pending_bytes = 0
        self._per_topic: dict[str, int] = {}
        self._refused: dict[tuple[str, bytes], None] = {}  # recently refused messages, oldest first
        self._completed: dict[tuple[str, bytes], None] = {}  # recently delivered whole, oldest first
        self.max_completed = max_completed
        self._dropped: list[tuple[str, str]] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, topic: str, chunk: bytes, now: float | None = None) -> Buffer | Pieces | None:
        """Add one chunk; return the whole packed message when its last chunk arrives (``Pieces``
        when it came in several chunks, its payload already hashed)."""
        now = time.monotonic() if now is None else now
        self.expire(now)
        if len(chunk) < PREFIX_SIZE:
            raise ProtocolError(f"chunk of {len(chunk)} bytes is shorter than the chunk prefix")
        magic, mid, index, count = _PREFIX.unpack_from(chunk)
        if magic != MAGIC:
            raise ProtocolError("chunk does not start with the fedmq magic (not a fedmq message, or another version)")
        if count == 0 or index >= count:
            raise ProtocolError(f"chunk index {index} out of range for a {count}-chunk message")
        body = memoryview(chunk)[PREFIX_SIZE:]  # a view: the chunk's bytes are never copied here
        if count == 1:
            if len(body) > self.max_message_bytes:
                raise ProtocolError(f"message of {len(body)} bytes exceeds the {self.max_message_bytes}-byte limit")
            return body
        key = (topic, mid)
        if key in self._refused or key in self._completed:
            return None
        try:
            return self._add_part(key, index, count, body, now)
        except ProtocolError:
            self._drop(key)
            _remember(self._refused, key, 256)
            raise

    def _add_part(self, key: tuple[str, bytes], index: int, count: int, body: memoryview, now: float) -> Pieces | None:
        if not body or count > self.max_message_bytes:
            # split_chunks never makes either; both would let a peer hold memory the caps do not count
            raise ProtocolError(f"chunk {index} of {count} is empty or the count exceeds the message size limit")
        if index == 0 and self.check_headers:
            _check_first_chunk(body, count, self.max_message_bytes)
        partial = self._pending.pop(key, None)
        if partial is None:
            if len(self._pending) >= self.max_pending_messages:
                raise Overloaded(f"more than {self.max_pending_messages} partial messages are pending")
            if self._per_topic.get(key[0], 0) >= self.max_pending_per_topic:
                raise ProtocolError(f"more than {self.max_pending_per_topic} partial messages are pending on {key[0]}")
            partial = _Partial(count=count, touched=now)
            self._per_topic[key[0]] = self._per_topic.get(key[0], 0) + 1
        self._pending[key] = partial  # (re)inserted last: the most recently touched
        if partial.count != count:
            raise ProtocolError("chunks of one message disagree on the chunk count")
        if index in partial.parts:
            return None
        if partial.size + len(body) > self.max_message_bytes:
            raise ProtocolError(f"message exceeds the {self.max_message_bytes}-byte limit")
        if self._pending_bytes + len(body) > self.max_pending_bytes:
            raise Overloaded(f"more than {self.max_pending_bytes} bytes of partial messages are pending")
        partial.parts[index] = body
        partial.size += len(body)
        partial.touched = now
        self._pending_bytes += len(body)
        partial.feed_hash()
        if len(partial.parts) < count:
            return None
        self._drop(key)
        _remember(self._completed, key, self.max_completed)
        return partial.whole()

    def expire(self, now: float | None = None) -> None:
        """Drop the partial messages that got no chunk for ``ttl`` seconds (see ``take_dropped``)."""
        now = time.monotonic() if now is None else now
        # Least recently touched first: stop at the first live one, so a flood of chunks stays linear.
        while self._pending:
            key, partial = next(iter(self._pending.items()))
            if now - partial.touched <= self.ttl:
                return
            self._drop(key)
            self._dropped.append((key[0], f"incomplete message: {len(partial.parts)} of {partial.count} chunks "
                                          f"arrived, then none for {self.ttl:.0f} s"))

    def take_dropped(self) -> list[tuple[str, str]]:
        """(topic, reason) of the partial messages expired since the last call."""
        dropped, self._dropped = self._dropped, []
        return dropped

    def _drop(self, key: tuple[str, bytes]) -> None:
        partial = self._pending.pop(key, None)
        if partial is not None:
            self._pending_bytes -= partial.size
            left = self._per_topic[key[0]] - 1
            if left:
                self._per_topic[key[0]] = left
            else:
                del self._per_topic[key[0]]


def _remember(keys: dict[tuple[str, bytes], None], key: tuple[str, bytes], most: int) -> None:
    """Add ``key`` to an insertion-ordered set that forgets its oldest beyond ``most``."""
    keys[key] = None
    if len(keys) > most:
        del keys[next(iter(keys))]


def _check_first_chunk(body: memoryview, count: int, max_message_bytes: int) -> None:
    """Refuse at its first chunk a message whose header is bad, whose declared size is over the cap,
    or whose chunk count is not what that size needs (chunks are full but the last)."""
    if len(body) < _HEADER_LEN.size:
        raise ProtocolError("first chunk too short for the header length")
    (head_len,) = _HEADER_LEN.unpack_from(body)
    end = _HEADER_LEN.size + head_len
    if head_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {head_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    if end > len(body):
        return  # a header longer than a chunk: checked when the message is whole
    header = parse_header(bytes(body[_HEADER_LEN.size : end]))
    info = getattr(header, "payload", None)
    size = info.size if info is not None else 0
    total = end + size
    if total > max_message_bytes:
        raise ProtocolError(f"message declares {total} bytes, over the {max_message_bytes}-byte limit")
    needed = max(1, -(-total // len(body)))
    if count != needed:
        raise ProtocolError(f"message declares {total} bytes, which is {needed} chunk(s) of {len(body)}, not {count}")
