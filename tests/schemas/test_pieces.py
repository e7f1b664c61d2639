"""Pieces: bytes held as the chunks they arrived in behave like the joined bytes."""

from __future__ import annotations

import hashlib

import zstandard
from blake3 import blake3
from fedmq.schemas.framing import PREFIX_SIZE, Reassembler, encode_chunks, unpack_message
from fedmq.schemas.messages import PayloadInfo, Update
from fedmq.schemas.pieces import Pieces, digest_of
from hypothesis import given
from hypothesis import strategies as st


@st.composite
def split_bytes(draw) -> tuple[bytes, list[bytes]]:
    data = draw(st.binary(max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:])]


@given(split_bytes(), st.integers(0, 320), st.integers(0, 320), st.integers(1, 64))
def test_pieces_read_like_the_joined_bytes(case, start: int, stop: int, read_size: int) -> None:
    data, parts = case
    pieces = Pieces(parts)
    assert len(pieces) == len(data) and bytes(pieces) == data and pieces == data
    assert pieces.take(start, stop) == data[start:stop]
    assert bytes(pieces.tail(start)) == data[start:]
    assert pieces.digest() == blake3(data).hexdigest() == digest_of(data)
    assert pieces.digest("sha256") == hashlib.sha256(data).hexdigest() == digest_of(data, "sha256")
    reader, out = pieces.reader(), b""
    while chunk := reader.read(read_size):
        out += chunk
    assert out == data


def test_a_digest_known_for_an_offset_follows_the_tail() -> None:
    pieces = Pieces([b"head", b"payload"], {(4, "blake3"): "cafe"})
    assert pieces.tail(4).digest() == "cafe"
    assert pieces.tail(4).digest("sha256") == hashlib.sha256(b"payload").hexdigest(), "known for blake3 only"
    assert pieces.tail(5).digest() == blake3(b"ayload").hexdigest(), "no digest is known for offset 5"


def test_zstd_reads_a_frame_across_pieces() -> None:
    data = bytes(range(256)) * 400
    frame = zstandard.ZstdCompressor().compress(data)
    parts = [frame[i:i + 97] for i in range(0, len(frame), 97)]
    with zstandard.ZstdDecompressor().stream_reader(Pieces(parts).reader()) as reader:
        assert reader.read(len(data) + 1) == data


@given(st.binary(min_size=1, max_size=2000), st.integers(PREFIX_SIZE + 1, PREFIX_SIZE + 700), st.randoms())
def test_the_digest_hashed_on_arrival_is_the_payloads(payload: bytes, chunk_size: int, rnd) -> None:
    """Chunks in any order, some twice: the digest the reassembler computes as they arrive verifies."""
    header = Update(job="j", run_id="r", silo="s", round=1, base_digest=None, num_samples=1,
                    payload=PayloadInfo(codec="shuffle+zstd", size=len(payload), sha256=hashlib.sha256(payload).hexdigest()))
    chunks = encode_chunks(header, payload, chunk_size)
    order = chunks + rnd.sample(chunks, min(2, len(chunks)))
    rnd.shuffle(order)
    reassembler, whole = Reassembler(1 << 20), None
    for chunk in order:
        whole = reassembler.add("t", chunk) or whole
    envelope = unpack_message(whole)
    assert bytes(envelope.payload) == payload
