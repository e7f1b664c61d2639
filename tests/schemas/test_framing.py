"""Chunk framing: pack/unpack, split/reassemble in any order, caps, TTL, and refusal of bad frames."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import tracemalloc
import uuid

import pytest
from fedmq.errors import Overloaded, ProtocolError
from fedmq.schemas.framing import (
    MAGIC,
    PREFIX_SIZE,
    Envelope,
    Reassembler,
    encode_chunks,
    pack_message,
    split_chunks,
    unpack_message,
)
from fedmq.schemas.messages import PayloadInfo, Presence, TestRequest, Update, dump_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PREFIX = struct.Struct("!4s16sII")
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def update_for(payload: bytes, **overrides) -> Update:
    info = PayloadInfo(codec="safetensors+zstd", size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    fields = dict(job="job", run_id="r1", silo="s1", round=1, base_digest=None, num_samples=10, payload=info)
    fields.update(overrides)
    return Update(**fields)


PRESENCE = Presence(job="job", silo="s1", online=True)
TEST_REQUEST = TestRequest(job="job", run_id="r1", round=1, model_digest="f" * 64)


def chunk(mid: bytes, index: int, count: int, body: bytes = b"x", magic: bytes = MAGIC) -> bytes:
    return PREFIX.pack(magic, mid, index, count) + body


# --- pack / unpack -------------------------------------------------------------------------------


def test_prefix_is_28_bytes() -> None:
    assert PREFIX_SIZE == 28 == PREFIX.size
    assert MAGIC == b"FMQ\x01"


@pytest.mark.parametrize("payload", [b"", b"\x00", b"weights" * 1000, bytes(range(256))])
def test_pack_unpack_round_trip_with_payload(payload: bytes) -> None:
    header = update_for(payload)
    data = pack_message(header, payload)
    head = dump_header(header)
    assert data == struct.pack("!I", len(head)) + head + payload
    env = unpack_message(data, topic="fedmq/job/update/s1")
    assert env == Envelope(header=header, payload=payload, topic="fedmq/job/update/s1")


@pytest.mark.parametrize("header", [PRESENCE, TEST_REQUEST])
def test_pack_unpack_round_trip_without_payload(header) -> None:
    env = unpack_message(pack_message(header))
    assert env.header == header and env.payload == b"" and env.topic == ""


def test_payload_on_a_type_without_payload_refused() -> None:
    data = pack_message(PRESENCE) + b"extra"
    with pytest.raises(ProtocolError, match="5 unexpected payload bytes"):
        unpack_message(data)
    # pack_message does not check; the receiver must.
    with pytest.raises(ProtocolError, match="unexpected payload"):
        unpack_message(pack_message(TEST_REQUEST, b"\x00"))


def test_wrong_digest_refused() -> None:
    payload = b"abcdef"
    data = pack_message(update_for(payload), b"abcdeF")
    with pytest.raises(ProtocolError, match="sha256"):
        unpack_message(data)


@pytest.mark.parametrize("actual", [b"abcde", b"abcdefg", b""])
def test_wrong_declared_size_refused(actual: bytes) -> None:
    data = pack_message(update_for(b"abcdef"), actual)
    with pytest.raises(ProtocolError, match=f"payload is {len(actual)} bytes but the header declares 6"):
        unpack_message(data)


def test_header_length_past_end_refused() -> None:
    data = pack_message(PRESENCE)
    head_len = len(data) - 4
    with pytest.raises(ProtocolError, match="runs past the end"):
        unpack_message(struct.pack("!I", head_len + 1) + data[4:])
    with pytest.raises(ProtocolError, match="runs past the end"):
        unpack_message(struct.pack("!I", 0xFFFFFFFF) + data[4:])
    with pytest.raises(ProtocolError, match="runs past the end"):
        unpack_message(data[:-1])


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00"])
def test_shorter_than_length_prefix_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="shorter than its length prefix"):
        unpack_message(data)


def test_short_header_length_refused() -> None:
    # A length that cuts the JSON short leaves a broken header, with the rest read as payload.
    data = pack_message(PRESENCE)
    with pytest.raises(ProtocolError):
        unpack_message(struct.pack("!I", len(data) - 5) + data[4:])
    with pytest.raises(ProtocolError, match="JSON"):
        unpack_message(struct.pack("!I", 0) + data[4:])


def test_bad_header_in_frame_refused() -> None:
    head = json.dumps({"protocol": 2, "type": "presence"}).encode()
    with pytest.raises(ProtocolError, match="protocol version"):
        unpack_message(struct.pack("!I", len(head)) + head)


# --- split / reassemble --------------------------------------------------------------------------


def test_split_chunks_layout() -> None:
    data = bytes(range(100))
    mid = uuid.uuid4().bytes
    chunks = split_chunks(data, PREFIX_SIZE + 30, message_id=mid)
    assert len(chunks) == 4
    for i, c in enumerate(chunks):
        assert len(c) <= PREFIX_SIZE + 30
        assert PREFIX.unpack_from(c) == (MAGIC, mid, i, 4)
    assert b"".join(c[PREFIX_SIZE:] for c in chunks) == data


def test_split_empty_message_is_one_chunk() -> None:
    chunks = split_chunks(b"", 1024)
    assert len(chunks) == 1 and len(chunks[0]) == PREFIX_SIZE
    assert Reassembler(10).add("t", chunks[0]) == b""


def test_message_ids_are_unique_per_message() -> None:
    a = encode_chunks(PRESENCE, chunk_size=PREFIX_SIZE + 8)
    b = encode_chunks(PRESENCE, chunk_size=PREFIX_SIZE + 8)
    assert len({c[4:20] for c in a}) == 1
    assert a[0][4:20] != b[0][4:20]


def test_chunk_size_at_prefix_refused_just_above_works() -> None:
    with pytest.raises(ValueError):
        split_chunks(b"abc", PREFIX_SIZE)
    with pytest.raises(ValueError):
        encode_chunks(PRESENCE, chunk_size=PREFIX_SIZE - 1)
    payload = b"tiny payload"
    chunks = encode_chunks(update_for(payload), payload, chunk_size=PREFIX_SIZE + 1)
    packed = pack_message(update_for(payload), payload)
    assert len(chunks) == len(packed)
    assert all(len(c) == PREFIX_SIZE + 1 for c in chunks)
    r = Reassembler(max_message_bytes=len(packed))
    results = [r.add("t", c, now=0.0) for c in reversed(chunks)]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert unpack_message(results[-1]).payload == payload


@FAST
@given(
    payload=st.binary(max_size=3000),
    chunk_size=st.integers(PREFIX_SIZE + 1, 1200),
    rnd=st.randoms(use_true_random=False),
    n_dups=st.integers(0, 10),
)
def test_reassemble_any_order_with_duplicates(payload: bytes, chunk_size: int, rnd: random.Random, n_dups: int) -> None:
    header = update_for(payload)
    packed = pack_message(header, payload)
    chunks = encode_chunks(header, payload, chunk_size=chunk_size)
    assert all(len(c) <= chunk_size for c in chunks)
    assert len(chunks) == max(1, -(-len(packed) // (chunk_size - PREFIX_SIZE)))
    order = list(chunks)
    rnd.shuffle(order)
    last = order.pop()
    if order:  # duplicates of chunks already delivered, anywhere before the last new chunk
        for _ in range(n_dups):
            order.insert(rnd.randrange(len(order) + 1), rnd.choice(order))
    r = Reassembler(max_message_bytes=len(packed))
    for c in order:
        assert r.add("fedmq/job/update/s1", c, now=1.0) is None
    whole = r.add("fedmq/job/update/s1", last, now=1.0)
    assert whole == packed
    assert r.pending == 0
    env = unpack_message(whole, topic="x")
    assert env.header == header and env.payload == payload


@FAST
@given(perm=st.permutations(range(7)), size=st.integers(7, 400))
def test_reassemble_permutations(perm: list[int], size: int) -> None:
    data = bytes(random.Random(size).randrange(256) for _ in range(size))
    body = -(-size // 7)
    chunks = split_chunks(data, PREFIX_SIZE + body)
    if len(chunks) != 7:  # only sizes that give exactly seven chunks
        return
    r = Reassembler(max_message_bytes=size)
    out = [r.add("t", chunks[i]) for i in perm]
    assert out[:-1] == [None] * 6 and out[-1] == data


def test_interleaved_messages_and_topics_kept_apart() -> None:
    mid = uuid.uuid4().bytes
    a = split_chunks(b"A" * 30, PREFIX_SIZE + 10, message_id=mid)
    b = split_chunks(b"B" * 30, PREFIX_SIZE + 10, message_id=mid)  # same id, other topic
    c = split_chunks(b"C" * 30, PREFIX_SIZE + 10)
    r = Reassembler(max_message_bytes=100)
    assert r.add("t/a", a[0]) is None
    assert r.add("t/b", b[0]) is None
    assert r.add("t/a", c[2]) is None
    assert r.pending == 3
    assert r.add("t/a", a[1]) is None
    assert r.add("t/b", b[2]) is None
    assert r.add("t/a", a[2]) == b"A" * 30
    assert r.add("t/b", b[1]) == b"B" * 30
    assert r.add("t/a", c[0]) is None
    assert r.add("t/a", c[1]) == b"C" * 30
    assert r.pending == 0


# --- caps ----------------------------------------------------------------------------------------


def test_single_chunk_message_size_cap() -> None:
    r = Reassembler(max_message_bytes=10)
    assert r.add("t", chunk(b"i" * 16, 0, 1, b"x" * 10)) == b"x" * 10
    with pytest.raises(ProtocolError, match="exceeds the 10-byte limit"):
        r.add("t", chunk(b"i" * 16, 0, 1, b"x" * 11))


def test_multi_chunk_message_size_cap() -> None:
    data = b"y" * 100
    chunks = split_chunks(data, PREFIX_SIZE + 30)
    assert Reassembler(max_message_bytes=100).add("t", chunks[0]) is None
    r = Reassembler(max_message_bytes=100)
    assert [r.add("t", c) for c in chunks][-1] == data  # exactly at the cap
    r = Reassembler(max_message_bytes=99)
    results = []
    with pytest.raises(ProtocolError, match="exceeds the 99-byte limit") as refused:
        for c in chunks:
            results.append(r.add("t", c))
    assert not isinstance(refused.value, Overloaded), "too large is the message's fault: not worth asking again"
    assert results == [None] * 3
    assert r.pending == 0  # the oversized partial was dropped
    # A chunk of the dropped message that arrives later starts over, it does not complete it.
    assert r.add("t", chunks[0]) is None


def test_pending_cap() -> None:
    r = Reassembler(max_message_bytes=2000, max_pending_bytes=3200)
    assert r.max_pending_bytes == 3200
    a = split_chunks(b"a" * 2000, PREFIX_SIZE + 1000)
    b = split_chunks(b"b" * 2000, PREFIX_SIZE + 1000)
    c = split_chunks(b"c" * 1600, PREFIX_SIZE + 1500)
    assert r.add("t", a[0]) is None
    assert r.add("t", b[0]) is None  # 2000 bytes pending
    with pytest.raises(Overloaded, match="3200 bytes of partial messages"):
        r.add("t", c[0])  # + 1500 > 3200: no room, which is not the message's fault
    assert r.pending == 2  # c was refused, a and b are kept
    assert r.add("t", a[1]) == b"a" * 2000  # completing a frees its bytes
    assert r.pending == 1
    assert r.add("t", c[0]) is None
    assert r.add("t", c[1]) is None  # a refused message stays refused: its other chunks are ignored
    assert r.pending == 1
    assert r.add("t", b[1]) == b"b" * 2000
    assert r.pending == 0


def test_default_pending_cap() -> None:
    assert Reassembler(max_message_bytes=10).max_pending_bytes == 40


def test_ttl_expiry_drops_partial_messages() -> None:
    chunks = split_chunks(b"z" * 90, PREFIX_SIZE + 30)
    r = Reassembler(max_message_bytes=1000, ttl=10.0)
    assert r.add("t", chunks[0], now=100.0) is None
    assert r.add("t", chunks[1], now=110.0) is None  # exactly ttl idle: still kept
    assert r.pending == 1
    assert r.take_dropped() == []
    # The TTL counts from the last chunk, not the first: a slow but steady sender is never cut off.
    assert r.add("t", chunks[2], now=115.0) == b"z" * 90
    # A partial that gets nothing more for longer than the TTL is dropped and reported once.
    stalled = split_chunks(b"q" * 90, PREFIX_SIZE + 30)
    assert r.add("t", stalled[0], now=200.0) is None
    r.expire(now=210.5)
    assert r.pending == 0
    assert r.take_dropped() == [("t", "incomplete message: 1 of 3 chunks arrived, then none for 10 s")]
    assert r.take_dropped() == []
    # Its late chunks start a partial of their own, which expires in turn.
    assert r.add("t", stalled[1], now=211.0) is None
    assert r.add("t", chunk(b"o" * 16, 0, 1), now=300.0) == b"x"
    assert r.pending == 0
    # Expired bytes no longer count against the pending cap.
    big = split_chunks(b"w" * 3000, PREFIX_SIZE + 1000)
    r2 = Reassembler(max_message_bytes=3000, max_pending_bytes=2500, ttl=1.0)
    assert r2.add("t", big[0], now=0.0) is None
    assert r2.add("t", big[1], now=0.5) is None
    with pytest.raises(ProtocolError):
        r2.add("u", big[0], now=0.5)
    assert r2.add("u", big[0], now=5.0) is None


def test_ttl_uses_monotonic_clock_by_default() -> None:
    r = Reassembler(max_message_bytes=100, ttl=3600)
    chunks = split_chunks(b"q" * 20, PREFIX_SIZE + 10)
    assert r.add("t", chunks[0]) is None
    assert r.add("t", chunks[1]) == b"q" * 20


# --- bad chunks ----------------------------------------------------------------------------------


def test_mismatched_chunk_counts_refused() -> None:
    mid = b"m" * 16
    r = Reassembler(max_message_bytes=1000)
    assert r.add("t", chunk(mid, 0, 3)) is None
    with pytest.raises(ProtocolError, match="disagree on the chunk count"):
        r.add("t", chunk(mid, 1, 4))
    assert r.pending == 0  # the whole message is dropped
    # The same message id on another topic is another message.
    assert r.add("t", chunk(mid, 0, 3)) is None  # a refused message stays refused
    assert r.pending == 0
    assert r.add("u", chunk(mid, 1, 4)) is None
    assert r.pending == 1


@pytest.mark.parametrize(("index", "count"), [(3, 3), (0, 0), (5, 0), (2**32 - 1, 2), (1, 1)])
def test_index_out_of_range_refused(index: int, count: int) -> None:
    with pytest.raises(ProtocolError, match="out of range"):
        Reassembler(100).add("t", chunk(b"m" * 16, index, count))


@pytest.mark.parametrize("magic", [b"FMQ\x02", b"FMQ\x00", b"fmq\x01", b"\x00\x00\x00\x00", b"PK\x03\x04"])
def test_bad_magic_refused(magic: bytes) -> None:
    with pytest.raises(ProtocolError, match="magic"):
        Reassembler(100).add("t", chunk(b"m" * 16, 0, 1, magic=magic))


@pytest.mark.parametrize("length", [0, 1, 4, PREFIX_SIZE - 1])
def test_chunk_shorter_than_prefix_refused(length: int) -> None:
    with pytest.raises(ProtocolError, match="shorter than the chunk prefix"):
        Reassembler(100).add("t", chunk(b"m" * 16, 0, 1)[:length])


def test_refused_chunk_leaves_other_messages_intact() -> None:
    chunks = split_chunks(b"k" * 40, PREFIX_SIZE + 20)
    r = Reassembler(max_message_bytes=100)
    assert r.add("t", chunks[0]) is None
    for bad in (b"junk", chunk(b"m" * 16, 4, 2), chunk(b"m" * 16, 0, 1, magic=b"XXXX")):
        with pytest.raises(ProtocolError):
            r.add("t", bad)
    assert r.add("t", chunks[1]) == b"k" * 40


def _held_bytes(feed) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        keep = feed()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    del keep
    return sum(s.size_diff for s in after.compare_to(before, "filename"))


@pytest.mark.parametrize(("one_message", "n"), [(False, 2_000), (True, 5_000)], ids=["many-ids", "one-id-huge-count"])
def test_empty_body_chunks_cannot_grow_memory_without_bound(one_message: bool, n: int) -> None:
    """The pending cap must hold for chunks with empty bodies too: they carry no payload bytes, but
    each still costs a partial message or a slot. A 4 KiB pending cap must not let thousands of
    them pin hundreds of KiB (many ids: ~450 B each; one id with count 2**32-1: ~57 B each)."""
    r = Reassembler(max_message_bytes=1024, max_pending_bytes=4096, ttl=600)

    def feed():
        for i in range(n):
            if one_message:
                c = PREFIX.pack(MAGIC, b"m" * 16, i, 2**32 - 1)
            else:
                c = PREFIX.pack(MAGIC, i.to_bytes(16, "big"), 0, 2)
            try:
                r.add("t", c, now=1.0)
            except ProtocolError:
                pass
        return r

    held = _held_bytes(feed)
    assert held < 128 * 1024, f"{held} bytes held by the reassembler after {n} empty-body chunks"


# --- fuzz ----------------------------------------------------------------------------------------


def assert_invariants(r: Reassembler) -> None:
    """Book-keeping stays within the caps and never leaks (white-box: private attributes)."""
    pending = getattr(r, "_pending", None)
    pending_bytes = getattr(r, "_pending_bytes", None)
    if pending is None or pending_bytes is None:
        return
    assert 0 <= sum(p.size for p in pending.values()) <= pending_bytes <= r.max_pending_bytes
    if not pending:
        assert pending_bytes == 0
    for p in pending.values():
        assert p.size <= r.max_message_bytes
        assert len(p.parts) < p.count


@settings(max_examples=1000, deadline=None, database=None)
@given(data=st.binary(max_size=200))
def test_fuzz_unpack_arbitrary_bytes(data: bytes) -> None:
    try:
        unpack_message(data)
    except ProtocolError:
        pass


VALID_HEADS = [dump_header(h) for h in (PRESENCE, TEST_REQUEST, update_for(b"0123456789"))]


@settings(max_examples=350, deadline=None, database=None)
@given(
    head=st.sampled_from(VALID_HEADS) | st.binary(max_size=80),
    length_delta=st.sampled_from([0, 0, 0, -1, 1, -10, 10_000]),
    body=st.binary(max_size=40) | st.just(b"0123456789"),
    flips=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), max_size=2),
)
def test_fuzz_unpack_near_valid(head: bytes, length_delta: int, body: bytes, flips: list) -> None:
    data = bytearray(struct.pack("!I", max(0, len(head) + length_delta)) + head + body)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    try:
        env = unpack_message(bytes(data))
    except ProtocolError:
        return
    info = getattr(env.header, "payload", None)
    if info is None:
        assert env.payload == b""
    else:
        assert len(env.payload) == info.size
        assert hashlib.sha256(bytes(env.payload)).hexdigest() == info.sha256


@settings(max_examples=1000, deadline=None, database=None)
@given(data=st.binary(max_size=120))
def test_fuzz_reassembler_arbitrary_bytes(data: bytes) -> None:
    r = Reassembler(max_message_bytes=64)
    try:
        out = r.add("t", data, now=0.0)
    except ProtocolError:
        return
    assert out is None or len(out) <= 64
    assert_invariants(r)


chunks_near_valid = st.builds(
    lambda magic, mid, index, count, body: PREFIX.pack(magic, mid, index, count) + body,
    magic=st.sampled_from([MAGIC, MAGIC, MAGIC, b"FMQ\x02"]),
    mid=st.sampled_from([b"a" * 16, b"b" * 16, b"c" * 16]),
    index=st.integers(0, 4) | st.integers(0, 2**32 - 1),
    count=st.integers(0, 4) | st.integers(0, 2**32 - 1),
    body=st.binary(max_size=30),
)


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["t", "u"]), chunks_near_valid | st.binary(max_size=40), st.floats(0, 50)),
        max_size=30,
    )
)
def test_fuzz_reassembler_chunk_sequences(steps: list) -> None:
    r = Reassembler(max_message_bytes=64, max_pending_bytes=100, ttl=20.0)
    now = 0.0
    for topic, data, dt in steps:
        now += dt
        try:
            out = r.add(topic, data, now=now)
        except ProtocolError:
            out = None
        assert out is None or len(out) <= 64
        assert_invariants(r)


# --- first-chunk header checks and per-sender caps ------------------------------------------------


def test_a_message_declaring_10_gb_is_refused_at_its_first_chunk() -> None:
    payload = b"p" * 5000
    declared = update_for(payload).model_copy(update={"payload": PayloadInfo(
        codec="safetensors+zstd", size=10 * 1024**3, sha256="0" * 64)})
    chunks = split_chunks(pack_message(declared, payload), PREFIX_SIZE + 1024)
    r = Reassembler(max_message_bytes=1 << 20, check_headers=True)
    with pytest.raises(ProtocolError, match="over the 1048576-byte limit"):
        r.add("t", chunks[0])
    assert all(r.add("t", c) is None for c in chunks[1:]), "the rest of a refused message is ignored"
    assert r.pending == 0


def test_a_chunk_count_the_declared_size_does_not_need_is_refused() -> None:
    payload = b"p" * 5000
    packed = pack_message(update_for(payload), payload)
    first = split_chunks(packed, PREFIX_SIZE + 1024)[0]
    mid, body = first[4:20], first[PREFIX_SIZE:]
    r = Reassembler(max_message_bytes=1 << 20, check_headers=True)
    with pytest.raises(ProtocolError, match="chunk"):
        r.add("t", chunk(mid, 0, 4000, body))  # 4000 chunks claimed for a ~5.5 kB message
    with pytest.raises(ProtocolError, match="header is not valid"):
        r.add("u", chunk(mid, 0, 3, struct.pack("!I", 10) + b'{"x": 1} ' + b"y" * 100))


@FAST
@given(chunk_size=st.integers(PREFIX_SIZE + 8, 4096), size=st.integers(0, 20_000), seed=st.integers(0, 10**6))
def test_header_checks_accept_every_well_formed_message(chunk_size: int, size: int, seed: int) -> None:
    payload = random.Random(seed).randbytes(size)
    packed = pack_message(update_for(payload), payload)
    chunks = split_chunks(packed, chunk_size)
    random.Random(seed).shuffle(chunks)
    r = Reassembler(max_message_bytes=len(packed), check_headers=True)
    out = [r.add("t", c) for c in chunks]
    assert out[-1] == packed and all(o is None for o in out[:-1])


def test_one_sender_cannot_hold_more_than_its_share_of_partial_messages() -> None:
    r = Reassembler(max_message_bytes=1000, max_pending_per_topic=2)
    assert r.add("evil", chunk(b"a" * 16, 0, 2)) is None
    assert r.add("evil", chunk(b"b" * 16, 0, 2)) is None
    with pytest.raises(ProtocolError, match="more than 2 partial messages are pending on evil"):
        r.add("evil", chunk(b"c" * 16, 0, 2))
    assert r.add("good", chunk(b"c" * 16, 0, 2)) is None, "other senders are not affected"
    assert r.add("evil", chunk(b"a" * 16, 1, 2)) == b"xx"
    assert r.add("evil", chunk(b"d" * 16, 0, 2)) is None, "a finished message frees its sender's slot"


def test_a_late_resend_of_a_complete_message_is_not_rebuilt() -> None:
    """After a reconnect the connection sends every chunk again under the same message id; the first
    copy already arrived whole. The second must not come out as a second message, nor linger as a
    partial one that later expires into a rejection (issue 16, lead 1)."""
    chunks = split_chunks(b"x" * 5000, 1000)
    reassembler = Reassembler(max_message_bytes=10_000, max_pending_per_topic=1)
    out = [reassembler.add("t", chunk, now=0.0) for chunk in chunks]
    assert out[-1] is not None and out[:-1] == [None] * (len(chunks) - 1)
    assert [reassembler.add("t", chunk, now=1.0) for chunk in chunks] == [None] * len(chunks)
    assert reassembler.pending == 0
    reassembler.expire(now=10_000.0)
    assert reassembler.take_dropped() == []
    # a new message on the same topic still has its room (the late copy took no pending slot)
    assert [reassembler.add("t", chunk, now=2.0) for chunk in split_chunks(b"y" * 5000, 1000)][-1] is not None


def test_the_memory_of_completed_messages_is_bounded() -> None:
    reassembler = Reassembler(max_message_bytes=10_000, max_completed=3)
    first = split_chunks(b"a" * 3000, 1000)
    for chunk in first:
        reassembler.add("t", chunk, now=0.0)
    for n in range(3):  # three more messages push the first out of the memory
        for chunk in split_chunks(bytes([n]) * 3000, 1000):
            reassembler.add("t", chunk, now=0.0)
    assert [reassembler.add("t", chunk, now=1.0) for chunk in first][-1] is not None  # forgotten, so rebuilt
