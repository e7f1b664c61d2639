"""The container of the lossless (``shuffle+zstd``, ``raw``) and ``delta-*`` codecs: a JSON index and byte streams.

Version 2 (written since issue 17)::

    b"FMQ2" | header length (u32, little-endian) | header (UTF-8 JSON) | streams

``header = {"codec": NAME, "base": DIGEST | null, "compression": "blosc2-zstd" | "none",
"tensors": [entry, ...]}``, one entry per tensor, sorted by name: ``{"name", "dtype"
(safetensors' spelling: F32, BF16, I64...), "shape", "enc"}`` plus ``"scale"`` for ``enc ==
"int8"`` and ``"k"`` for ``enc == "topk"``. Each entry's byte count follows from its dtype, shape,
encoding and ``k`` (:func:`stream_bytes`), so there are no offsets to trust. The streams follow in
entry order:

* ``"none"`` (the ``raw`` codec): each tensor's bytes as they are in memory (little-endian, value
  order), nothing else: the streams fill the rest of the payload exactly.
* ``"blosc2-zstd"``: each entry's bytes (per segment: ``topk`` has its gaps, then its values) are
  cut into pieces of at most ``BLOCK_BYTES`` and each piece is one Blosc2 chunk: C-Blosc2's SIMD
  byte-shuffle with the value's size as its type size (all the first bytes of the values, then
  all the second bytes...), each byte plane compressed apart (``ALWAYS_SPLIT``) by zstd level 1.
  A chunk is self-describing (its 32-byte header carries its raw and compressed sizes); the
  chunks of an entry must fill exactly its byte count, and the last chunk must end the payload.
  The sign and exponent bytes of neighbouring floats are alike and compress well, the low
  mantissa bytes hardly at all, and zstd does better on each kind apart than on the mix. A reader
  inflates only chunks whose header says what fedmq writes (``BLOSC_EXTENDED``): no other codec
  (C-Blosc2 may look for a plug-in library for one), no other filter, no special value but zeros.

Version 1 (fedmq before issue 17; still decoded, never written): the whole of
``b"FMQT" | header length | header | streams`` in one zstd frame, the header without
``"compression"``, each multi-byte stream byte-shuffled by numpy (planes in order) and the
streams otherwise as above. A payload starting with zstd's frame magic is read as version 1.

Decoding is capped and streams: the header is checked, and the sum of the tensors' bytes against
``max_bytes``, before any tensor's buffer is made; each tensor is inflated (or copied) straight into
a new writable buffer of its own, from the payload's chunks in place.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import numpy as np
import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ...errors import ProtocolError
from ..pieces import Buffer, Pieces, as_source, head

MAGIC = b"FMQT"  # version 1, inside its zstd frame
MAGIC_V2 = b"FMQ2"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESSED, UNCOMPRESSED = "blosc2-zstd", "none"
# Version 2's Blosc2 chunks. Everything that shapes the bytes is fixed (zstd level 1, byte planes
# compressed apart, 128 KiB blocks, one thread per chunk): C-Blosc2 places a chunk's blocks in the
# order its threads finish them, so only single-threaded chunks give the same bytes for the same
# tensors every time (a resent update must have the same digest). Chunks are compressed in
# parallel instead, ``ENCODE_THREADS`` at a time, and joined in order.
BLOCK_BYTES = 1 << 20  # raw bytes per Blosc2 chunk: a multiple of every value size
BLOSC_BLOCKSIZE = 1 << 17
BLOSC_HEADER = struct.Struct("<BBBBiii")  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes
BLOSC_MIN_HEADER_BYTES = 32  # a Blosc2 chunk's extended header
BLOSC_OVERHEAD = 32  # at most this many bytes more than its raw size (C-Blosc2's BLOSC2_MAX_OVERHEAD)
# What a chunk fedmq writes says in its extended header, and all a reader accepts: the shuffle
# filter alone (bytes 16-21), zstd (byte 22), no codec or filter meta (23-30), and no special value
# but "all zeros" (byte 31: 0 or 0x10). A chunk naming another codec could make C-Blosc2 look for a
# plug-in library, and one of its special values ("uninitialised") would hand out memory unwritten.
BLOSC_EXTENDED = bytes([1, 0, 0, 0, 0, 0, 5]) + bytes(8)
BLOSC_SPECIALS = (0x00, 0x10)
BLOSC_FLAG_EXTENDED, BLOSC_FLAG_MEMCPYED, BLOSC_FORMAT_ZSTD = 0x04, 0x02, 4
ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))
DECODE_THREADS = ENCODE_THREADS
PARALLEL_MIN_BYTES = 4 << 20  # a smaller model is done before a thread pool is up (small CNN: 0.4 ms against 1.4)
# Version 1's parameters (its writer is kept for tests): zstd level 1, a block per byte plane,
# single-threaded (zstd's own threads gained nothing on 2 cores
# at level 1, and would make the bytes depend on the machine). Parameters are fixed, not derived
# from the input's size: told a small model's size, zstd would pick others.
#
# Whole weights: a 64-entry hash table and 7-byte minimum matches. Only the sign/exponent plane of
# float32 weights compresses (to about 0.35; the mantissa planes go out as raw blocks), and on it
# level 1's own 2**14-entry table chases matches that do not pay: trained ResNet-18 gives 0.835 of
# raw in 44 ms, against 0.842 in 63 ms at plain level 1. Deltas (fp16, int8, top-k) hold runs and
# repeats that plain level 1 finds: it is up to 3% smaller there. See the README.
WEIGHTS_PARAMS = zstandard.ZstdCompressionParameters.from_level(1, threads=0, hash_log=6, min_match=7)
DELTA_PARAMS = zstandard.ZstdCompressionParameters.from_level(1, threads=0)
FLUSH_MIN_BYTES = 256  # a smaller plane shares its block with the next one (a block header is 3 bytes)
MAX_TENSORS = 1_000_000
UNSIZED_READ_BYTES = 1 << 20  # a frame that does not declare its size is read this much at a time
FRAME_HEADER_MAX_BYTES = 18  # ZSTD_FRAMEHEADERSIZE_MAX: where a frame declares its size
# dtype name -> bytes per element. The order of ``DTypeName`` below is the same.
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
            "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

DTypeName = Literal["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2",
                    "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"]
Encoding = Literal["full", "fp16", "int8", "topk"]
Segment = tuple[np.ndarray, int]  # (the stream's bytes as flat uint8, unshuffled; bytes per value)


class Entry(BaseModel):
    """One tensor's index entry, validated before any of its bytes are looked at."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Annotated[str, Field(max_length=4096)]
    dtype: DTypeName
    shape: Annotated[list[Annotated[int, Field(ge=0, le=2**62)]], Field(max_length=16)]
    enc: Encoding
    scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    k: Annotated[int, Field(ge=0, le=2**62)] | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @model_validator(mode="after")
    def _consistent(self) -> Entry:
        if (self.scale is not None) != (self.enc == "int8"):
            raise ValueError("'scale' goes with encoding 'int8' and only with it")
        if (self.k is not None) != (self.enc == "topk"):
            raise ValueError("'k' goes with encoding 'topk' and only with it")
        if self.enc != "full" and self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"encoding {self.enc!r} is for floating-point tensors, not {self.dtype}")
        if self.k is not None and self.k > self.numel:
            raise ValueError(f"k={self.k} is more than the tensor's {self.numel} values")
        return self


class Header(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    codec: Annotated[str, Field(max_length=64)]
    base: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None  # delta codecs: the base model's digest
    compression: Literal["blosc2-zstd", "none"] | None = None  # version 2 only
    tensors: Annotated[list[Entry], Field(max_length=MAX_TENSORS)]

    @model_validator(mode="after")
    def _unique(self) -> Header:
        if len({e.name for e in self.tensors}) != len(self.tensors):
            raise ValueError("a tensor name appears twice")
        return self


def stream_bytes(entry: Entry) -> int:
    """The bytes an entry's streams take: all its values, or ``k`` int32 gaps and ``k`` float16 values."""
    if entry.enc == "full":
        return entry.numel * ITEMSIZE[entry.dtype]
    if entry.enc == "fp16":
        return entry.numel * 2
    if entry.enc == "int8":
        return entry.numel
    return entry.k * 6


# -- writing --------------------------------------------------------------------------------------


def write(header: dict, segments: list[Segment], compress: bool = True) -> memoryview:
    """A version-2 container: the header, then the segments compressed (``blosc2-zstd``) or as they are.

    Bytes-like and read-only: a memoryview over a numpy buffer, not ``bytes``. Joining tens of
    megabytes into a new ``bytes`` costs 4 times as long here (21 ms against 5.5 ms for ResNet-18),
    all of it page faults: numpy asks the kernel for huge pages for a large buffer, and Python's
    allocator does not.
    """
    header = {**header, "compression": COMPRESSED if compress else UNCOMPRESSED}
    # Validated like a received header: the writer holds itself to the format.
    head = Header.model_validate(header).model_dump_json(exclude_none=True).encode("utf-8")
    prefix = MAGIC_V2 + struct.pack("<I", len(head)) + head
    if not compress:
        return _joined([prefix, *(data for data, _ in segments if data.size)])
    jobs = [(data[at:at + BLOCK_BYTES], itemsize) for data, itemsize in segments
            for at in range(0, data.size, BLOCK_BYTES)]
    if ENCODE_THREADS > 1 and len(jobs) > 1 and sum(data.size for data, _ in segments) >= PARALLEL_MIN_BYTES:
        with ThreadPoolExecutor(ENCODE_THREADS) as pool:  # C-Blosc2 lets go of the GIL while it compresses
            chunks = list(pool.map(_compress_block, jobs))
    else:
        chunks = [_compress_block(job) for job in jobs]
    return _joined([prefix, *chunks])


def _joined(parts: list) -> memoryview:
    out = np.empty(sum(len(memoryview(p).cast("B")) for p in parts), dtype=np.uint8)
    at = 0
    for part in parts:
        view = np.frombuffer(part, dtype=np.uint8)
        out[at:at + view.size] = view
        at += view.size
    return memoryview(out).toreadonly()


def _compress_block(job: tuple[np.ndarray, int]) -> bytes:
    import blosc2  # here, not at the top: importing it takes a good part of a second

    data, itemsize = job
    return blosc2.compress2(data, codec=blosc2.Codec.ZSTD, clevel=1, typesize=itemsize, nthreads=1,
                            filters=[blosc2.Filter.SHUFFLE], splitmode=blosc2.SplitMode.ALWAYS_SPLIT,
                            blocksize=BLOSC_BLOCKSIZE)


def shuffled_planes(data: np.ndarray, itemsize: int) -> Iterator[np.ndarray]:
    """The byte planes of ``data`` (flat uint8, ``itemsize`` bytes per value), one contiguous copy each."""
    if itemsize == 1:
        yield data
        return
    values = data.reshape(-1, itemsize)
    for i in range(itemsize):
        yield np.ascontiguousarray(values[:, i])


def write_v1(header: dict, segments: list[Segment], params: zstandard.ZstdCompressionParameters = WEIGHTS_PARAMS) -> bytes:
    """A version-1 container, as fedmq wrote before container version 2: kept for the tests that
    show version 1 still decodes; fedmq itself never writes one any more."""
    head = Header.model_validate(header).model_dump_json(exclude_none=True).encode("utf-8")
    size = 8 + len(head) + sum(data.size for data, _ in segments)  # in the frame header: the reader sizes its buffer
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj(size=size)
    out = [compressor.compress(MAGIC + struct.pack("<I", len(head)) + head)]
    # A block ends after the header and after each big plane, but never after the last plane: the
    # frame's last block then holds data, and a payload cut short always decodes short.
    end_block = True
    for data, itemsize in segments:
        for plane in shuffled_planes(data, itemsize):
            if end_block:
                out.append(compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
            out.append(compressor.compress(plane))  # a contiguous array is a buffer: no bytes() copy
            end_block = plane.size >= FLUSH_MIN_BYTES
    out.append(compressor.flush())
    return b"".join(out)


# -- reading --------------------------------------------------------------------------------------


def read(payload: Buffer | Pieces, max_bytes: int) -> tuple[Header, Iterator[tuple[Entry, np.ndarray]]]:
    """The validated header, and an iterator of each entry with its bytes: a new, writable, flat
    uint8 array in value order (unshuffled, decompressed), made when the iterator reaches it.

    Either container version; the iterator checks at its end that nothing follows the last tensor.
    """
    if head(payload, 4) == MAGIC_V2:
        return _read_v2(payload, max_bytes)
    header, views = _read_v1(payload, max_bytes)
    return header, ((entry, _unshuffle_entry(entry, view)) for entry, view in views)


def _parse_header(head_bytes: Buffer) -> Header:
    try:
        return Header.model_validate_json(bytes(head_bytes))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'header'}: {err['msg']}"
                             for err in exc.errors()[:3])
        raise ProtocolError(f"the container's header is invalid: {problems}") from None


def _read_v2(payload: Buffer | Pieces, max_bytes: int) -> tuple[Header, Iterator[tuple[Entry, np.ndarray]]]:
    cursor = _Cursor(payload)
    start = cursor.take(8)
    if len(start) < 8:
        raise ProtocolError("payload is not a fedmq tensor container (FMQ2): shorter than its prefix")
    (head_len,) = struct.unpack_from("<I", start, 4)
    if 8 + head_len > max_bytes:
        raise ProtocolError(f"payload inflates past the {max_bytes}-byte limit (its header alone is {head_len} bytes)")
    if head_len > cursor.left:
        raise ProtocolError(f"the container's header claims {head_len} bytes; {cursor.left} follow")
    header = _parse_header(cursor.take(head_len))
    if header.compression is None:
        raise ProtocolError("the container's header is invalid: a version-2 header names its compression")
    sizes = [stream_bytes(e) for e in header.tensors]
    if 8 + head_len + sum(sizes) > max_bytes:
        raise ProtocolError(f"payload inflates past the {max_bytes}-byte limit")
    if header.compression == UNCOMPRESSED and sum(sizes) != cursor.left:
        raise ProtocolError(f"the container's tensors take {sum(sizes)} bytes but {cursor.left} follow the header")
    return header, _streams_v2(cursor, header, sizes)


def _streams_v2(cursor: _Cursor, header: Header, sizes: list[int]) -> Iterator[tuple[Entry, np.ndarray]]:
    compressed = header.compression == COMPRESSED
    for entry, size in zip(header.tensors, sizes):
        out = np.empty(size, dtype=np.uint8)  # not zero-filled: every byte is written or the payload refused
        if compressed:
            _inflate_entry(cursor, entry, out)
        else:
            cursor.readinto(out)
        yield entry, out
    if cursor.left:
        raise ProtocolError(f"{cursor.left} bytes follow the container's last tensor")


def _inflate_entry(cursor: _Cursor, entry: Entry, out: np.ndarray) -> None:
    """Fill ``out`` with the entry's Blosc2 chunks, each checked against what is left before it is inflated."""
    import blosc2

    filled = 0
    while filled < out.size:
        if cursor.left < BLOSC_MIN_HEADER_BYTES:
            raise ProtocolError(f"payload is truncated: tensor {entry.name!r} has {filled} of its {out.size} bytes")
        head32 = cursor.peek(BLOSC_MIN_HEADER_BYTES)
        _, _, flags, _, nbytes, _, cbytes = BLOSC_HEADER.unpack_from(head32)
        if (not flags & BLOSC_FLAG_EXTENDED or not (flags >> 5 == BLOSC_FORMAT_ZSTD or flags & BLOSC_FLAG_MEMCPYED)
                or head32[16:31] != BLOSC_EXTENDED or head32[31] not in BLOSC_SPECIALS):
            raise ProtocolError(f"tensor {entry.name!r}: a compressed chunk that is not shuffle + zstd as fedmq writes it")
        if not 0 < nbytes <= out.size - filled:
            raise ProtocolError(f"tensor {entry.name!r}: a compressed chunk of {nbytes} bytes where "
                                f"{out.size - filled} are left")
        if not BLOSC_MIN_HEADER_BYTES <= cbytes <= min(cursor.left, nbytes + BLOSC_OVERHEAD):
            raise ProtocolError(f"tensor {entry.name!r}: a compressed chunk claims {cbytes} bytes "
                                f"({cursor.left} left in the payload)")
        src = cursor.take(cbytes)
        try:
            blosc2.decompress2(src, dst=out[filled:filled + nbytes], nthreads=DECODE_THREADS)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ProtocolError(f"tensor {entry.name!r}: a compressed chunk does not inflate: {exc}") from None
        filled += nbytes


class _Cursor:
    """Reads a payload (bytes or ``Pieces``) front to back, in place where it can."""

    def __init__(self, payload: Buffer | Pieces) -> None:
        self.parts = payload.parts if isinstance(payload, Pieces) else [memoryview(payload).cast("B")]
        self.index, self.offset = 0, 0
        self.left = sum(len(p) for p in self.parts)

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (the caller checked they are there), not consumed."""
        index, offset, out = self.index, self.offset, b""
        while len(out) < size:
            part = self.parts[index]
            out += bytes(part[offset:offset + size - len(out)])
            index, offset = index + 1, 0
        return out

    def take(self, size: int) -> memoryview:
        """The next ``size`` bytes (fewer where the payload ends): a view when they lie in one part, else a copy."""
        size = min(size, self.left)
        part = self.parts[self.index] if size else memoryview(b"")
        if self.offset + size <= len(part):
            view = part[self.offset:self.offset + size]
            self._advance(size)
            return view
        out = np.empty(size, dtype=np.uint8)
        self.readinto(out)
        return memoryview(out)

    def readinto(self, out: np.ndarray) -> None:
        """Copy the next ``out.size`` bytes into ``out``; short is a truncated payload."""
        target = memoryview(out).cast("B")
        if len(target) > self.left:
            raise ProtocolError(f"payload is truncated: {len(target)} bytes wanted, {self.left} left")
        filled = 0
        while filled < len(target):
            part = self.parts[self.index]
            n = min(len(target) - filled, len(part) - self.offset)
            target[filled:filled + n] = part[self.offset:self.offset + n]
            filled += n
            self._advance(n)

    def _advance(self, size: int) -> None:
        self.left -= size
        self.offset += size
        while self.index < len(self.parts) and self.offset >= len(self.parts[self.index]) and self.left:
            self.offset -= len(self.parts[self.index])
            self.index += 1


def _unshuffle_entry(entry: Entry, view: memoryview) -> np.ndarray:
    """A version-1 entry's streams back in value order: each segment unshuffled by its value size."""
    parts, at = [], 0
    for nbytes, itemsize in segment_layout(entry):
        parts.append(unshuffle(view[at:at + nbytes], itemsize))
        at += nbytes
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def segment_layout(entry: Entry) -> list[tuple[int, int]]:
    """(bytes, bytes per value) of each segment of an entry's stream, in order."""
    if entry.enc == "full":
        return [(stream_bytes(entry), ITEMSIZE[entry.dtype])]
    if entry.enc == "fp16":
        return [(entry.numel * 2, 2)]
    if entry.enc == "int8":
        return [(entry.numel, 1)]
    return [(entry.k * 4, 4), (entry.k * 2, 2)]


def inflate(payload: Buffer | Pieces, max_bytes: int) -> bytes:
    """Decompress a zstd frame, refusing one that inflates past ``max_bytes`` before it is all in memory.

    Frames that declare their size (fedmq writes only such) are refused on the declaration, or read
    into a buffer of exactly that size and refused if they fall short (truncated) or run over (zstd
    fails them); others are read a chunk at a time, so no frame gets a ``max_bytes`` buffer up front.
    """
    try:
        declared = _declared_size(payload, max_bytes)
        with zstandard.ZstdDecompressor().stream_reader(as_source(payload)) as reader:
            if declared >= 0:
                raw = reader.read(declared + 1)
            else:
                buffer = bytearray()
                while len(buffer) <= max_bytes:
                    chunk = reader.read(min(UNSIZED_READ_BYTES, max_bytes + 1 - len(buffer)))
                    if not chunk:
                        break
                    buffer += chunk
                raw = bytes(buffer)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"payload is not valid zstd: {exc}") from None
    if len(raw) > max_bytes:
        raise ProtocolError(f"payload inflates past the {max_bytes}-byte limit")
    if declared >= 0 and len(raw) != declared:
        raise ProtocolError(f"payload is truncated: it inflates to {len(raw)} of the {declared} bytes it declares")
    return raw


def _declared_size(payload: Buffer | Pieces, max_bytes: int) -> int:
    """The frame's declared content size (-1: not declared), refused at once if over ``max_bytes``."""
    declared = zstandard.frame_content_size(head(payload, FRAME_HEADER_MAX_BYTES))
    if declared > max_bytes:
        raise ProtocolError(f"payload inflates past the {max_bytes}-byte limit (it says {declared} bytes)")
    return declared


def _read_v1(payload: Buffer | Pieces, max_bytes: int) -> tuple[Header, Iterator[tuple[Entry, memoryview]]]:
    """Version 1: the validated header, and an iterator of each entry with its (shuffled) streams' bytes.

    Decompression streams: each tensor's bytes are inflated when the iterator reaches it, so the
    whole container is never in memory at once, and the payload's chunks are read in place. The
    iterator checks at its end that nothing follows the last tensor.
    """
    try:
        declared = _declared_size(payload, max_bytes)
        reader = zstandard.ZstdDecompressor().stream_reader(as_source(payload))
        start = _read_exact(reader, 8)
        if bytes(start[:4]) != MAGIC or len(start) < 8:
            raise ProtocolError("payload is not a fedmq tensor container (FMQT)")
        (head_len,) = struct.unpack_from("<I", start, 4)
        room = declared - 8 if declared >= 0 else max_bytes - 8
        if head_len > room:  # checked before a buffer of that size is made
            raise ProtocolError(f"the container's header claims {head_len} bytes; at most {max(room, 0)} follow")
        head_bytes = _read_exact(reader, head_len)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"payload is not valid zstd: {exc}") from None
    if len(head_bytes) < head_len:
        raise ProtocolError(f"the container's header claims {head_len} bytes; {len(head_bytes)} follow")
    header = _parse_header(head_bytes)
    if header.compression is not None:
        raise ProtocolError("the container's header is invalid: a version-1 header names no compression")
    sizes = [stream_bytes(e) for e in header.tensors]
    follow = declared - 8 - head_len
    if declared >= 0 and sum(sizes) != follow:
        raise ProtocolError(f"the container's tensors take {sum(sizes)} bytes but {follow} follow the header")
    if declared < 0 and 8 + head_len + sum(sizes) > max_bytes:
        raise ProtocolError(f"payload inflates past the {max_bytes}-byte limit")
    return header, _streams(reader, header, sizes)


def _streams(reader: zstandard.ZstdDecompressionReader, header: Header,
             sizes: list[int]) -> Iterator[tuple[Entry, memoryview]]:
    try:
        for entry, size in zip(header.tensors, sizes):
            data = _read_exact(reader, size)
            if len(data) < size:
                raise ProtocolError(f"payload is truncated: tensor {entry.name!r} has {len(data)} of its {size} bytes")
            yield entry, data
        if reader.read(1):
            raise ProtocolError(f"the container's tensors take {sum(sizes)} bytes but more follow the header")
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"payload is not valid zstd: {exc}") from None
    finally:
        reader.close()


def _read_exact(reader: zstandard.ZstdDecompressionReader, size: int) -> memoryview:
    """``size`` bytes, or fewer only where the frame ends first."""
    out = memoryview(np.empty(size, dtype=np.uint8))  # not zero-filled: every byte is written or cut off
    filled = 0
    while filled < size:
        got = reader.readinto(out[filled:])
        if not got:
            return out[:filled]
        filled += got
    return out


def unshuffle(view: memoryview, itemsize: int) -> np.ndarray:
    """Undo :func:`shuffled_planes`: a new, writable, flat uint8 array in value order (the one copy made)."""
    planes = np.frombuffer(view, dtype=np.uint8)
    if itemsize == 1:
        return planes.copy()
    # np.stack of the planes writes the output in order: 2.5x faster than assigning a transposed view.
    return np.stack(list(planes.reshape(itemsize, -1)), axis=1).reshape(-1)
