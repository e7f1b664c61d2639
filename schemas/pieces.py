"""A received payload kept as the chunks it arrived in, so a model is never joined into one more copy.

The reassembler hands whole messages over as ``Pieces``: views into the chunks MQTT delivered.
Decoders read them as a file (``reader``), a piece at a time; ``bytes(pieces)`` joins them for the
rare reader that needs one buffer. The reassembler hashes a payload as its chunks arrive and passes
the digest on (``digests``), so verifying it does not read the bytes again.

Digests: ``blake3`` (what fedmq sends since issue 17) and ``sha256`` (what it sent before), both
256 bits, as lowercase hex; ``PayloadInfo`` names which one a payload carries.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable

from blake3 import blake3

Buffer = bytes | bytearray | memoryview
DIGEST_ALGORITHMS = ("blake3", "sha256")
BLAKE3_THREADS_MIN_BYTES = 1 << 20  # below this, BLAKE3's threads cost more than they save


def hasher(algorithm: str):
    """A new incremental hasher (``update``, ``hexdigest``) for one of ``DIGEST_ALGORITHMS``."""
    if algorithm == "blake3":
        return blake3(max_threads=blake3.AUTO)  # its threads pay on the 1 MiB chunks a payload arrives in
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


def digest_of(data: Buffer | Pieces, algorithm: str = "blake3") -> str:
    """The digest (hex) of bytes or of ``Pieces``."""
    if isinstance(data, Pieces):
        return data.digest(algorithm)
    if algorithm == "blake3":
        threads = blake3.AUTO if len(data) >= BLAKE3_THREADS_MIN_BYTES else 1
        return blake3(data, max_threads=threads).hexdigest()
    return _HASHERS[algorithm](data).hexdigest()


_HASHERS: dict[str, Callable] = {"sha256": hashlib.sha256}


class Pieces:
    """Bytes held as a sequence of views, read in order. Immutable."""

    def __init__(self, parts: Iterable[Buffer], digests: dict[tuple[int, str], str] | None = None) -> None:
        """``digests``: (offset, algorithm) -> digest (hex) of the bytes from that offset on, where already known."""
        self.parts = [memoryview(p).cast("B") for p in parts if len(p)]
        self._len = sum(len(p) for p in self.parts)
        self._digests = dict(digests or {})

    def __len__(self) -> int:
        return self._len

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Pieces | bytes | bytearray | memoryview):
            return len(self) == len(other) and bytes(self) == bytes(other)
        return NotImplemented

    __hash__ = None  # equal to bytes, so not hashable like them

    def __repr__(self) -> str:
        return f"Pieces({len(self)} bytes in {len(self.parts)} part(s))"

    def take(self, start: int, stop: int) -> bytes:
        """A copy of ``[start:stop]``: for small reads such as a header."""
        out, at = [], 0
        for part in self.parts:
            lo, hi = max(start - at, 0), min(stop - at, len(part))
            if lo < hi:
                out.append(part[lo:hi])
            at += len(part)
            if at >= stop:
                break
        return b"".join(out)

    def tail(self, start: int) -> Pieces:
        """The bytes from ``start`` on, as views (no copy)."""
        parts, at = [], 0
        for part in self.parts:
            if at + len(part) > start:
                parts.append(part[max(start - at, 0):])
            at += len(part)
        known = {(offset - start, algorithm): digest for (offset, algorithm), digest in self._digests.items()
                 if offset >= start}
        return Pieces(parts, known)

    def digest(self, algorithm: str = "blake3") -> str:
        """The digest of the bytes (hex, ``blake3`` or ``sha256``); computed once."""
        if (0, algorithm) not in self._digests:
            running = hasher(algorithm)
            for part in self.parts:
                running.update(part)
            self._digests[0, algorithm] = running.hexdigest()
        return self._digests[0, algorithm]

    def reader(self) -> io.RawIOBase:
        """A new file object over the bytes, from the start."""
        return _Reader(self.parts)


class _Reader(io.RawIOBase):
    def __init__(self, parts: list[memoryview]) -> None:
        self._parts, self._index, self._offset = parts, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target) and self._index < len(self._parts):
            part = self._parts[self._index]
            n = min(len(target) - filled, len(part) - self._offset)
            target[filled:filled + n] = part[self._offset:self._offset + n]
            filled += n
            self._offset += n
            if self._offset == len(part):
                self._index, self._offset = self._index + 1, 0
        return filled


def sha256_of(data: Buffer | Pieces) -> str:
    """The sha256 (hex) of bytes or of ``Pieces``."""
    return digest_of(data, "sha256")


def as_source(data: Buffer | Pieces) -> Buffer | io.RawIOBase:
    """What a zstd stream reader reads from: a buffer in place, or a file object over ``Pieces``."""
    return data.reader() if isinstance(data, Pieces) else data


def head(data: Buffer | Pieces, size: int) -> bytes:
    """The first ``size`` bytes (fewer if there are fewer), as a copy."""
    return data.take(0, size) if isinstance(data, Pieces) else bytes(data[:size])
