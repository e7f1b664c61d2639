"""The container of ``shuffle+zstd``, ``raw`` and the ``delta-*`` codecs: the exact layout of version 2
(``FMQ2``, written), and that any malformed container of either version (version 1: ``FMQT`` in a zstd
frame, still read) is a ProtocolError (never another exception, never a tensor of the wrong size)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import zstandard
from fedmq.errors import ProtocolError
from fedmq.schemas.codec import CODECS, DELTA_CODECS, Base, container_parts, decode_state, encode_state, is_delta
from fedmq.schemas.codecs import container as fmqt
from fedmq.schemas.codecs.container import ITEMSIZE, MAGIC, MAGIC_V2, inflate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BIG = 1 << 30
CONTAINER_CODECS = [c for c in CODECS if c != "safetensors+zstd"]
V1_CODECS = [c for c in CONTAINER_CODECS if c != "raw"]  # version 1 had no raw codec
BASE = Base({"w": torch.zeros(2048), "h": torch.zeros(64, 32, dtype=torch.float16), "d": torch.zeros(1024).double(),
             "n": torch.tensor(3)}, "b" * 64)


def container(header: dict | bytes, data: bytes = b"", head_len_delta: int = 0, magic: bytes = MAGIC) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return magic + struct.pack("<I", max(0, min(2**32 - 1, len(head) + head_len_delta))) + head + data


def zstd(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(raw)


def decode(payload: bytes, codec: str, max_bytes: int = BIG) -> dict[str, torch.Tensor]:
    return decode_state(payload, codec, max_bytes, base=BASE if is_delta(codec) else None)


def v2_header(payload: bytes) -> tuple[dict, bytes]:
    payload = bytes(payload)
    assert payload[:4] == MAGIC_V2
    (head_len,) = struct.unpack_from("<I", payload, 4)
    return json.loads(payload[8:8 + head_len]), payload[8 + head_len:]


def v2(header: dict | bytes, data: bytes = b"", head_len_delta: int = 0) -> bytes:
    return container(header, data, head_len_delta, magic=MAGIC_V2)


def v1(state: dict[str, torch.Tensor], codec: str, **kwargs) -> bytes:
    """A version-1 container of ``state``, as fedmq wrote before version 2."""
    return fmqt.write_v1(*container_parts(state, codec, **kwargs))


# --- layout --------------------------------------------------------------------------------------

LAYOUT_STATE = {"w": torch.tensor([1.0, 2.0]), "a": torch.tensor([True, False]), "n": torch.tensor(258, dtype=torch.int16)}
LAYOUT_TENSORS = [{"name": "a", "dtype": "BOOL", "shape": [2], "enc": "full"},
                  {"name": "n", "dtype": "I16", "shape": [], "enc": "full"},
                  {"name": "w", "dtype": "F32", "shape": [2], "enc": "full"}]


def test_raw_layout_is_the_documented_one() -> None:
    header, streams = v2_header(encode_state(LAYOUT_STATE, "raw"))
    assert header == {"codec": "raw", "compression": "none", "tensors": LAYOUT_TENSORS}
    # Streams in entry order, each tensor's bytes as they are in memory.
    assert streams == b"\x01\x00" + struct.pack("<h", 258) + struct.pack("<2f", 1.0, 2.0)


def test_compressed_layout_is_the_documented_one() -> None:
    import blosc2

    header, streams = v2_header(encode_state(LAYOUT_STATE, "shuffle+zstd"))
    assert header == {"codec": "shuffle+zstd", "compression": "blosc2-zstd", "tensors": LAYOUT_TENSORS}
    # One Blosc2 chunk per stream here (each is under BLOCK_BYTES), self-describing, back to back.
    want = [(b"\x01\x00", 1), (struct.pack("<h", 258), 2), (struct.pack("<2f", 1.0, 2.0), 4)]
    at = 0
    for raw, typesize in want:
        nbytes, cbytes, _ = blosc2.get_cbuffer_sizes(streams[at:])
        assert nbytes == len(raw) and streams[at + 3] == typesize  # byte 3 of a chunk's header: its type size
        assert blosc2.decompress2(streams[at:at + cbytes]) == raw
        at += cbytes
    assert at == len(streams)


def test_big_streams_are_cut_into_chunks_and_compressed_in_parallel_to_the_same_bytes(monkeypatch) -> None:
    state = {"w": torch.linspace(-3, 3, 700_000), "b": torch.arange(300_000, dtype=torch.int64)}
    monkeypatch.setattr(fmqt, "ENCODE_THREADS", 1)
    alone = encode_state(state, "shuffle+zstd")
    monkeypatch.setattr(fmqt, "ENCODE_THREADS", 4)
    monkeypatch.setattr(fmqt, "PARALLEL_MIN_BYTES", 0)
    assert encode_state(state, "shuffle+zstd") == alone  # the same tensors, the same bytes: whatever the threads
    out = decode_state(alone, "shuffle+zstd", BIG)
    assert all(torch.equal(out[k], state[k]) for k in state)
    # 2.8 MB and 2.4 MB: 3 and 3 chunks of at most 1 MiB
    assert len(v2_header(alone)[1]) < 0.9 * sum(t.numel() * t.element_size() for t in state.values())


def test_delta_layout_names_the_base_and_each_encoding() -> None:
    update = {name: t + 1 if t.is_floating_point() else t for name, t in BASE.state.items()}
    for codec, enc in zip(DELTA_CODECS, ("fp16", "int8", "topk")):
        header, _ = v2_header(encode_state(update, codec, base=BASE))
        assert header["compression"] == "blosc2-zstd"
        assert header["codec"] == codec and header["base"] == BASE.digest
        encs = {e["name"]: e["enc"] for e in header["tensors"]}
        assert encs == {"w": enc, "h": enc, "d": enc, "n": "full"}  # n: an integer buffer goes whole
        assert all(("scale" in e) == (e["enc"] == "int8") and ("k" in e) == (e["enc"] == "topk") for e in header["tensors"])


def test_frames_without_a_declared_size_are_read_in_chunks_and_capped() -> None:
    raw = container({"codec": "shuffle+zstd", "tensors": [{"name": "w", "dtype": "F32", "shape": [300_000], "enc": "full"}]},
                    bytes(1_200_000))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    assert zstandard.frame_content_size(unsized) == -1
    assert decode_state(unsized, "shuffle+zstd", len(raw))["w"].shape == (300_000,)
    with pytest.raises(ProtocolError, match=f"inflates past the {len(raw) - 1}-byte limit"):
        decode_state(unsized, "shuffle+zstd", len(raw) - 1)


# --- refusals ------------------------------------------------------------------------------------

F32_W = {"name": "w", "dtype": "F32", "shape": [2], "enc": "full"}
BAD = {
    "no-magic": (container({"codec": "shuffle+zstd", "tensors": []}, magic=b"FMQX"), "FMQT"),
    "short": (b"FMQT\x01", "FMQT"),
    "header-past-end": (container({"codec": "shuffle+zstd", "tensors": []}, head_len_delta=1), "header claims"),
    "header-not-json": (container(b"{nope"), "header is invalid"),
    "header-list": (container(b"[]"), "header is invalid"),
    "unknown-field": (container({"codec": "shuffle+zstd", "tensors": [], "x": 1}), "header is invalid"),
    "codec-mismatch": (container({"codec": "delta-int8", "tensors": []}), "'delta-int8' container, not"),
    "base-on-lossless": (container({"codec": "shuffle+zstd", "base": "a" * 64, "tensors": []}), "names no base"),
    "bad-base": (container({"codec": "shuffle+zstd", "base": "xyz", "tensors": []}), "header is invalid"),
    "duplicate-name": (container({"codec": "shuffle+zstd", "tensors": [F32_W, F32_W]}, bytes(16)), "appears twice"),
    "data-short": (container({"codec": "shuffle+zstd", "tensors": [F32_W]}, bytes(7)), "take 8 bytes but 7"),
    "data-long": (container({"codec": "shuffle+zstd", "tensors": [F32_W]}, bytes(9)), "take 8 bytes but 9"),
    "unknown-dtype": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "dtype": "C64"}]}, bytes(16)), "dtype"),
    "negative-shape": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "shape": [-2]}]}, bytes(8)), "shape"),
    "float-shape": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "shape": [2.0]}]}, bytes(8)), "shape"),
    "bool-shape": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "shape": [True, 2]}]}, bytes(8)), "shape"),
    "huge-shape": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "shape": [2**62, 2**62]}]}, bytes(8)), "take"),
    "many-dims": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "shape": [1] * 17}]}, bytes(4)), "shape"),
    "scale-on-full": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "scale": 1.0}]}, bytes(8)), "scale"),
    "lossy-in-lossless": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "enc": "fp16"}]}, bytes(4)),
                          "not part of shuffle"),
    "bool-byte-2": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "dtype": "BOOL"}]}, b"\x01\x02"), "bool"),
    "name-not-str": (container({"codec": "shuffle+zstd", "tensors": [{**F32_W, "name": 5}]}, bytes(8)), "name"),
}


@pytest.mark.parametrize("payload,match", BAD.values(), ids=BAD.keys())
def test_malformed_containers_refused(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_state(zstd(payload), "shuffle+zstd", BIG)


def test_empty_and_zero_size_tensors_decode() -> None:
    header = {"codec": "shuffle+zstd", "tensors": [{"name": "e", "dtype": "F32", "shape": [3, 0], "enc": "full"},
                                                   {"name": "s", "dtype": "I64", "shape": [], "enc": "full"}]}
    out = decode_state(zstd(container(header, struct.pack("<q", -5))), "shuffle+zstd", BIG)
    assert out["e"].shape == (3, 0) and out["s"].item() == -5


# --- fuzz ----------------------------------------------------------------------------------------


def only_protocol_errors(payload: bytes, codec: str, max_bytes: int = 100_000) -> None:
    try:
        out = decode(payload, codec, max_bytes)
    except ProtocolError as exc:
        assert exc.message
        return
    assert isinstance(out, dict)
    for name, t in out.items():
        assert isinstance(name, str) and isinstance(t, torch.Tensor)
        if t.numel() * t.element_size() > max_bytes:  # only a delta, added to a base tensor, is larger than its bytes
            assert is_delta(codec) and t.shape == BASE.state[name].shape and t.dtype == BASE.state[name].dtype


json_scalars = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=6)
names = st.sampled_from(sorted(BASE.state)) | st.text(max_size=6)
dtype_names = st.sampled_from(sorted(ITEMSIZE)) | st.sampled_from(["F4", "C64", "f32", ""])
encs = st.sampled_from(["full", "fp16", "int8", "topk", "raw", ""])
shapes = st.lists(st.integers(0, 5) | st.sampled_from([32, 64, 1024, 2048, 2**31, 2**62, -1]), max_size=4)
entries = st.fixed_dictionaries(
    {"name": names | json_scalars, "dtype": dtype_names | json_scalars, "shape": shapes | json_scalars, "enc": encs},
    optional={"scale": st.floats() | json_scalars, "k": st.integers(-2, 30) | json_scalars, "extra": json_scalars},
)
headers = st.fixed_dictionaries(
    {"codec": st.sampled_from(CODECS) | st.text(max_size=5), "tensors": st.lists(entries, max_size=4) | json_scalars},
    optional={"base": st.just(BASE.digest) | st.just("a" * 64) | json_scalars},
)


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=headers, data=st.binary(max_size=200), delta=st.sampled_from([0, 0, 0, -1, 1, 2**31]),
       codec=st.sampled_from(CONTAINER_CODECS))
def test_fuzz_structured_containers(header: dict, data: bytes, delta: int, codec: str) -> None:
    only_protocol_errors(zstd(container(header, data, delta)), codec)
    for compression in ("none", "blosc2-zstd", None, 3):
        only_protocol_errors(v2({**header, "compression": compression}, data, delta), codec)


@st.composite
def consistent_containers(draw) -> tuple[bytes, str]:
    """Well-formed containers: entries whose sizes and streams agree, random bytes in the streams."""
    codec = draw(st.sampled_from(CONTAINER_CODECS))
    tensors, data = [], b""
    for name in draw(st.lists(names, max_size=3, unique=True)):
        if name in BASE.state and draw(st.booleans()):
            ref = BASE.state[name]
            dtype, shape = {torch.float32: "F32", torch.float16: "F16", torch.float64: "F64", torch.int64: "I64"}[ref.dtype], \
                list(ref.shape)
        else:
            dtype, shape = draw(st.sampled_from(sorted(ITEMSIZE))), draw(st.lists(st.integers(0, 4), max_size=3))
        entry = {"name": name, "dtype": dtype, "shape": shape, "enc": draw(st.sampled_from(["full", "fp16", "int8", "topk"]))}
        numel = 1
        for s in shape:
            numel *= s
        if entry["enc"] == "int8":
            entry["scale"] = draw(st.floats(0, 1e30))
        if entry["enc"] == "topk":
            entry["k"] = draw(st.integers(0, min(numel, 6)))
        size = {"full": numel * ITEMSIZE[dtype], "fp16": 2 * numel, "int8": numel, "topk": 6 * entry.get("k", 0)}[entry["enc"]]
        tensors.append(entry)
        if entry["enc"] == "topk" and draw(st.booleans()):  # plausible positions: small increasing gaps
            gaps = draw(st.lists(st.integers(0, 3), min_size=entry["k"], max_size=entry["k"]))
            data += b"".join(bytes(p) for p in zip(*[struct.pack("<i", g) for g in gaps])) if gaps else b""
            data += draw(st.binary(min_size=2 * entry["k"], max_size=2 * entry["k"]))
        else:
            data += draw(st.binary(min_size=size, max_size=size))
    header = {"codec": codec, "tensors": tensors}
    if is_delta(codec):
        header["base"] = BASE.digest
    return container(header, data), codec


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=consistent_containers())
def test_fuzz_consistent_containers(case: tuple[bytes, str]) -> None:
    raw, codec = case
    only_protocol_errors(zstd(raw), codec)
    (head_len,) = struct.unpack_from("<I", raw, 4)
    header = {**json.loads(raw[8:8 + head_len]), "compression": "none"}
    only_protocol_errors(v2(header, raw[8 + head_len:]), codec)


UPDATE = {"w": torch.linspace(-1, 1, 2048), "h": torch.ones(64, 32, dtype=torch.float16), "d": torch.ones(1024).double(),
          "n": torch.tensor(4)}
VALID = {codec: inflate(v1(UPDATE, codec, base=BASE, seed=1), BIG) for codec in V1_CODECS}
VALID_V2 = {(codec, compress): fmqt.write(*container_parts(UPDATE, codec, base=BASE, seed=1), compress=compress)
            for codec in CONTAINER_CODECS for compress in (True, False)}


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(codec=st.sampled_from(V1_CODECS), edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)),
                                                               min_size=1, max_size=4),
       cut=st.integers(0, 64), compressed=st.booleans())
def test_fuzz_mutated_valid_containers(codec: str, edits: list[tuple[int, int]], cut: int, compressed: bool) -> None:
    raw = bytearray(VALID[codec])
    if compressed:  # mutate the compressed form
        z = bytearray(zstd(bytes(raw)))
        for pos, byte in edits:
            z[pos % len(z)] = byte
        only_protocol_errors(bytes(z), codec)
    else:
        (head_len,) = struct.unpack_from("<I", raw, 4)
        for pos, byte in edits:  # mostly in the header, where the structure is
            raw[pos % (8 + head_len + 16)] = byte
        only_protocol_errors(zstd(bytes(raw[: len(raw) - cut])), codec, max_bytes=BIG)


@pytest.mark.parametrize("declare_size", [True, False])
def test_a_header_length_past_the_frame_is_refused(declare_size: bool) -> None:
    """A 20-byte container claiming a 1 GB header: refused on the claim where the frame declares its
    size (before any buffer is made for it), else when the frame ends short of it."""
    raw = MAGIC + struct.pack("<I", BIG - 16) + b"{}" * 6
    frame = zstandard.ZstdCompressor(write_content_size=declare_size).compress(raw)
    with pytest.raises(ProtocolError, match="header claims .* bytes; (at most )?12 follow"):
        decode_state(frame, "shuffle+zstd", BIG)


# --- version 2 -----------------------------------------------------------------------------------


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(sorted(VALID_V2)), edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)),
                                                              min_size=1, max_size=4),
       cut=st.integers(0, 64), in_header=st.booleans(), codec=st.sampled_from(CONTAINER_CODECS))
def test_fuzz_mutated_version_2_containers(case: tuple[str, bool], edits: list[tuple[int, int]], cut: int,
                                           in_header: bool, codec: str) -> None:
    raw = bytearray(VALID_V2[case])
    (head_len,) = struct.unpack_from("<I", raw, 4)
    for pos, byte in edits:
        raw[pos % (8 + head_len + 16) if in_header else pos % len(raw)] = byte
    only_protocol_errors(bytes(raw[: len(raw) - cut]), codec if cut % 2 else case[0], max_bytes=BIG)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("cut", [1, 7, 33, 200])
def test_a_truncated_version_2_container_is_refused(compress: bool, cut: int) -> None:
    payload = fmqt.write(*container_parts(UPDATE, "shuffle+zstd"), compress=compress)
    with pytest.raises(ProtocolError, match="truncated|take|compressed chunk"):
        decode_state(payload[:-cut], "shuffle+zstd", BIG)


@pytest.mark.parametrize("compress", [True, False])
def test_bytes_after_the_last_tensor_are_refused(compress: bool) -> None:
    payload = fmqt.write(*container_parts(UPDATE, "shuffle+zstd"), compress=compress)
    with pytest.raises(ProtocolError, match="follow"):
        decode_state(bytes(payload) + b"\0" * 40, "shuffle+zstd", BIG)


F32_8 = {"codec": "shuffle+zstd", "compression": "blosc2-zstd", "tensors": [{**F32_W, "shape": [8]}]}


def blosc_chunk(raw: bytes, typesize: int = 4) -> bytes:
    return fmqt._compress_block((np.frombuffer(raw, dtype=np.uint8), typesize))


BAD_V2 = {
    "short": (MAGIC_V2 + b"\x01", "shorter than its prefix"),
    "header-past-end": (v2({"codec": "shuffle+zstd", "compression": "none", "tensors": []}, head_len_delta=1), "header claims"),
    "no-compression": (v2({"codec": "shuffle+zstd", "tensors": []}), "names its compression"),
    "unknown-compression": (v2({"codec": "shuffle+zstd", "compression": "lz4", "tensors": []}), "header is invalid"),
    "raw-compressed": (v2({"codec": "raw", "compression": "blosc2-zstd", "tensors": []}), "raw payload is not compressed"),
    "none-short": (v2({**F32_8, "compression": "none"}, bytes(31)), "take 32 bytes but 31"),
    "none-long": (v2({**F32_8, "compression": "none"}, bytes(33)), "take 32 bytes but 33"),
    "chunk-too-big": (v2(F32_8, blosc_chunk(bytes(36))), "chunk of 36 bytes where 32 are left"),
    "chunk-short": (v2(F32_8, blosc_chunk(bytes(16)) + blosc_chunk(bytes(8))), "truncated"),
    "chunk-cut": (v2(F32_8, blosc_chunk(bytes(range(32)))[:-3]), "compressed chunk"),
    "chunk-garbage": (v2(F32_8, struct.pack("<BBBBiii", 5, 1, 0, 4, 32, 32, 48) + bytes(range(16)) + bytes(16)),
                      "does not inflate|compressed chunk"),
    "chunk-after-last": (v2(F32_8, blosc_chunk(bytes(32)) + blosc_chunk(bytes(4))), "follow the container's last tensor"),
    "other-codec": (v2(F32_8, (lambda c: c[:22] + bytes([37]) + c[23:])(blosc_chunk(bytes(range(32))))), "not shuffle \\+ zstd"),
    "other-filter": (v2(F32_8, (lambda c: c[:17] + bytes([3]) + c[18:])(blosc_chunk(bytes(range(32))))), "not shuffle \\+ zstd"),
    "uninitialised": (v2(F32_8, (lambda c: c[:31] + bytes([0x30]))(blosc_chunk(bytes(32)))), "not shuffle \\+ zstd"),
    "lz4": (v2(F32_8, __import__("blosc2").compress2(bytes(range(32)), typesize=4)), "not shuffle \\+ zstd"),
    "huge-claim": (v2({**F32_8, "tensors": [{**F32_W, "shape": [2**40]}]}, blosc_chunk(bytes(32))), "inflates past"),
}


@pytest.mark.parametrize("payload,match", BAD_V2.values(), ids=BAD_V2.keys())
def test_malformed_version_2_containers_refused(payload: bytes, match: str) -> None:
    codec = json.loads(payload[8:8 + struct.unpack_from("<I", payload, 4)[0]] or b"{}").get("codec", "shuffle+zstd") \
        if len(payload) >= 8 else "shuffle+zstd"
    with pytest.raises(ProtocolError, match=match):
        decode_state(payload, codec if codec in CODECS else "shuffle+zstd", 1 << 30)


def test_a_version_2_container_split_over_pieces_decodes() -> None:
    """A payload as the reassembler hands it over: views into its chunks, Blosc2 chunks across their edges."""
    from fedmq.schemas.pieces import Pieces

    state = {"w": torch.linspace(-3, 3, 400_000), "n": torch.tensor(7)}
    for codec in ("shuffle+zstd", "raw"):
        payload = encode_state(state, codec)
        pieces = Pieces(_cut(payload, [1, 7, 33, 1000, 65536, 333333]))
        out = decode_state(pieces, codec, BIG)
        assert torch.equal(out["w"], state["w"]) and out["n"].item() == 7


def _cut(data: bytes, sizes: list[int]) -> list[bytes]:
    parts, at, i = [], 0, 0
    while at < len(data):
        parts.append(data[at:at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
    return parts
