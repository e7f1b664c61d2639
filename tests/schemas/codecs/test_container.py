"""The FMQT container of ``shuffle+zstd`` and the ``delta-*`` codecs: its exact layout, and that any
malformed container is a ProtocolError (never another exception, never a tensor of the wrong size)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
import zstandard
from fedmq.errors import ProtocolError
from fedmq.schemas.codec import CODECS, DELTA_CODECS, Base, decode_state, encode_state, is_delta
from fedmq.schemas.codecs.container import ITEMSIZE, MAGIC, inflate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BIG = 1 << 30
CONTAINER_CODECS = [c for c in CODECS if c != "safetensors+zstd"]
BASE = Base({"w": torch.zeros(2048), "h": torch.zeros(64, 32, dtype=torch.float16), "d": torch.zeros(1024).double(),
             "n": torch.tensor(3)}, "b" * 64)


def container(header: dict | bytes, data: bytes = b"", head_len_delta: int = 0, magic: bytes = MAGIC) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return magic + struct.pack("<I", max(0, min(2**32 - 1, len(head) + head_len_delta))) + head + data


def zstd(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(raw)


def decode(payload: bytes, codec: str, max_bytes: int = BIG) -> dict[str, torch.Tensor]:
    return decode_state(payload, codec, max_bytes, base=BASE if is_delta(codec) else None)


# --- layout --------------------------------------------------------------------------------------


def test_layout_is_the_documented_one() -> None:
    state = {"w": torch.tensor([1.0, 2.0]), "a": torch.tensor([True, False]), "n": torch.tensor(258, dtype=torch.int16)}
    raw = inflate(encode_state(state, "shuffle+zstd"), BIG)
    assert raw[:4] == b"FMQT"
    (head_len,) = struct.unpack_from("<I", raw, 4)
    header = json.loads(raw[8:8 + head_len])
    assert header == {"codec": "shuffle+zstd", "tensors": [
        {"name": "a", "dtype": "BOOL", "shape": [2], "enc": "full"},
        {"name": "n", "dtype": "I16", "shape": [], "enc": "full"},
        {"name": "w", "dtype": "F32", "shape": [2], "enc": "full"},
    ]}
    # Streams in entry order; multi-byte values byte-shuffled: all first (least significant) bytes, then all second...
    one, two = struct.pack("<f", 1.0), struct.pack("<f", 2.0)
    w = bytes([one[0], two[0], one[1], two[1], one[2], two[2], one[3], two[3]])
    assert raw[8 + head_len:] == b"\x01\x00" + struct.pack("<h", 258) + w


def test_delta_layout_names_the_base_and_each_encoding() -> None:
    update = {name: t + 1 if t.is_floating_point() else t for name, t in BASE.state.items()}
    for codec, enc in zip(DELTA_CODECS, ("fp16", "int8", "topk")):
        raw = inflate(encode_state(update, codec, base=BASE), BIG)
        (head_len,) = struct.unpack_from("<I", raw, 4)
        header = json.loads(raw[8:8 + head_len])
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


UPDATE = {"w": torch.linspace(-1, 1, 2048), "h": torch.ones(64, 32, dtype=torch.float16), "d": torch.ones(1024).double(),
          "n": torch.tensor(4)}
VALID = {codec: inflate(encode_state(UPDATE, codec, base=BASE, seed=1), BIG) for codec in CONTAINER_CODECS}


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(codec=st.sampled_from(CONTAINER_CODECS), edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)),
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
